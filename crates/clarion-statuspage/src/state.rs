//! What the page says about the present: each component's state, mapped from the
//! open incidents and maintenances that name it, and the page's overall indicator.
//!
//! The mapping (docs/status-page.md): an open incident's latest impact gives the
//! state of the components its latest update naming components lists (`none`:
//! operational, `minor`: degraded performance, `major`: partial outage, `critical`:
//! major outage); a maintenance in progress or verifying puts its components under
//! maintenance; the worst state wins. Resolved incidents and scheduled or completed
//! maintenances leave a component operational.

use crate::model::{PageConfig, PublicUpdate, Timeline};
use clarion_core::{Impact, Status};
use jiff::Timestamp;
use serde::Serialize;
use std::sync::Arc;

/// A component's state, in the Statuspage API's words; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentStatus {
    Operational,
    UnderMaintenance,
    DegradedPerformance,
    PartialOutage,
    MajorOutage,
}

impl ComponentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentStatus::Operational => "operational",
            ComponentStatus::UnderMaintenance => "under_maintenance",
            ComponentStatus::DegradedPerformance => "degraded_performance",
            ComponentStatus::PartialOutage => "partial_outage",
            ComponentStatus::MajorOutage => "major_outage",
        }
    }

    /// How the page says it.
    pub fn words(self) -> &'static str {
        match self {
            ComponentStatus::Operational => "Operational",
            ComponentStatus::UnderMaintenance => "Under maintenance",
            ComponentStatus::DegradedPerformance => "Degraded performance",
            ComponentStatus::PartialOutage => "Partial outage",
            ComponentStatus::MajorOutage => "Major outage",
        }
    }

    /// The state an update gives the components it names.
    pub fn of(update: &PublicUpdate) -> ComponentStatus {
        match update.status {
            Status::Resolved | Status::Completed | Status::Scheduled => {
                ComponentStatus::Operational
            }
            Status::InProgress | Status::Verifying => ComponentStatus::UnderMaintenance,
            Status::Investigating | Status::Identified | Status::Monitoring => {
                match update.impact {
                    Impact::None => ComponentStatus::Operational,
                    Impact::Minor => ComponentStatus::DegradedPerformance,
                    Impact::Major => ComponentStatus::PartialOutage,
                    Impact::Critical => ComponentStatus::MajorOutage,
                }
            }
        }
    }
}

/// The page's overall indicator (`status.indicator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    None,
    Maintenance,
    Minor,
    Major,
    Critical,
}

impl Indicator {
    pub fn as_str(self) -> &'static str {
        match self {
            Indicator::None => "none",
            Indicator::Maintenance => "maintenance",
            Indicator::Minor => "minor",
            Indicator::Major => "major",
            Indicator::Critical => "critical",
        }
    }

    /// Statuspage's descriptions of each indicator.
    pub fn description(self) -> &'static str {
        match self {
            Indicator::None => "All Systems Operational",
            Indicator::Maintenance => "Service Under Maintenance",
            Indicator::Minor => "Minor Service Outage",
            Indicator::Major => "Partial System Outage",
            Indicator::Critical => "Major System Outage",
        }
    }
}

/// One configured component with its state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentState {
    pub index: usize,
    pub status: ComponentStatus,
    /// The latest update that named it, if any shown update did.
    pub updated_at: Option<Timestamp>,
}

/// The present, as the page shows it.
#[derive(Debug, Clone)]
pub struct Overview {
    /// One per configured component, in configured order.
    pub components: Vec<ComponentState>,
    pub indicator: Indicator,
    /// The latest update shown anywhere (the page's "last updated").
    pub updated_at: Option<Timestamp>,
}

