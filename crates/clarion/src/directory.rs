//! The stakeholder directory: the people Clarion notifies directly, the audiences
//! each belongs to, and the push tokens, phone number and email address each can be
//! reached at.
//!
//! The daemon loads it from a file ([`load_file`], at start-up and on SIGHUP) or
//! keeps it from a compacted topic keyed by person id ([`Person::from_record`],
//! [`Directory::upsert`], [`Directory::remove`]), walks one audience at a time in
//! bounded batches in id order ([`Directory::members_after`], whose cursor is just
//! the last id seen, so it survives a restart), and writes a person back without an
//! address that turned out dead ([`Person::without`], [`Person::to_json`]).
//!
//! Pure logic: this module knows no Kafka and reads no file but the one it is given.
//! Its errors must never echo a full phone number or push token (an email address
//! may be shown: the operator needs it to find the row), and nothing input can reach
//! may panic. It must stay small per person: deployments list millions of them, so
//! a person is boxed strings with no spare capacity and shared audience names, and
//! a file is read straight into the directory, never held whole nor as a list of
//! people beside it.

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Bound;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use clarion_core::{STANDARD_AUDIENCES, mask};

/// The longest id accepted, in bytes: ids are Kafka keys and cursors, not documents.
const MAX_ID_BYTES: usize = 256;

/// The longest push token accepted, in bytes. FCM and APNs tokens are a few hundred
/// bytes; anything near this is not a token.
const MAX_PUSH_TOKEN_BYTES: usize = 4096;

/// How many problems a failed [`load_file`] lists before "… and N more": enough to
/// see the pattern, few enough to read in a log line.
const MAX_REPORTED: usize = 20;

/// The fields of a person, as files and records name them.
const FIELDS: &str = "id, audiences, push, sms, email";

/// The file extensions [`load_file`] reads.
const EXTENSIONS: &str = ".csv, .json, .jsonl, .ndjson";

/// How much of a directory file is read at a time.
const READ_BUFFER: usize = 64 * 1024;

/// One person in the directory, exactly as a directory file or topic record holds
/// them (a record's value is this object as JSON: [`Person::to_json`]).
///
/// Boxed strings and slices rather than `String`s and `Vec`s: they keep no spare
/// capacity and take 16 bytes each rather than 24, for each of millions of people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Stable, unique id (an employee number, a customer account id): the topic's
    /// record key and the batch cursor. At most 256 bytes, no whitespace.
    pub id: Box<str>,
    /// The audiences this person belongs to: `customers`, `business`, `employees`,
    /// `regulators`, or one the config's `audiences` declares. Each name is one
    /// string shared by everyone who lists it ([`audience_name`]).
    #[serde(
        serialize_with = "write_audiences",
        deserialize_with = "read_audiences"
    )]
    pub audiences: Box<[Arc<str>]>,
    /// Push device tokens (FCM registration tokens or APNs device tokens), one per
    /// device.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub push: Box<[Box<str>]>,
    /// Mobile number in E.164 (`+` then 8 to 15 digits), e.g. `+447700900123`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<Box<str>>,
    /// Email address, e.g. `jane.doe@example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Box<str>>,
}

/// The audience names people hold, each once: see [`audience_name`].
static AUDIENCE_NAMES: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());

/// How many names [`AUDIENCE_NAMES`] keeps. A deployment has a handful of
/// audiences; the bound is for records that name audiences that do not exist
/// (validation rejects them, but they are read first), so that a stream of them
/// cannot grow the table without end.
const MAX_AUDIENCE_NAMES: usize = 1024;

/// The shared copy of an audience's name: everyone who belongs to `customers`
/// holds the same string, a pointer each rather than a string each.
///
/// Names nobody holds any more are forgotten when the table is full; past that, a
/// name gets a copy of its own, as it did before names were shared.
fn audience_name(name: &str) -> Arc<str> {
    // Nothing can panic while the table is held, so a poisoned lock is still whole.
    let mut names = AUDIENCE_NAMES
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = names.get(name) {
        return Arc::clone(shared);
    }
    if names.len() >= MAX_AUDIENCE_NAMES {
        names.retain(|n| Arc::strong_count(n) > 1);
    }
    let shared: Arc<str> = Arc::from(name);
    if names.len() < MAX_AUDIENCE_NAMES {
        names.insert(Arc::clone(&shared));
    }
    shared
}

/// Serde's `Arc` support is behind a feature that would also drop sharing on the
/// way in; the names are written as plain strings instead.
fn write_audiences<S: Serializer>(audiences: &[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(audiences.iter().map(|a| &**a))
}

/// Reads a list of audience names as shared names.
fn read_audiences<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[Arc<str>]>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Ok(names.iter().map(|n| audience_name(n)).collect())
}

/// A kind of address a person has: the channel that delivers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressKind {
    /// A push device token ([`Person::push`]).
    Push,
    /// A phone number ([`Person::sms`]).
    Sms,
    /// An email address ([`Person::email`]).
    Email,
}

impl AddressKind {
    /// Every kind, in the order files list them.
    pub const ALL: [AddressKind; 3] = [AddressKind::Push, AddressKind::Sms, AddressKind::Email];

    /// The name files, records and metric labels use: `push`, `sms` or `email`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Push => "push",
            AddressKind::Sms => "sms",
            AddressKind::Email => "email",
        }
    }
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AddressKind {
    type Err = String;

    /// Parses `push`, `sms` or `email`.
    fn from_str(s: &str) -> Result<Self, String> {
        AddressKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "`{}` is not an address kind (expected `push`, `sms` or `email`)",
                    s.escape_debug()
                )
            })
    }
}

impl Person {
    /// This person's addresses of one kind: every push token, or the phone number or
    /// email address if there is one.
    pub fn addresses(&self, kind: AddressKind) -> Vec<&str> {
        match kind {
            AddressKind::Push => self.push.iter().map(|t| &**t).collect(),
            AddressKind::Sms => self.sms.as_deref().into_iter().collect(),
            AddressKind::Email => self.email.as_deref().into_iter().collect(),
        }
    }

    /// Whether this person lists `audience`.
    pub fn belongs_to(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| **a == *audience)
    }

    /// A copy of this person without `address`, to write back when a channel reports
    /// it dead; `None` when they have no such address (already removed: nothing to
    /// write). Tokens and numbers must match exactly, email addresses match
    /// ignoring case.
    ///
    /// The copy may have no address left, which [`validate`] rejects: when every
    /// kind's [`Person::addresses`] is empty, delete the person (a tombstone)
    /// instead of writing the copy.
    pub fn without(&self, kind: AddressKind, address: &str) -> Option<Person> {
        match kind {
            AddressKind::Push => {
                if !self.push.iter().any(|t| **t == *address) {
                    return None;
                }
                Some(Person {
                    push: self
                        .push
                        .iter()
                        .filter(|t| ***t != *address)
                        .cloned()
                        .collect(),
                    ..self.clone()
                })
            }
            AddressKind::Sms => (self.sms.as_deref() == Some(address)).then(|| Person {
                sms: None,
                ..self.clone()
            }),
            AddressKind::Email => self
                .email
                .as_deref()
                .is_some_and(|e| same_email(e, address))
                .then(|| Person {
                    email: None,
                    ..self.clone()
                }),
        }
    }

    /// The topic record's value: this person as a JSON object (empty `push` and
    /// absent `sms`/`email` left out).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a Person is strings and lists of strings, which always serialize")
    }

    /// Reads a topic record: `value` is the person's JSON object. Its `id` may be
    /// left out, then it is `key`; if present it must equal `key`, so that
    /// compaction keeps the right record.
    ///
    /// This checks the shape only: call [`validate`] with the configured audiences
    /// before using the person. A null value (a tombstone) is a deletion, not a
    /// person: the caller handles it before calling this.
    pub fn from_record(key: &str, value: &[u8]) -> Result<Person, String> {
        let json: Value =
            serde_json::from_slice(value).map_err(|e| format!("invalid JSON: {e}"))?;
        person_from_json(json, Some(key))
    }
}

/// Whether two email addresses are the same mailbox for our purposes: equal
/// ignoring case (providers report addresses in whatever case they were sent to).
fn same_email(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
}

