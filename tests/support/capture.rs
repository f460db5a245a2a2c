//! What the integration suite shows the world, kept for one check at the end: every
//! log line of every daemon the tests run, and every secret their configs hold.
//!
//! `scripts/test` sets `CLARION_TEST_CAPTURE` to an empty directory; the daemon
//! helpers (`daemon::InProcess`, `daemon::Process`) then append their logs under
//! `logs/` and the secrets of each config they start under `secrets/`. After the
//! suite, `it::leaks` (ignored in the ordinary run, run last by `scripts/test`) reads
//! both, and every dead-letter topic on the broker, and fails if any secret shows.
//! Without the variable nothing is captured and the check skips loudly.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The capture directory named by `scripts/test`.
pub const CAPTURE_ENV: &str = "CLARION_TEST_CAPTURE";

/// The capture directory, when capturing.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os(CAPTURE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where a daemon's log should go: under the capture directory when capturing.
pub fn log_path(name: &str) -> Option<PathBuf> {
    let dir = dir()?.join("logs");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join(format!("{}.log", crate::unique_topic(name))))
}

/// Keys whose values are credentials, wherever they appear in a config.
const SECRET_KEYS: &[&str] = &[
    "secret",
    "secrets",
    "password",
    "auth_token",
    "api_secret",
    "api_key",
    "signing_key",
    "service_account",
    "private_key",
    "secret_properties",
    "bearer",
    "access_key_id",
    "secret_access_key",
];

/// Records the secrets of a config the tests are about to run.
pub fn record_config(toml_text: &str) {
    let Some(dir) = dir() else { return };
    let Ok(value) = toml_text.parse::<toml::Table>() else {
        return;
    };
    let mut found = Vec::new();
    walk_table(&value, &mut found);
    found.retain(|s| s.len() >= 6);
    if found.is_empty() {
        return;
    }
    let dir = dir.join("secrets");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    if let Ok(mut f) = std::fs::File::create(dir.join(crate::unique_topic("config"))) {
        for s in found {
            let _ = writeln!(f, "{s}");
        }
    }
}

fn walk_table(t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        if SECRET_KEYS.contains(&k.as_str()) {
            secret_values(v, out);
        } else if k == "url" {
            if let Some(s) = v.as_str() {
                url_secrets(s, out);
            }
        } else {
            walk(v, out);
        }
    }
}

fn walk(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => walk_table(t, out),
        toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
        _ => {}
    }
}

/// The secret material of a value: a literal, `{ value }`, `{ env }` (as set now) or
/// `{ file }` (a key file's body lines, a service account's private key).
fn secret_values(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(a) => a.iter().for_each(|v| secret_values(v, out)),
        toml::Value::Table(t) => {
            if let Some(s) = t.get("value").and_then(toml::Value::as_str) {
                out.push(s.to_string());
            }
            if let Some(var) = t.get("env").and_then(toml::Value::as_str)
                && let Ok(s) = std::env::var(var)
            {
                out.push(s);
            }
            if let Some(path) = t.get("file").and_then(toml::Value::as_str) {
                file_secrets(Path::new(path), out);
            }
            for (k, v) in t {
                if !matches!(k.as_str(), "value" | "env" | "file") {
                    secret_values(v, out);
                }
            }
        }
        _ => {}
    }
}

fn file_secrets(path: &Path, out: &mut Vec<String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let pem = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => json["private_key"].as_str().unwrap_or_default().to_string(),
        Err(_) => text,
    };
    // The body lines of a PEM key; a whole-line match is what a leak would show.
    out.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 20)
            .map(str::to_string),
    );
    if !pem.contains("-----") && pem.trim().len() >= 6 {
        out.push(pem.trim().to_string());
    }
}

/// A URL's credentials: its user info, its query values, and the path segments of
/// incoming-webhook style URLs (Slack, Teams), whose path is the credential. Tests
/// mark such a segment by putting `s3cr3t` in it.
fn url_secrets(s: &str, out: &mut Vec<String>) {
    let Ok(u) = url::Url::parse(s) else { return };
    if let Some(p) = u.password() {
        out.push(p.to_string());
    }
    out.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
    out.extend(
        u.path_segments()
            .into_iter()
            .flatten()
            .filter(|seg| seg.contains("s3cr3t"))
            .map(str::to_string),
    );
}

/// Everything captured so far: (secrets, (log file, text) pairs).
pub fn read(dir: &Path) -> (Vec<String>, Vec<(PathBuf, String)>) {
    let read_dir = |d: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let mut secrets: Vec<String> = read_dir(dir.join("secrets"))
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|s| s.len() >= 6)
        .collect();
    secrets.sort();
    secrets.dedup();
    let logs = read_dir(dir.join("logs"))
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect();
    (secrets, logs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_found_wherever_a_config_keeps_them() {
        let toml = r#"
[kafka]
brokers = "x"
secret_properties = { "sasl.password" = { value = "kafka-pass-123" } }
[targets.a]
type = "webhook"
url = "https://hooks.example/services/T0/s3cr3tPATH?token=tok-value-9"
secrets = [{ value = "whsec_abcdef" }]
[targets.b]
type = "sms"
provider = "twilio"
auth_token = "twilio-tok-1"
recipients = { customers = ["+15550001111"] }
"#;
        let mut out = Vec::new();
        super::walk_table(&toml.parse().expect("toml"), &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                "kafka-pass-123",
                "s3cr3tPATH",
                "tok-value-9",
                "twilio-tok-1",
                "whsec_abcdef"
            ]
        );
    }
}
