//! Integration tests: kafka (filled in by its issue).
