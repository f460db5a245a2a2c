//! Dispatch against in-process channels: retries, order, failover, timeouts.

use super::retry::{backoff_ceilings, full_jitter};
use super::*;
use crate::config::{ChannelConfig, ChannelKind, TargetConfig};
use clarion_core::{Receipt, RecipientResult, samples};

/// One scripted answer: per recipient, success or an error class.
type Step = Vec<(Option<&'static str>, Result<(), ErrorClassKind>)>;
/// What the channel was asked: update id, attempt, recipients restriction.
type Call = (String, u32, Option<Vec<String>>);

/// A channel that answers from a script and records what it was asked.
#[derive(Debug, Default)]
struct Scripted {
    /// Per call; the last repeats.
    script: Vec<Step>,
    calls: Mutex<Vec<Call>>,
    /// Make the first update of each incident slow, to tempt reordering.
    slow_first: bool,
    /// Update ids in the order their sends finished.
    finished: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, Copy)]
enum ErrorClassKind {
    Retry,
    Permanent,
}

#[async_trait::async_trait]
impl Channel for Scripted {
    async fn send(&self, d: &Delivery) -> Outcome {
        let n = {
            let mut calls = self.calls.lock().expect("calls");
            calls.push((d.update.update_id.clone(), d.attempt, d.recipients.clone()));
            calls.len() - 1
        };
        if self.slow_first && d.update.sequence == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.finished
            .lock()
            .expect("finished")
            .push(d.update.update_id.clone());
        let step = self
            .script
            .get(n)
            .or(self.script.last())
            .cloned()
            .unwrap_or_default();
        Outcome {
            results: step
                .into_iter()
                .filter(|(r, _)| match (&d.recipients, r) {
                    (Some(only), Some(r)) => only.iter().any(|o| o == r),
                    _ => true,
                })
                .map(|(r, res)| RecipientResult {
                    recipient: r.map(str::to_string),
                    result: match res {
                        Ok(()) => Ok(Receipt::default()),
                        Err(ErrorClassKind::Retry) => Err(DeliveryError::retryable("busy", None)),
                        Err(ErrorClassKind::Permanent) => {
                            Err(DeliveryError::permanent("no such user"))
                        }
                    },
                })
                .collect(),
        }
    }
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
}

fn dispatcher(
    channel: Arc<Scripted>,
    observer: mpsc::Sender<DeliveryReport>,
) -> (
    Dispatcher,
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
) {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let producer: rdkafka::producer::FutureProducer<crate::ops::health::ProducerCtx> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create_with_context(crate::ops::health::ProducerCtx)
            .expect("producer");
    let webhook: clarion_webhook::WebhookConfig =
        serde_json::from_value(serde_json::json!({"url": "http://127.0.0.1:1/"})).expect("config");
    let config = TargetConfig {
        name: Arc::from("t"),
        kind: ChannelKind::Webhook,
        audiences: ["customers".to_string()].into(),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        concurrency: 8,
        rules: Vec::new(),
        locale: None,
        supersede: false,
        start: crate::config::StartAt::Latest,
        breaker: crate::engine::breaker::BreakerConfig::default(),
        max_in_flight: None,
        channel: ChannelConfig::Webhook(webhook),
        provider_name: Arc::from("primary"),
        backups: Vec::new(),
        failover_after: crate::config::DEFAULT_FAILOVER_AFTER,
        drill: None,
        people: None,
        confirm: None,
        escalation: None,
    };
    let templates = clarion_render::TemplateSet::build(&Default::default(), Vec::new())
        .expect("built-in templates");
    let d = Dispatcher::new(
        vec![Target::new(config, channel)],
        ["customers".to_string()].into(),
        Arc::new(templates),
        Outputs {
            dlq: DeadLetterWriter::new(producer, "dlq".into()),
            dead_recipient_topic: None,
            observer: Some(observer),
        },
        CancellationToken::new(),
    );
    (d, cluster)
}

fn source() -> Source {
    Source {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: None,
        payload: b"{}".to_vec(),
        headers: vec![],
    }
}

