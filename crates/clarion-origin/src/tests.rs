//! The origin with a page state of its own (a mock of the daemon's, which the
//! integration tests run for real): what it writes, and when it writes it all.

use super::*;
use clarion_core::IncidentUpdate;
use clarion_statuspage::{File, Rendered};
use std::sync::Mutex;

/// Renders a fixed site; each call can be given a new one.
#[derive(Debug, Default)]
struct Fixed {
    site: Mutex<Site>,
    asked: Mutex<Vec<Pages>>,
}

impl Fixed {
    fn set(&self, files: &[(&str, &str)]) {
        let files = files
            .iter()
            .map(|(p, b)| File {
                path: p.to_string(),
                body: b.as_bytes().into(),
                content_type: clarion_statuspage::content_type(p),
            })
            .collect();
        *self.site.lock().expect("lock") = Site { files };
    }
}

#[async_trait::async_trait]
impl Source for Fixed {
    async fn render(&self, _: &IncidentUpdate, pages: &Pages) -> Result<Rendered, DeliveryError> {
        self.asked.lock().expect("lock").push(pages.clone());
        Ok(Rendered {
            version: 1,
            site: self.site.lock().expect("lock").clone(),
        })
    }
    async fn moved_since(&self, _: u64) -> Result<bool, DeliveryError> {
        Ok(false)
    }
}

/// Resolves inline values only.
struct Plain;

impl SecretResolver for Plain {
    fn resolve(&self, r: &clarion_core::SecretRef) -> Result<clarion_core::Secret, String> {
        match r {
            clarion_core::SecretRef::Value(s) => Ok(s.clone()),
            other => Err(format!("{other} is not set")),
        }
    }
}

fn delivery() -> Delivery {
    let u =
        clarion_core::samples::lifecycle("INC-1", "t", &["public"], jiff::Timestamp::UNIX_EPOCH)
            .remove(0);
    Delivery::new(
        Arc::new(u),
        "site".into(),
        vec!["public".to_string()].into(),
    )
}

fn written(o: &Outcome) -> String {
    match &o.results[0].result {
        Ok(r) => r.provider_id.clone().unwrap_or_default(),
        Err(e) => panic!("publication failed: {e}"),
    }
}

#[tokio::test]
async fn a_directory_gets_whole_files_and_only_what_changed() {
    let root = std::env::temp_dir().join(format!(
        "clarion-origin-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let config: OriginConfig =
        serde_json::from_value(serde_json::json!({"directory": root})).expect("config");
    let source = Arc::new(Fixed::default());
    config.source.attach(source.clone());
    let channel = build("site", &config, &Plain).expect("builds");
    source.set(&[
        ("index.html", "one"),
        ("incidents/INC-1.html", "page"),
        ("api/v2/status.json", "{}"),
    ]);
    assert_eq!(
        written(&channel.send(&delivery()).await),
        "3 file(s) written"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("incidents/INC-1.html"))
            .ok()
            .as_deref(),
        Some("page")
    );
    source.set(&[
        ("index.html", "two"),
        ("incidents/INC-1.html", "page"),
        ("api/v2/status.json", "{}"),
    ]);
    assert_eq!(
        written(&channel.send(&delivery()).await),
        "1 file(s) written"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("index.html"))
            .ok()
            .as_deref(),
        Some("two")
    );
    let asked = source.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        [Pages::All, Pages::Only(vec!["INC-1".into()])],
        "everything first, then the changed page"
    );
    // No temporary file left behind, and the files are readable by a web server.
    let names: Vec<String> = std::fs::read_dir(&root)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(root.join("index.html"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    // A failure forgets what the origin holds: the next success writes it all.
    std::fs::remove_dir_all(&root).expect("cleanup");
    std::fs::write(&root, b"not a directory").expect("block the path");
    source.set(&[
        ("index.html", "three"),
        ("incidents/INC-1.html", "page"),
        ("api/v2/status.json", "{}"),
    ]);
    let failed = channel.send(&delivery()).await;
    assert!(
        failed.results[0]
            .result
            .as_ref()
            .is_err_and(|e| e.is_retryable()),
        "{failed:?}"
    );
    std::fs::remove_file(&root).expect("unblock");
    assert_eq!(
        written(&channel.send(&delivery()).await),
        "3 file(s) written"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn without_a_page_state_nothing_is_published() {
    let config: OriginConfig =
        serde_json::from_value(serde_json::json!({"directory": "/nonexistent/clarion"}))
            .expect("config");
    let channel = build("site", &config, &Plain).expect("builds");
    let o = channel.send(&delivery()).await;
    assert_eq!(
        o.results[0]
            .result
            .as_ref()
            .err()
            .and_then(|e| e.code.as_deref()),
        Some("no_source")
    );
}

#[test]
fn configs_are_checked() {
    let err = |v: serde_json::Value| {
        let c: OriginConfig = serde_json::from_value(v).expect("parses");
        build("x", &c, &Plain).err().map(|e| e.to_string())
    };
    assert_eq!(
        err(serde_json::json!({})).as_deref(),
        Some("a status page target needs exactly one of `directory` and `[s3]`")
    );
    assert_eq!(
        err(serde_json::json!({"directory": "rel/path"})).as_deref(),
        Some("directory: `rel/path` must be an absolute path")
    );
    let s3 = serde_json::json!({"s3": {"bucket": "b", "endpoint": "ftp://x", "access_key_id": {"value": "k"}, "secret_access_key": {"value": "s"}}});
    assert_eq!(
        err(s3).as_deref(),
        Some("s3.endpoint: `ftp://x` is not an http(s) URL")
    );
    for bad in ["../x", "/abs", "a/../b", ".hidden", "a//b"] {
        assert!(check_path(bad).is_err(), "{bad}");
    }
    assert!(check_path("api/v2/summary.json").is_ok());
}
