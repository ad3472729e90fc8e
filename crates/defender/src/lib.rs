//! relay-defender: (being built)
