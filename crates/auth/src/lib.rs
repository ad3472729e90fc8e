//! relay-auth: (being built)
