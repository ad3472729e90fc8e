//! relay-pipeline: (being built)
