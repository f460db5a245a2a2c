//! Notification deadlines per audience (`[audiences.NAME] first_notice_within`,
//! `[audiences.NAME.deadlines]`): the daemon warns when one is at risk, and counts
//! the ones it missed.
//!
//! A deadline's clock starts at the `occurred_at` of the incident's first update
//! (or first update with the status) that a target serving the audience plans, and
//! stops at the first successful delivery of such an update to that audience, which
//! the dispatcher reports from its ledger path. Clocks therefore live where the
//! deliveries run: in a deployment of several replicas each replica judges the
//! deliveries its own target streams make, and the ledger is the record of the
//! whole.
//!
//! One verdict, computed one way ([`judge`]): a deadline is met when the first
//! successful delivery's time (the ledger record's `final_at`) is at or before
//! start + within, missed when it is later or when it has not come by then, open
//! otherwise. The daemon's log and metric here and `clarion status`/`report` all
//! call it, so a late notice is "missed" everywhere.
//!
//! A SIGHUP that changes deadlines applies them ([`DeadlineTracker::reconfigure`]):
//! running clocks take the new `within` and `warn_at`, removed deadlines stop,
//! and updates from then on start clocks of the new ones.
//!
//! Memory is bounded: an incident is forgotten 24 h after its last update once every
//! clock is stopped, after 7 days untouched in any case, and beyond
//! [`MAX_INCIDENTS`] the least recently updated one is dropped first. This module
//! must never block a delivery: it only takes a short lock.

use crate::config::Deadlines;
use clarion_core::{IncidentUpdate, Status};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many incidents' clocks are kept at most.
pub const MAX_INCIDENTS: usize = 10_000;
/// How long an incident whose clocks have all stopped is kept after its last update
/// (a late delivery still finds its clock).
const KEEP_DONE: Duration = Duration::from_secs(24 * 3600);
/// How long an incident with a running clock is kept without any update.
const KEEP_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often clocks are checked.
pub const TICK: Duration = Duration::from_secs(1);

/// Which deadline of an audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    FirstNotice,
    Status(Status),
}

impl Kind {
    pub fn label(&self) -> String {
        match self {
            Kind::FirstNotice => "first_notice".to_string(),
            Kind::Status(s) => s.as_str().to_string(),
        }
    }
}

/// How a deadline went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first successful delivery came at or before the deadline.
    Met,
    /// It came later, or had not come when the deadline passed.
    Missed,
    /// Not met, and not due yet.
    Open,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::Open => "open",
        }
    }
}

