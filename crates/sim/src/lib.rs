//! relay-sim: (being built)
