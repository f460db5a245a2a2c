//! Confirmation tokens: one per (notice, recipient), signed with the deployment's
//! secret (HMAC-SHA256), expiring, and opaque. A token carries a case id and a
//! recipient id, both keyed hashes: neither the address nor the notice can be read
//! from it, and without the secret none can be made or altered.
//!
//! Layout, base64url without padding (60 characters):
//! `version (1) | case (16) | recipient (8) | expires, Unix seconds (4, big-endian) | MAC (16)`,
//! the MAC being HMAC-SHA256 over the first 29 bytes, cut to 128 bits (RFC 2104
//! allows cutting to half the hash).
//!
//! [`Keys::verify`] refuses a tampered, malformed or expired token with the same
//! [`Refused`], after the same work (the whole MAC is computed and compared in
//! constant time before the expiry is looked at), so that an answer never tells a
//! stranger whether a notice exists.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The layout's version byte.
const VERSION: u8 = 1;
const BODY: usize = 1 + 16 + 8 + 4;
const MAC: usize = 16;
/// Bytes of a token, and characters of its text.
pub const TOKEN_BYTES: usize = BODY + MAC;
pub const TOKEN_CHARS: usize = 60;
/// The shortest secret accepted, in bytes: the MAC's own strength.
pub const MIN_SECRET_BYTES: usize = 32;

/// One notice that must be confirmed (an update to a target), as a keyed hash of
/// what identifies it: the same update and target always give the same case, so a
/// redelivery asks again with the same tokens.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(pub [u8; 16]);

/// One recipient of a case: a keyed hash of the case and the recipient's address
/// (or a person's id), so the same recipient of two notices has unrelated ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientId(pub [u8; 8]);

impl CaseId {
    pub fn to_hex(self) -> String {
        hex(&self.0)
    }
    /// Parses 32 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<CaseId> {
        let mut out = [0u8; 16];
        unhex(s, &mut out).then_some(CaseId(out))
    }
}

impl RecipientId {
    pub fn to_hex(self) -> String {
        hex(&self.0)
    }
    /// Parses 16 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<RecipientId> {
        let mut out = [0u8; 8];
        unhex(s, &mut out).then_some(RecipientId(out))
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str, out: &mut [u8]) -> bool {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return false;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        match (digit(b[2 * i]), digit(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

impl fmt::Debug for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaseId({})", self.to_hex())
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecipientId({})", self.to_hex())
    }
}

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub case: CaseId,
    pub recipient: RecipientId,
    /// Unix seconds after which the token is refused.
    pub expires: u64,
}

/// A token that is not one of ours, was altered, or has expired: one answer for
/// all, so that none tells a stranger anything. `why` is for the daemon's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the confirmation token is not valid ({why})")]
pub struct Refused {
    pub why: &'static str,
}

/// The keys derived from the deployment's confirmation secret: one for the
/// tokens' MACs, one for case and recipient ids, one for reply codes, so that no
/// value of one kind helps guess another.
#[derive(Clone)]
pub struct Keys {
    mac: [u8; 32],
    ids: [u8; 32],
    codes: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(***)")
    }
}

