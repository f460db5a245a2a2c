//! What a million-person directory costs, measured as the daemon would hold it:
//! `cargo test --release -p clarion directory::measure -- --ignored --nocapture`.
//!
//! Each phase runs in a fresh process (this test runs itself again), because a
//! process's peak RSS only ever grows and mimalloc keeps what was freed.

use super::*;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;

// The daemon's allocator (main.rs), so that the numbers are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PEOPLE: usize = 1_000_000;
const PHASE: &str = "CLARION_MEASURE_PHASE";
const FILE: &str = "CLARION_MEASURE_FILE";

/// VmHWM and VmRSS, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn report(label: &str, base: (u64, u64)) {
    let (hwm, rss) = memory();
    println!(
        "{label:<28} VmHWM {:>6.1} MiB  VmRSS {:>6.1} MiB  (+{:.1} MiB, {} B/person over the start)",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        (rss - base.1) as f64 / 1024.0,
        (rss - base.1) * 1024 / PEOPLE as u64,
    );
}

fn row(i: usize) -> String {
    format!("p{i:08},customers,person{i}@example.com")
}

#[test]
#[ignore = "a measurement, not a check: builds a million people"]
fn directory_memory() {
    let audiences: BTreeSet<String> = ["customers".to_string()].into();
    match std::env::var(PHASE).as_deref() {
        // The heap a directory holds once built, with no file in the way:
        // people arrive one by one, as from the topic.
        Ok("steady") => {
            let base = memory();
            report("start", base);
            let dir = Directory::new();
            for i in 0..PEOPLE {
                let line = row(i);
                let cells: Vec<&str> = line.split(',').collect();
                dir.upsert(Person {
                    id: cells[0].into(),
                    audiences: [audience_name(cells[1])].into(),
                    push: Box::default(),
                    sms: None,
                    email: Some(cells[2].into()),
                });
            }
            report("steady: upserted", base);
            assert_eq!(dir.len(), PEOPLE);
        }
        Ok("load") => {
            let path = std::env::var(FILE).expect("the parent names the file");
            let base = memory();
            report("start", base);
            let dir = load_file(Path::new(&path), &audiences).expect("valid");
            report("load: load_file", base);
            assert_eq!(dir.len(), PEOPLE);
        }
        _ => {
            let path =
                std::env::temp_dir().join(format!("clarion-measure-{}.csv", std::process::id()));
            let mut file =
                std::io::BufWriter::new(std::fs::File::create(&path).expect("create the file"));
            writeln!(file, "id,audiences,email").expect("write");
            for i in 0..PEOPLE {
                writeln!(file, "{}", row(i)).expect("write");
            }
            file.flush().expect("write");
            drop(file);
            for phase in ["steady", "load"] {
                let started = std::time::Instant::now();
                let out =
                    std::process::Command::new(std::env::current_exe().expect("the test binary"))
                        .args([
                            "directory::measure::directory_memory",
                            "--exact",
                            "--ignored",
                            "--nocapture",
                        ])
                        .env(PHASE, phase)
                        .env(FILE, &path)
                        .output()
                        .expect("run the phase");
                let stdout = String::from_utf8_lossy(&out.stdout);
                for line in stdout.lines().filter(|l| l.contains("VmHWM")) {
                    println!("{line}");
                }
                println!("{phase}: {:.2?}", started.elapsed());
                assert!(
                    out.status.success(),
                    "{stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}
