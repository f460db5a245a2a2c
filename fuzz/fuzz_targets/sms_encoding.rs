//! The SMS encoder and segmenter (crates/clarion-sms/src/encoding.rs) on arbitrary
//! text. Checked against an independent decoder and the 3GPP TS 23.038 limits:
//!
//! - round trip: decoding the encoded bytes gives the text back (GSM-7 through a
//!   reverse table built from the encoder itself, one character at a time; UCS-2
//!   through UTF-16);
//! - segments: one message holds at most 160 septets / 70 UTF-16 units, each part of
//!   a longer one at most 153 / 67, counted on the encoded bytes of each part; parts
//!   concatenate to the text and their encodings to the text's encoding, so no escape
//!   pair or surrogate pair is split; `analyze` agrees with `split`;
//! - truncation never exceeds the segment budget, leaves a text that fits unchanged,
//!   and keeps a suffix whole whenever the suffix fits on its own.
#![no_main]

use arbitrary::Arbitrary;
use clarion_sms::encoding::{
    Encoding, analyze, encode, encoding_of, split, truncate_keeping_suffix, truncate_to_segments,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    suffix: String,
    max_segments: u8,
}

/// GSM-7 septets (unpacked; an extension character as `0x1B`, code) back to
/// characters, from encoding every Basic Multilingual Plane character alone.
fn gsm7_table() -> &'static HashMap<Vec<u8>, char> {
    static TABLE: OnceLock<HashMap<Vec<u8>, char>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for c in (0..=0xFFFFu32).filter_map(char::from_u32) {
            if let Some(bytes) = encode(&c.to_string(), Encoding::Gsm7) {
                let previous = table.insert(bytes.clone(), c);
                assert!(previous.is_none(), "two characters encode as {bytes:?}");
            }
        }
        table
    })
}

fn decode(bytes: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Gsm7 => {
            let mut out = String::new();
            let mut i = 0;
            while i < bytes.len() {
                let len = if bytes[i] == 0x1B { 2 } else { 1 };
                let code = bytes.get(i..i + len).expect("an escape has its code");
                out.push(*gsm7_table().get(code).expect("a known septet"));
                i += len;
            }
            out
        }
        Encoding::Ucs2 => {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], *p.get(1).expect("even length")]))
                .collect();
            String::from_utf16(&units).expect("valid UTF-16")
        }
    }
}

/// Units in encoded bytes: septets (one byte each, unpacked) or UTF-16 code units.
fn units(bytes: &[u8], encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gsm7 => bytes.len(),
        Encoding::Ucs2 => bytes.len() / 2,
    }
}

fn segments(text: &str) -> usize {
    analyze(text).segments
}

fn check_segments(text: &str) {
    let encoding = encoding_of(text);
    let bytes = encode(text, encoding).expect("the chosen encoding carries the text");
    assert_eq!(decode(&bytes, encoding), text, "round trip");
    if encoding == Encoding::Ucs2 {
        assert!(
            encode(text, Encoding::Gsm7).is_none(),
            "UCS-2 chosen for GSM-7 text"
        );
    }

    let (split_encoding, parts) = split(text);
    assert_eq!(split_encoding, encoding);
    assert_eq!(parts.concat(), text);
    let analysis = analyze(text);
    assert_eq!(analysis.encoding, encoding);
    assert_eq!(analysis.segments, parts.len());
    assert_eq!(analysis.units, units(&bytes, encoding));
    let mut joined = Vec::new();
    for part in &parts {
        let part_bytes = encode(part, encoding).expect("a part encodes as the whole");
        let n = units(&part_bytes, encoding);
        let cap = if parts.len() == 1 {
            encoding.single_capacity()
        } else {
            assert!(n > 0, "empty part in {parts:?}");
            encoding.part_capacity()
        };
        assert!(n <= cap, "part of {n} units over {cap}: {part:?}");
        joined.extend(part_bytes);
    }
    assert_eq!(joined, bytes, "parts split an escape or a surrogate pair");
    let cap = match encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (70, 67),
    };
    assert_eq!((encoding.single_capacity(), encoding.part_capacity()), cap);
}

fuzz_target!(|input: Input| {
    let Input {
        text,
        suffix,
        max_segments,
    } = input;
    check_segments(&text);

    // Budgets of 0 (treated as 1) to 7 segments: larger ones behave the same way and
    // only need longer inputs.
    let budget = usize::from(max_segments % 8);
    let effective = budget.max(1);
    let cut = truncate_to_segments(&text, budget);
    check_segments(&cut);
    assert!(
        segments(&cut) <= effective,
        "{} segments over {effective}",
        segments(&cut)
    );
    if segments(&text) <= effective {
        assert_eq!(cut, text, "a text that fits was changed");
    }

    let kept = truncate_keeping_suffix(&text, &suffix, budget);
    check_segments(&kept);
    assert!(
        segments(&kept) <= effective,
        "{} segments over {effective}",
        segments(&kept)
    );
    let whole = format!("{text}{suffix}");
    if segments(&whole) <= effective {
        assert_eq!(kept, whole, "a text that fits was changed");
    } else if segments(&format!("{}{suffix}", encoding_of(&whole).ellipsis())) <= effective {
        assert!(kept.ends_with(&suffix), "suffix lost: {kept:?}");
    }
});