/// Checks one person: a valid id; at least one audience, each known and listed
/// once; at least one address; a valid number, email address and push tokens.
///
/// `audiences` is the deployment's audiences (`Settings::audiences`: the standard
/// four and the config's own); the standard four are accepted even when absent.
/// The error names the field and what is wrong with it, e.g. ``audiences:
/// `partners` is not a standard audience nor listed in the config's `audiences` ``,
/// and never shows a whole phone number or push token.
pub fn validate(person: &Person, audiences: &BTreeSet<String>) -> Result<(), String> {
    check_id(&person.id)?;
    check_audiences(&person.audiences, audiences)?;
    if person.push.is_empty() && person.sms.is_none() && person.email.is_none() {
        return Err("push, sms, email: none is given, a person needs at least one address".into());
    }
    if let Some(sms) = &person.sms {
        check_sms(sms)?;
    }
    if let Some(email) = &person.email {
        check_email(email)?;
    }
    check_push(&person.push)
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id: is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "id: is {} bytes long, the limit is {MAX_ID_BYTES}",
            id.len()
        ));
    }
    if has_space_or_control(id) {
        return Err(format!(
            "id: `{}` contains whitespace or a control character",
            id.escape_debug()
        ));
    }
    Ok(())
}

fn check_audiences(listed: &[Arc<str>], known: &BTreeSet<String>) -> Result<(), String> {
    if listed.is_empty() {
        return Err("audiences: is empty, a person must belong to at least one audience".into());
    }
    for (i, a) in listed.iter().enumerate() {
        if listed[..i].contains(a) {
            return Err(format!("audiences: `{}` is listed twice", a.escape_debug()));
        }
        if !known.contains(&**a) && !STANDARD_AUDIENCES.contains(&&**a) {
            return Err(format!(
                "audiences: `{}` is not a standard audience nor listed in the config's `audiences`",
                a.escape_debug()
            ));
        }
    }
    Ok(())
}

fn check_sms(sms: &str) -> Result<(), String> {
    if sms.is_empty() {
        return Err("sms: is empty (leave it out when there is no number)".into());
    }
    if !clarion_sms::is_e164(sms) {
        // Masked: a directory error ends up in logs, which must not collect numbers.
        return Err(format!(
            "sms: `{}` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)",
            mask(Some(sms)).escape_debug()
        ));
    }
    Ok(())
}

/// A plausibility check, not RFC 5322: it catches what directories actually get
/// wrong (a name in the cell, two addresses, a missing domain) and leaves the rest
/// to the mail server. Quoted local parts and IP-literal domains are refused.
fn check_email(email: &str) -> Result<(), String> {
    if email.is_empty() {
        return Err("email: is empty (leave it out when there is no address)".into());
    }
    if has_space_or_control(email) {
        return Err(format!(
            "email: `{}` contains whitespace or a control character",
            email.escape_debug()
        ));
    }
    if email.len() > 254 {
        return Err(format!(
            "email: is {} bytes long, the limit is 254",
            email.len()
        ));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(format!("email: `{email}` has no `@`"));
    };
    if domain.contains('@') {
        return Err(format!("email: `{email}` has more than one `@`"));
    }
    if local.is_empty() {
        return Err(format!("email: `{email}` has nothing before the `@`"));
    }
    if local.len() > 64 {
        return Err(format!(
            "email: `{email}`: the part before the `@` is longer than 64 bytes"
        ));
    }
    if let Some(c) = local.chars().find(|c| "<>()[]\\,;:\"".contains(*c)) {
        return Err(format!(
            "email: `{email}`: `{c}` is not allowed before the `@`"
        ));
    }
    if !domain.contains('.') {
        return Err(format!(
            "email: `{email}`: the domain `{domain}` has no dot"
        ));
    }
    if domain.split('.').any(str::is_empty) {
        return Err(format!(
            "email: `{email}`: the domain `{domain}` has an empty label (a dot at the start or end, or two in a row)"
        ));
    }
    if let Some(c) = domain
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "email: `{email}`: `{c}` is not allowed in a domain name"
        ));
    }
    Ok(())
}

fn check_push(tokens: &[Box<str>]) -> Result<(), String> {
    for (i, token) in tokens.iter().enumerate() {
        // Tokens are credentials of a sort: the errors say where, never what.
        if token.is_empty() {
            return Err(format!("push[{i}]: is empty"));
        }
        if has_space_or_control(token) {
            return Err(format!(
                "push[{i}]: contains whitespace or a control character"
            ));
        }
        if token.len() > MAX_PUSH_TOKEN_BYTES {
            return Err(format!(
                "push[{i}]: is {} bytes long, the limit is {MAX_PUSH_TOKEN_BYTES}",
                token.len()
            ));
        }
        if let Some(first) = tokens[..i].iter().position(|t| t == token) {
            return Err(format!("push[{i}]: is the same token as push[{first}]"));
        }
    }
    Ok(())
}

fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reads and validates a whole directory file, by its extension:
///
/// - `.csv`: a header row naming the columns `id`, `audiences`, and optionally
///   `push`, `sms`, `email`, in any order; `audiences` and `push` cells hold
///   `;`-separated lists; an empty cell is none; whitespace around cells and list
///   items is ignored.
/// - `.json`: an array of person objects.
/// - `.jsonl` / `.ndjson`: one person object per line; blank lines are skipped.
///
/// Any problem fails the whole load, so that a half-read file never replaces a
/// good directory: the error lists every bad entry as `path:line: field: problem`
/// (`path[index]: ...` for a JSON array), the first 20 then "… and N more". A
/// duplicate id names both places. A file with no people is a valid, empty
/// directory (a CSV file still needs its header row).
///
/// The file is read a buffer at a time and each person goes straight into the
/// directory, so that loading costs little more than the directory it builds.
pub fn load_file(path: &Path, audiences: &BTreeSet<String>) -> anyhow::Result<Directory> {
    let shown = path.display().to_string();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match extension.as_deref() {
        Some("csv") => Format::Csv,
        Some("json") => Format::Json,
        Some("jsonl" | "ndjson") => Format::Jsonl,
        Some(other) => {
            bail!("{shown}: `.{other}` is not a directory file extension (supported: {EXTENSIONS})")
        }
        None => bail!(
            "{shown}: a directory file needs an extension that says its format (supported: {EXTENSIONS})"
        ),
    };
    let mut loader = Loader {
        audiences,
        people: BTreeSet::new(),
        reported: Vec::new(),
        problem_count: 0,
    };
    read(path, &shown, format, &mut loader)?;
    let Loader {
        people,
        reported,
        problem_count,
        ..
    } = loader;
    if problem_count == 0 {
        return Ok(Directory {
            people: RwLock::new(people),
        });
    }
    // Freed before the report reads the file again.
    drop(people);
    Err(report(path, &shown, format, reported, problem_count))
}

/// A directory file's format, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Json,
    Jsonl,
}

/// Reads a directory file of `format`, giving each entry to `entries` in file
/// order. `Err` is a problem that stops the reading: the file cannot be read, is
/// not JSON, or its CSV header is wrong.
fn read(
    path: &Path,
    shown: &str,
    format: Format,
    entries: &mut impl Entries,
) -> anyhow::Result<()> {
    let file = open(path).with_context(|| format!("cannot read the directory {shown}"))?;
    match format {
        Format::Csv => read_csv(file, shown, entries),
        Format::Json => read_json(BufReader::with_capacity(READ_BUFFER, file), shown, entries),
        Format::Jsonl => read_jsonl(BufReader::with_capacity(READ_BUFFER, file), shown, entries),
    }
}

/// The file's content, without the byte-order mark spreadsheets like to start a
/// UTF-8 file with.
fn open(path: &Path) -> io::Result<io::Chain<io::Cursor<Vec<u8>>, File>> {
    let mut file = File::open(path)?;
    let mut start = Vec::with_capacity(3);
    Read::by_ref(&mut file).take(3).read_to_end(&mut start)?;
    if start == b"\xEF\xBB\xBF" {
        start.clear();
    }
    Ok(io::Cursor::new(start).chain(file))
}

