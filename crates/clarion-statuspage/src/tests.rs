//! Whole renderings: what a visitor, a feed reader and an API client get.

use super::*;
use clarion_core::{Impact, Status};

fn config() -> PageConfig {
    PageConfig {
        id: "example".into(),
        name: "Example Status".into(),
        url: "https://status.example.com".into(),
        time_zone: "Etc/UTC".into(),
        audiences: vec!["public".into()],
        components: vec![
            Component {
                id: "mobile-data".into(),
                name: "Mobile data".into(),
                description: Some("4G and 5G data".into()),
                group: Some("Network".into()),
                only_show_if_degraded: false,
            },
            Component {
                id: "voice".into(),
                name: "Voice calls".into(),
                description: None,
                group: Some("Network".into()),
                only_show_if_degraded: false,
            },
            Component {
                id: "billing".into(),
                name: "Billing".into(),
                description: None,
                group: None,
                only_show_if_degraded: false,
            },
        ],
        history: 10,
        feed_entries: 100,
    }
}

fn start() -> Timestamp {
    "2026-11-28T10:00:00Z".parse().expect("ts")
}

/// The first `n` updates of the sample lifecycle, as the page records them, with
/// a regulators' wording that must never show.
fn timeline(id: &str, n: usize) -> Arc<Timeline> {
    let served = vec!["public".to_string()];
    let mut t: Option<Timeline> = None;
    for mut u in clarion_core::samples::lifecycle(
        id,
        "Mobile data <outage>",
        &["public", "regulators"],
        start(),
    )
    .into_iter()
    .take(n)
    {
        u.audience_messages.insert(
            "regulators".into(),
            format!("REGULATOR ONLY {}", u.sequence),
        );
        u.audience_messages.insert(
            "public".into(),
            format!("Public step {} & more", u.sequence),
        );
        let p = PublicUpdate::of(&u, &served).expect("public");
        match &mut t {
            None => t = Some(Timeline::new(id, p)),
            Some(t) => {
                t.merge(p);
            }
        }
    }
    Arc::new(t.expect("n > 0"))
}

fn text(site: &Site, path: &str) -> String {
    String::from_utf8(
        site.get(path)
            .unwrap_or_else(|| panic!("{path} rendered"))
            .body
            .to_vec(),
    )
    .expect("utf-8")
}

#[test]
fn the_index_shows_the_state_latest_first_and_only_public_text() {
    let cfg = config();
    let shown = vec![timeline("INC-1", 2)];
    let now = start() + jiff::SignedDuration::from_mins(27);
    let site = render(&cfg, &shown, now, &Pages::All).expect("renders");
    let index = text(&site, "index.html");
    assert!(index.contains("Partial System Outage"), "{index}");
    assert!(index.contains("Current incidents"));
    // Escaped title, never raw markup from an update.
    assert!(index.contains("Mobile data &lt;outage&gt;"), "{index}");
    assert!(!index.contains("<outage>"));
    let second = index.find("Public step 2").expect("update 2");
    let first = index.find("Public step 1").expect("update 1");
    assert!(second < first, "latest update first");
    assert!(!index.contains("REGULATOR"), "no other audience's text");
    // The sample's second update is 15 minutes in: 12 minutes before `now`.
    assert!(
        index.contains(
            "Last updated <span data-since=\"2026-11-28T10:15:00Z\">12 minutes ago</span>"
        ),
        "{index}"
    );
    assert!(index.contains(r#"<li data-component="mobile-data"><span>Mobile data <span class="muted">4G and 5G data</span></span> <span class="state partial_outage">Partial outage</span></li>"#), "{index}");
    for fetch in [
        "<link rel=\"stylesheet\"",
        "src=",
        "url(",
        "@import",
        "http://",
        "<script src",
    ] {
        assert!(!index.contains(fetch), "the page fetches nothing: {fetch}");
    }
    let page = text(&site, "incidents/INC-1.html");
    assert!(page.contains("Public step 2") && page.contains("Public step 1"));
    assert!(page.contains("href=\"../index.html\""));
    assert!(!page.contains("REGULATOR"));
}

#[test]
fn only_the_changed_incident_page_is_rendered_on_an_update() {
    let cfg = config();
    let shown = vec![timeline("INC-1", 4), timeline("INC-2", 1)];
    let site = render(&cfg, &shown, start(), &Pages::Only(vec!["INC-2".into()])).expect("renders");
    let pages: Vec<&str> = site
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| p.starts_with("incidents/"))
        .collect();
    assert_eq!(pages, ["incidents/INC-2.html"]);
    // The resolved incident is in the history, with its last word.
    let index = text(&site, "index.html");
    let history = index.find("Recent history").expect("history");
    assert!(
        index[history..].contains("Public step 4 &amp; more"),
        "{index}"
    );
    assert!(
        !index[history..].contains("Public step 3"),
        "only the last update in the history"
    );
    assert_eq!(
        site.files.len(),
        1 + 1 + 8 + 1,
        "index, feed, eight API files, one page"
    );
}

#[test]
fn the_feed_has_one_entry_per_update_with_ids_that_do_not_change() {
    let cfg = config();
    let shown = vec![timeline("INC-1", 4), timeline("INC/2", 2)];
    let a = render(&cfg, &shown, start(), &Pages::All).expect("renders");
    let later = start() + jiff::SignedDuration::from_hours(5);
    let b = render(&cfg, &shown, later, &Pages::All).expect("renders");
    let feed = text(&a, "history.atom");
    assert_eq!(
        feed,
        text(&b, "history.atom"),
        "the feed does not depend on the time of rendering"
    );
    assert_eq!(feed.matches("<entry>").count(), 6, "{feed}");
    assert!(
        feed.contains("<id>tag:status.example.com,2026-11-28:INC-1/INC-1-u4</id>"),
        "{feed}"
    );
    assert!(
        feed.contains("<id>tag:status.example.com,2026-11-28:INC%2F2/INC%2F2-u1</id>"),
        "{feed}"
    );
    assert!(!feed.contains("REGULATOR"));
    assert!(
        feed.contains("Mobile data &lt;outage&gt;"),
        "escaped: {feed}"
    );
    let newest = feed.find("INC-1-u4").expect("u4");
    let oldest = feed.find("INC-1-u1").expect("u1");
    assert!(newest < oldest, "newest first");
    // The API does not depend on the time of rendering either; the index does.
    for f in &a.files {
        if f.path.starts_with("api/") {
            assert_eq!(Some(f), b.get(&f.path), "{}", f.path);
        }
    }
    assert_ne!(a.get("index.html"), b.get("index.html"));
}

#[test]
fn the_api_has_the_statuspage_shape() {
    let cfg = config();
    let shown = vec![timeline("INC-1", 2), timeline("INC-0", 4)];
    let site = render(&cfg, &shown, start(), &Pages::All).expect("renders");
    let summary: serde_json::Value =
        serde_json::from_str(&text(&site, "api/v2/summary.json")).expect("json");
    assert_eq!(summary["page"]["id"], "example");
    assert_eq!(summary["page"]["updated_at"], "2026-11-28T10:45:00Z");
    assert_eq!(summary["status"]["indicator"], "major");
    let comps = summary["components"].as_array().expect("components");
    let names: Vec<(&str, &str, bool)> = comps
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["group"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("group-network", "partial_outage", true),
            ("mobile-data", "partial_outage", false),
            ("voice", "partial_outage", false),
            ("billing", "operational", false)
        ]
    );
    assert_eq!(comps[1]["group_id"], "group-network");
    assert_eq!(
        comps[0]["components"],
        serde_json::json!(["mobile-data", "voice"])
    );
    let incidents = summary["incidents"].as_array().expect("incidents");
    assert_eq!(incidents.len(), 1, "only unresolved ones");
    let inc = &incidents[0];
    assert_eq!(inc["id"], "INC-1");
    assert_eq!(inc["status"], "identified");
    assert_eq!(
        inc["shortlink"],
        "https://status.example.com/incidents/INC-1.html"
    );
    assert_eq!(inc["resolved_at"], serde_json::Value::Null);
    let ups = inc["incident_updates"].as_array().expect("updates");
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[0]["body"], "Public step 2 & more", "newest first");
    assert_eq!(
        ups[0]["affected_components"][0]["old_status"],
        "partial_outage"
    );
    assert_eq!(
        ups[1]["affected_components"][0]["old_status"],
        "operational"
    );
    let all: serde_json::Value =
        serde_json::from_str(&text(&site, "api/v2/incidents.json")).expect("json");
    assert_eq!(all["incidents"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["incidents"][0]["status"], "resolved", "newest first");
    assert_eq!(all["incidents"][0]["resolved_at"], "2026-11-28T10:45:00Z");
    let body = text(&site, "api/v2/summary.json");
    assert!(!body.contains("REGULATOR"));
    assert!(!body.contains("north"), "regions are not published");
}

