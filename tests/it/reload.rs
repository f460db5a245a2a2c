//! SIGHUP reloads the config: targets that did not change keep running undisturbed,
//! an added target starts delivering, and an invalid config is refused while
//! delivery goes on.

use clarion_core::samples;
use clarion_tests::daemon::{Process, Wiring};
use clarion_tests::receiver::{Behaviour, Receiver};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn target(name: &str, url: &str) -> String {
    format!("[targets.{name}]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"{url}\"\n")
}

async fn wait_log(daemon: &Process, needle: &str, count: usize) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if daemon.log_text().matches(needle).count() >= count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_target_without_disturbing_the_others_and_refuses_a_bad_config() {
    let Some(brokers) = clarion_tests::kafka("sighup_adds_a_target") else {
        return;
    };
    let w = Wiring::new(&brokers, "reload", 2).await;
    let a = Receiver::start(Behaviour::Always(200)).await;
    let b = Receiver::start(Behaviour::Always(200)).await;
    let mut daemon = Process::start(&w.config(&target("a", &a.url)), "reload");
    let updates = samples::lifecycle("RL", "rl", &["customers"], jiff::Timestamp::now());
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[..2]).await;
    assert!(
        a.wait_until(WAIT, |r| r.len() >= 2).await,
        "a gets the first two"
    );

    // Add target b.
    let both = w.config(&(target("a", &a.url) + &target("b", &b.url)));
    std::fs::write(daemon.config_path(), &both).expect("write config");
    daemon.signal("HUP");
    assert!(
        wait_log(&daemon, "config reloaded", 1).await,
        "reload not applied; log:\n{}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_default()
        .to_string();
    let group_a = format!("{}.a", w.group);
    let group_b = format!("{}.b", w.group);
    assert!(line.contains(&group_b), "b started: {line}");
    let unchanged = line.split("unchanged=").nth(1).unwrap_or_default();
    assert!(unchanged.contains(&group_a), "a kept running: {line}");
    let after_reload = log.split("config reloaded").nth(1).unwrap_or_default();
    assert!(
        !after_reload
            .lines()
            .any(|l| l.contains("stream=a")
                && (l.contains("revoked") || l.contains("shutting down"))),
        "a's stream was not touched by the reload:\n{after_reload}"
    );
    // b is a target added later: it starts at the end, so it gets only what comes next.
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[2..3]).await;
    assert!(
        a.wait_until(WAIT, |r| r.len() >= 3).await,
        "a gets the third"
    );
    assert!(
        b.wait_until(WAIT, |r| !r.is_empty()).await,
        "b delivers after the reload; log:\n{}",
        daemon.log_text()
    );

    // An invalid config is refused, and delivery goes on with the running one.
    std::fs::write(daemon.config_path(), "[kafka]\nbrokerz = 1\n").expect("write config");
    daemon.signal("HUP");
    assert!(
        wait_log(&daemon, "config reload refused", 1).await,
        "bad config not refused; log:\n{}",
        daemon.log_text()
    );
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[3..4]).await;
    assert!(
        a.wait_until(WAIT, |r| r.len() >= 4).await,
        "a still delivers"
    );
    assert!(
        b.wait_until(WAIT, |r| r.len() >= 2).await,
        "b still delivers"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(WAIT).await, Some(0));

    let ids = |rx: &Receiver| -> Vec<String> {
        rx.received()
            .iter()
            .map(|r| r.update_id().to_string())
            .collect()
    };
    assert_eq!(
        ids(&a),
        updates
            .iter()
            .map(|u| u.update_id.clone())
            .collect::<Vec<_>>(),
        "a got each update once, in order"
    );
    assert_eq!(
        ids(&b),
        vec![updates[2].update_id.clone(), updates[3].update_id.clone()],
        "b started at the end of the topic"
    );
}
