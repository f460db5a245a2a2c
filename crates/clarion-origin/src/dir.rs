//! The directory origin: each file written to a temporary name in its own
//! directory, fsynced, then renamed over the old one (and the directory fsynced),
//! so that a web server serving the directory only ever reads a whole file, the
//! old or the new.

use crate::{OriginConfigError, check_path};
use clarion_core::DeliveryError;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub(crate) struct Directory {
    root: PathBuf,
}

impl Directory {
    pub(crate) fn new(root: &Path) -> Result<Directory, OriginConfigError> {
        if root.as_os_str().is_empty() {
            return Err(OriginConfigError::Directory("must not be empty".into()));
        }
        if !root.is_absolute() {
            return Err(OriginConfigError::Directory(format!(
                "`{}` must be an absolute path",
                root.display()
            )));
        }
        Ok(Directory {
            root: root.to_path_buf(),
        })
    }

    pub(crate) async fn put(&self, file: &clarion_statuspage::File) -> Result<(), DeliveryError> {
        check_path(&file.path)?;
        let target = self.root.join(&file.path);
        let body = file.body.clone();
        let shown = file.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&target, &body))
            .await
            .map_err(|e| {
                DeliveryError::retryable(format!("writing `{shown}` did not finish: {e}"), None)
            })?
            .map_err(|e| io_error(&self.root, &file.path, &e))
    }

    /// The directory exists (or can be made) and takes a file.
    pub(crate) async fn check(&self) -> Result<(), DeliveryError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            let probe = root.join(format!(".clarion-check-{}", std::process::id()));
            std::fs::write(&probe, b"ok")?;
            std::fs::remove_file(&probe)
        })
        .await
        .map_err(|e| DeliveryError::retryable(format!("the check did not finish: {e}"), None))?
        .map_err(|e| io_error(&self.root, "", &e))
    }
}

fn io_error(root: &Path, path: &str, e: &std::io::Error) -> DeliveryError {
    // A full disk or a permission fixed by an operator: worth retrying, and the
    // breaker keeps the stream from hammering a directory that stays broken.
    DeliveryError::retryable(
        format!("cannot write `{path}` under {}: {e}", root.display()),
        None,
    )
    .with_code(format!("{:?}", e.kind()))
}

/// Writes `body` to `target` through a temporary file in the same directory.
fn write_atomically(target: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        set_readable(&tmp)?;
        std::fs::rename(&tmp, target)?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// World-readable, as a web server's user needs (a new file would take the
/// daemon's umask, often 0600 under systemd).
#[cfg(unix)]
fn set_readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn set_readable(_: &Path) -> std::io::Result<()> {
    Ok(())
}
