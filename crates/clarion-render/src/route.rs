//! Routing: does a target hear an update, for which of its audiences, and why.
//!
//! A target lists the audiences it serves and, optionally, rules
//! (`[[targets.NAME.rules]]`). [`route`] is a pure function of the update, the
//! target's audiences and its rules; it returns a [`Decision`] whose one-line
//! explanation is what `clarion route` shows an operator asking "why did (or didn't)
//! the regulators' mailbox get this update?". It must never look at anything else
//! (time, config files, delivery history): the same update always routes the same
//! way, on every replica and on every retry.

use clarion_core::{Impact, IncidentUpdate, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// One routing rule of a target (TOML: `[[targets.NAME.rules]]`). A rule matches an
/// update when every condition it sets holds; a condition left out always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown by `clarion route` and in explanations; defaults to `rule N` (N counts
    /// from 1 in the order the rules are written).
    pub name: Option<String>,
    /// Only updates with one of these statuses (e.g. `["investigating", "resolved"]`).
    pub statuses: Option<Vec<Status>>,
    /// Only updates at least this bad (`none < minor < major < critical`).
    pub min_impact: Option<Impact>,
    /// Only updates naming at least one of these components.
    pub components: Option<Vec<String>>,
    /// Only updates naming at least one of these regions.
    pub regions: Option<Vec<String>>,
    /// Only incidents (`incident`) or only scheduled maintenance (`maintenance`).
    pub kind: Option<UpdateKind>,
    /// `true`: only an incident's first update (sequence 1) and its final one
    /// (status `resolved` or `completed`), e.g. for a daily-digest audience.
    pub first_and_final: Option<bool>,
    /// `true`: the rule matches even when the update names none of the target's
    /// audiences ("every critical update goes to the regulators, always"). Otherwise a
    /// rule also requires the update to name one of them.
    pub ignore_audiences: Option<bool>,
}

/// Whether an update is about an incident or about scheduled maintenance
/// ([`Status::is_maintenance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    Incident,
    Maintenance,
}

impl UpdateKind {
    pub fn of(status: Status) -> UpdateKind {
        if status.is_maintenance() {
            UpdateKind::Maintenance
        } else {
            UpdateKind::Incident
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Incident => "incident",
            UpdateKind::Maintenance => "maintenance",
        }
    }
}

/// What [`route`] decided for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the target gets the update at all.
    pub matched: bool,
    /// The audiences the target serves for this update: those the update names that
    /// the target serves, or, when it matched only through an `ignore_audiences` rule
    /// (the update names none of them), all of the target's audiences. Empty when
    /// not matched.
    pub audiences: Vec<String>,
    /// The name of the deciding rule: the first that matched. `None` when the target
    /// has no rules, or when nothing matched.
    pub rule: Option<String>,
    /// One line for an operator, e.g. ``rule `critical-always`: impact critical ≥
    /// critical`` or ``no rule matched: `rule 1`: status monitoring not in
    /// [investigating, resolved]``.
    pub explanation: String,
}

/// True for the statuses that end an incident or a maintenance.
pub fn is_final(status: Status) -> bool {
    matches!(status, Status::Resolved | Status::Completed)
}

/// Decides whether a target with `target_audiences` and `rules` gets `update`.
///
/// With no rules, the target matches iff the update names one of its audiences. With
/// rules, it matches iff at least one rule matches; a rule requires the update to
/// name one of the target's audiences unless it sets `ignore_audiences = true`.
pub fn route(
    update: &IncidentUpdate,
    target_audiences: &BTreeSet<String>,
    rules: &[Rule],
) -> Decision {
    let overlap: Vec<String> = target_audiences
        .iter()
        .filter(|a| update.audiences.contains(a))
        .cloned()
        .collect();

    if rules.is_empty() {
        return if overlap.is_empty() {
            Decision {
                matched: false,
                audiences: Vec::new(),
                rule: None,
                explanation: format!("update names none of {}", list(target_audiences)),
            }
        } else {
            Decision {
                matched: true,
                explanation: format!("update names {}", overlap.join(", ")),
                audiences: overlap,
                rule: None,
            }
        };
    }

    let mut misses = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("rule {}", i + 1));
        match evaluate(rule, update, target_audiences, &overlap) {
            Ok(reasons) => {
                let audiences = if overlap.is_empty() {
                    // Only an `ignore_audiences` rule can match without an overlap.
                    target_audiences.iter().cloned().collect()
                } else {
                    overlap
                };
                return Decision {
                    matched: true,
                    audiences,
                    explanation: format!("rule `{name}`: {}", reasons.join("; ")),
                    rule: Some(name),
                };
            }
            Err(miss) => misses.push(format!("`{name}`: {miss}")),
        }
    }
    Decision {
        matched: false,
        audiences: Vec::new(),
        rule: None,
        explanation: format!("no rule matched: {}", misses.join("; ")),
    }
}