impl Overview {
    /// Computes the present from the timelines the page shows.
    pub fn of(config: &PageConfig, timelines: &[Arc<Timeline>]) -> Overview {
        let mut components: Vec<ComponentState> = (0..config.components.len())
            .map(|index| ComponentState {
                index,
                status: ComponentStatus::Operational,
                updated_at: None,
            })
            .collect();
        let mut indicator = Indicator::None;
        let mut updated_at: Option<Timestamp> = None;
        for t in timelines {
            updated_at = updated_at.max(Some(t.updated_at()));
            for u in &t.updates {
                for id in &u.components {
                    if let Some(i) = config.components.iter().position(|c| c.id == *id) {
                        let c = &mut components[i];
                        c.updated_at = c.updated_at.max(Some(u.occurred_at));
                    }
                }
            }
            if !t.is_open() {
                continue;
            }
            let latest = t.latest();
            let status = ComponentStatus::of(latest);
            for id in t.components() {
                if let Some(i) = config.components.iter().position(|c| c.id == *id) {
                    components[i].status = components[i].status.max(status);
                }
            }
            let here = if t.is_maintenance() {
                if status == ComponentStatus::UnderMaintenance {
                    Indicator::Maintenance
                } else {
                    Indicator::None
                }
            } else {
                match latest.impact {
                    Impact::None => Indicator::None,
                    Impact::Minor => Indicator::Minor,
                    Impact::Major => Indicator::Major,
                    Impact::Critical => Indicator::Critical,
                }
            };
            indicator = indicator.max(here);
        }
        Overview {
            components,
            indicator,
            updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Component;

    pub(crate) fn config() -> PageConfig {
        let c = |id: &str, name: &str, group: Option<&str>| Component {
            id: id.into(),
            name: name.into(),
            description: None,
            group: group.map(Into::into),
            only_show_if_degraded: false,
        };
        PageConfig {
            id: "example".into(),
            name: "Example Status".into(),
            url: "https://status.example.com".into(),
            time_zone: "Etc/UTC".into(),
            audiences: vec!["public".into()],
            components: vec![
                c("mobile-data", "Mobile data", Some("Network")),
                c("voice", "Voice calls", Some("Network")),
                c("billing", "Billing", None),
            ],
            history: 10,
            feed_entries: 50,
        }
    }

    fn timeline(id: &str, steps: &[(Status, Impact, &[&str])]) -> Arc<Timeline> {
        let start: Timestamp = "2026-11-28T10:00:00Z".parse().expect("ts");
        let mut t: Option<Timeline> = None;
        for (i, (status, impact, comps)) in steps.iter().enumerate() {
            let u = PublicUpdate {
                update_id: format!("{id}-u{i}"),
                sequence: i as u64 + 1,
                status: *status,
                impact: *impact,
                title: format!("{id} title"),
                body: "text".into(),
                components: comps.iter().map(|c| c.to_string()).collect(),
                links: Vec::new(),
                occurred_at: start + jiff::SignedDuration::from_mins(i as i64),
            };
            match &mut t {
                None => t = Some(Timeline::new(id, u)),
                Some(t) => {
                    t.merge(u);
                }
            }
        }
        Arc::new(t.expect("steps"))
    }

    fn states(o: &Overview) -> Vec<&'static str> {
        o.components.iter().map(|c| c.status.as_str()).collect()
    }

    #[test]
    fn the_worst_open_incident_wins_and_resolved_ones_clear() {
        let cfg = config();
        let a = timeline(
            "A",
            &[
                (
                    Status::Investigating,
                    Impact::Major,
                    &["mobile-data", "voice"],
                ),
                (Status::Monitoring, Impact::Minor, &[]),
            ],
        );
        let b = timeline(
            "B",
            &[(Status::Identified, Impact::Critical, &["voice", "nope"])],
        );
        let o = Overview::of(&cfg, &[a.clone(), b]);
        // A's latest says minor, on the components its earlier update named.
        assert_eq!(
            states(&o),
            ["degraded_performance", "major_outage", "operational"]
        );
        assert_eq!(o.indicator, Indicator::Critical);
        let done = timeline(
            "A",
            &[
                (Status::Investigating, Impact::Major, &["mobile-data"]),
                (Status::Resolved, Impact::None, &[]),
            ],
        );
        let o = Overview::of(&cfg, &[done]);
        assert_eq!(states(&o), ["operational", "operational", "operational"]);
        assert_eq!(o.indicator, Indicator::None);
        assert_eq!(o.indicator.description(), "All Systems Operational");
    }

    #[test]
    fn maintenance_in_progress_is_under_maintenance_and_scheduled_is_not() {
        let cfg = config();
        let m = timeline(
            "M",
            &[
                (Status::Scheduled, Impact::None, &["billing"]),
                (Status::InProgress, Impact::Minor, &[]),
            ],
        );
        let o = Overview::of(&cfg, &[m]);
        assert_eq!(
            states(&o),
            ["operational", "operational", "under_maintenance"]
        );
        assert_eq!(o.indicator, Indicator::Maintenance);
        let s = timeline("S", &[(Status::Scheduled, Impact::None, &["billing"])]);
        let o = Overview::of(&cfg, &[s]);
        assert_eq!(states(&o), ["operational", "operational", "operational"]);
        assert_eq!(o.indicator, Indicator::None);
    }
}
