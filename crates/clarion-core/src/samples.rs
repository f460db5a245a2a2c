//! Built-in sample updates: the demo publishes them, `check-config` renders every
//! template against them, and tests use them as fixtures.

use crate::{Impact, IncidentUpdate, Link, SCHEMA_VERSION, Status};
use jiff::Timestamp;
use std::collections::BTreeMap;

/// The four updates of one incident's life, investigating → resolved, with
/// consecutive sequence numbers starting at 1.
pub fn lifecycle(
    incident_id: &str,
    title: &str,
    audiences: &[&str],
    start: Timestamp,
) -> Vec<IncidentUpdate> {
    let steps = [
        (
            Status::Investigating,
            Impact::Major,
            "We are investigating reports of failed calls and mobile data in the affected regions.",
        ),
        (
            Status::Identified,
            Impact::Major,
            "A faulty core-network configuration change has been identified and is being rolled back.",
        ),
        (
            Status::Monitoring,
            Impact::Minor,
            "The rollback is complete and service is recovering. We are monitoring.",
        ),
        (
            Status::Resolved,
            Impact::None,
            "Service has been fully restored. We apologise for the disruption.",
        ),
    ];
    steps
        .iter()
        .enumerate()
        .map(|(i, (status, impact, message))| {
            let seq = i as u64 + 1;
            IncidentUpdate {
                schema_version: SCHEMA_VERSION,
                incident_id: incident_id.to_string(),
                update_id: format!("{incident_id}-u{seq}"),
                sequence: seq,
                status: *status,
                impact: *impact,
                title: title.to_string(),
                message: message.to_string(),
                audience_messages: BTreeMap::new(),
                components: vec!["mobile-data".into(), "voice".into()],
                regions: vec!["north".into()],
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                occurred_at: start + jiff::SignedDuration::from_mins(15 * i as i64),
                links: vec![Link {
                    title: "Status page".into(),
                    url: format!("https://status.example.com/incidents/{incident_id}"),
                }],
                locales: BTreeMap::new(),
                drill: false,
                drill_targets: Vec::new(),
                drill_skip_providers: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid() {
        for u in lifecycle("INC-7", "Outage", &["customers"], Timestamp::UNIX_EPOCH) {
            u.validate().expect("sample update must validate");
        }
    }
}
