//! An Entra token endpoint answer body: read as a token response and as an OAuth error
//! body with its AADSTS codes, and classified, as the token manager does; never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay_auth::fuzzing::token_endpoint_answer(data);
});