/// The one judgement of a deadline that starts at `start` and allows `within`,
/// first met at `met_at` (if it was), seen at `now`. Late is missed.
pub fn judge(
    start: jiff::Timestamp,
    within: Duration,
    met_at: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Verdict {
    let due = add(start, within);
    match met_at {
        Some(m) if m <= due => Verdict::Met,
        Some(_) => Verdict::Missed,
        None if now > due => Verdict::Missed,
        None => Verdict::Open,
    }
}

/// When a deadline that starts at `start` and allows `within` is due.
pub fn due(start: jiff::Timestamp, within: Duration) -> jiff::Timestamp {
    add(start, within)
}

#[derive(Debug, Clone)]
struct Clock {
    start: jiff::Timestamp,
    within: Duration,
    warn_at: f64,
    met: Option<jiff::Timestamp>,
    warned: bool,
    breached: bool,
}

impl Clock {
    fn due(&self) -> jiff::Timestamp {
        add(self.start, self.within)
    }
    fn warn(&self) -> jiff::Timestamp {
        add(self.start, self.within.mul_f64(self.warn_at))
    }
}

fn add(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

#[derive(Debug, Default)]
struct Incident {
    clocks: BTreeMap<(String, Kind), Clock>,
    last_update: Option<jiff::Timestamp>,
}

/// The clocks of every incident with a deadline, and the deadlines they run by.
#[derive(Debug)]
pub struct DeadlineTracker {
    state: Mutex<Tracked>,
    /// Whether any audience has a deadline: without one, deliveries take no lock.
    enabled: AtomicBool,
}

#[derive(Debug, Default)]
struct Tracked {
    config: BTreeMap<String, Deadlines>,
    incidents: HashMap<String, Incident>,
}

impl DeadlineTracker {
    /// Clocks for `config`'s deadlines (none yet, when it has none: a reload may
    /// bring some).
    pub fn new(config: BTreeMap<String, Deadlines>) -> Self {
        DeadlineTracker {
            enabled: AtomicBool::new(!config.is_empty()),
            state: Mutex::new(Tracked {
                config,
                incidents: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deadlines in force.
    pub fn config(&self) -> BTreeMap<String, Deadlines> {
        self.lock().config.clone()
    }

    /// Applies a reloaded config's deadlines: running clocks (not met, not missed)
    /// take the new `within` and `warn_at`, clocks of a deadline that is gone stop,
    /// and updates from now on start clocks of new ones. Returns what changed, in
    /// words (`None` when nothing did).
    pub fn reconfigure(&self, config: BTreeMap<String, Deadlines>) -> Option<String> {
        let mut st = self.lock();
        let changes = describe_changes(&st.config, &config);
        if changes.is_empty() {
            return None;
        }
        for incident in st.incidents.values_mut() {
            incident.clocks.retain(|(audience, kind), clock| {
                let Some(d) = config.get(audience) else {
                    return clock.met.is_some() || clock.breached;
                };
                let within = match kind {
                    Kind::FirstNotice => d.first_notice_within,
                    Kind::Status(s) => d.by_status.get(s).copied(),
                };
                let Some(within) = within else {
                    return clock.met.is_some() || clock.breached;
                };
                if clock.met.is_none() && !clock.breached {
                    clock.within = within;
                    clock.warn_at = d.warn_at;
                    clock.warned = false;
                }
                true
            });
        }
        for audience in config.keys() {
            metrics::counter!("clarion_deadline_breaches_total", "audience" => audience.clone())
                .increment(0);
        }
        self.enabled.store(!config.is_empty(), Ordering::Relaxed);
        st.config = config;
        Some(changes.join(", "))
    }

    /// An update is about to be delivered to `audiences`: start the clocks it starts.
    pub fn observe(&self, update: &IncidentUpdate, audiences: &[String]) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        let Tracked { config, incidents } = &mut *st;
        let relevant: Vec<(&String, &Deadlines)> = audiences
            .iter()
            .filter_map(|a| config.get(a).map(|d| (a, d)))
            .collect();
        if relevant.is_empty() {
            return;
        }
        let map = incidents;
        if !map.contains_key(&update.incident_id) && map.len() >= MAX_INCIDENTS {
            // Drop the least recently updated incident to make room.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, i)| i.last_update)
                .map(|(k, _)| k.clone())
            {
                tracing::warn!(incident_id = %oldest, max = MAX_INCIDENTS, "too many incidents with deadlines; forgetting the least recently updated one");
                map.remove(&oldest);
            }
        }
        let incident = map.entry(update.incident_id.clone()).or_default();
        let at = update.occurred_at;
        incident.last_update = Some(incident.last_update.map_or(at, |l| l.max(at)));
        for (audience, d) in relevant {
            let mut start = |kind: Kind, within: Duration| {
                let clock = incident
                    .clocks
                    .entry((audience.clone(), kind))
                    .or_insert(Clock {
                        start: at,
                        within,
                        warn_at: d.warn_at,
                        met: None,
                        warned: false,
                        breached: false,
                    });
                // Updates may be consumed out of their `occurred_at` order: the clock
                // runs from the earliest.
                if at < clock.start && clock.met.is_none() && !clock.breached {
                    clock.start = at;
                }
            };
            if let Some(within) = d.first_notice_within {
                start(Kind::FirstNotice, within);
            }
            if let Some(within) = d.by_status.get(&update.status) {
                start(Kind::Status(update.status), *within);
            }
        }
    }

    /// `update` was delivered to `audiences` (at least one recipient) at `at`, the
    /// time its ledger record says: stop the clocks it stops, judged by [`judge`]. A
    /// deadline met late is missed: logged so, and counted once.
    pub fn delivered(&self, update: &IncidentUpdate, audiences: &[String], at: jiff::Timestamp) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.lock();
        let Some(incident) = st.incidents.get_mut(&update.incident_id) else {
            return;
        };
        for audience in audiences {
            for kind in [Kind::FirstNotice, Kind::Status(update.status)] {
                let Some(clock) = incident.clocks.get_mut(&(audience.clone(), kind)) else {
                    continue;
                };
                if clock.met.is_some() {
                    continue;
                }
                clock.met = Some(at);
                let took = at.duration_since(clock.start).as_secs();
                if judge(clock.start, clock.within, Some(at), at) == Verdict::Met {
                    tracing::info!(
                        incident_id = %update.incident_id,
                        audience = %audience,
                        deadline = %kind.label(),
                        took_s = took,
                        within_s = clock.within.as_secs(),
                        "notification deadline met"
                    );
                    continue;
                }
                if !clock.breached {
                    clock.breached = true;
                    DeadlineBreached {
                        incident_id: &update.incident_id,
                        audience,
                        deadline: &kind.label(),
                        within: clock.within,
                        start: clock.start,
                    }
                    .emit();
                }
                tracing::warn!(
                    incident_id = %update.incident_id,
                    audience = %audience,
                    deadline = %kind.label(),
                    took_s = took,
                    within_s = clock.within.as_secs(),
                    "notification deadline missed: the first delivery to this audience came after the deadline"
                );
            }
        }
    }

    /// Checks every running clock: warns at its warning point, counts a breach at
    /// its deadline, forgets finished incidents, and sets the at-risk gauges.
    pub fn tick(&self, now: jiff::Timestamp) {
        let mut st = self.lock();
        let Tracked { config, incidents } = &mut *st;
        let mut at_risk: BTreeMap<String, u64> = config.keys().map(|a| (a.clone(), 0)).collect();
        let map = incidents;
        map.retain(|_, incident| {
            let idle = incident
                .last_update
                .map_or(Duration::ZERO, |l| now.duration_since(l).unsigned_abs());
            let done = incident.clocks.values().all(|c| c.met.is_some());
            !(idle > KEEP_IDLE || (done && idle > KEEP_DONE))
        });
        for (id, incident) in map.iter_mut() {
            for ((audience, kind), clock) in incident.clocks.iter_mut() {
                if clock.met.is_some() {
                    continue;
                }
                if now >= clock.due() {
                    if !clock.breached {
                        clock.breached = true;
                        DeadlineBreached {
                            incident_id: id,
                            audience,
                            deadline: &kind.label(),
                            within: clock.within,
                            start: clock.start,
                        }
                        .emit();
                    }
                } else if now >= clock.warn() && !clock.warned {
                    clock.warned = true;
                    DeadlineAtRisk {
                        incident_id: id,
                        audience,
                        deadline: &kind.label(),
                        within: clock.within,
                        left: clock.due().duration_since(now).unsigned_abs(),
                    }
                    .emit();
                }
                if now >= clock.warn()
                    && let Some(n) = at_risk.get_mut(audience.as_str())
                {
                    *n += 1;
                }
            }
        }
        drop(st);
        for (audience, n) in at_risk {
            metrics::gauge!("clarion_deadline_at_risk", "audience" => audience).set(n as f64);
        }
    }

    /// Checks the clocks every [`TICK`] until `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        metrics::describe_counter!(
            "clarion_deadline_breaches_total",
            "Notification deadlines missed, per audience: no successful delivery to the audience within its deadline."
        );
        metrics::describe_gauge!(
            "clarion_deadline_at_risk",
            "Running notification deadlines past their warning point (warn_at) and not yet met, including overdue ones, per audience."
        );
        for audience in self.config().keys() {
            // Present from the start, so that an alert sees 0 rather than no series.
            metrics::counter!("clarion_deadline_breaches_total", "audience" => audience.clone())
                .increment(0);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(jiff::Timestamp::now()),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// How many incidents are tracked (tests).
    pub fn len(&self) -> usize {
        self.lock().incidents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The differences between two configs' deadlines, one phrase each
/// (`regulators.first_notice_within 2h → 40s`).
fn describe_changes(
    old: &BTreeMap<String, Deadlines>,
    new: &BTreeMap<String, Deadlines>,
) -> Vec<String> {
    let show = |d: Option<Duration>| {
        d.map_or("unset".to_string(), |d| {
            humantime::format_duration(d).to_string()
        })
    };
    let mut out = Vec::new();
    let audiences: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for a in audiences {
        let (o, n) = (old.get(a), new.get(a));
        if o == n {
            continue;
        }
        let first = |d: Option<&Deadlines>| d.and_then(|d| d.first_notice_within);
        if first(o) != first(n) {
            out.push(format!(
                "{a}.first_notice_within {} → {}",
                show(first(o)),
                show(first(n))
            ));
        }
        let statuses: std::collections::BTreeSet<&Status> = o
            .iter()
            .chain(n.iter())
            .flat_map(|d| d.by_status.keys())
            .collect();
        for s in statuses {
            let of = |d: Option<&Deadlines>| d.and_then(|d| d.by_status.get(s).copied());
            if of(o) != of(n) {
                out.push(format!(
                    "{a}.deadlines.{} {} → {}",
                    s.as_str(),
                    show(of(o)),
                    show(of(n))
                ));
            }
        }
        let warn = |d: Option<&Deadlines>| d.map(|d| d.warn_at);
        if warn(o) != warn(n) && o.is_some() && n.is_some() {
            out.push(format!(
                "{a}.warn_at {} → {}",
                warn(o).unwrap_or_default(),
                warn(n).unwrap_or_default()
            ));
        }
    }
    out
}

/// A deadline passed its warning point with no successful delivery yet.
#[derive(Debug)]
pub struct DeadlineAtRisk<'a> {
    pub incident_id: &'a str,
    pub audience: &'a str,
    pub deadline: &'a str,
    pub within: Duration,
    pub left: Duration,
}

impl DeadlineAtRisk<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            incident_id = %self.incident_id,
            audience = %self.audience,
            deadline = %self.deadline,
            within = %humantime::format_duration(self.within),
            left_s = self.left.as_secs(),
            "notification deadline at risk: no successful delivery to this audience yet"
        );
    }
}

/// A deadline passed with no successful delivery (or one met late).
#[derive(Debug)]
pub struct DeadlineBreached<'a> {
    pub incident_id: &'a str,
    pub audience: &'a str,
    pub deadline: &'a str,
    pub within: Duration,
    pub start: jiff::Timestamp,
}

impl DeadlineBreached<'_> {
    pub fn emit(&self) {
        // ERROR: an operator must act (tell the audience some other way, record the
        // breach for the regulator).
        tracing::error!(
            incident_id = %self.incident_id,
            audience = %self.audience,
            deadline = %self.deadline,
            within = %humantime::format_duration(self.within),
            since = %self.start,
            "notification deadline missed: no successful delivery to this audience within the deadline"
        );
        metrics::counter!("clarion_deadline_breaches_total", "audience" => self.audience.to_string())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_core::samples;

    fn tracker(within: u64) -> DeadlineTracker {
        let mut by_status = BTreeMap::new();
        by_status.insert(Status::Resolved, Duration::from_secs(within));
        DeadlineTracker::new(
            [(
                "regulators".to_string(),
                Deadlines {
                    first_notice_within: Some(Duration::from_secs(within)),
                    by_status,
                    warn_at: 0.5,
                },
            )]
            .into(),
        )
    }

    fn clock(t: &DeadlineTracker, id: &str, kind: Kind) -> Clock {
        t.lock().incidents[id].clocks[&("regulators".to_string(), kind)].clone()
    }

    #[test]
    fn first_notice_runs_from_the_first_update_and_stops_at_the_first_delivery() {
        let t0 = jiff::Timestamp::now();
        let t = tracker(100);
        let ups = samples::lifecycle("I", "t", &["regulators"], t0);
        let aud = vec!["regulators".to_string()];
        t.observe(&ups[1], &aud);
        t.observe(&ups[0], &aud);
        let c = clock(&t, "I", Kind::FirstNotice);
        assert_eq!(c.start, ups[0].occurred_at.min(ups[1].occurred_at));
        // Half-way: at risk, not breached.
        t.tick(add(c.start, Duration::from_secs(60)));
        let c = clock(&t, "I", Kind::FirstNotice);
        assert!(c.warned && !c.breached);
        t.tick(add(c.start, Duration::from_secs(101)));
        assert!(clock(&t, "I", Kind::FirstNotice).breached);
        t.delivered(&ups[0], &aud, add(c.start, Duration::from_secs(102)));
        assert!(clock(&t, "I", Kind::FirstNotice).met.is_some());
    }

    #[test]
    fn late_is_missed_and_on_time_is_met() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).expect("time");
        let within = Duration::from_secs(40);
        let at = |s| add(t0, Duration::from_secs(s));
        assert_eq!(judge(t0, within, Some(at(40)), at(500)), Verdict::Met);
        assert_eq!(judge(t0, within, Some(at(141)), at(141)), Verdict::Missed);
        assert_eq!(judge(t0, within, None, at(39)), Verdict::Open);
        assert_eq!(judge(t0, within, None, at(41)), Verdict::Missed);
    }

    #[test]
    fn a_late_first_delivery_is_counted_as_a_breach_once() {
        let t = tracker(40);
        let aud = vec!["regulators".to_string()];
        let u = samples::lifecycle("I", "t", &["regulators"], jiff::Timestamp::now()).remove(0);
        t.observe(&u, &aud);
        // Delivered 141 s after occurred_at, before any tick noticed the breach.
        t.delivered(&u, &aud, add(u.occurred_at, Duration::from_secs(141)));
        let c = clock(&t, "I", Kind::FirstNotice);
        assert!(c.breached && c.met.is_some());
    }

    #[test]
    fn a_reload_applies_new_deadlines_to_running_clocks() {
        let t = tracker(7200);
        let aud = vec!["regulators".to_string()];
        let u = samples::lifecycle("I", "t", &["regulators"], jiff::Timestamp::now()).remove(0);
        t.observe(&u, &aud);
        let mut config = t.config();
        let regs = config.get_mut("regulators").expect("regulators");
        regs.first_notice_within = Some(Duration::from_secs(40));
        regs.by_status.clear();
        let changed = t.reconfigure(config.clone()).expect("a change");
        assert_eq!(
            changed,
            "regulators.first_notice_within 2h → 40s, regulators.deadlines.resolved 2h → unset"
        );
        assert_eq!(
            t.reconfigure(config),
            None,
            "the same again changes nothing"
        );
        t.tick(add(u.occurred_at, Duration::from_secs(41)));
        assert!(
            clock(&t, "I", Kind::FirstNotice).breached,
            "the new 40 s applies"
        );
        // Deadlines added where there were none start with the next update.
        let none = DeadlineTracker::new(BTreeMap::new());
        none.observe(&u, &aud);
        assert!(none.is_empty());
        none.reconfigure(t.config());
        none.observe(&u, &aud);
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn audiences_without_deadlines_and_other_statuses_start_nothing() {
        let t = tracker(100);
        let ups = samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now());
        t.observe(&ups[0], &["customers".to_string()]);
        assert!(t.is_empty());
        t.observe(&ups[0], &["regulators".to_string()]);
        assert_eq!(
            t.lock().incidents["I"].clocks.len(),
            1,
            "no resolved clock before resolved"
        );
    }

    #[test]
    fn the_map_is_capped() {
        let t = tracker(100);
        let aud = vec!["regulators".to_string()];
        let now = jiff::Timestamp::now();
        for i in 0..MAX_INCIDENTS + 5 {
            let u = samples::lifecycle(&format!("I{i}"), "t", &["regulators"], now).remove(0);
            t.observe(&u, &aud);
        }
        assert_eq!(t.len(), MAX_INCIDENTS);
    }

    #[test]
    fn finished_incidents_are_forgotten_a_day_later() {
        let t = tracker(100);
        let aud = vec!["regulators".to_string()];
        let u = samples::lifecycle("I", "t", &["regulators"], jiff::Timestamp::now()).remove(0);
        t.observe(&u, &aud);
        t.delivered(&u, &aud, u.occurred_at);
        t.tick(add(u.occurred_at, Duration::from_secs(3600)));
        assert_eq!(t.len(), 1);
        t.tick(add(u.occurred_at, KEEP_DONE + Duration::from_secs(1)));
        assert!(t.is_empty());
    }
}
