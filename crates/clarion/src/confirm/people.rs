//! The one place an escalation meets the directory: who a step reaches, resolved
//! to people and their addresses at the moment the notice goes out, and written
//! into the case (`records::Escalation`), so that the engine never reads the
//! directory, and a change to it (or to how it is kept) never changes a running
//! escalation.

use super::records::CasePerson;
use crate::config::StepWho;
use crate::directory::{AddressKind, Directory};
use clarion_confirm::{CaseId, Keys};
use std::collections::BTreeMap;

/// The most people one step reaches: a step is a crisis team or a rota, not an
/// audience of customers (a people target is for those).
pub const MAX_STEP_PEOPLE: usize = 10_000;

/// The people `who` names in `directory`, with their addresses, each with their
/// recipient id in `case`; a person the directory does not have is left out
/// (and named in the second list, for the log).
pub fn resolve(
    directory: &Directory,
    who: &StepWho,
    keys: &Keys,
    case: &CaseId,
) -> (Vec<(String, CasePerson)>, Vec<String>) {
    let people = match who {
        StepWho::Person(id) => match directory.get(id) {
            Some(p) => vec![p],
            None => return (Vec::new(), vec![id.clone()]),
        },
        StepWho::Audience(a) => {
            let mut out = Vec::new();
            let mut after: Option<String> = None;
            while out.len() < MAX_STEP_PEOPLE {
                let batch = directory.members_after(a, after.as_deref(), 1000);
                let Some(last) = batch.last() else { break };
                after = Some(last.id.to_string());
                let more = batch.len() == 1000;
                out.extend(batch);
                if !more {
                    break;
                }
            }
            out.truncate(MAX_STEP_PEOPLE);
            out
        }
    };
    let resolved = people
        .into_iter()
        .map(|p| {
            let addresses: BTreeMap<String, Vec<String>> = AddressKind::ALL
                .iter()
                .map(|k| {
                    (
                        k.as_str().to_string(),
                        p.addresses(*k)
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, a)| !a.is_empty())
                .collect();
            let rid = keys.recipient_id(case, &format!("person:{}", p.id));
            (
                p.id.to_string(),
                CasePerson {
                    rid: rid.to_hex(),
                    addresses,
                },
            )
        })
        .collect();
    (resolved, Vec::new())
}
