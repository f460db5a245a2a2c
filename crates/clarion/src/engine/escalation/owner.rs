//! Which cases this replica drives: the partitions of `confirm.topic` that the
//! consumer group `<group_id>.confirm` assigns it. The consumer fetches nothing
//! (every replica's follower reads the whole topic already); it is there for the
//! group's assignment, so that each case has one driver, and another replica
//! takes over a dead one's within the session timeout.
//!
//! A partition is driven only once this replica's view has read it up to the end
//! it had when it was assigned, so that the new driver starts from what the old
//! one last wrote; a revoked partition is left at once, after its sends under way
//! finish (up to the drain).

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The partitions this replica holds, each with the end it had when assigned.
#[derive(Debug, Default)]
pub struct Owned {
    held: Mutex<HashMap<i32, Claim>>,
}

#[derive(Debug, Clone)]
struct Claim {
    /// The partition's end when it was assigned (`None` until known).
    end: Option<i64>,
    /// Cancels the sends under way for this partition's cases.
    cancel: CancellationToken,
    /// Sends under way.
    busy: Arc<std::sync::atomic::AtomicUsize>,
}

impl Owned {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Claim>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partitions held whose view has caught up with `position`, each with
    /// its cancel token and busy counter.
    pub fn driven(
        &self,
        position: impl Fn(i32) -> i64,
    ) -> Vec<(i32, CancellationToken, Arc<std::sync::atomic::AtomicUsize>)> {
        self.lock()
            .iter()
            .filter(|(p, c)| c.end.is_some_and(|end| position(**p) >= end))
            .map(|(p, c)| (*p, c.cancel.clone(), c.busy.clone()))
            .collect()
    }

    fn assign(&self, partitions: &[i32], parent: &CancellationToken) {
        let mut held = self.lock();
        for p in partitions {
            held.entry(*p).or_insert_with(|| Claim {
                end: None,
                cancel: parent.child_token(),
                busy: Arc::default(),
            });
        }
    }

    fn set_end(&self, partition: i32, end: i64) {
        if let Some(c) = self.lock().get_mut(&partition) {
            c.end = Some(end);
        }
    }

    fn without_end(&self) -> Vec<i32> {
        self.lock()
            .iter()
            .filter(|(_, c)| c.end.is_none())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Gives partitions up: waits up to `drain` for their sends, then cancels
    /// what is left.
    fn revoke(&self, partitions: &[i32], drain: Duration) {
        let claims: Vec<Claim> = {
            let mut held = self.lock();
            partitions.iter().filter_map(|p| held.remove(p)).collect()
        };
        let until = Instant::now() + drain;
        for c in &claims {
            while c.busy.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            c.cancel.cancel();
        }
    }
}

struct Ctx {
    owned: Arc<Owned>,
    cancel: CancellationToken,
    drain: Duration,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl);
            if !parts.is_empty() {
                tracing::info!(partitions = ?parts, "confirmation cases handed over");
                self.owned.revoke(&parts, self.drain);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = partitions(tpl);
            if !parts.is_empty() {
                tracing::info!(partitions = ?parts, "confirmation cases taken over");
                self.owned.assign(&parts, &self.cancel);
                // Nothing is fetched: the follower reads the topic.
                let _ = consumer.pause(tpl);
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Joins the group and keeps `owned` current until `cancel`, on a thread.
pub fn start(
    config: rdkafka::ClientConfig,
    topic: String,
    owned: Arc<Owned>,
    drain: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx {
        owned: owned.clone(),
        cancel: cancel.clone(),
        drain,
    })?;
    consumer.subscribe(&[&topic])?;
    std::thread::Builder::new()
        .name("confirm-owner".into())
        .spawn(move || {
            while !cancel.is_cancelled() {
                if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                    tracing::warn!(error = %e, "the confirmation group's consumer");
                }
                for p in owned.without_end() {
                    match consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)) {
                        Ok((_, high)) => owned.set_end(p, high),
                        Err(e) => tracing::warn!(partition = p, error = %e, "cannot read the end of a confirmation partition; retrying"),
                    }
                }
            }
            let held: Vec<i32> = owned.lock().keys().copied().collect();
            owned.revoke(&held, Duration::ZERO);
            consumer.unsubscribe();
        })?;
    Ok(())
}
