use super::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, PoisonError};

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
    let people = load("p.CSV", "id,audiences,email\nu1,customers,u1@example.com\n").expect("valid");
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
    let record =
        Person::from_record("u3", br#"{"audiences":["customers"],"push":["t"]}"#).expect("valid");
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
