//! How a text travels as SMS: which alphabet it needs, how many segments it costs,
//! and how to cut it down to a segment budget (3GPP TS 23.038 and TS 23.040).
//!
//! A text that only uses the GSM 7-bit default alphabet (plus its extension table) is
//! sent as GSM-7: 160 septets in one message, 153 per part once it has to be split
//! (the user-data header of a concatenated message takes the rest). Extension
//! characters (form feed, `^ { } \ [ ~ ] |` and `€`) are an escape plus a code, so they
//! take two septets. Any other character switches the whole text to UCS-2, counted in
//! UTF-16 code units: 70 in one message, 67 per part; characters outside the Basic
//! Multilingual Plane (most emoji) take two.
//!
//! This module is pure: no I/O, no allocation beyond the result. The segment count it
//! reports is the number of parts [`split`] produces, so an escape pair or a surrogate
//! pair is never split across two parts, and the count includes the part that such a
//! boundary can cost.

use std::fmt;

/// The alphabet a text is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The GSM 7-bit default alphabet with its extension table; SMPP `data_coding` 0.
    Gsm7,
    /// UCS-2 (UTF-16 code units, big-endian on the wire); SMPP `data_coding` 8.
    Ucs2,
}

impl Encoding {
    /// A short, fixed label for logs, metrics and templates (`gsm7`, `ucs2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// The SMPP 3.4 `data_coding` value: 0 (SMSC default alphabet, GSM-7) or 8 (UCS-2).
    pub fn data_coding(self) -> u8 {
        match self {
            Encoding::Gsm7 => 0,
            Encoding::Ucs2 => 8,
        }
    }

    /// Units (septets or UTF-16 code units) that fit in a single, unsplit message.
    pub fn single_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units per part of a concatenated message (after the 6-octet user-data header).
    pub fn part_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }

    /// What a truncated text ends with: `...` keeps a GSM-7 text in GSM-7, and `…` is
    /// one unit in UCS-2.
    pub fn ellipsis(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "...",
            Encoding::Ucs2 => "…",
        }
    }

    /// How many units `c` takes in this encoding, or `None` if GSM-7 cannot carry it.
    pub fn units(self, c: char) -> Option<usize> {
        match self {
            Encoding::Gsm7 => gsm7_code(c).map(|g| match g {
                Gsm7Code::Basic(_) => 1,
                Gsm7Code::Extension(_) => 2,
            }),
            Encoding::Ucs2 => Some(c.len_utf16()),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a text costs as SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Analysis {
    pub encoding: Encoding,
    /// Septets (GSM-7, extension characters counted twice) or UTF-16 code units.
    pub units: usize,
    /// Messages the text is sent as (1 for a text that fits unsplit, including the
    /// empty text).
    pub segments: usize,
    /// Unicode scalar values in the text.
    pub chars: usize,
}

/// The alphabet `text` needs and how many segments it costs.
pub fn analyze(text: &str) -> Analysis {
    let encoding = encoding_of(text);
    Analysis {
        encoding,
        units: units_in(text, encoding),
        segments: split_with(text, encoding).len(),
        chars: text.chars().count(),
    }
}

/// The alphabet `text` needs: GSM-7 when every character is in the default alphabet
/// or its extension table, else UCS-2.
pub fn encoding_of(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_code(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// The parts `text` is sent as, in order, each a slice of `text` that ends on a
/// character boundary (so an escape pair or a surrogate pair is never split).
pub fn split(text: &str) -> (Encoding, Vec<&str>) {
    let encoding = encoding_of(text);
    (encoding, split_with(text, encoding))
}

/// `text` cut down to at most `max_segments` segments: unchanged when it fits, else
/// the longest prefix that fits together with an ellipsis (`...` in GSM-7, `…` in
/// UCS-2), cut at a character boundary with trailing whitespace dropped. A
/// `max_segments` of 0 is treated as 1.
pub fn truncate_to_segments(text: &str, max_segments: usize) -> String {
    truncate_keeping_suffix(text, "", max_segments)
}

/// Like [`truncate_to_segments`] for `text` followed by `suffix`, but only `text` is
/// shortened: the suffix (a reference the recipient or a machine needs) survives
/// whole. If even the suffix alone does not fit, the combined text is truncated as a
/// whole.
pub fn truncate_keeping_suffix(text: &str, suffix: &str, max_segments: usize) -> String {
    let max_segments = max_segments.max(1);
    let whole = format!("{text}{suffix}");
    let encoding = encoding_of(&whole);
    if split_with(&whole, encoding).len() <= max_segments {
        return whole;
    }
    let ellipsis = encoding.ellipsis();
    let fits = |prefix: &str, suffix: &str| {
        let candidate = format!("{}{ellipsis}{suffix}", prefix.trim_end());
        split_with(&candidate, encoding).len() <= max_segments
    };
    let (body, suffix) = if fits("", suffix) {
        (text, suffix)
    } else {
        (whole.as_str(), "")
    };
    // Byte offsets of every character boundary; the number of segments grows with the
    // prefix length, so the longest prefix that fits is found by bisection.
    let boundaries: Vec<usize> = body
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(body.len()))
        .collect();
    let (mut lo, mut hi) = (0usize, boundaries.len() - 1);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(&body[..boundaries[mid]], suffix) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    format!("{}{ellipsis}{suffix}", body[..boundaries[lo]].trim_end())
}

/// The GSM-7 septets of `text`, unpacked (one octet per septet, an extension character
/// as `0x1B` and its code), as SMPP carries them with `data_coding` 0; `None` if the
/// text needs UCS-2.
pub fn encode_gsm7_unpacked(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match gsm7_code(c)? {
            Gsm7Code::Basic(b) => out.push(b),
            Gsm7Code::Extension(b) => out.extend([ESCAPE, b]),
        }
    }
    Some(out)
}

/// The UTF-16 big-endian bytes of `text`, as SMPP carries them with `data_coding` 8.
pub fn encode_ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// The bytes of `text` in `encoding`; `None` if `encoding` is GSM-7 and the text needs
/// UCS-2.
pub fn encode(text: &str, encoding: Encoding) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Gsm7 => encode_gsm7_unpacked(text),
        Encoding::Ucs2 => Some(encode_ucs2(text)),
    }
}