/// Where a reader puts what it finds, in file order (which is place order): the
/// loader, or the second reading of a failed load that looks for where duplicated
/// ids first appeared.
trait Entries {
    /// Takes one entry, parsed or not, found at `place`: a line, or an index in a
    /// JSON array.
    fn entry(&mut self, place: u64, parsed: Result<Person, String>);

    /// Takes a problem with a place that is not an entry (a CSV row that is not
    /// UTF-8).
    fn problem(&mut self, place: u64, problem: String);
}

/// Builds the directory of one file, and collects its problems. (No `Debug`: it
/// would print every person, addresses included.)
struct Loader<'a> {
    audiences: &'a BTreeSet<String>,
    /// Everyone whose id is valid, the invalid included (they take part in the
    /// duplicate check): the directory, if nothing is wrong.
    people: BTreeSet<ById>,
    /// The first problems, by place.
    reported: Vec<(u64, Problem)>,
    problem_count: usize,
}

/// One problem of a failed load.
#[derive(Debug)]
enum Problem {
    /// `field: problem`.
    Invalid(String),
    /// The id of an earlier entry, to be found again: see [`report`].
    SameId(Box<str>),
}

impl Entries for Loader<'_> {
    fn entry(&mut self, place: u64, parsed: Result<Person, String>) {
        match parsed {
            Ok(person) => {
                if let Err(e) = validate(&person, self.audiences) {
                    self.problem(place, e);
                }
                // Even an otherwise invalid person takes part in the duplicate
                // check, so that fixing one problem does not reveal another. The
                // set itself is the check: it keeps the first of two people with
                // one id.
                if check_id(&person.id).is_ok() {
                    let person = Arc::new(person);
                    if !self.people.insert(ById(Arc::clone(&person))) {
                        self.report(place, || Problem::SameId(person.id.clone()));
                    }
                }
            }
            Err(e) => self.problem(place, e),
        }
    }

    fn problem(&mut self, place: u64, problem: String) {
        self.report(place, || Problem::Invalid(problem));
    }
}

impl Loader<'_> {
    /// Records a problem. Problems arrive in file order, so the first few are the
    /// ones to show; the rest are only counted.
    fn report(&mut self, place: u64, problem: impl FnOnce() -> Problem) {
        self.problem_count += 1;
        if self.reported.len() < MAX_REPORTED {
            self.reported.push((place, problem()));
        }
    }
}

/// The error of a failed load: `total` problems, the first of them `reported`.
///
/// Where a duplicated id first appeared is found by reading the file again: the
/// loader keeps no place per person, which would cost every good load memory for
/// the sake of a failed one.
fn report(
    path: &Path,
    shown: &str,
    format: Format,
    reported: Vec<(u64, Problem)>,
    total: usize,
) -> anyhow::Error {
    let by_index = format == Format::Json;
    let mut firsts = FirstPlaces {
        wanted: reported
            .iter()
            .filter_map(|(_, problem)| match problem {
                Problem::SameId(id) => Some((id.clone(), None)),
                Problem::Invalid(_) => None,
            })
            .collect(),
    };
    if !firsts.wanted.is_empty() {
        // The file was just read; should it have changed since, a place not
        // found again is said to be unknown, below.
        let _ = read(path, shown, format, &mut firsts);
    }
    let mut report = format!(
        "directory {shown}: {total} problem{}",
        if total == 1 { "" } else { "s" }
    );
    for (place, problem) in &reported {
        let at = if by_index {
            format!("{shown}[{place}]")
        } else {
            format!("{shown}:{place}")
        };
        match problem {
            Problem::Invalid(problem) => report.push_str(&format!("\n{at}: {problem}")),
            Problem::SameId(id) => {
                let earlier = match firsts.wanted.get(id).copied().flatten() {
                    Some(first) if first < *place && by_index => format!("[{first}]"),
                    Some(first) if first < *place => format!("line {first}"),
                    _ => "an earlier place (the file changed while it was read)".to_string(),
                };
                report.push_str(&format!(
                    "\n{at}: id: `{}` is also the id at {earlier}",
                    id.escape_debug()
                ));
            }
        }
    }
    if total > reported.len() {
        report.push_str(&format!("\n… and {} more", total - reported.len()));
    }
    anyhow!(report)
}

/// Finds the first place of each of a few ids.
#[derive(Debug)]
struct FirstPlaces {
    wanted: BTreeMap<Box<str>, Option<u64>>,
}

impl Entries for FirstPlaces {
    fn entry(&mut self, place: u64, parsed: Result<Person, String>) {
        if let Ok(person) = parsed {
            if let Some(first @ None) = self.wanted.get_mut(&*person.id) {
                *first = Some(place);
            }
        }
    }

    fn problem(&mut self, _: u64, _: String) {}
}

/// The CSV columns, by position in the header row.
#[derive(Debug)]
struct Columns {
    id: usize,
    audiences: usize,
    push: Option<usize>,
    sms: Option<usize>,
    email: Option<usize>,
    count: usize,
}

/// The column names a CSV header may use, in [`Columns`] order.
const CSV_COLUMNS: [&str; 5] = ["id", "audiences", "push", "sms", "email"];

fn read_csv(file: impl Read, path: &str, entries: &mut impl Entries) -> anyhow::Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        // The header is read as a record of its own, to know its line.
        .has_headers(false)
        // Rows with the wrong number of cells are reported per row, not fatal.
        .flexible(true)
        .trim(csv::Trim::All)
        .buffer_capacity(READ_BUFFER)
        .from_reader(LineCounter::new(file));
    let mut row = csv::StringRecord::new();
    let header_found = reader
        .read_record(&mut row)
        .map_err(|e| csv_error(path, e, "cannot read the header row"))?;
    if !header_found {
        bail!(
            "{path}: the file is empty; a CSV directory starts with a header row naming its columns ({FIELDS}; push, sms and email are optional)"
        );
    }
    let header_line = reader.get_mut().line_of(row.position());
    let columns = csv_columns(&row).map_err(|e| anyhow!("{path}:{header_line}: {e}"))?;
    loop {
        match reader.read_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {
                // Even for a skipped row: it lets the counter forget its lines.
                let line = reader.get_mut().line_of(row.position());
                // A spreadsheet's trailing `,,,,` rows are blank lines too.
                if !row.iter().all(str::is_empty) {
                    entries.entry(line, person_from_row(&row, &columns));
                }
            }
            // The reader moves past a row that is not UTF-8, so it can go on.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
                let line = reader.get_mut().line_of(e.position());
                entries.problem(line, "is not valid UTF-8".into());
            }
            Err(e) => return Err(csv_error(path, e, "cannot read the CSV")),
        }
    }
    Ok(())
}

/// A CSV reader's error: the file's if it could not be read, else the CSV's.
fn csv_error(path: &str, e: csv::Error, doing: &str) -> anyhow::Error {
    let message = format!("{path}: {doing}: {e}");
    match e.into_kind() {
        csv::ErrorKind::Io(e) => {
            anyhow::Error::new(e).context(format!("cannot read the directory {path}"))
        }
        _ => anyhow!(message),
    }
}

/// Passes a CSV file to its reader, noting where its line endings are, to tell
/// the line a record starts on as an editor numbers it.
///
/// The reader's own line numbers are off after a blank line or a CRLF line end
/// (it counts a skipped line ending as part of the record that follows), and its
/// byte positions point before those line endings: so this counts the newlines
/// before a record's byte position, and those of the line endings it points at.
///
/// The reader reads ahead of the record it returns, so the line endings read but
/// not yet passed are kept, as runs of consecutive `\r` and `\n`. A run of blank
/// lines is one run, and each record passes every run before it, so there are
/// never more than the reader's buffer has records.
#[derive(Debug)]
struct LineCounter<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    runs: VecDeque<Run>,
    /// The line of the last record passed.
    line: u64,
}