/// Checks one rule's conditions in a fixed order; returns the conditions that held,
/// or the first that did not, in words.
fn evaluate(
    rule: &Rule,
    update: &IncidentUpdate,
    target_audiences: &BTreeSet<String>,
    overlap: &[String],
) -> Result<Vec<String>, String> {
    let mut held = Vec::new();
    if let Some(statuses) = &rule.statuses {
        let shown = list(statuses.iter().map(|s| s.as_str()));
        if !statuses.contains(&update.status) {
            return Err(format!("status {} not in {shown}", update.status));
        }
        held.push(format!("status {} in {shown}", update.status));
    }
    if let Some(min) = rule.min_impact {
        if update.impact < min {
            return Err(format!("impact {} < {min}", update.impact));
        }
        held.push(format!("impact {} ≥ {min}", update.impact));
    }
    if let Some(kind) = rule.kind {
        let actual = UpdateKind::of(update.status);
        if actual != kind {
            return Err(format!(
                "status {} is {}, not {}",
                update.status,
                actual.as_str(),
                kind.as_str()
            ));
        }
        held.push(format!("kind {}", kind.as_str()));
    }
    if rule.first_and_final == Some(true) {
        if update.sequence == 1 {
            held.push("first update".to_string());
        } else if is_final(update.status) {
            held.push(format!("final update ({})", update.status));
        } else {
            return Err(format!(
                "update {} ({}) is neither the first nor final",
                update.sequence, update.status
            ));
        }
    }
    if let Some(wanted) = &rule.components {
        overlap_condition("components", wanted, &update.components, &mut held)?;
    }
    if let Some(wanted) = &rule.regions {
        overlap_condition("regions", wanted, &update.regions, &mut held)?;
    }
    if rule.ignore_audiences == Some(true) {
        if held.is_empty() {
            held.push("matches every update".to_string());
        }
        if overlap.is_empty() {
            held.push("audiences ignored".to_string());
        }
    } else if overlap.is_empty() {
        return Err(format!("update names none of {}", list(target_audiences)));
    } else if held.is_empty() {
        held.push(format!("update names {}", overlap.join(", ")));
    }
    Ok(held)
}

fn overlap_condition(
    what: &str,
    wanted: &[String],
    actual: &[String],
    held: &mut Vec<String>,
) -> Result<(), String> {
    let common: Vec<&str> = actual
        .iter()
        .filter(|c| wanted.contains(c))
        .map(String::as_str)
        .collect();
    if common.is_empty() {
        let actual = if actual.is_empty() {
            "none".to_string()
        } else {
            list(actual)
        };
        return Err(format!("{what} {actual} not in {}", list(wanted)));
    }
    held.push(format!("{what} {} in {}", common.join(", "), list(wanted)));
    Ok(())
}

