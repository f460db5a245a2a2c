//! Integration tests: email (filled in by its issue).