/// Consecutive line-ending bytes, from byte `start` to before `end`.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    newlines: u64,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            runs: VecDeque::new(),
            line: 1,
        }
    }

    /// The line of the record at `position`. Records come in order.
    fn line_of(&mut self, position: Option<&csv::Position>) -> u64 {
        let Some(position) = position else {
            return self.line;
        };
        // A run that starts at or before the position ends before the record's
        // first cell (the reader has read past that cell, so the run is whole).
        while let Some(run) = self.runs.front().filter(|r| r.start <= position.byte()) {
            self.line += run.newlines;
            self.runs.pop_front();
        }
        self.line
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        for (i, &b) in read.iter().enumerate() {
            if b != b'\n' && b != b'\r' {
                continue;
            }
            let at = self.offset + i as u64;
            let newline = u64::from(b == b'\n');
            match self.runs.back_mut() {
                Some(run) if run.end == at => {
                    run.end += 1;
                    run.newlines += newline;
                }
                _ => self.runs.push_back(Run {
                    start: at,
                    end: at + 1,
                    newlines: newline,
                }),
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

fn csv_columns(header: &csv::StringRecord) -> Result<Columns, String> {
    let mut found: [Option<usize>; 5] = [None; 5];
    let mut unknown = Vec::new();
    for (i, name) in header.iter().enumerate() {
        match CSV_COLUMNS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
        {
            Some(c) if found[c].is_some() => {
                return Err(format!(
                    "header: the column `{}` appears twice",
                    CSV_COLUMNS[c]
                ));
            }
            Some(c) => found[c] = Some(i),
            None if name.is_empty() => {
                unknown.push(format!("column {} has no name", i + 1));
            }
            None => unknown.push(format!("unknown column `{}`", header_name(name))),
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "header: {} (the columns are {FIELDS}; is the header row missing?)",
            unknown.join(", ")
        ));
    }
    let [Some(id), Some(audiences), push, sms, email] = found else {
        let missing: Vec<&str> = CSV_COLUMNS[..2]
            .iter()
            .zip(found)
            .filter(|(_, f)| f.is_none())
            .map(|(name, _)| *name)
            .collect();
        return Err(format!(
            "header: no `{}` column (the columns are {FIELDS}; push, sms and email are optional)",
            missing.join("` or `")
        ));
    };
    Ok(Columns {
        id,
        audiences,
        push,
        sms,
        email,
        count: header.len(),
    })
}

/// An unknown header cell as an error shows it: when the header row is missing,
/// the first data row is taken for it, and its number or token must not be shown.
fn header_name(name: &str) -> String {
    let word = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if word && name.len() <= 32 {
        name.to_string()
    } else {
        mask(Some(name))
    }
}

fn person_from_row(row: &csv::StringRecord, columns: &Columns) -> Result<Person, String> {
    if row.len() != columns.count {
        return Err(format!(
            "has {} cells, the header has {}",
            row.len(),
            columns.count
        ));
    }
    let cell = |i: usize| row.get(i).unwrap_or_default();
    let optional = |i: Option<usize>| i.map(cell).filter(|c| !c.is_empty()).map(Box::from);
    Ok(Person {
        id: cell(columns.id).into(),
        audiences: csv_list(cell(columns.audiences))
            .map(audience_name)
            .collect(),
        push: columns
            .push
            .map(|i| csv_list(cell(i)).map(Box::from).collect())
            .unwrap_or_default(),
        sms: optional(columns.sms),
        email: optional(columns.email),
    })
}

/// A `;`-separated list cell's items; empty items (a trailing `;`) are ignored.
fn csv_list(cell: &str) -> impl Iterator<Item = &str> {
    cell.split(';')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Reads a JSON array of people.
fn read_json(file: impl Read, path: &str, entries: &mut impl Entries) -> anyhow::Result<()> {
    use serde::de::DeserializeSeed as _;
    let mut deserializer = serde_json::Deserializer::from_reader(file);
    JsonElements { entries }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| {
            if e.is_io() {
                anyhow::Error::new(e).context(format!("cannot read the directory {path}"))
            } else {
                anyhow!("{path}: invalid JSON: {e}")
            }
        })
}

/// Feeds a JSON array's elements to the entries one by one, so that a bad element
/// is reported with its index and a million-element file is never a million
/// `Value`s.
struct JsonElements<'e, E> {
    entries: &'e mut E,
}

impl<'de, E: Entries> serde::de::DeserializeSeed<'de> for JsonElements<'_, E> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, E: Entries> serde::de::Visitor<'de> for JsonElements<'_, E> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of person objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(element) = seq.next_element::<Value>()? {
            self.entries.entry(index, person_from_json(element, None));
            index += 1;
        }
        Ok(())
    }
}

/// Reads one JSON person per line, a line at a time.
fn read_jsonl(
    mut file: impl BufRead,
    path: &str,
    entries: &mut impl Entries,
) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let mut number = 0;
    loop {
        buffer.clear();
        let read = file
            .read_until(b'\n', &mut buffer)
            .with_context(|| format!("cannot read the directory {path}"))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        let line = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = serde_json::from_slice(line)
            .map_err(|e| format!("invalid JSON: {e}"))
            .and_then(|json| person_from_json(json, None));
        entries.entry(number, parsed);
    }
}

/// A person from a JSON object. Written out rather than derived so that errors name
/// the field and never quote its value (serde's type errors quote numbers, and a
/// phone number written as a number is a likely mistake). `key`, for a topic
/// record, stands in for a missing `id` and must equal a present one.
fn person_from_json(json: Value, key: Option<&str>) -> Result<Person, String> {
    let Value::Object(object) = json else {
        return Err(format!(
            "expected an object with the fields {FIELDS}, found {}",
            json_kind(&json)
        ));
    };
    let mut id = None;
    let mut audiences = None;
    let mut push = Box::default();
    let mut sms = None;
    let mut email = None;
    for (field, value) in object {
        match field.as_str() {
            "id" => id = Some(json_string("id", value)?),
            "audiences" => {
                audiences = Some(
                    json_strings("audiences", value)?
                        .iter()
                        .map(|a| audience_name(a))
                        .collect(),
                );
            }
            "push" => {
                push = json_strings("push", value)?
                    .into_iter()
                    .map(String::into_boxed_str)
                    .collect();
            }
            // Null is absent, as serde reads an `Option`.
            "sms" if value.is_null() => {}
            "sms" => sms = Some(json_string("sms", value)?),
            "email" if value.is_null() => {}
            "email" => email = Some(json_string("email", value)?),
            other => {
                return Err(format!(
                    "{}: unknown field (the fields are {FIELDS})",
                    other.escape_debug()
                ));
            }
        }
    }
    let id = match (id, key) {
        (Some(id), Some(key)) if id != key => {
            return Err(format!(
                "id: `{}` is not the record's key `{}`",
                id.escape_debug(),
                key.escape_debug()
            ));
        }
        (Some(id), _) => id,
        (None, Some(key)) => key.to_string(),
        (None, None) => return Err("id: is missing".into()),
    };
    let Some(audiences) = audiences else {
        return Err("audiences: is missing".into());
    };
    Ok(Person {
        id: id.into_boxed_str(),
        audiences,
        push,
        sms: sms.map(String::into_boxed_str),
        email: email.map(String::into_boxed_str),
    })
}

fn json_string(field: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!(
            "{field}: expected a string, found {}",
            json_kind(&other)
        )),
    }
}

