//! End-to-end tests of the pipeline against the in-process simulator: a temp directory
//! holds the state file and the file sink's output, which is compared with the
//! simulator's ground truth.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod build;
mod consent;
mod delivery;
mod failing_sink;
mod fairness;
mod http_proxy;
mod reload;
mod restart;
mod util;
