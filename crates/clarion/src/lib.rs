//! Daemon library.
