//! The Statuspage-compatible JSON API (`api/v2/…`), so that aggregators and chat
//! integrations that read Atlassian Statuspage read this page unchanged.
//!
//! Field names and types follow the public v2 API as its published clients type it
//! (the `statuspage.io` npm client's `Summary`, `Component`, `Incident`,
//! `IncidentUpdate`, `ScheduledMaintenance`): every field they declare is present,
//! with `null` only where they allow it. Every time is an update's own time, never
//! the time of rendering, so the files change only when the page does.

use crate::model::{PageConfig, PublicUpdate, Timeline, slug};
use crate::state::{ComponentStatus, Overview};
use clarion_core::Status;
use jiff::Timestamp;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Serialize)]
pub(crate) struct Page<'a> {
    id: &'a str,
    name: &'a str,
    url: &'a str,
    time_zone: &'a str,
    updated_at: Timestamp,
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusBody {
    indicator: &'static str,
    description: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ComponentBody<'a> {
    id: String,
    name: &'a str,
    status: &'static str,
    created_at: Timestamp,
    updated_at: Timestamp,
    position: usize,
    description: Option<&'a str>,
    showcase: bool,
    start_date: Option<String>,
    group_id: Option<String>,
    page_id: &'a str,
    group: bool,
    only_show_if_degraded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    components: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AffectedComponent<'a> {
    code: &'a str,
    name: &'a str,
    old_status: &'static str,
    new_status: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct UpdateBody<'a> {
    id: &'a str,
    status: &'static str,
    body: &'a str,
    incident_id: &'a str,
    created_at: Timestamp,
    updated_at: Timestamp,
    display_at: Timestamp,
    affected_components: Vec<AffectedComponent<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct IncidentBody<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    impact: &'static str,
    shortlink: String,
    created_at: Timestamp,
    updated_at: Timestamp,
    started_at: Timestamp,
    monitoring_at: Option<Timestamp>,
    resolved_at: Option<Timestamp>,
    page_id: &'a str,
    incident_updates: Vec<UpdateBody<'a>>,
    components: Vec<ComponentBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_for: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_until: Option<Timestamp>,
}

/// Everything the API files are made of, computed once per rendering.
pub(crate) struct Api<'a> {
    config: &'a PageConfig,
    page: Page<'a>,
    status: StatusBody,
    components: Vec<ComponentBody<'a>>,
}

