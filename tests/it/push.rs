//! Integration tests: push (filled in by its issue).