fn json_strings(field: &str, value: Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) => {
            let mut strings = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) => strings.push(s),
                    other => {
                        return Err(format!(
                            "{field}[{i}]: expected a string, found {}",
                            json_kind(&other)
                        ));
                    }
                }
            }
            Ok(strings)
        }
        other => Err(format!(
            "{field}: expected a list of strings, found {}",
            json_kind(&other)
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The directory the daemon delivers from: every person by id, shared between the
/// loader (or topic consumer) that updates it and the deliveries that read it.
///
/// People are kept once, in id order; there is no index per audience, so that a
/// million people cost a million entries. [`Directory::members_after`] therefore
/// skips non-members as it goes: walking a whole audience reads the directory once
/// from the cursor on, however the walk is batched.
#[derive(Default)]
pub struct Directory {
    /// Ordered by id (byte order); each entry is its own key, so an id is stored
    /// once, inside its person.
    people: RwLock<BTreeSet<ById>>,
}

/// A person ordered and looked up by id, so that a set of them is a map from id
/// to person without a second copy of every id.
#[derive(Clone)]
struct ById(Arc<Person>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    // Must agree with `str`'s order, which `Borrow<str>` lookups use.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

impl fmt::Debug for Directory {
    // Not derived: a derived `Debug` would print every person, addresses included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("people", &self.len())
            .finish()
    }
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory of `people`. When two share an id, the later one is kept, as if
    /// each were [`Directory::upsert`]ed in turn. The daemon loads with
    /// [`load_file`] or follows a topic; this is the tests' way in.
    #[cfg(test)]
    pub fn from_people(people: impl IntoIterator<Item = Person>) -> Self {
        let mut set = BTreeSet::new();
        for person in people {
            set.replace(ById(Arc::new(person)));
        }
        Self {
            people: RwLock::new(set),
        }
    }

    /// Adds `person`, or replaces the person with their id. The caller
    /// [`validate`]s first.
    pub fn upsert(&self, person: Person) {
        self.write().replace(ById(Arc::new(person)));
    }

    /// Removes the person with this id, if there is one.
    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// The person with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Person>> {
        self.read().get(id).map(|p| p.0.clone())
    }

    /// How many people the directory holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the directory holds no one.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// How many people belong to `audience`. Reads the whole directory (O(n), some
    /// 20 ms per million people): meant for progress reports and metrics, not for
    /// every delivery.
    pub fn members(&self, audience: &str) -> usize {
        self.read()
            .iter()
            .filter(|p| p.0.belongs_to(audience))
            .count()
    }

    /// Up to `limit` members of `audience` with id strictly greater than `after`
    /// (all when None), in id order (byte order of the id).
    ///
    /// Pass the last id of one batch as `after` to get the next; fewer than `limit`
    /// means the walk is done. The cursor is only an id, so it survives restarts and
    /// the removal of the person it names. Starts at `after` without reading the
    /// people before it, then skips non-members, so a rare audience's batch may read
    /// far; the whole walk reads the directory once.
    pub fn members_after(
        &self,
        audience: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Person>> {
        if limit == 0 {
            return Vec::new();
        }
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.read()
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|p| p.0.belongs_to(audience))
            .take(limit)
            .map(|p| p.0.clone())
            .collect()
    }

    // A panic elsewhere while holding the lock cannot leave the set half-changed
    // (every change is one `BTreeSet` call), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, BTreeSet<ById>> {
        self.people.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeSet<ById>> {
        self.people.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

    fn audiences() -> BTreeSet<String> {
        [
            "customers",
            "business",
            "employees",
            "regulators",
            "wholesale",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    fn person(id: &str, audiences: &[&str]) -> Person {
        Person {
            id: id.into(),
            audiences: names(audiences),
            push: Box::default(),
            sms: None,
            email: Some(format!("{id}@example.com").into()),
        }
    }

    /// Shared audience names, as a person holds them.
    fn names(list: &[&str]) -> Box<[Arc<str>]> {
        list.iter().map(|a| audience_name(a)).collect()
    }

    /// Push tokens, as a person holds them.
    fn tokens(list: &[&str]) -> Box<[Box<str>]> {
        list.iter().map(|t| Box::from(*t)).collect()
    }

    /// A list of boxed strings as plain strings, to compare.
    fn strs<T: AsRef<str>>(items: &[T]) -> Vec<&str> {
        items.iter().map(AsRef::as_ref).collect()
    }

    /// `items` and then `item`.
    fn and<T: Clone>(items: &[T], item: T) -> Box<[T]> {
        items.iter().cloned().chain([item]).collect()
    }

    /// A file of this name and content in a directory of its own under the system
    /// temporary directory.
    fn write(name: &str, content: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clarion-directory-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, AtomicOrdering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write a temporary file");
        path
    }

    /// Loads a file of this name and content: its people in id order, or the
    /// error.
    fn load(name: &str, content: &str) -> Result<Vec<Person>, String> {
        let path = write(name, content);
        let result = load_file(&path, &audiences())
            .map(|dir| dir.read().iter().map(|p| Person::clone(&p.0)).collect())
            .map_err(|e| {
                // Paths differ per run; the tests compare what follows them.
                e.to_string().replace(&path.display().to_string(), "FILE")
            });
        let _ = std::fs::remove_dir_all(path.parent().expect("file has a parent"));
        result
    }

    fn load_err(name: &str, content: &str) -> String {
        match load(name, content) {
            Ok(people) => panic!("expected an error, loaded {people:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn csv_with_columns_in_any_order_lists_and_whitespace() {
        let people = load(
            "people.csv",
            "\u{feff}email , id,audiences,  sms,push\n\
             jane@example.com,u1,customers,+447700900123,\n\
             \n\
             , u2 , employees; regulators ;, , tokA;tokB\n\
             \"ops@example.com\",u3,business,,\n",
        )
        .expect("valid file");
        assert_eq!(
            people,
            vec![
                Person {
                    id: "u1".into(),
                    audiences: names(&["customers"]),
                    push: tokens(&[]),
                    sms: Some("+447700900123".into()),
                    email: Some("jane@example.com".into()),
                },
                Person {
                    id: "u2".into(),
                    audiences: names(&["employees", "regulators"]),
                    push: tokens(&["tokA", "tokB"]),
                    sms: None,
                    email: None,
                },
                Person {
                    id: "u3".into(),
                    audiences: names(&["business"]),
                    push: tokens(&[]),
                    sms: None,
                    email: Some("ops@example.com".into()),
                },
            ]
        );
    }

    #[test]
    fn csv_optional_columns_may_be_left_out() {
        let people =
            load("p.CSV", "id,audiences,email\nu1,customers,u1@example.com\n").expect("valid");
        assert_eq!(people, vec![person("u1", &["customers"])]);
    }

    #[test]
    fn csv_header_problems() {
        assert_eq!(
            load_err("p.csv", "id,audiences,phone,\nu1,customers,,\n"),
            "FILE:1: header: unknown column `phone`, column 4 has no name (the columns are id, audiences, push, sms, email; is the header row missing?)"
        );
        // A missing header row: the first person is read as the header, and their
        // number is not shown.
        assert_eq!(
            load_err("p.csv", "u1,customers,,+447700900123,\n"),
            "FILE:1: header: unknown column `u1`, unknown column `customers`, column 3 has no name, unknown column `+4***0123`, column 5 has no name (the columns are id, audiences, push, sms, email; is the header row missing?)"
        );
        assert_eq!(
            load_err("p.csv", "id,email\n"),
            "FILE:1: header: no `audiences` column (the columns are id, audiences, push, sms, email; push, sms and email are optional)"
        );
        assert_eq!(
            load_err("p.csv", "id,audiences,email,Email\n"),
            "FILE:1: header: the column `email` appears twice"
        );
        assert!(load_err("p.csv", "").contains("the file is empty"));
    }

    #[test]
    fn csv_errors_give_editor_line_numbers() {
        let err = load_err(
            "p.csv",
            "id,audiences,sms,email\n\
             u1,customers,,a@example.com\n\
             \n\
             u2,partners,,b@example.com\n\
             \"u3\",customers,\"+44 7700\n900123\",\n\
             u4,customers,+447700900123\n\
             u5,customers,07700900123,\n",
        );
        assert_eq!(
            err,
            "directory FILE: 4 problems\n\
             FILE:4: audiences: `partners` is not a standard audience nor listed in the config's `audiences`\n\
             FILE:5: sms: `+4***0123` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)\n\
             FILE:7: has 3 cells, the header has 4\n\
             FILE:8: sms: `07***0123` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)"
        );
        for number in ["07700900123", "+44 7700\n900123"] {
            assert!(!err.contains(number), "a number is shown in full: {err}");
        }
    }

    #[test]
    fn csv_line_numbers_survive_crlf_blank_and_empty_rows() {
        let err = load_err(
            "p.csv",
            "\r\nid,audiences,email\r\nu1,customers,a@example.com\r\n\r\n\r\n,,\r\nu2,customers,bad\r\n",
        );
        assert_eq!(
            err,
            "directory FILE: 1 problem\nFILE:7: email: `bad` has no `@`"
        );
    }

    #[test]
    fn duplicate_ids_name_both_places() {
        assert_eq!(
            load_err(
                "p.csv",
                "id,audiences,email\nu1,customers,a@example.com\nu2,customers,b@example.com\nu1,business,c@example.com\nu1,business,d@example.com\n"
            ),
            "directory FILE: 2 problems\n\
             FILE:4: id: `u1` is also the id at line 2\n\
             FILE:5: id: `u1` is also the id at line 2"
        );
        assert_eq!(
            load_err(
                "p.json",
                r#"[{"id":"u1","audiences":["customers"],"email":"a@example.com"},
                    {"id":"u1","audiences":["partners"],"email":"b@example.com"}]"#
            ),
            "directory FILE: 2 problems\n\
             FILE[1]: audiences: `partners` is not a standard audience nor listed in the config's `audiences`\n\
             FILE[1]: id: `u1` is also the id at [0]"
        );
    }

    #[test]
    fn only_the_first_twenty_problems_are_listed() {
        let mut csv = String::from("id,audiences,email\n");
        for i in 0..25 {
            csv.push_str(&format!("u{i},customers,not-an-address\n"));
        }
        let err = load_err("p.csv", &csv);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 22, "{err}");
        assert_eq!(lines[0], "directory FILE: 25 problems");
        assert_eq!(lines[1], "FILE:2: email: `not-an-address` has no `@`");
        assert_eq!(lines[20], "FILE:21: email: `not-an-address` has no `@`");
        assert_eq!(lines[21], "… and 5 more");
    }

    #[test]
    fn json_array() {
        let people = load(
            "p.json",
            r#"[
                {"id": "u1", "audiences": ["customers"], "sms": "+447700900123", "email": null},
                {"id": "u2", "audiences": ["wholesale", "business"], "push": ["tokA"]}
            ]"#,
        )
        .expect("valid");
        assert_eq!(people.len(), 2);
        assert_eq!(people[0].sms.as_deref(), Some("+447700900123"));
        assert_eq!(people[0].email, None);
        assert_eq!(strs(&people[1].audiences), ["wholesale", "business"]);
        assert_eq!(strs(&people[1].push), ["tokA"]);
        assert_eq!(load("p.json", "[]").expect("empty is fine"), vec![]);
    }

    #[test]
    fn json_errors_give_array_indexes_and_no_values() {
        assert_eq!(
            load_err(
                "p.json",
                r#"[{"id":"u1","audiences":["customers"],"email":"a@example.com"},
                    {"id":"u2","audiences":["customers"],"sms":447700900123},
                    {"id":"u3","audiences":"customers","email":"c@example.com"},
                    {"audiences":["customers"],"email":"d@example.com"},
                    {"id":"u5","audiences":["customers"],"phone":"+447700900123"},
                    "u6"]"#
            ),
            "directory FILE: 5 problems\n\
             FILE[1]: sms: expected a string, found a number\n\
             FILE[2]: audiences: expected a list of strings, found a string\n\
             FILE[3]: id: is missing\n\
             FILE[4]: phone: unknown field (the fields are id, audiences, push, sms, email)\n\
             FILE[5]: expected an object with the fields id, audiences, push, sms, email, found a string"
        );
        assert!(
            load_err("p.json", r#"{"id":"u1"}"#)
                .starts_with("FILE: invalid JSON: invalid type: map, expected an array")
        );
        assert!(load_err("p.json", "[{").starts_with("FILE: invalid JSON: EOF"));
    }

    #[test]
    fn jsonl_and_ndjson() {
        let text = "{\"id\":\"u1\",\"audiences\":[\"customers\"],\"email\":\"a@example.com\"}\r\n\
                    \n   \n\
                    {\"id\":\"u2\",\"audiences\":[\"employees\"],\"push\":[\"tokA\",\"tokB\"]}\n";
        for name in ["p.jsonl", "p.ndjson"] {
            let people = load(name, text).expect("valid");
            assert_eq!(
                people.iter().map(|p| &*p.id).collect::<Vec<_>>(),
                ["u1", "u2"]
            );
        }
        assert_eq!(load("p.jsonl", "").expect("empty is fine"), vec![]);
        assert_eq!(
            load_err(
                "p.jsonl",
                "{\"id\":\"u1\",\"audiences\":[\"customers\"],\"email\":\"a@example.com\"}\n\n{\"id\":\"u2\",\n{\"id\":\"u1\",\"audiences\":[\"customers\"],\"email\":\"a@example.com\"}\n"
            ),
            "directory FILE: 2 problems\n\
             FILE:3: invalid JSON: EOF while parsing a value at line 1 column 11\n\
             FILE:4: id: `u1` is also the id at line 1"
        );
    }

    #[test]
    fn unknown_extensions_list_the_supported_ones() {
        let err = load_err("people.txt", "id,audiences\n");
        assert_eq!(
            err,
            "FILE: `.txt` is not a directory file extension (supported: .csv, .json, .jsonl, .ndjson)"
        );
        assert!(load_err("people", "").contains("supported: .csv, .json, .jsonl, .ndjson"));
        // A header alone is an empty directory.
        assert_eq!(load("p.csv", "id,audiences\n").expect("valid"), vec![]);
    }

    /// Validates `person` changed by `change`, expecting `expected` (`Ok` is "").
    fn check(change: impl FnOnce(&mut Person), expected: &str) {
        let mut p = Person {
            push: tokens(&["tokA"]),
            sms: Some("+447700900123".into()),
            ..person("u1", &["customers", "wholesale"])
        };
        change(&mut p);
        let got = validate(&p, &audiences()).err().unwrap_or_default();
        assert_eq!(got, expected, "{p:?}");
    }

    #[test]
    fn validation_rules() {
        check(|_| {}, "");
        // The standard four are known even when the caller's set lacks them.
        let p = person("u1", &["regulators"]);
        assert_eq!(validate(&p, &BTreeSet::new()), Ok(()));

        check(|p| p.id = "".into(), "id: is empty");
        check(
            |p| p.id = "x".repeat(257).into(),
            "id: is 257 bytes long, the limit is 256",
        );
        check(|p| p.id = "x".repeat(256).into(), "");
        check(
            |p| p.id = "u 1".into(),
            "id: `u 1` contains whitespace or a control character",
        );
        check(
            |p| p.id = "u\u{7}1".into(),
            "id: `u\\u{7}1` contains whitespace or a control character",
        );

        check(
            |p| p.audiences = names(&[]),
            "audiences: is empty, a person must belong to at least one audience",
        );
        check(
            |p| p.audiences = and(&p.audiences, audience_name("customers")),
            "audiences: `customers` is listed twice",
        );
        check(
            |p| p.audiences = and(&p.audiences, audience_name("partners")),
            "audiences: `partners` is not a standard audience nor listed in the config's `audiences`",
        );

        check(
            |p| {
                p.push = tokens(&[]);
                p.sms = None;
                p.email = None;
            },
            "push, sms, email: none is given, a person needs at least one address",
        );

        let e164 = "sms: `+4***0123` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)";
        check(
            |p| p.sms = Some("447700900123".into()),
            "sms: `44***0123` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)",
        );
        check(
            |p| p.sms = Some("+44770090012345678".into()),
            "sms: `+4***5678` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)",
        );
        check(
            |p| p.sms = Some("+4477009".into()),
            "sms: `+4***7009` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)",
        );
        check(
            |p| p.sms = Some("+0447700900123".into()),
            "sms: `+0***0123` is not an E.164 number (`+` then 8-15 digits, the first not 0, e.g. +447700900123)",
        );
        check(|p| p.sms = Some("+44 7700900123".into()), e164);
        check(|p| p.sms = Some("+12345678".into()), "");
        check(
            |p| p.sms = Some("".into()),
            "sms: is empty (leave it out when there is no number)",
        );

        check(
            |p| p.email = Some("".into()),
            "email: is empty (leave it out when there is no address)",
        );
        check(
            |p| p.email = Some("jane.example.com".into()),
            "email: `jane.example.com` has no `@`",
        );
        check(
            |p| p.email = Some("jane@a@example.com".into()),
            "email: `jane@a@example.com` has more than one `@`",
        );
        check(
            |p| p.email = Some("@example.com".into()),
            "email: `@example.com` has nothing before the `@`",
        );
        check(
            |p| p.email = Some("jane@localhost".into()),
            "email: `jane@localhost`: the domain `localhost` has no dot",
        );
        check(
            |p| p.email = Some("jane@example..com".into()),
            "email: `jane@example..com`: the domain `example..com` has an empty label (a dot at the start or end, or two in a row)",
        );
        check(
            |p| p.email = Some("jane@example.com.".into()),
            "email: `jane@example.com.`: the domain `example.com.` has an empty label (a dot at the start or end, or two in a row)",
        );
        check(
            |p| p.email = Some("Jane <jane@example.com>".into()),
            "email: `Jane <jane@example.com>` contains whitespace or a control character",
        );
        check(
            |p| p.email = Some("<jane@example.com>".into()),
            "email: `<jane@example.com>`: `<` is not allowed before the `@`",
        );
        check(
            |p| p.email = Some("jane@example.com,bob@example.com".into()),
            "email: `jane@example.com,bob@example.com` has more than one `@`",
        );
        check(
            |p| p.email = Some("jane@exa_mple.com".into()),
            "email: `jane@exa_mple.com`: `_` is not allowed in a domain name",
        );
        check(
            |p| p.email = Some(format!("{}@example.com", "j".repeat(65)).into()),
            &format!(
                "email: `{}@example.com`: the part before the `@` is longer than 64 bytes",
                "j".repeat(65)
            ),
        );
        check(
            |p| p.email = Some(format!("j@{}.com", "e".repeat(250)).into()),
            "email: is 256 bytes long, the limit is 254",
        );
        check(
            |p| p.email = Some("Jane.Doe+alerts@münchen.example".into()),
            "",
        );

        check(|p| p.push = and(&p.push, "".into()), "push[1]: is empty");
        check(
            |p| p.push = and(&p.push, "tok B".into()),
            "push[1]: contains whitespace or a control character",
        );
        check(
            |p| p.push = and(&p.push, "t".repeat(4097).into()),
            "push[1]: is 4097 bytes long, the limit is 4096",
        );
        check(|p| p.push = and(&p.push, "t".repeat(4096).into()), "");
        check(
            |p| p.push = and(&p.push, "tokA".into()),
            "push[1]: is the same token as push[0]",
        );
    }

    fn ids(people: &[Arc<Person>]) -> Vec<&str> {
        people.iter().map(|p| &*p.id).collect()
    }

    #[test]
    fn members_after_walks_one_audience_in_id_order() {
        let dir = Directory::from_people(vec![
            person("u2", &["customers"]),
            person("u10", &["customers", "employees"]),
            person("B", &["customers"]),
            person("a", &["employees"]),
            person("u3", &["regulators"]),
            person("u4", &["customers"]),
        ]);
        // Byte order: uppercase before lowercase, "u10" before "u2".
        assert_eq!(
            ids(&dir.members_after("customers", None, 100)),
            ["B", "u10", "u2", "u4"]
        );
        // Batches of two, each continuing after the last id of the one before.
        let first = dir.members_after("customers", None, 2);
        assert_eq!(ids(&first), ["B", "u10"]);
        let second = dir.members_after("customers", Some("u10"), 2);
        assert_eq!(ids(&second), ["u2", "u4"]);
        assert_eq!(
            ids(&dir.members_after("customers", Some("u4"), 2)),
            Vec::<&str>::new()
        );
        // The cursor need not be a current id (its person may have been removed).
        assert_eq!(
            ids(&dir.members_after("customers", Some("u1"), 10)),
            ["u10", "u2", "u4"]
        );
        assert_eq!(ids(&dir.members_after("employees", None, 10)), ["a", "u10"]);
        assert_eq!(
            ids(&dir.members_after("business", None, 10)),
            Vec::<&str>::new()
        );
        assert!(dir.members_after("customers", None, 0).is_empty());
        assert_eq!(dir.members("customers"), 4);
        assert_eq!(dir.members("regulators"), 1);
        assert_eq!(dir.members("business"), 0);
    }

    #[test]
    fn upsert_remove_get() {
        let dir = Directory::new();
        assert!(dir.is_empty());
        dir.upsert(person("u1", &["customers"]));
        dir.upsert(person("u2", &["customers"]));
        dir.upsert(person("u1", &["employees"]));
        assert_eq!(dir.len(), 2);
        assert_eq!(
            dir.get("u1").map(|p| p.audiences.clone()),
            Some(names(&["employees"]))
        );
        assert_eq!(ids(&dir.members_after("customers", None, 10)), ["u2"]);
        dir.remove("u2");
        dir.remove("nobody");
        assert_eq!(dir.get("u2"), None);
        assert_eq!(dir.len(), 1);
        assert_eq!(format!("{dir:?}"), "Directory { people: 1 }");
        // Like upserts in turn: the later of two people with one id stays.
        let dir = Directory::from_people(vec![
            person("u1", &["customers"]),
            person("u0", &["customers"]),
            person("u1", &["business"]),
        ]);
        assert_eq!(dir.len(), 2);
        assert_eq!(
            dir.get("u1").map(|p| p.audiences.clone()),
            Some(names(&["business"]))
        );
    }

    #[test]
    fn without_each_kind() {
        let p = Person {
            push: tokens(&["tokA", "tokB"]),
            sms: Some("+447700900123".into()),
            email: Some("Jane.Doe@Example.com".into()),
            ..person("u1", &["customers"])
        };
        assert_eq!(p.addresses(AddressKind::Push), ["tokA", "tokB"]);
        assert_eq!(p.addresses(AddressKind::Sms), ["+447700900123"]);
        assert_eq!(p.addresses(AddressKind::Email), ["Jane.Doe@Example.com"]);

        let q = p.without(AddressKind::Push, "tokA").expect("has tokA");
        assert_eq!(strs(&q.push), ["tokB"]);
        assert_eq!(
            (q.sms.as_deref(), q.email.as_deref()),
            (p.sms.as_deref(), p.email.as_deref())
        );
        assert_eq!(p.without(AddressKind::Push, "tokC"), None);
        assert_eq!(p.without(AddressKind::Push, "toka"), None);

        let q = p
            .without(AddressKind::Sms, "+447700900123")
            .expect("has the number");
        assert_eq!((q.sms, q.push.len()), (None, 2));
        assert_eq!(p.without(AddressKind::Sms, "+447700900124"), None);

        let q = p
            .without(AddressKind::Email, "jane.doe@example.COM")
            .expect("case is ignored");
        assert_eq!((q.email, q.sms.as_deref()), (None, Some("+447700900123")));
        assert_eq!(p.without(AddressKind::Email, "john@example.com"), None);
        assert_eq!(
            person("u2", &["customers"]).without(AddressKind::Sms, "+447700900123"),
            None
        );

        // The last address gone: every kind is empty, and validation says so.
        let last = person("u3", &["customers"])
            .without(AddressKind::Email, "u3@example.com")
            .expect("has it");
        assert!(
            AddressKind::ALL
                .iter()
                .all(|&k| last.addresses(k).is_empty())
        );
        assert!(validate(&last, &audiences()).is_err());
    }

    #[test]
    fn address_kind_names() {
        for kind in AddressKind::ALL {
            assert_eq!(kind.as_str().parse::<AddressKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            "fax".parse::<AddressKind>(),
            Err("`fax` is not an address kind (expected `push`, `sms` or `email`)".to_string())
        );
    }

    #[test]
    fn from_record_key_and_id() {
        let p = Person::from_record(
            "u1",
            br#"{"audiences":["customers"],"email":"a@example.com"}"#,
        )
        .expect("id taken from the key");
        assert_eq!(&*p.id, "u1");
        let p = Person::from_record(
            "u1",
            br#"{"id":"u1","audiences":["customers"],"push":["t"]}"#,
        )
        .expect("id equal to the key");
        assert_eq!(strs(&p.push), ["t"]);
        assert_eq!(
            Person::from_record("u1", br#"{"id":"u2","audiences":["customers"]}"#),
            Err("id: `u2` is not the record's key `u1`".to_string())
        );
        assert_eq!(
            Person::from_record("u1", br#"{"audiences":["customers"],"sms":447700900123}"#),
            Err("sms: expected a string, found a number".to_string())
        );
        assert_eq!(
            Person::from_record("u1", br#"{"email":"a@example.com"}"#),
            Err("audiences: is missing".to_string())
        );
        assert!(
            Person::from_record("u1", b"")
                .expect_err("empty")
                .starts_with("invalid JSON: EOF")
        );
        assert!(
            Person::from_record("u1", b"null")
                .expect_err("null")
                .starts_with("expected an object")
        );
    }

    #[test]
    fn to_json_round_trips_through_from_record() {
        let full = Person {
            push: tokens(&["tokA", "tokB"]),
            sms: Some("+447700900123".into()),
            ..person("u1", &["customers", "wholesale"])
        };
        let sparse = Person {
            email: None,
            push: tokens(&["tokA"]),
            ..person("u2", &["employees"])
        };
        assert_eq!(
            String::from_utf8(sparse.to_json()).expect("UTF-8"),
            r#"{"id":"u2","audiences":["employees"],"push":["tokA"]}"#
        );
        let email_only = person("u3", &["customers"]);
        assert_eq!(
            String::from_utf8(email_only.to_json()).expect("UTF-8"),
            r#"{"id":"u3","audiences":["customers"],"email":"u3@example.com"}"#
        );
        for p in [full, sparse, email_only] {
            assert_eq!(Person::from_record(&p.id, &p.to_json()), Ok(p.clone()));
            // Serde's own reading of the record agrees.
            assert_eq!(serde_json::from_slice::<Person>(&p.to_json()).ok(), Some(p));
        }
    }

    #[test]
    fn audience_names_are_shared() {
        let people = load(
            "p.csv",
            "id,audiences,email
\
             u1,customers;wholesale,a@example.com
\
             u2,wholesale;customers,b@example.com
",
        )
        .expect("valid");
        let customers = &people[0].audiences[0];
        assert_eq!(&**customers, "customers");
        assert!(Arc::ptr_eq(customers, &people[1].audiences[1]));
        assert!(Arc::ptr_eq(
            &people[0].audiences[1],
            &people[1].audiences[0]
        ));
        // Every way in shares the same names: records, JSON files, serde.
        let record = Person::from_record("u3", br#"{"audiences":["customers"],"push":["t"]}"#)
            .expect("valid");
        assert!(Arc::ptr_eq(customers, &record.audiences[0]));
        let json = load(
            "p.jsonl",
            r#"{"id":"u4","audiences":["customers"],"email":"d@example.com"}"#,
        )
        .expect("valid");
        assert!(Arc::ptr_eq(customers, &json[0].audiences[0]));
        let read: Person = serde_json::from_slice(&record.to_json()).expect("valid");
        assert!(Arc::ptr_eq(customers, &read.audiences[0]));
    }

    #[test]
    fn audience_names_nobody_holds_are_forgotten() {
        let held = audience_name("customers");
        for i in 0..2 * MAX_AUDIENCE_NAMES {
            drop(audience_name(&format!("made-up-{i}")));
        }
        let names = AUDIENCE_NAMES
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(names.len() <= MAX_AUDIENCE_NAMES, "{}", names.len());
        assert!(
            names
                .get("customers")
                .is_some_and(|n| Arc::ptr_eq(n, &held))
        );
    }

    #[test]
    fn csv_line_numbers_hold_across_read_buffers() {
        // Several buffers' worth, with CRLF line ends, blank lines, blank rows and
        // quoted line breaks wherever a buffer happens to end.
        let mut csv = String::from("id,audiences,email,push\r\n");
        let mut line = 2;
        let mut expected = vec!["directory FILE: 2 problems".to_string()];
        for i in 0..20_000 {
            match i % 5 {
                0 => {
                    csv.push_str("\r\n\r\n");
                    line += 2;
                }
                1 => {
                    csv.push_str(",,,\r\n");
                    line += 1;
                }
                _ => {}
            }
            if i == 9_999 || i == 19_999 {
                csv.push_str(&format!("u{i},customers,nope{i},\r\n"));
                expected.push(format!("FILE:{line}: email: `nope{i}` has no `@`"));
                line += 1;
            } else if i % 3 == 0 {
                csv.push_str(&format!(
                    "u{i},customers,u{i}@example.com,\"a{i};\r\nb{i}\"\r\n"
                ));
                line += 2;
            } else {
                csv.push_str(&format!("u{i},customers,u{i}@example.com,\r\n"));
                line += 1;
            }
        }
        assert!(csv.len() > 4 * READ_BUFFER);
        assert_eq!(load_err("p.csv", &csv), expected.join("\n"));
    }

    #[test]
    fn a_duplicate_whose_first_place_is_gone_says_so() {
        // The file changed between the load and the report's second reading.
        let path = write("p.csv", "id,audiences,email\nu2,customers,b@example.com\n");
        let err = report(
            &path,
            "FILE",
            Format::Csv,
            vec![(3, Problem::SameId("u1".into()))],
            1,
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("file has a parent"));
        assert_eq!(
            err.to_string(),
            "directory FILE: 1 problem\n\
             FILE:3: id: `u1` is also the id at an earlier place (the file changed while it was read)"
        );
    }
}

/// What a million-person directory costs, measured as the daemon would hold it:
/// `cargo test --release -p clarion directory::measure -- --ignored --nocapture`.
///
/// Each phase runs in a fresh process (this test runs itself again), because a
/// process's peak RSS only ever grows and mimalloc keeps what was freed.
#[cfg(test)]
mod measure {
    use super::*;
    use std::io::Write as _;

    // The daemon's allocator (main.rs), so that the numbers are the daemon's.
    #[global_allocator]
    static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

    const PEOPLE: usize = 1_000_000;
    const PHASE: &str = "CLARION_MEASURE_PHASE";
    const FILE: &str = "CLARION_MEASURE_FILE";

    /// VmHWM and VmRSS, in KiB.
    fn memory() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    fn report(label: &str, base: (u64, u64)) {
        let (hwm, rss) = memory();
        println!(
            "{label:<28} VmHWM {:>6.1} MiB  VmRSS {:>6.1} MiB  (+{:.1} MiB, {} B/person over the start)",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0,
            (rss - base.1) as f64 / 1024.0,
            (rss - base.1) * 1024 / PEOPLE as u64,
        );
    }

    fn row(i: usize) -> String {
        format!("p{i:08},customers,person{i}@example.com")
    }

    #[test]
    #[ignore = "a measurement, not a check: builds a million people"]
    fn directory_memory() {
        let audiences: BTreeSet<String> = ["customers".to_string()].into();
        match std::env::var(PHASE).as_deref() {
            // The heap a directory holds once built, with no file in the way:
            // people arrive one by one, as from the topic.
            Ok("steady") => {
                let base = memory();
                report("start", base);
                let dir = Directory::new();
                for i in 0..PEOPLE {
                    let line = row(i);
                    let cells: Vec<&str> = line.split(',').collect();
                    dir.upsert(Person {
                        id: cells[0].into(),
                        audiences: [audience_name(cells[1])].into(),
                        push: Box::default(),
                        sms: None,
                        email: Some(cells[2].into()),
                    });
                }
                report("steady: upserted", base);
                assert_eq!(dir.len(), PEOPLE);
            }
            Ok("load") => {
                let path = std::env::var(FILE).expect("the parent names the file");
                let base = memory();
                report("start", base);
                let dir = load_file(Path::new(&path), &audiences).expect("valid");
                report("load: load_file", base);
                assert_eq!(dir.len(), PEOPLE);
            }
            _ => {
                let path = std::env::temp_dir()
                    .join(format!("clarion-measure-{}.csv", std::process::id()));
                let mut file =
                    std::io::BufWriter::new(std::fs::File::create(&path).expect("create the file"));
                writeln!(file, "id,audiences,email").expect("write");
                for i in 0..PEOPLE {
                    writeln!(file, "{}", row(i)).expect("write");
                }
                file.flush().expect("write");
                drop(file);
                for phase in ["steady", "load"] {
                    let started = std::time::Instant::now();
                    let out = std::process::Command::new(
                        std::env::current_exe().expect("the test binary"),
                    )
                    .args([
                        "directory::measure::directory_memory",
                        "--exact",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env(PHASE, phase)
                    .env(FILE, &path)
                    .output()
                    .expect("run the phase");
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    for line in stdout.lines().filter(|l| l.contains("VmHWM")) {
                        println!("{line}");
                    }
                    println!("{phase}: {:.2?}", started.elapsed());
                    assert!(
                        out.status.success(),
                        "{stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