const ESCAPE: u8 = 0x1B;

fn units_in(text: &str, encoding: Encoding) -> usize {
    // A character that the encoding cannot carry never reaches here with GSM-7 (the
    // encoding was chosen from the text); counting it as one unit keeps this total.
    text.chars().map(|c| encoding.units(c).unwrap_or(1)).sum()
}

fn split_with(text: &str, encoding: Encoding) -> Vec<&str> {
    if units_in(text, encoding) <= encoding.single_capacity() {
        return vec![text];
    }
    let capacity = encoding.part_capacity();
    let mut parts = Vec::new();
    let (mut start, mut used) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        let u = encoding.units(c).unwrap_or(1);
        if used + u > capacity {
            parts.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += u;
    }
    parts.push(&text[start..]);
    parts
}

enum Gsm7Code {
    Basic(u8),
    Extension(u8),
}

/// The GSM 7-bit default alphabet and its extension table (3GPP TS 23.038 §6.2.1).
fn gsm7_code(c: char) -> Option<Gsm7Code> {
    use Gsm7Code::{Basic, Extension};
    let code = match c {
        // The printable ASCII range maps to itself, except for the few positions the
        // GSM alphabet uses differently (`$`, `@`, `_`, `` ` ``, `[`…`~`).
        'A'..='Z' | 'a'..='z' | '0'..='9' => Basic(c as u8),
        ' ' | '!' | '"' | '#' | '%' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | '-' | '.'
        | '/' | ':' | ';' | '<' | '=' | '>' | '?' => Basic(c as u8),
        '\n' => Basic(0x0A),
        '\r' => Basic(0x0D),
        '@' => Basic(0x00),
        '£' => Basic(0x01),
        '$' => Basic(0x02),
        '¥' => Basic(0x03),
        'è' => Basic(0x04),
        'é' => Basic(0x05),
        'ù' => Basic(0x06),
        'ì' => Basic(0x07),
        'ò' => Basic(0x08),
        'Ç' => Basic(0x09),
        'Ø' => Basic(0x0B),
        'ø' => Basic(0x0C),
        'Å' => Basic(0x0E),
        'å' => Basic(0x0F),
        'Δ' => Basic(0x10),
        '_' => Basic(0x11),
        'Φ' => Basic(0x12),
        'Γ' => Basic(0x13),
        'Λ' => Basic(0x14),
        'Ω' => Basic(0x15),
        'Π' => Basic(0x16),
        'Ψ' => Basic(0x17),
        'Σ' => Basic(0x18),
        'Θ' => Basic(0x19),
        'Ξ' => Basic(0x1A),
        'Æ' => Basic(0x1C),
        'æ' => Basic(0x1D),
        'ß' => Basic(0x1E),
        'É' => Basic(0x1F),
        '¤' => Basic(0x24),
        '¡' => Basic(0x40),
        'Ä' => Basic(0x5B),
        'Ö' => Basic(0x5C),
        'Ñ' => Basic(0x5D),
        'Ü' => Basic(0x5E),
        '§' => Basic(0x5F),
        '¿' => Basic(0x60),
        'ä' => Basic(0x7B),
        'ö' => Basic(0x7C),
        'ñ' => Basic(0x7D),
        'ü' => Basic(0x7E),
        'à' => Basic(0x7F),
        '\u{0C}' => Extension(0x0A),
        '^' => Extension(0x14),
        '{' => Extension(0x28),
        '}' => Extension(0x29),
        '\\' => Extension(0x2F),
        '[' => Extension(0x3C),
        '~' => Extension(0x3D),
        ']' => Extension(0x3E),
        '|' => Extension(0x40),
        '€' => Extension(0x65),
        _ => return None,
    };
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `encoding units segments` for a text, in one line, so expectations read as a
    /// table.
    fn check(text: &str, expected: &str) {
        let a = analyze(text);
        let got = format!("{} {} {}", a.encoding, a.units, a.segments);
        assert_eq!(got, expected, "for {text:?}");
        // The segment count is the number of parts, and the parts put back together
        // are the text.
        let (encoding, parts) = split(text);
        assert_eq!(encoding, a.encoding);
        assert_eq!(parts.len(), a.segments);
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn detects_alphabet_and_counts_segments() {
        check("", "gsm7 0 1");
        check("Hello", "gsm7 5 1");
        check("Price: 5€", "gsm7 10 1"); // € is an extension character: two septets
        check("{}[]~|^\\", "gsm7 16 1");
        check("\u{0C}", "gsm7 2 1"); // form feed is in the extension table too
        check("Grüße aus Köln, señor Müller! @£$¥§¿¡", "gsm7 37 1");
        check("ÅåØøÆæßÉΔΦΓΛΩΠΨΣΘΞ", "gsm7 18 1");
        // Accented letters outside the GSM alphabet switch the whole text to UCS-2.
        check("Café crème façade", "ucs2 17 1"); // ç is not GSM-7 (only Ç is)
        check("naïve", "ucs2 5 1");
        check("`backtick`", "ucs2 10 1");
        check("Ω€", "gsm7 3 1");
        // Emoji are outside the BMP: two UTF-16 code units each.
        check("Outage 🔥", "ucs2 9 1");
        check("👍🏽", "ucs2 4 1");
        check("€🔥", "ucs2 3 1"); // in UCS-2, € is a single unit
    }

    #[test]
    fn segment_boundaries() {
        check(&"a".repeat(160), "gsm7 160 1");
        check(&"a".repeat(161), "gsm7 161 2");
        check(&"a".repeat(306), "gsm7 306 2");
        check(&"a".repeat(307), "gsm7 307 3");
        // 159 plain characters and one € make 161 septets: two segments.
        check(&format!("{}€", "a".repeat(159)), "gsm7 161 2");
        check(&format!("{}€", "a".repeat(158)), "gsm7 160 1");
        check(&"é".repeat(160), "gsm7 160 1");
        check(&"ç".repeat(70), "ucs2 70 1");
        check(&"ç".repeat(71), "ucs2 71 2");
        check(&"ç".repeat(134), "ucs2 134 2");
        check(&"ç".repeat(135), "ucs2 135 3");
        check(&"🔥".repeat(35), "ucs2 70 1");
        check(&"🔥".repeat(36), "ucs2 72 2");
    }

    #[test]
    fn never_splits_an_escape_or_a_surrogate_pair() {
        // 152 septets, then `{` (2 septets) would straddle the 153-septet boundary: it
        // moves whole to part two.
        let text = format!("{}{{{}", "a".repeat(152), "b".repeat(10));
        let (_, parts) = split(&text);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "a".repeat(152));
        assert!(parts[1].starts_with('{'));
        // 306 septets would fit two parts exactly, but an escape at the boundary
        // pushes one septet into a third part, and the count says so.
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(152));
        check(&text, "gsm7 306 3");
        // 66 units then an emoji (2 units) across the 67-unit boundary.
        let text = format!("{}🔥{}", "ç".repeat(66), "ç".repeat(10));
        let (_, parts) = split(&text);
        assert_eq!(parts[0].encode_utf16().count(), 66);
        assert!(parts[1].starts_with('🔥'));
        for p in &parts {
            assert!(p.encode_utf16().count() <= 67);
        }
    }

    fn check_truncate(text: &str, max: usize, expected_tail: &str, expected: &str) {
        let out = truncate_to_segments(text, max);
        let a = analyze(&out);
        assert!(
            a.segments <= max.max(1),
            "{out:?} is {} segments",
            a.segments
        );
        assert!(
            out.ends_with(expected_tail),
            "{out:?} should end with {expected_tail:?}"
        );
        let got = format!("{} {} {}", a.encoding, a.units, a.segments);
        assert_eq!(got, expected, "for {out:?}");
    }

    #[test]
    fn truncates_at_a_character_boundary_with_an_ellipsis() {
        // Fits: unchanged.
        assert_eq!(truncate_to_segments(&"a".repeat(160), 1), "a".repeat(160));
        assert_eq!(truncate_to_segments("Hi 🔥", 1), "Hi 🔥");
        // GSM-7: 157 characters and "..." fill one segment.
        check_truncate(&"a".repeat(161), 1, "...", "gsm7 160 1");
        assert_eq!(
            truncate_to_segments(&"a".repeat(161), 1),
            format!("{}...", "a".repeat(157))
        );
        check_truncate(&"a".repeat(1000), 2, "...", "gsm7 306 2");
        // UCS-2: 69 units and "…".
        check_truncate(&"ç".repeat(71), 1, "…", "ucs2 70 1");
        check_truncate(&"ç".repeat(500), 3, "…", "ucs2 201 3");
        // Never half an emoji: 68 units of emoji would leave room for 34 emoji and
        // the ellipsis (69 units); a 35th would not fit.
        let out = truncate_to_segments(&"🔥".repeat(40), 1);
        assert_eq!(out, format!("{}…", "🔥".repeat(34)));
        // Never half an escape: with 156 septets used, `€` (2) plus "..." (3) would
        // make 161, so it is dropped whole.
        let text = format!("{}€€€€€", "a".repeat(156));
        assert_eq!(
            truncate_to_segments(&text, 1),
            format!("{}...", "a".repeat(156))
        );
        let text = format!("{}{{}}}}", "a".repeat(155));
        assert_eq!(
            truncate_to_segments(&text, 1),
            format!("{}{{...", "a".repeat(155))
        );
        // Trailing whitespace before the ellipsis is dropped.
        let text = format!("{} {}", "a".repeat(156), "b".repeat(10));
        assert_eq!(
            truncate_to_segments(&text, 1),
            format!("{}...", "a".repeat(156))
        );
        // A zero budget means one segment.
        check_truncate(&"a".repeat(400), 0, "...", "gsm7 160 1");
    }

    #[test]
    fn truncation_keeps_the_suffix() {
        let out = truncate_keeping_suffix(&"a".repeat(300), " (ref INC-1)", 1);
        assert_eq!(out, format!("{}... (ref INC-1)", "a".repeat(145)));
        assert_eq!(analyze(&out).units, 160);
        // The encoding is decided by the whole text: a UCS-2 suffix makes the body
        // UCS-2 too.
        let out = truncate_keeping_suffix(&"a".repeat(300), " 🔥", 1);
        assert_eq!(out, format!("{}… 🔥", "a".repeat(66)));
        // A suffix longer than the budget cannot be kept whole.
        let out = truncate_keeping_suffix("body", &"x".repeat(400), 1);
        assert_eq!(analyze(&out).segments, 1);
        assert!(out.starts_with("body") && out.ends_with("..."));
    }

    #[test]
    fn encodes_for_smpp() {
        assert_eq!(
            encode_gsm7_unpacked("A@$€{"),
            Some(vec![0x41, 0x00, 0x02, 0x1B, 0x65, 0x1B, 0x28])
        );
        assert_eq!(encode_gsm7_unpacked("🔥"), None);
        assert_eq!(encode_ucs2("é🔥"), vec![0x00, 0xE9, 0xD8, 0x3D, 0xDD, 0x25]);
        assert_eq!(encode("ç", Encoding::Gsm7), None);
        assert_eq!(Encoding::Ucs2.data_coding(), 8);
    }
}
