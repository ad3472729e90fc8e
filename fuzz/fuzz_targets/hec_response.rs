//! A Splunk HEC answer (status and body; a proxy's error page as much as HEC's JSON):
//! the sink's reading of it, its retry decision and its message never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    relay_sinks::fuzzing::hec_answer(u16::from_be_bytes(*status) % 600, body);
});
