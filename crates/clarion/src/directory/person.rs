//! One person of the directory (`Person`): id, audiences, and the push tokens, phone
//! number and email address each can be reached at; the kinds of address
//! (`AddressKind`); and the checks every person passes, from a file or a topic
//! record alike. Audience names are shared between people, so a million members
//! of `customers` hold one copy of the name.

use clarion_core::{STANDARD_AUDIENCES, mask};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

/// The fields of a person, as files and records name them.
pub(super) const FIELDS: &str = "id, audiences, push, sms, email";

/// The longest id accepted, in bytes: ids are Kafka keys and cursors, not documents.
pub(super) const MAX_ID_BYTES: usize = 256;

/// The longest push token accepted, in bytes. FCM and APNs tokens are a few hundred
/// bytes; anything near this is not a token.
pub(super) const MAX_PUSH_TOKEN_BYTES: usize = 4096;

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
pub(super) static AUDIENCE_NAMES: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());

/// How many names [`AUDIENCE_NAMES`] keeps. A deployment has a handful of
/// audiences; the bound is for records that name audiences that do not exist
/// (validation rejects them, but they are read first), so that a stream of them
/// cannot grow the table without end.
pub(super) const MAX_AUDIENCE_NAMES: usize = 1024;

/// The shared copy of an audience's name: everyone who belongs to `customers`
/// holds the same string, a pointer each rather than a string each.
///
/// Names nobody holds any more are forgotten when the table is full; past that, a
/// name gets a copy of its own, as it did before names were shared.
pub(super) fn audience_name(name: &str) -> Arc<str> {
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
pub(super) fn write_audiences<S: Serializer>(
    audiences: &[Arc<str>],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(audiences.iter().map(|a| &**a))
}

/// Reads a list of audience names as shared names.
pub(super) fn read_audiences<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[Arc<str>]>, D::Error> {
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
pub(super) fn same_email(a: &str, b: &str) -> bool {
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

pub(super) fn check_id(id: &str) -> Result<(), String> {
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

pub(super) fn check_audiences(listed: &[Arc<str>], known: &BTreeSet<String>) -> Result<(), String> {
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

pub(super) fn check_sms(sms: &str) -> Result<(), String> {
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
pub(super) fn check_email(email: &str) -> Result<(), String> {
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

pub(super) fn check_push(tokens: &[Box<str>]) -> Result<(), String> {
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

pub(super) fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A person from a JSON object. Written out rather than derived so that errors name
/// the field and never quote its value (serde's type errors quote numbers, and a
/// phone number written as a number is a likely mistake). `key`, for a topic
/// record, stands in for a missing `id` and must equal a present one.
pub(super) fn person_from_json(json: Value, key: Option<&str>) -> Result<Person, String> {
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

pub(super) fn json_string(field: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!(
            "{field}: expected a string, found {}",
            json_kind(&other)
        )),
    }
}

pub(super) fn json_strings(field: &str, value: Value) -> Result<Vec<String>, String> {
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

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
