//! Integration tests: sms (filled in by its issue).
