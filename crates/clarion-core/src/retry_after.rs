//! Reading a peer's `Retry-After` hint (RFC 9110 §10.2.3), once for every channel.
//!
//! The hint comes from the network, so it is untrusted input: a peer (or anything in
//! between) can answer `Retry-After: 18446744073709551615`, and a daemon that believed
//! it would overflow its deadline arithmetic or park a delivery for ever. The result is
//! therefore always capped at [`MAX`]. This module is pure: the caller passes the clock
//! reading, so it does no I/O and is trivially testable.

use std::time::{Duration, SystemTime};

/// The longest wait a peer's hint can ask for. An hour is longer than any provider
/// documents for throttling (FCM, APNs, Twilio and Slack ask for seconds to minutes),
/// and short enough that a bogus hint delays a delivery rather than stalling it; the
/// daemon's own `max_elapsed` still bounds the delivery as a whole.
pub const MAX: Duration = Duration::from_secs(3600);

/// The wait a `Retry-After` header value asks for, at most [`MAX`].
///
/// Accepts both forms RFC 9110 allows: delay-seconds (`120`; any run of digits, so a
/// value too large for a `u64` is simply "very long") and an HTTP-date in its preferred
/// IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`) or either obsolete form (RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT`, asctime `Sun Nov  6 08:49:37 1994`), which the RFC
/// requires recipients to accept. A date at or before `now` means "now" (zero). Anything
/// else (empty, negative, fractional, garbage) is `None`: the caller's own backoff
/// applies.
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // delay-seconds is `1*DIGIT`: no sign, no fraction (`u64::from_str` would accept a
    // leading `+`, so check the digits ourselves).
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX));
    }
    let when = http_date(value)?;
    let when = SystemTime::try_from(when).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO).min(MAX))
}

/// An HTTP-date in any of the three forms of RFC 9110 §5.6.7, always in GMT.
fn http_date(value: &str) -> Option<jiff::Timestamp> {
    if let Ok(zoned) = jiff::fmt::rfc2822::parse(value) {
        return Some(zoned.timestamp());
    }
    // The obsolete forms. jiff cannot parse a zone abbreviation, so the fixed ` GMT` of
    // RFC 850 is matched literally; asctime has no zone and is defined to be GMT.
    let civil = jiff::civil::DateTime::strptime("%A, %d-%b-%y %H:%M:%S GMT", value)
        .or_else(|_| jiff::civil::DateTime::strptime("%a %b %e %H:%M:%S %Y", value))
        .ok()?;
    jiff::tz::Offset::UTC.to_timestamp(civil).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT, the RFC's own example date.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn check(value: &str, expected: Option<u64>) {
        assert_eq!(
            parse(value, now()),
            expected.map(Duration::from_secs),
            "Retry-After: {value:?}"
        );
    }

    #[test]
    fn delay_seconds() {
        check("120", Some(120));
        check(" 3 ", Some(3));
        check("0", Some(0));
        check("3600", Some(3600));
    }

    #[test]
    fn huge_values_are_capped() {
        check("3601", Some(MAX.as_secs()));
        check("18446744073709551615", Some(MAX.as_secs()));
        // Too large even for a u64: still digits, still just "very long".
        check("99999999999999999999999999999999", Some(MAX.as_secs()));
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        check("Sun, 06 Nov 1994 08:50:37 GMT", Some(60));
        check("Sunday, 06-Nov-94 08:50:37 GMT", Some(60));
        check("Sun Nov  6 08:50:37 1994", Some(60));
    }

    #[test]
    fn past_dates_mean_now_and_far_dates_are_capped() {
        check("Sun, 06 Nov 1994 08:00:00 GMT", Some(0));
        check("Wed, 21 Oct 2015 07:28:00 GMT", Some(MAX.as_secs()));
        check("Tue, 31 Dec 2999 23:59:59 GMT", Some(MAX.as_secs()));
        check("Thu, 01 Jan 1970 00:00:00 GMT", Some(0));
    }

    #[test]
    fn garbage_is_ignored() {
        for value in [
            "",
            " ",
            "soon",
            "-5",
            "+5",
            "1.5",
            "1e9",
            "12 s",
            "0x10",
            "Sun, 06 Nov",
            "-1",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            check(value, None);
        }
    }
}