impl<'a> Api<'a> {
    pub(crate) fn new(
        config: &'a PageConfig,
        overview: &Overview,
        updated_at: Timestamp,
    ) -> Api<'a> {
        let page = Page {
            id: &config.id,
            name: &config.name,
            url: &config.url,
            time_zone: &config.time_zone,
            updated_at,
        };
        let status = StatusBody {
            indicator: overview.indicator.as_str(),
            description: overview.indicator.description(),
        };
        // Groups first appear where their first member is, as Statuspage lists
        // them; each member names its group, each group its members.
        let mut components: Vec<ComponentBody<'a>> = Vec::new();
        let mut position = 0;
        for state in &overview.components {
            let c = &config.components[state.index];
            let at = state.updated_at.unwrap_or(updated_at);
            if let Some(group) = &c.group {
                let gid = group_id(group);
                match components.iter_mut().find(|b| b.group && b.id == gid) {
                    Some(g) => {
                        g.components.get_or_insert_with(Vec::new).push(c.id.clone());
                        g.status = worse(g.status, state.status.as_str());
                        g.updated_at = g.updated_at.max(at);
                    }
                    None => {
                        position += 1;
                        components.push(ComponentBody {
                            id: gid.clone(),
                            name: group,
                            status: state.status.as_str(),
                            created_at: at,
                            updated_at: at,
                            position,
                            description: None,
                            showcase: false,
                            start_date: None,
                            group_id: None,
                            page_id: &config.id,
                            group: true,
                            only_show_if_degraded: false,
                            components: Some(vec![c.id.clone()]),
                        });
                    }
                }
            }
            position += 1;
            components.push(ComponentBody {
                id: c.id.clone(),
                name: &c.name,
                status: state.status.as_str(),
                created_at: at,
                updated_at: at,
                position,
                description: c.description.as_deref(),
                showcase: true,
                start_date: None,
                group_id: c.group.as_deref().map(group_id),
                page_id: &config.id,
                group: false,
                only_show_if_degraded: c.only_show_if_degraded,
                components: None,
            });
        }
        for g in components.iter_mut().filter(|g| g.group) {
            g.created_at = g.updated_at;
        }
        Api {
            config,
            page,
            status,
            components,
        }
    }

    fn incident(&self, t: &'a Timeline) -> IncidentBody<'a> {
        let config = self.config;
        let maintenance = t.is_maintenance();
        // Each update's effect on each component it names, from the state the
        // incident's previous update had left it in.
        let mut last: std::collections::BTreeMap<&str, ComponentStatus> = Default::default();
        let mut updates: Vec<UpdateBody<'a>> = Vec::with_capacity(t.updates.len());
        for u in &t.updates {
            let new = ComponentStatus::of(u);
            let mut affected = Vec::new();
            for id in &u.components {
                let Some(c) = config.component(id) else {
                    continue;
                };
                let old = last
                    .insert(&c.id, new)
                    .unwrap_or(ComponentStatus::Operational);
                affected.push(AffectedComponent {
                    code: &c.id,
                    name: &c.name,
                    old_status: old.as_str(),
                    new_status: new.as_str(),
                });
            }
            updates.push(UpdateBody {
                id: &u.update_id,
                status: u.status.as_str(),
                body: &u.body,
                incident_id: &t.incident_id,
                created_at: u.occurred_at,
                updated_at: u.occurred_at,
                display_at: u.occurred_at,
                affected_components: affected,
            });
        }
        updates.reverse();
        let first_at = |s: &[Status]| {
            t.updates
                .iter()
                .find(|u| s.contains(&u.status))
                .map(|u| u.occurred_at)
        };
        let components = t
            .components()
            .iter()
            .filter_map(|id| self.components.iter().find(|c| !c.group && c.id == *id))
            .cloned()
            .collect();
        let (scheduled_for, scheduled_until) = if maintenance {
            // The event schema has no maintenance window: it starts when it is
            // announced or first in progress, and ends when completed (until then,
            // at its latest update).
            let start = first_at(&[Status::InProgress]).unwrap_or(t.created_at);
            (
                Some(start),
                Some(first_at(&[Status::Completed]).unwrap_or_else(|| t.updated_at())),
            )
        } else {
            (None, None)
        };
        IncidentBody {
            id: &t.incident_id,
            name: t.title(),
            status: t.status().as_str(),
            impact: t.impact().as_str(),
            shortlink: incident_url(config, &t.incident_id),
            created_at: t.created_at,
            updated_at: t.updated_at(),
            started_at: t.created_at,
            monitoring_at: first_at(&[Status::Monitoring]),
            resolved_at: t.closed_at(),
            page_id: &config.id,
            incident_updates: updates,
            components,
            scheduled_for,
            scheduled_until,
        }
    }

    /// Every file of the API, by path.
    pub(crate) fn files(
        &self,
        incidents: &[&'a Arc<Timeline>],
        maintenances: &[&'a Arc<Timeline>],
    ) -> Vec<(&'static str, Vec<u8>)> {
        let all: Vec<IncidentBody<'a>> = incidents.iter().map(|t| self.incident(t)).collect();
        let unresolved: Vec<&IncidentBody<'a>> = incidents
            .iter()
            .zip(&all)
            .filter(|(t, _)| t.is_open())
            .map(|(_, b)| b)
            .collect();
        let maint: Vec<IncidentBody<'a>> = maintenances.iter().map(|t| self.incident(t)).collect();
        let upcoming: Vec<&IncidentBody<'a>> = maint
            .iter()
            .filter(|m| m.status == Status::Scheduled.as_str())
            .collect();
        let active: Vec<&IncidentBody<'a>> = maint
            .iter()
            .filter(|m| {
                m.status == Status::InProgress.as_str() || m.status == Status::Verifying.as_str()
            })
            .collect();
        let summary_maint: Vec<&IncidentBody<'a>> =
            maint.iter().filter(|m| m.resolved_at.is_none()).collect();
        let doc = |d: Doc<'_, 'a>| serde_json::to_vec_pretty(&d).unwrap_or_default();
        let base = || Doc {
            page: &self.page,
            status: None,
            components: None,
            incidents: None,
            scheduled_maintenances: None,
        };
        vec![
            (
                "api/v2/summary.json",
                doc(Doc {
                    status: Some(&self.status),
                    components: Some(&self.components),
                    incidents: Some(unresolved.clone()),
                    scheduled_maintenances: Some(summary_maint),
                    ..base()
                }),
            ),
            (
                "api/v2/status.json",
                doc(Doc {
                    status: Some(&self.status),
                    ..base()
                }),
            ),
            (
                "api/v2/components.json",
                doc(Doc {
                    components: Some(&self.components),
                    ..base()
                }),
            ),
            (
                "api/v2/incidents.json",
                doc(Doc {
                    incidents: Some(all.iter().collect()),
                    ..base()
                }),
            ),
            (
                "api/v2/incidents/unresolved.json",
                doc(Doc {
                    incidents: Some(unresolved),
                    ..base()
                }),
            ),
            (
                "api/v2/scheduled-maintenances.json",
                doc(Doc {
                    scheduled_maintenances: Some(maint.iter().collect()),
                    ..base()
                }),
            ),
            (
                "api/v2/scheduled-maintenances/upcoming.json",
                doc(Doc {
                    scheduled_maintenances: Some(upcoming),
                    ..base()
                }),
            ),
            (
                "api/v2/scheduled-maintenances/active.json",
                doc(Doc {
                    scheduled_maintenances: Some(active),
                    ..base()
                }),
            ),
        ]
    }
}

/// One API document: the page, and the parts that file has.
#[derive(Serialize)]
struct Doc<'x, 'a> {
    page: &'x Page<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'x StatusBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    components: Option<&'x [ComponentBody<'a>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    incidents: Option<Vec<&'x IncidentBody<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_maintenances: Option<Vec<&'x IncidentBody<'a>>>,
}

/// The worse of two component states, by their API names.
fn worse(a: &'static str, b: &'static str) -> &'static str {
    let rank = |s: &str| {
        [
            ComponentStatus::Operational,
            ComponentStatus::UnderMaintenance,
            ComponentStatus::DegradedPerformance,
            ComponentStatus::PartialOutage,
            ComponentStatus::MajorOutage,
        ]
        .iter()
        .position(|c| c.as_str() == s)
        .unwrap_or(0)
    };
    if rank(b) > rank(a) { b } else { a }
}

/// A group's id in the API: `group-` and a slug of its name.
pub(crate) fn group_id(name: &str) -> String {
    format!("group-{}", slug(&name.to_lowercase().replace(' ', "-")))
}

/// Where an incident's page is read.
pub fn incident_url(config: &PageConfig, incident_id: &str) -> String {
    format!("{}/{}", config.url, incident_path(incident_id))
}

/// An incident page's path on the origins.
pub fn incident_path(incident_id: &str) -> String {
    format!("incidents/{}.html", slug(incident_id))
}

/// The words for an update's status on the page.
pub fn status_words(status: Status) -> &'static str {
    match status {
        Status::Investigating => "Investigating",
        Status::Identified => "Identified",
        Status::Monitoring => "Monitoring",
        Status::Resolved => "Resolved",
        Status::Scheduled => "Scheduled",
        Status::InProgress => "In progress",
        Status::Verifying => "Verifying",
        Status::Completed => "Completed",
    }
}

/// What a feed or a page says about one update, besides its body.
pub(crate) fn headline(u: &PublicUpdate) -> String {
    format!("{}: {}", status_words(u.status), u.title)
}
