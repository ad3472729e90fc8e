//! relay-state: (being built)