/// The secret is shorter than [`MIN_SECRET_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the confirmation secret must be at least {MIN_SECRET_BYTES} bytes, it is {0}")]
pub struct ShortSecret(pub usize);

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl Keys {
    pub fn new(secret: &[u8]) -> Result<Keys, ShortSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ShortSecret(secret.len()));
        }
        Ok(Keys {
            mac: hmac(secret, &[b"clarion confirm: token mac"]),
            ids: hmac(secret, &[b"clarion confirm: ids"]),
            codes: hmac(secret, &[b"clarion confirm: reply codes"]),
        })
    }

    /// The case of a notice, from what identifies it (e.g. update id and target).
    pub fn case_id(&self, parts: &[&str]) -> CaseId {
        let mut all: Vec<&[u8]> = vec![b"case"];
        all.extend(parts.iter().map(|p| p.as_bytes()));
        let h = hmac(&self.ids, &all);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h[..16]);
        CaseId(out)
    }

    /// A recipient of `case`: an address as the channel addresses it, or a
    /// person's id.
    pub fn recipient_id(&self, case: &CaseId, who: &str) -> RecipientId {
        let h = hmac(&self.ids, &[b"recipient", &case.0, who.as_bytes()]);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        RecipientId(out)
    }

    /// What the recipient replies by SMS: six digits, a keyed hash of the case and
    /// the recipient. Never a carrier keyword (digits only), and useless to anyone
    /// else: a reply counts only from the number it was sent to.
    pub fn reply_code(&self, case: &CaseId, recipient: &RecipientId) -> String {
        let h = hmac(&self.codes, &[&case.0, &recipient.0]);
        let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 1_000_000;
        format!("{n:06}")
    }

    /// A token for `recipient` of `case`, valid until `expires` (Unix seconds,
    /// kept to 2106 at most).
    pub fn mint(&self, case: &CaseId, recipient: &RecipientId, expires: u64) -> String {
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[0] = VERSION;
        bytes[1..17].copy_from_slice(&case.0);
        bytes[17..25].copy_from_slice(&recipient.0);
        let exp = u32::try_from(expires).unwrap_or(u32::MAX);
        bytes[25..29].copy_from_slice(&exp.to_be_bytes());
        let mac = self.mac_of(&bytes[..BODY]);
        bytes[BODY..].copy_from_slice(&mac[..MAC]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn mac_of(&self, body: &[u8]) -> [u8; 32] {
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.mac).unwrap_or_else(|_| unreachable!());
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// Reads a token: `Refused` unless it is one of ours, unaltered, and not past
    /// `now` (Unix seconds).
    pub fn verify(&self, text: &str, now: u64) -> Result<Token, Refused> {
        // Decoded into a fixed buffer whatever the input, so a wrong length costs
        // what a right one does.
        let mut bytes = [0u8; TOKEN_BYTES];
        let shape_ok = text.len() == TOKEN_CHARS
            && base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode_slice(text.as_bytes(), &mut bytes)
                .is_ok_and(|n| n == TOKEN_BYTES);
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.mac).unwrap_or_else(|_| unreachable!());
        m.update(&bytes[..BODY]);
        // Constant time.
        let mac_ok = m.verify_truncated_left(&bytes[BODY..]).is_ok();
        let exp = u64::from(u32::from_be_bytes([
            bytes[25], bytes[26], bytes[27], bytes[28],
        ]));
        let version_ok = bytes[0] == VERSION;
        match (shape_ok, mac_ok && version_ok, now <= exp) {
            (false, _, _) => Err(Refused { why: "malformed" }),
            (true, false, _) => Err(Refused {
                why: "bad signature",
            }),
            (true, true, false) => Err(Refused { why: "expired" }),
            (true, true, true) => {
                let mut case = [0u8; 16];
                case.copy_from_slice(&bytes[1..17]);
                let mut recipient = [0u8; 8];
                recipient.copy_from_slice(&bytes[17..25]);
                Ok(Token {
                    case: CaseId(case),
                    recipient: RecipientId(recipient),
                    expires: exp,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(b"0123456789abcdef0123456789abcdef").expect("long enough")
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let k = keys();
        let case = k.case_id(&["upd-1", "regulator-mail"]);
        let r = k.recipient_id(&case, "desk@regulator.example");
        let t = k.mint(&case, &r, 1_000);
        assert_eq!(t.len(), TOKEN_CHARS);
        assert_eq!(
            k.verify(&t, 999),
            Ok(Token {
                case,
                recipient: r,
                expires: 1_000
            })
        );
        assert_eq!(k.verify(&t, 1_000).map(|t| t.case), Ok(case));
        assert_eq!(k.verify(&t, 1_001), Err(Refused { why: "expired" }));
    }

    #[test]
    fn any_altered_character_is_refused() {
        let k = keys();
        let case = k.case_id(&["u", "t"]);
        let t = k.mint(&case, &k.recipient_id(&case, "a"), u64::from(u32::MAX));
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).expect("ascii");
            assert!(k.verify(&altered, 0).is_err(), "position {i} accepted");
        }
        assert!(k.verify("", 0).is_err());
        assert!(k.verify(&t[..59], 0).is_err());
        assert!(k.verify(&format!("{t}A"), 0).is_err());
        assert!(k.verify(&"é".repeat(30), 0).is_err());
    }

    #[test]
    fn another_secret_makes_other_tokens_and_ids() {
        let a = keys();
        let b = Keys::new(b"another secret of thirty-two byt").expect("long enough");
        let case = a.case_id(&["u", "t"]);
        assert_ne!(case, b.case_id(&["u", "t"]));
        let t = a.mint(&case, &a.recipient_id(&case, "x"), 10);
        assert_eq!(
            b.verify(&t, 0),
            Err(Refused {
                why: "bad signature"
            })
        );
        assert_eq!(Keys::new(b"short").err(), Some(ShortSecret(5)));
    }

    #[test]
    fn ids_are_length_prefixed_and_reply_codes_six_digits() {
        let k = keys();
        assert_ne!(k.case_id(&["ab", "c"]), k.case_id(&["a", "bc"]));
        let case = k.case_id(&["u", "t"]);
        let code = k.reply_code(&case, &k.recipient_id(&case, "+447700900123"));
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(CaseId::from_hex(&case.to_hex()), Some(case));
        assert_eq!(CaseId::from_hex("zz"), None);
    }

    #[test]
    fn debug_hides_the_keys() {
        assert_eq!(format!("{:?}", keys()), "Keys(***)");
    }
}
