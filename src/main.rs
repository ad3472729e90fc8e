//! The `xdr-relay` binary: parses the command line, sets up logging and starts things.

fn main() {}
