//! Standard Webhooks v1 signatures: HMAC-SHA256 over `id.timestamp.body`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

const PREFIX: &str = "whsec_";

/// A decoded signing secret.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("must start with `whsec_`")]
    Prefix,
    #[error("is not valid base64 after `whsec_`")]
    Base64,
    #[error("decodes to {0} bytes; Standard Webhooks secrets are 24 to 64 random bytes")]
    Length(usize),
}

impl SigningKey {
    /// Parses a `whsec_<base64>` secret.
    pub fn from_whsec(secret: &str) -> Result<Self, SigningError> {
        let encoded = secret
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SigningError::Prefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| SigningError::Base64)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(SigningError::Length(bytes.len()));
        }
        Ok(SigningKey(bytes))
    }

    /// The `v1,<base64>` signature entry for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // new_from_slice only fails for algorithms with fixed key sizes; HMAC takes any.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference library.
    #[test]
    fn reference_vector() {
        let key = SigningKey::from_whsec("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("valid");
        let sig = key.sign(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn rejects_bad_secrets() {
        assert!(matches!(
            SigningKey::from_whsec("C2FV"),
            Err(SigningError::Prefix)
        ));
        assert!(matches!(
            SigningKey::from_whsec("whsec_!!!"),
            Err(SigningError::Base64)
        ));
        assert!(matches!(
            SigningKey::from_whsec("whsec_YWJj"),
            Err(SigningError::Length(3))
        ));
    }
}
