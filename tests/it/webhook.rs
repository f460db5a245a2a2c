//! Integration tests: webhook (filled in by its issue).