#[tokio::test]
async fn a_retry_goes_only_to_the_recipients_that_failed_transiently() {
    let channel = Arc::new(Scripted {
        script: vec![
            vec![
                (Some("a"), Ok(())),
                (Some("b"), Err(ErrorClassKind::Retry)),
                (Some("c"), Err(ErrorClassKind::Permanent)),
            ],
            vec![(Some("b"), Ok(()))],
        ],
        ..Scripted::default()
    });
    let (tx, mut rx) = mpsc::channel(16);
    let (d, _cluster) = dispatcher(channel.clone(), tx);
    let update =
        Arc::new(samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now()).remove(0));
    let plans = d.plan(&update).expect("plan");
    let src = source();
    let cancel = CancellationToken::new();
    let runs: Vec<_> = plans.into_iter().map(|p| d.run(p, &src, &cancel)).collect();
    assert_eq!(
        futures::future::join_all(runs).await,
        vec![Resolution::Resolved]
    );
    let calls = channel.calls.lock().expect("calls").clone();
    assert_eq!(
        calls
            .iter()
            .map(|(_, a, r)| (*a, r.clone()))
            .collect::<Vec<_>>(),
        vec![(1, None), (2, Some(vec!["b".to_string()]))]
    );
    drop(d);
    let mut reports = Vec::new();
    while let Some(r) = rx.recv().await {
        reports.push((
            r.recipient.unwrap_or_default(),
            r.attempts,
            r.dead_letter_reason.is_some(),
        ));
    }
    reports.sort();
    assert_eq!(
        reports,
        vec![
            ("a".into(), 1, false),
            ("b".into(), 2, false),
            ("c".into(), 1, true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_incident_reaches_a_target_in_order_even_when_the_first_is_slow() {
    let channel = Arc::new(Scripted {
        script: vec![vec![(None, Ok(()))]],
        slow_first: true,
        ..Scripted::default()
    });
    let (tx, _rx) = mpsc::channel(64);
    let (d, _cluster) = dispatcher(channel.clone(), tx);
    let d = Arc::new(d);
    let src = Arc::new(source());
    let mut handles = Vec::new();
    // Plan in consumption order (as the consumer loop does), run concurrently.
    for u in samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now()) {
        let plans = d.plan(&Arc::new(u)).expect("plan");
        for p in plans {
            let (d, src) = (d.clone(), src.clone());
            handles.push(tokio::spawn(async move {
                d.run(p, &src, &CancellationToken::new()).await
            }));
        }
    }
    for h in handles {
        assert_eq!(h.await.expect("task"), Resolution::Resolved);
    }
    // Without lanes, u2..u4 would finish while u1 sleeps.
    let order = channel.finished.lock().expect("finished").clone();
    assert_eq!(order, vec!["I-u1", "I-u2", "I-u3", "I-u4"]);
    assert!(d.lanes.lock().is_empty(), "finished lanes are removed");
}

/// A channel whose peer hints an absurd `Retry-After`, or panics, or paces its
/// recipients: the behaviours that used to freeze a partition.
#[derive(Debug)]
enum Odd {
    HugeRetryAfter,
    Panics,
    /// `n` recipients `r0..`, each taking `each`; records what it sent.
    Paced {
        n: usize,
        each: Duration,
        sent: Mutex<Vec<String>>,
    },
}

#[async_trait::async_trait]
impl Channel for Odd {
    async fn send(&self, d: &Delivery) -> Outcome {
        match self {
            Odd::HugeRetryAfter => Outcome::single(Err(DeliveryError::retryable(
                "503",
                Some(Duration::from_secs(u64::MAX)),
            ))),
            Odd::Panics => panic!("peer said something unexpected"),
            Odd::Paced { n, each, sent } => {
                let mut results = Vec::new();
                for r in (0..*n).map(|i| format!("r{i}")) {
                    if !d.wants(&r) {
                        continue;
                    }
                    tokio::time::sleep(*each).await;
                    sent.lock().expect("sent").push(r.clone());
                    results.push(d.finish(RecipientResult {
                        recipient: Some(r),
                        result: Ok(Receipt::default()),
                    }));
                }
                Outcome { results }
            }
        }
    }
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
}

async fn run_one(channel: Arc<dyn Channel>, retry: RetryPolicy) -> Vec<DeliveryReport> {
    run_failover(
        vec![("primary", channel)],
        retry,
        crate::config::DEFAULT_FAILOVER_AFTER,
        |_| {},
    )
    .await
}

#[tokio::test]
async fn a_retry_after_of_u64_max_ends_in_a_dead_letter_not_a_panic() {
    let reports = run_one(Arc::new(Odd::HugeRetryAfter), RetryPolicy::default()).await;
    assert_eq!(reports.len(), 1);
    let reason = reports[0]
        .dead_letter_reason
        .as_deref()
        .expect("dead-lettered");
    assert!(reason.contains("max_elapsed"), "{reason}");
}

/// Runs one update through a target with these providers, in order.
async fn run_failover(
    providers: Vec<(&str, Arc<dyn Channel>)>,
    retry: RetryPolicy,
    failover_after: Duration,
    before: impl FnOnce(&Target),
) -> Vec<DeliveryReport> {
    let (tx, mut rx) = mpsc::channel(4096);
    let (mut d, _cluster) = dispatcher(Arc::new(Scripted::default()), tx);
    let mut config = d.targets[0].config.clone();
    config.retry = retry;
    config.failover_after = failover_after;
    d.targets = vec![Target::with_providers(
        config,
        providers
            .into_iter()
            .map(|(n, c)| crate::config::BuiltProvider {
                name: Arc::from(n),
                channel: c,
                drill: None,
            })
            .collect(),
    )];
    before(&d.targets[0]);
    let update =
        Arc::new(samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now()).remove(0));
    let src = source();
    for p in d.plan(&update).expect("plan") {
        assert_eq!(
            d.run(p, &src, &CancellationToken::new()).await,
            Resolution::Resolved
        );
    }
    drop(d);
    let mut reports = Vec::new();
    while let Some(r) = rx.recv().await {
        reports.push(r);
    }
    reports.sort_by(|a, b| a.recipient.cmp(&b.recipient));
    reports
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    }
}

