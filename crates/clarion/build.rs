//! Build script: the git revision for `clarion_build_info`, or "unknown" when the
//! source is not a git checkout (a tarball, a container build without `.git`).

fn main() {
    // An explicit revision wins (a build from a source tarball can pass it).
    let explicit = std::env::var("CLARION_GIT_REVISION")
        .ok()
        .filter(|s| !s.is_empty());
    let revision = explicit
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CLARION_GIT_REVISION={revision}");
    // A new commit changes HEAD's target; these make cargo run this again.
    for path in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-env-changed=CLARION_GIT_REVISION");
}
