//! A Defender / Graph API response body, read as each feed: `parse_page` returns a page
//! or an error, and never panics, loops or allocates without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_config::Feed;

fuzz_target!(|data: &[u8]| {
    for feed in Feed::ALL {
        let _ = relay_defender::parse_page(feed, data);
    }
});
