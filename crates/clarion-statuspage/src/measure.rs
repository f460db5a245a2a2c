//! What regenerating the page costs with 10 open incidents and 10,000 in history,
//! as the daemon holds them (a `Book` fed every timeline, as at start):
//! `cargo test --release -p clarion-statuspage measure -- --ignored --nocapture`
//! (and with `CLARION_MEASURE_HISTORY=100`, to compare).

use super::*;
use clarion_core::{Impact, Status};
use std::time::Instant;

// The daemon's allocator (crates/clarion/src/main.rs), so that the numbers are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// An incident of four updates with a paragraph each, open or resolved.
fn incident(i: usize, open: bool) -> Timeline {
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
    let at = start + jiff::SignedDuration::from_mins(i as i64 * 30);
    let steps: &[Status] = if open {
        &[
            Status::Investigating,
            Status::Identified,
            Status::Monitoring,
        ]
    } else {
        &[
            Status::Investigating,
            Status::Identified,
            Status::Monitoring,
            Status::Resolved,
        ]
    };
    let mut t: Option<Timeline> = None;
    for (n, status) in steps.iter().enumerate() {
        let u = PublicUpdate {
            update_id: format!("INC-{i}-u{n}"),
            sequence: n as u64 + 1,
            status: *status,
            impact: Impact::Major,
            title: format!("Mobile data degraded in region {}", i % 17),
            body: "We are investigating reports of failed calls and slow mobile data in the affected regions. Our engineers are working on it and we will update this page within 30 minutes.".into(),
            components: vec!["mobile-data".into(), "voice".into()],
            links: Vec::new(),
            occurred_at: at + jiff::SignedDuration::from_mins(n as i64 * 5),
        };
        match &mut t {
            None => t = Some(Timeline::new(&format!("INC-{i}"), u)),
            Some(t) => {
                t.merge(u);
            }
        }
    }
    t.expect("steps")
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture, in release"]
fn measure() {
    // Flat: run once with CLARION_MEASURE_HISTORY=100 and once with the default
    // 10,000 (a process's peak RSS only grows: one size per process).
    let history = std::env::var("CLARION_MEASURE_HISTORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    measure_with(history);
}

fn measure_with(in_history: usize) {
    let config = PageConfig {
        id: "example".into(),
        name: "Example Status".into(),
        url: "https://status.example.com".into(),
        time_zone: "Etc/UTC".into(),
        audiences: vec!["public".into()],
        components: (0..20)
            .map(|i| Component {
                id: if i == 0 {
                    "mobile-data".into()
                } else if i == 1 {
                    "voice".into()
                } else {
                    format!("c{i}")
                },
                name: format!("Component {i}"),
                description: None,
                group: Some(format!("Group {}", i / 5)),
                only_show_if_degraded: false,
            })
            .collect(),
        history: 25,
        feed_entries: 100,
    };
    let base = memory();
    let mut book = Book::new(config.history);
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..in_history {
        let t = incident(i, false);
        bytes += t.to_bytes().len();
        book.apply(
            t,
            Some(Location {
                partition: 0,
                offset: i as i64,
            }),
        );
    }
    for i in in_history..in_history + 10 {
        book.apply(incident(i, true), None);
    }
    let loaded = started.elapsed();
    let after = memory();
    let shown = book.shown();
    println!(
        "{in_history} in history + 10 open: book: {} incidents known, {} shown; {:.1} MiB of records read in {:.0} ms; RSS +{:.1} MiB (VmHWM {:.1} MiB)",
        book.known(),
        shown.len(),
        bytes as f64 / 1048576.0,
        loaded.as_secs_f64() * 1000.0,
        (after.1.saturating_sub(base.1)) as f64 / 1024.0,
        after.0 as f64 / 1024.0
    );
    let now: Timestamp = "2026-12-01T00:00:00Z".parse().expect("ts");
    for (label, pages) in [
        (
            "one update (index, feed, API, its page)",
            Pages::Only(vec![format!("INC-{}", in_history + 5)]),
        ),
        ("whole page (after a start or a failure)", Pages::All),
    ] {
        let runs = 200;
        let started = Instant::now();
        let mut site = Site::default();
        for _ in 0..runs {
            site = render(&config, &shown, now, &pages).expect("renders");
        }
        let each = started.elapsed() / runs;
        let size: usize = site.files.iter().map(|f| f.body.len()).sum();
        println!(
            "render {label}: {:.2} ms each, {} files, {:.0} KiB",
            each.as_secs_f64() * 1000.0,
            site.files.len(),
            size as f64 / 1024.0
        );
    }
    let end = memory();
    println!("VmHWM {:.1} MiB at the end", end.0 as f64 / 1024.0);
    assert_eq!(
        shown.len(),
        10 + 25,
        "the open incidents and the history, no more"
    );
}
