//! Reading a directory file (CSV, JSON array, or JSON lines) straight into a
//! `Directory`, one person at a time, with every problem reported by row or
//! element (the first twenty), never the whole file held in memory beside it.

use super::person::*;
use super::store::*;
use anyhow::{Context as _, anyhow, bail};
use clarion_core::mask;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// How many problems a failed [`load_file`] lists before "… and N more": enough to
/// see the pattern, few enough to read in a log line.
pub(super) const MAX_REPORTED: usize = 20;

/// The file extensions [`load_file`] reads.
pub(super) const EXTENSIONS: &str = ".csv, .json, .jsonl, .ndjson";

/// How much of a directory file is read at a time.
pub(super) const READ_BUFFER: usize = 64 * 1024;

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
pub(super) enum Format {
    Csv,
    Json,
    Jsonl,
}

/// Reads a directory file of `format`, giving each entry to `entries` in file
/// order. `Err` is a problem that stops the reading: the file cannot be read, is
/// not JSON, or its CSV header is wrong.
pub(super) fn read(
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
pub(super) fn open(path: &Path) -> io::Result<io::Chain<io::Cursor<Vec<u8>>, File>> {
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
pub(super) trait Entries {
    /// Takes one entry, parsed or not, found at `place`: a line, or an index in a
    /// JSON array.
    fn entry(&mut self, place: u64, parsed: Result<Person, String>);

    /// Takes a problem with a place that is not an entry (a CSV row that is not
    /// UTF-8).
    fn problem(&mut self, place: u64, problem: String);
}

/// Builds the directory of one file, and collects its problems. (No `Debug`: it
/// would print every person, addresses included.)
pub(super) struct Loader<'a> {
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
pub(super) enum Problem {
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
pub(super) fn report(
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
pub(super) struct FirstPlaces {
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
pub(super) struct Columns {
    id: usize,
    audiences: usize,
    push: Option<usize>,
    sms: Option<usize>,
    email: Option<usize>,
    count: usize,
}

/// The column names a CSV header may use, in [`Columns`] order.
pub(super) const CSV_COLUMNS: [&str; 5] = ["id", "audiences", "push", "sms", "email"];

pub(super) fn read_csv(
    file: impl Read,
    path: &str,
    entries: &mut impl Entries,
) -> anyhow::Result<()> {
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
pub(super) fn csv_error(path: &str, e: csv::Error, doing: &str) -> anyhow::Error {
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
pub(super) struct LineCounter<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    runs: VecDeque<Run>,
    /// The line of the last record passed.
    line: u64,
}

/// Consecutive line-ending bytes, from byte `start` to before `end`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
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

pub(super) fn csv_columns(header: &csv::StringRecord) -> Result<Columns, String> {
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
pub(super) fn header_name(name: &str) -> String {
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

pub(super) fn person_from_row(
    row: &csv::StringRecord,
    columns: &Columns,
) -> Result<Person, String> {
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
pub(super) fn csv_list(cell: &str) -> impl Iterator<Item = &str> {
    cell.split(';')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Reads a JSON array of people.
pub(super) fn read_json(
    file: impl Read,
    path: &str,
    entries: &mut impl Entries,
) -> anyhow::Result<()> {
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
pub(super) struct JsonElements<'e, E> {
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
pub(super) fn read_jsonl(
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
