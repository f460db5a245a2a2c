//! A wrapper that keeps credentials out of logs, error messages and `Debug` dumps.

use std::fmt;

/// A credential (webhook signing secret, SMTP password, API token). Its `Debug` and
/// `Display` print `***`, so a secret can sit in a config struct that gets logged
/// without leaking; read it only where it is used, with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value. Call it at the point of use and never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "*** *** Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}

/// Where a secret comes from, as written in config. The daemon resolves it (reading
/// the environment or a file is I/O, which this crate does not do) through a
/// [`SecretResolver`].
///
/// In TOML: `{ env = "STATUSPAGE_SECRET" }`, `{ file = "/run/secrets/smtp" }` (trailing
/// newline trimmed), or `{ value = "..." }` (for tests and demos only: a secret written
/// into a config file ends up in backups and version control).
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    Env(String),
    File(String),
    Value(Secret),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "env:{v}"),
            SecretRef::File(p) => write!(f, "file:{p}"),
            SecretRef::Value(_) => f.write_str("value:***"),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Turns a [`SecretRef`] into the secret. Channel constructors take one, so that they
/// can be built from config in the daemon and from plain values in tests.
pub trait SecretResolver: Send + Sync {
    /// Errors say which reference failed and why, never the secret itself.
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String>;
}