/// (recipient, provider, dead-lettered) per report.
fn who_and_how(reports: &[DeliveryReport]) -> Vec<(String, String, bool)> {
    reports
        .iter()
        .map(|r| {
            (
                r.recipient.clone().unwrap_or_default(),
                r.provider.as_deref().unwrap_or("-").to_string(),
                r.dead_letter_reason.is_some(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_transient_failure_past_failover_after_moves_on_but_a_permanent_one_does_not() {
    let primary = Arc::new(Scripted {
        script: vec![vec![
            (Some("a"), Err(ErrorClassKind::Retry)),
            (Some("b"), Ok(())),
            (Some("c"), Err(ErrorClassKind::Permanent)),
        ]],
        ..Scripted::default()
    });
    let backup = Arc::new(Scripted {
        script: vec![vec![(Some("a"), Ok(())), (Some("c"), Ok(()))]],
        ..Scripted::default()
    });
    let reports = run_failover(
        vec![("twilio", primary.clone()), ("smpp", backup.clone())],
        fast_retry(10),
        Duration::ZERO,
        |_| {},
    )
    .await;
    assert_eq!(
        who_and_how(&reports),
        vec![
            ("a".into(), "smpp".into(), false),
            ("b".into(), "twilio".into(), false),
            // A bad recipient is bad everywhere: not sent through the backup.
            ("c".into(), "twilio".into(), true),
        ]
    );
    assert_eq!(primary.calls.lock().expect("calls").len(), 1);
    let backup_calls = backup.calls.lock().expect("calls").clone();
    assert_eq!(backup_calls.len(), 1);
    assert_eq!(
        backup_calls[0].2,
        Some(vec!["a".to_string()]),
        "only a moves"
    );
}

#[tokio::test]
async fn an_open_breaker_sends_the_delivery_to_the_backup_without_trying_the_primary() {
    let primary = Arc::new(Scripted {
        script: vec![vec![(None, Ok(()))]],
        ..Scripted::default()
    });
    let backup = Arc::new(Scripted {
        script: vec![vec![(None, Ok(()))]],
        ..Scripted::default()
    });
    let reports = run_failover(
        vec![("relay-a", primary.clone()), ("relay-b", backup.clone())],
        fast_retry(10),
        Duration::from_secs(3600),
        |t| {
            let b = t.breakers.get(0);
            for _ in 0..t.config.breaker.failures {
                b.record(Pass::Go, Verdict::TargetDown, "connection refused");
            }
            assert!(b.is_open() && !t.breakers.is_open(), "one provider down");
        },
    )
    .await;
    assert_eq!(
        who_and_how(&reports),
        vec![("".into(), "relay-b".into(), false)]
    );
    assert!(primary.calls.lock().expect("calls").is_empty());
}

#[tokio::test]
async fn the_retry_budget_applies_per_provider_and_the_last_one_dead_letters() {
    let failing = || {
        Arc::new(Scripted {
            script: vec![vec![(None, Err(ErrorClassKind::Retry))]],
            ..Scripted::default()
        })
    };
    let (primary, backup) = (failing(), failing());
    let reports = run_failover(
        vec![("one", primary.clone()), ("two", backup.clone())],
        fast_retry(2),
        Duration::from_secs(3600),
        |_| {},
    )
    .await;
    assert_eq!(who_and_how(&reports), vec![("".into(), "two".into(), true)]);
    assert_eq!(primary.calls.lock().expect("calls").len(), 2);
    assert_eq!(backup.calls.lock().expect("calls").len(), 2);
    assert_eq!(reports[0].attempts, 4, "attempts count across providers");
}

#[tokio::test]
async fn a_panicking_channel_is_dead_lettered_with_the_panic_message() {
    let reports = run_one(Arc::new(Odd::Panics), RetryPolicy::default()).await;
    assert_eq!(reports.len(), 1);
    let reason = reports[0]
        .dead_letter_reason
        .as_deref()
        .expect("dead-lettered");
    assert!(
        reason.contains("peer said something unexpected"),
        "{reason}"
    );
}

#[tokio::test]
async fn attempt_timeout_is_per_recipient_and_a_long_list_is_sent_once_each() {
    // 1,200 recipients at 1 ms or more each: well past a 400 ms attempt timeout
    // in all, yet each recipient answers well within it.
    let channel = Arc::new(Odd::Paced {
        n: 1200,
        each: Duration::from_millis(1),
        sent: Mutex::default(),
    });
    let retry = RetryPolicy {
        attempt_timeout: Duration::from_millis(400),
        ..RetryPolicy::default()
    };
    let reports = run_one(channel.clone(), retry).await;
    let Odd::Paced { sent, .. } = &*channel else {
        unreachable!()
    };
    let sent = sent.lock().expect("sent").clone();
    assert_eq!(sent.len(), 1200, "each recipient exactly once");
    assert_eq!(reports.len(), 1200);
    assert!(
        reports
            .iter()
            .all(|r| r.dead_letter_reason.is_none() && r.attempts == 1)
    );
}

#[tokio::test]
async fn a_timed_out_attempt_keeps_its_progress_and_retries_only_the_rest() {
    // Recipients take 5 ms each with a 400 ms idle timeout, except that the
    // channel stalls for ever after the 5th on its first attempt.
    #[derive(Debug, Default)]
    struct StallsOnce {
        sent: Mutex<Vec<(u32, String)>>,
    }
    #[async_trait::async_trait]
    impl Channel for StallsOnce {
        async fn send(&self, d: &Delivery) -> Outcome {
            let mut results = Vec::new();
            for (i, r) in (0..10).map(|i| (i, format!("r{i}"))) {
                if !d.wants(&r) {
                    continue;
                }
                if d.attempt == 1 && i == 5 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.sent.lock().expect("sent").push((d.attempt, r.clone()));
                results.push(d.finish(RecipientResult {
                    recipient: Some(r),
                    result: Ok(Receipt::default()),
                }));
            }
            Outcome { results }
        }
        async fn healthcheck(&self) -> Result<(), DeliveryError> {
            Ok(())
        }
    }
    let channel = Arc::new(StallsOnce::default());
    let retry = RetryPolicy {
        attempt_timeout: Duration::from_millis(400),
        initial_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let reports = run_one(channel.clone(), retry).await;
    let sent = channel.sent.lock().expect("sent").clone();
    let mut names: Vec<&str> = sent.iter().map(|(_, r)| r.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(sent.len(), 10, "nobody twice: {sent:?}");
    assert_eq!(names.len(), 10);
    assert!(sent.iter().take(5).all(|(a, _)| *a == 1));
    assert!(sent.iter().skip(5).all(|(a, _)| *a == 2));
    assert_eq!(reports.len(), 10);
    assert!(reports.iter().all(|r| r.dead_letter_reason.is_none()));
}

#[test]
fn backoff_ceilings_double_and_cap() {
    let policy = RetryPolicy {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let got: Vec<u64> = backoff_ceilings(&policy)
        .take(5)
        .map(|d| d.as_secs())
        .collect();
    assert_eq!(got, vec![1, 2, 4, 5, 5]);
    for _ in 0..1000 {
        assert!(full_jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
    }
}
