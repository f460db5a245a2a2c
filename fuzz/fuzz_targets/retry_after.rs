//! `Retry-After` parsing: the header comes from a peer, so the parser must never
//! panic and never ask for more than `retry_after::MAX`, whatever the value and the
//! clock; delay-seconds must mean exactly what they say, up to the cap.
#![no_main]

use arbitrary::Arbitrary;
use clarion_core::retry_after::{MAX, parse};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

#[derive(Arbitrary, Debug)]
struct Input {
    value: String,
    /// The clock, as an offset from the epoch in either direction.
    now_secs: i64,
    now_nanos: u32,
}

fuzz_target!(|input: Input| {
    let offset = Duration::new(
        input.now_secs.unsigned_abs(),
        input.now_nanos % 1_000_000_000,
    );
    let now = if input.now_secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    };
    let Some(now) = now else { return };
    let got = parse(&input.value, now);
    if let Some(wait) = got {
        assert!(wait <= MAX, "{:?} asked for {wait:?}", input.value);
    }
    let trimmed = input.value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs = trimmed.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(
            got,
            Some(Duration::from_secs(secs).min(MAX)),
            "{:?}",
            input.value
        );
    }
});
