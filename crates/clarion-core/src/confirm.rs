//! Confirmation requests: how the recipient of a notice that must be confirmed can
//! confirm it, in the channel that reached them (docs/confirmations.md).
//!
//! The daemon mints the ways (signed, expiring, one per update, target and
//! recipient) and hands them to the channel with the delivery; a channel only puts
//! the way it is given into its message: a link in an email, a push or a webhook
//! body, a reply code in an SMS, the keypress and call-status callbacks of a call.
//! Channels never mint, store or check a way: the daemon's inbound listener does.

use std::fmt;

/// The ways each recipient of one delivery can confirm it.
pub trait ConfirmWays: Send + Sync + fmt::Debug {
    /// How `recipient` confirms: an address as the channel addresses it (an email
    /// address, an E.164 number, a device token), or `None` for a channel with a
    /// single destination (a webhook). `None` when this recipient is not asked.
    fn way(&self, recipient: Option<&str>) -> Option<ConfirmWay>;
}

/// One recipient's way to confirm one notice. Every field is derived from the same
/// token, which reveals neither the address nor the notice.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfirmWay {
    /// A page that shows the notice with a button that confirms it (`GET` shows,
    /// only the button's `POST` confirms, so a link scanner confirms nothing): for
    /// email, push and webhooks.
    pub link: String,
    /// What an SMS recipient replies to confirm (for example `YES 4821`): never a
    /// carrier keyword such as STOP or HELP.
    pub reply: String,
    /// Where a voice provider posts the digit pressed during the call (Twilio's
    /// `<Gather action>`, Vonage's input `eventUrl`).
    pub keypress_url: String,
    /// Where a voice provider posts the call's status (answered, busy, failed,
    /// no answer, answered by a machine).
    pub status_url: String,
}

impl fmt::Debug for ConfirmWay {
    /// The URLs carry a bearer token: shown by their scheme and host only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn origin(url: &str) -> &str {
            let after_scheme = url.find("://").map_or(0, |i| i + 3);
            let end = url[after_scheme..]
                .find('/')
                .map_or(url.len(), |i| after_scheme + i);
            &url[..end]
        }
        f.debug_struct("ConfirmWay")
            .field("link", &format_args!("{}/***", origin(&self.link)))
            .field("reply", &"***")
            .field(
                "keypress_url",
                &format_args!("{}/***", origin(&self.keypress_url)),
            )
            .field(
                "status_url",
                &format_args!("{}/***", origin(&self.status_url)),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_token() {
        let way = ConfirmWay {
            link: "https://notify.example.com/c/SECRETTOKEN".into(),
            reply: "YES 4821".into(),
            keypress_url: "https://notify.example.com/v/SECRETTOKEN/key".into(),
            status_url: "https://notify.example.com/v/SECRETTOKEN/status".into(),
        };
        let shown = format!("{way:?}");
        assert!(!shown.contains("SECRETTOKEN"), "{shown}");
        assert!(!shown.contains("4821"), "{shown}");
        assert!(shown.contains("https://notify.example.com/***"), "{shown}");
    }
}
