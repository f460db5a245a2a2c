//! Each recipient's way to confirm (`clarion_core::ConfirmWay`), minted from the
//! case and the recipient: the link, the reply code and a call's callback URLs
//! all carry the same token, which expires when the case closes.

use clarion_confirm::{CaseId, Keys, RecipientId};
use clarion_core::{ConfirmWay, ConfirmWays};

/// Makes ways: the keys and the listener's public URL.
#[derive(Debug, Clone)]
pub struct Minter {
    pub keys: Keys,
    /// `confirm.public_url`, without a trailing `/`.
    base: String,
}

impl Minter {
    pub fn new(keys: Keys, public_url: &url::Url) -> Minter {
        Minter {
            keys,
            base: public_url.as_str().trim_end_matches('/').to_string(),
        }
    }

    /// The way `rid` confirms `case` until `expires` (Unix seconds); `attempt` is
    /// the call attempt the callback URLs name.
    pub fn way(&self, case: &CaseId, rid: &RecipientId, expires: u64, attempt: u32) -> ConfirmWay {
        let token = self.keys.mint(case, rid, expires);
        ConfirmWay {
            link: format!("{}/c/{token}", self.base),
            reply: self.keys.reply_code(case, rid),
            keypress_url: format!("{}/v/{token}/key/{attempt}", self.base),
            status_url: format!("{}/v/{token}/status/{attempt}", self.base),
        }
    }
}

/// The ways of a target's delivery: each recipient (an address, or none for a
/// webhook) is a recipient of the case.
#[derive(Debug)]
pub struct TargetWays {
    pub minter: std::sync::Arc<Minter>,
    pub case: CaseId,
    pub expires: u64,
}

impl ConfirmWays for TargetWays {
    fn way(&self, recipient: Option<&str>) -> Option<ConfirmWay> {
        let rid = self
            .minter
            .keys
            .recipient_id(&self.case, recipient.unwrap_or(""));
        Some(self.minter.way(&self.case, &rid, self.expires, 0))
    }
}

/// The ways of one escalation send: whichever address it goes to, the person's.
#[derive(Debug)]
pub struct PersonWays {
    pub minter: std::sync::Arc<Minter>,
    pub case: CaseId,
    pub rid: RecipientId,
    pub expires: u64,
    pub attempt: u32,
}

impl ConfirmWays for PersonWays {
    fn way(&self, _recipient: Option<&str>) -> Option<ConfirmWay> {
        Some(
            self.minter
                .way(&self.case, &self.rid, self.expires, self.attempt),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_way_carries_one_token_and_no_address() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef").expect("long enough");
        let m = std::sync::Arc::new(Minter::new(
            keys.clone(),
            &url::Url::parse("https://notify.example.com/").expect("url"),
        ));
        let case = keys.case_id(&["u", "t"]);
        let ways = TargetWays {
            minter: m,
            case,
            expires: 2_000_000_000,
        };
        let w = ways.way(Some("desk@regulator.example")).expect("a way");
        let token = w
            .link
            .strip_prefix("https://notify.example.com/c/")
            .expect("link");
        let t = keys.verify(token, 0).expect("our token");
        assert_eq!(
            t.recipient,
            keys.recipient_id(&case, "desk@regulator.example")
        );
        assert_eq!(
            w.keypress_url,
            format!("https://notify.example.com/v/{token}/key/0")
        );
        assert!(!w.link.contains("regulator"));
        assert_eq!(w.reply, keys.reply_code(&case, &t.recipient));
    }
}
