//! SMS replies: what a recipient texts back to confirm, told apart from the words
//! carriers and providers reserve.
//!
//! A reply confirms with the six-digit code its message gave (`Keys::reply_code`):
//! digits only, so it can never be a keyword. Carriers and providers act on their
//! own on the reserved words (Twilio, when the word is the whole message: opt-out
//! STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT; opt-in START, YES,
//! UNSTOP; help HELP, INFO; CTIA's list is the same, and ARRET is the French
//! opt-out). A reply that contains an opt-out word anywhere is only an opt-out
//! signal to log, even with a code beside it: when in doubt, the person wanted to
//! stop, not to confirm.

/// Opt-out words: the number stops receiving texts from the sender.
pub const OPT_OUT: [&str; 9] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "ARRET",
];
/// Opt-in words: the number receives texts again.
pub const OPT_IN: [&str; 3] = ["START", "YES", "UNSTOP"];
/// Help words: the provider answers with the sender's help text.
pub const HELP: [&str; 2] = ["HELP", "INFO"];

/// The most of a reply that is read: ten segments' worth. The rest is ignored.
pub const MAX_REPLY_CHARS: usize = 1600;

/// What a reply says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The code of a notice (six digits): a confirmation, if the code is the one
    /// sent to this number.
    Code(String),
    /// An opt-out word (`STOP`…): never a confirmation; logged.
    OptOut(&'static str),
    /// A single opt-in or help word (`START`, `HELP`…): the provider handles it.
    Keyword(&'static str),
    /// Anything else: no code, or more than one.
    Other,
}

/// Reads an SMS body.
pub fn parse(body: &str) -> Reply {
    let body: String = body.chars().take(MAX_REPLY_CHARS).collect();
    let words: Vec<String> = body
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_uppercase)
        .collect();
    for w in &words {
        if let Some(k) = OPT_OUT.iter().find(|k| **k == w.as_str()) {
            return Reply::OptOut(k);
        }
    }
    if let [only] = words.as_slice()
        && let Some(k) = OPT_IN
            .iter()
            .chain(HELP.iter())
            .find(|k| **k == only.as_str())
    {
        return Reply::Keyword(k);
    }
    let mut codes: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    codes.dedup();
    match codes.as_slice() {
        [code] => Reply::Code((*code).to_string()),
        _ => Reply::Other,
    }
}

/// True when `word` is any reserved word, in any case: a reply format must use none.
pub fn is_reserved(word: &str) -> bool {
    let w = word.to_uppercase();
    OPT_OUT
        .iter()
        .chain(OPT_IN.iter())
        .chain(HELP.iter())
        .any(|k| *k == w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check() {
        let cases: &[(&str, Reply)] = &[
            ("482193", Reply::Code("482193".into())),
            (" 482193.\n", Reply::Code("482193".into())),
            ("ok 482193 thanks", Reply::Code("482193".into())),
            ("YES 482193", Reply::Code("482193".into())),
            ("482193 482193", Reply::Code("482193".into())),
            ("482193 111111", Reply::Other),
            ("4821", Reply::Other),
            ("4821934", Reply::Other),
            ("", Reply::Other),
            ("STOP", Reply::OptOut("STOP")),
            ("stop 482193", Reply::OptOut("STOP")),
            ("Please unsubscribe", Reply::OptOut("UNSUBSCRIBE")),
            ("arret", Reply::OptOut("ARRET")),
            ("END.", Reply::OptOut("END")),
            ("yes", Reply::Keyword("YES")),
            ("Help", Reply::Keyword("HELP")),
            ("help me 482193", Reply::Code("482193".into())),
            ("٤٨٢١٩٣", Reply::Other),
        ];
        for (body, want) in cases {
            assert_eq!(&parse(body), want, "{body:?}");
        }
    }

    #[test]
    fn a_code_is_never_reserved() {
        assert!(!is_reserved("482193"));
        assert!(is_reserved("Stop") && is_reserved("info") && is_reserved("yes"));
    }

    #[test]
    fn a_long_reply_is_read_to_its_bound() {
        let long = format!("{}482193", "x ".repeat(MAX_REPLY_CHARS));
        assert_eq!(parse(&long), Reply::Other);
    }
}
