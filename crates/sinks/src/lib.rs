//! relay-sinks: (being built)
