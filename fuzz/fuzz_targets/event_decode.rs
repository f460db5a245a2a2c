//! `IncidentUpdate::from_slice` on arbitrary bytes: a Kafka record's value is
//! untrusted, so the decoder must never panic, and what it accepts must survive a
//! round trip (serialize, parse again, get the same update), or the dead-letter and
//! webhook paths that re-serialize it would change it.
#![no_main]

use clarion_core::IncidentUpdate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(update) = IncidentUpdate::from_slice(data, 1 << 20) else {
        return;
    };
    let bytes = serde_json::to_vec(&update).expect("an accepted update serializes");
    let again = IncidentUpdate::from_slice(&bytes, 1 << 20)
        .unwrap_or_else(|e| panic!("re-serialized update rejected: {e}"));
    assert_eq!(again, update, "round trip changed the update");
});