/// `[a, b, c]`.
fn list<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", item.as_ref());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_core::samples;

    fn base() -> IncidentUpdate {
        let mut u = samples::lifecycle(
            "INC-1",
            "Mobile data outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        u.sequence = 2;
        u.status = Status::Identified;
        u.impact = Impact::Major;
        u
    }

    fn rule(toml_like: serde_json::Value) -> Rule {
        serde_json::from_value(toml_like).expect("rule")
    }

    /// Routes a modified sample update (sequence 2, identified, major, components
    /// mobile-data + voice, region north, audience customers) and compares
    /// `matched`, the deciding rule and the audiences with `expected`, written
    /// `"no"` or `"yes <rule or -> <audiences>"`.
    #[track_caller]
    fn check(
        update_mods: impl FnOnce(&mut IncidentUpdate),
        audiences: &[&str],
        rules: &[serde_json::Value],
        expected: &str,
    ) -> Decision {
        let mut u = base();
        update_mods(&mut u);
        let audiences: BTreeSet<String> = audiences.iter().map(|a| a.to_string()).collect();
        let rules: Vec<Rule> = rules.iter().cloned().map(rule).collect();
        let d = route(&u, &audiences, &rules);
        let got = if d.matched {
            format!(
                "yes {} {}",
                d.rule.as_deref().unwrap_or("-"),
                d.audiences.join(",")
            )
        } else {
            assert!(d.audiences.is_empty() && d.rule.is_none());
            "no".to_string()
        };
        assert_eq!(got, expected, "explanation: {}", d.explanation);
        d
    }

    use serde_json::json;

    #[test]
    fn without_rules_audience_overlap_decides() {
        check(|_| {}, &["customers", "business"], &[], "yes - customers");
        let d = check(|_| {}, &["regulators", "business"], &[], "no");
        assert_eq!(d.explanation, "update names none of [business, regulators]");
        check(
            |u| u.audiences = vec!["business".into(), "customers".into(), "employees".into()],
            &["customers", "business"],
            &[],
            "yes - business,customers",
        );
    }

    #[test]
    fn each_condition() {
        let statuses = [json!({"name": "s", "statuses": ["investigating", "resolved"]})];
        check(
            |u| u.status = Status::Resolved,
            &["customers"],
            &statuses,
            "yes s customers",
        );
        let d = check(
            |u| u.status = Status::Monitoring,
            &["customers"],
            &statuses,
            "no",
        );
        assert_eq!(
            d.explanation,
            "no rule matched: `s`: status monitoring not in [investigating, resolved]"
        );

        let impact = [json!({"name": "i", "min_impact": "major"})];
        check(
            |u| u.impact = Impact::Critical,
            &["customers"],
            &impact,
            "yes i customers",
        );
        check(
            |u| u.impact = Impact::Major,
            &["customers"],
            &impact,
            "yes i customers",
        );
        let d = check(|u| u.impact = Impact::Minor, &["customers"], &impact, "no");
        assert_eq!(d.explanation, "no rule matched: `i`: impact minor < major");

        let comps = [json!({"name": "c", "components": ["voice", "sms"]})];
        check(|_| {}, &["customers"], &comps, "yes c customers");
        check(
            |u| u.components = vec!["billing".into()],
            &["customers"],
            &comps,
            "no",
        );
        let d = check(|u| u.components.clear(), &["customers"], &comps, "no");
        assert_eq!(
            d.explanation,
            "no rule matched: `c`: components none not in [voice, sms]"
        );

        let regions = [json!({"name": "r", "regions": ["north", "east"]})];
        check(|_| {}, &["customers"], &regions, "yes r customers");
        check(
            |u| u.regions = vec!["south".into()],
            &["customers"],
            &regions,
            "no",
        );

        let maint = [json!({"name": "m", "kind": "maintenance"})];
        check(
            |u| u.status = Status::InProgress,
            &["customers"],
            &maint,
            "yes m customers",
        );
        let d = check(|_| {}, &["customers"], &maint, "no");
        assert_eq!(
            d.explanation,
            "no rule matched: `m`: status identified is incident, not maintenance"
        );
        let inc = [json!({"name": "n", "kind": "incident"})];
        check(|_| {}, &["customers"], &inc, "yes n customers");
        check(|u| u.status = Status::Scheduled, &["customers"], &inc, "no");
    }

    #[test]
    fn every_condition_must_hold() {
        let r = [
            json!({"name": "all", "statuses": ["identified"], "min_impact": "major",
            "components": ["voice"], "regions": ["north"], "kind": "incident"}),
        ];
        let d = check(|_| {}, &["customers"], &r, "yes all customers");
        assert_eq!(
            d.explanation,
            "rule `all`: status identified in [identified]; impact major ≥ major; kind incident; components voice in [voice]; regions north in [north]"
        );
        check(
            |u| u.regions = vec!["south".into()],
            &["customers"],
            &r,
            "no",
        );
        check(|u| u.impact = Impact::Minor, &["customers"], &r, "no");
    }

    #[test]
    fn first_and_final() {
        let r = [json!({"name": "ff", "first_and_final": true})];
        check(|u| u.sequence = 1, &["customers"], &r, "yes ff customers");
        check(
            |u| u.status = Status::Resolved,
            &["customers"],
            &r,
            "yes ff customers",
        );
        check(
            |u| u.status = Status::Completed,
            &["customers"],
            &r,
            "yes ff customers",
        );
        let d = check(|u| u.status = Status::Monitoring, &["customers"], &r, "no");
        assert_eq!(
            d.explanation,
            "no rule matched: `ff`: update 2 (monitoring) is neither the first nor final"
        );
        // `false` is the same as leaving the condition out.
        check(
            |_| {},
            &["customers"],
            &[json!({"first_and_final": false})],
            "yes rule 1 customers",
        );
    }

    #[test]
    fn rules_require_audiences_unless_ignored() {
        let critical = [
            json!({"name": "critical-always", "min_impact": "critical", "ignore_audiences": true}),
        ];
        // A rule without ignore_audiences still needs an audience overlap.
        check(
            |u| u.impact = Impact::Critical,
            &["regulators"],
            &[json!({"min_impact": "critical"})],
            "no",
        );
        // The update names none of the target's audiences: every audience it serves.
        let d = check(
            |u| u.impact = Impact::Critical,
            &["regulators", "auditors"],
            &critical,
            "yes critical-always auditors,regulators",
        );
        assert_eq!(
            d.explanation,
            "rule `critical-always`: impact critical ≥ critical; audiences ignored"
        );
        // When the update does name one, that one.
        check(
            |u| {
                u.impact = Impact::Critical;
                u.audiences.push("regulators".into());
            },
            &["regulators", "auditors"],
            &critical,
            "yes critical-always regulators",
        );
        check(|_| {}, &["regulators"], &critical, "no");
    }

    #[test]
    fn first_matching_rule_decides() {
        let rules = [
            json!({"name": "resolved-only", "statuses": ["resolved"]}),
            json!({"name": "big", "min_impact": "major"}),
            json!({}),
        ];
        check(
            |u| u.status = Status::Resolved,
            &["customers"],
            &rules,
            "yes resolved-only customers",
        );
        check(|_| {}, &["customers"], &rules, "yes big customers");
        check(
            |u| u.impact = Impact::Minor,
            &["customers"],
            &rules,
            "yes rule 3 customers",
        );
        let d = check(|u| u.impact = Impact::Minor, &["business"], &rules, "no");
        assert_eq!(
            d.explanation,
            "no rule matched: `resolved-only`: status identified not in [resolved]; `big`: impact minor < major; `rule 3`: update names none of [business]"
        );
    }

    #[test]
    fn rules_parse_from_toml_shaped_input_and_reject_typos() {
        let err = serde_json::from_value::<Rule>(json!({"min_impcat": "major"}))
            .expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `min_impcat`"),
            "{err}"
        );
    }

    /// The worked example of docs/routing.md, so that the document stays true.
    #[test]
    fn worked_example_from_docs() {
        let targets: [(&str, &[&str], Vec<Rule>); 4] = [
            (
                "consumer-sms",
                &["customers"],
                vec![
                    rule(json!({"name": "incidents", "kind": "incident"})),
                    rule(
                        json!({"name": "maintenance-milestones", "kind": "maintenance",
                        "statuses": ["in_progress", "completed"]}),
                    ),
                ],
            ),
            (
                "business-mail",
                &["business"],
                vec![rule(json!({"name": "major-core", "min_impact": "major",
                    "components": ["mobile-data", "voice"]}))],
            ),
            (
                "regulator-mail",
                &["regulators"],
                vec![
                    rule(
                        json!({"name": "milestones", "first_and_final": true, "kind": "incident"}),
                    ),
                    rule(json!({"name": "critical-always", "min_impact": "critical",
                        "ignore_audiences": true})),
                ],
            ),
            ("staff-chat", &["employees"], vec![]),
        ];
        let steps = [
            (1, Status::Investigating, Impact::Major, vec!["mobile-data"]),
            (2, Status::Identified, Impact::Critical, vec!["mobile-data"]),
            (3, Status::Monitoring, Impact::Minor, vec![]),
            (4, Status::Resolved, Impact::None, vec![]),
        ];
        let mut got = Vec::new();
        for (seq, status, impact, components) in steps {
            let mut u = base();
            u.sequence = seq;
            u.status = status;
            u.impact = impact;
            u.components = components.into_iter().map(String::from).collect();
            u.audiences = vec!["customers".into(), "business".into(), "employees".into()];
            for (name, audiences, rules) in &targets {
                let audiences: BTreeSet<String> = audiences.iter().map(|a| a.to_string()).collect();
                let d = route(&u, &audiences, rules);
                got.push(format!("{seq} {name}: {}", d.explanation));
            }
        }
        assert_eq!(
            got,
            [
                "1 consumer-sms: rule `incidents`: kind incident",
                "1 business-mail: rule `major-core`: impact major ≥ major; components mobile-data in [mobile-data, voice]",
                "1 regulator-mail: no rule matched: `milestones`: update names none of [regulators]; `critical-always`: impact major < critical",
                "1 staff-chat: update names employees",
                "2 consumer-sms: rule `incidents`: kind incident",
                "2 business-mail: rule `major-core`: impact critical ≥ major; components mobile-data in [mobile-data, voice]",
                "2 regulator-mail: rule `critical-always`: impact critical ≥ critical; audiences ignored",
                "2 staff-chat: update names employees",
                "3 consumer-sms: rule `incidents`: kind incident",
                "3 business-mail: no rule matched: `major-core`: impact minor < major",
                "3 regulator-mail: no rule matched: `milestones`: update 3 (monitoring) is neither the first nor final; `critical-always`: impact minor < critical",
                "3 staff-chat: update names employees",
                "4 consumer-sms: rule `incidents`: kind incident",
                "4 business-mail: no rule matched: `major-core`: impact none < major",
                "4 regulator-mail: no rule matched: `milestones`: update names none of [regulators]; `critical-always`: impact none < critical",
                "4 staff-chat: update names employees",
            ]
        );
    }
}
