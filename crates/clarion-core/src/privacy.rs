//! How a recipient's address is shown wherever a person may read it (logs, the
//! ledger, reports): enough to tell recipients apart and match a dead letter, which
//! carries the full address, never the address itself.
//!
//! One home for it, below every crate that shows a recipient, so that the same
//! number is masked the same way everywhere.

/// A recipient as logs show it: enough to tell recipients apart and match a dead
/// letter (which carries the full address), not a list of customers' phone numbers
/// and addresses in the log store.
pub fn mask(recipient: Option<&str>) -> String {
    let Some(r) = recipient else {
        return "-".to_string();
    };
    let chars: Vec<char> = r.chars().collect();
    if chars.len() <= 6 {
        return "***".to_string();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn recipients_are_masked_in_logs() {
        assert_eq!(mask(Some("+447700900123")), "+4***0123");
        assert_eq!(mask(Some("ann@example.com")), "an***.com");
        assert_eq!(mask(Some("abc")), "***");
        assert_eq!(mask(None), "-");
    }
}
