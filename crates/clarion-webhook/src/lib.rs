//! Webhook channel.
