//! Integration tests of relay-auth: protocol edge cases against a scripted endpoint
//! (`stub`), behaviour against the simulator's Entra (`sim`), end to end with the whole
//! simulator (`sim_world`), and no-leak checks (`leaks`; log lines: `tests/logs.rs`).

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod leaks;
mod sim;
mod sim_world;
mod stub;
mod util;