#[test]
fn maintenance_is_listed_apart_from_incidents() {
    let cfg = config();
    let mut t = Timeline::new(
        "MAINT-1",
        PublicUpdate {
            update_id: "m1".into(),
            sequence: 1,
            status: Status::Scheduled,
            impact: Impact::None,
            title: "Billing upgrade".into(),
            body: "Tonight.".into(),
            components: vec!["billing".into()],
            links: Vec::new(),
            occurred_at: start(),
        },
    );
    let site = render(&cfg, &[Arc::new(t.clone())], start(), &Pages::All).expect("renders");
    let upcoming: serde_json::Value =
        serde_json::from_str(&text(&site, "api/v2/scheduled-maintenances/upcoming.json"))
            .expect("json");
    assert_eq!(upcoming["scheduled_maintenances"][0]["id"], "MAINT-1");
    assert_eq!(
        upcoming["scheduled_maintenances"][0]["scheduled_for"],
        "2026-11-28T10:00:00Z"
    );
    let incidents: serde_json::Value =
        serde_json::from_str(&text(&site, "api/v2/incidents.json")).expect("json");
    assert_eq!(incidents["incidents"], serde_json::json!([]));
    t.merge(PublicUpdate {
        update_id: "m2".into(),
        sequence: 2,
        status: Status::InProgress,
        body: "Started.".into(),
        occurred_at: start() + jiff::SignedDuration::from_mins(60),
        ..t.updates[0].clone()
    });
    let site = render(&cfg, &[Arc::new(t)], start(), &Pages::All).expect("renders");
    let active: serde_json::Value =
        serde_json::from_str(&text(&site, "api/v2/scheduled-maintenances/active.json"))
            .expect("json");
    assert_eq!(active["scheduled_maintenances"][0]["status"], "in_progress");
    let index = text(&site, "index.html");
    assert!(index.contains("Service Under Maintenance"), "{index}");
    assert!(
        index.contains("under_maintenance\">Under maintenance"),
        "{index}"
    );
}

#[test]
fn an_empty_page_says_nothing_was_reported() {
    let site = render(&config(), &[], start(), &Pages::All).expect("renders");
    let index = text(&site, "index.html");
    assert!(index.contains("All Systems Operational"));
    assert!(index.contains("No incident has been reported."));
    assert!(index.contains("No recent incidents."));
    let feed = text(&site, "history.atom");
    assert_eq!(feed.matches("<entry>").count(), 0);
}
