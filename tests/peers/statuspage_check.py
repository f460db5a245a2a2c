"""Reads the status page's feed and API as their readers do, for tests/it/status_page.rs.

  statuspage_check.py feed URL
      parses the Atom feed with feedparser and prints {bozo, entries: [{id, title,
      link, updated}]} as JSON.
  statuspage_check.py schema SCHEMA DATA
      SCHEMA is the JSON Schema that ts-json-schema-generator made from the
      statuspage.io client's response types (every definition); DATA maps a
      response type's name (Summary, Status, Components, Incidents,
      ScheduledMaintenances, and the aliases Unresolved, Upcoming, Active) to what
      the client returned. Prints one line per problem; exits 1 if there is one.
  statuspage_check.py s3 ENDPOINT BUCKET KEY TIMEOUT_S [NEEDLE...]
      reads s3://BUCKET/KEY from an S3-compatible ENDPOINT with boto3 (signed, as
      moto's server wants), every 20 ms until its body holds every NEEDLE or
      TIMEOUT_S passes; prints {found, content_type, cache_control, etag, body}.
"""

import json
import sys

ALIASES = {"Unresolved": "Incidents", "Upcoming": "ScheduledMaintenances", "Active": "ScheduledMaintenances"}


def feed(url):
    import feedparser

    d = feedparser.parse(url)
    print(json.dumps({
        "bozo": bool(d.bozo),
        "bozo_exception": str(d.get("bozo_exception", "")),
        "version": d.version,
        "entries": [
            {"id": e.get("id"), "title": e.get("title"), "link": e.get("link"), "updated": e.get("updated")}
            for e in d.entries
        ],
    }))


def schema(schema_path, data_path):
    import jsonschema

    with open(schema_path) as f:
        definitions = json.load(f)["definitions"]
    with open(data_path) as f:
        data = json.load(f)
    problems = []
    for name, value in data.items():
        kind = ALIASES.get(name, name)
        validator = jsonschema.Draft7Validator({"$ref": f"#/definitions/{kind}", "definitions": definitions})
        for err in validator.iter_errors(value):
            where = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{name} ({kind}) at /{where}: {err.message}")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


def s3(endpoint, bucket, key, timeout, needles):
    import time

    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="reader",
        aws_secret_access_key="reader",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2),
    )
    deadline = time.monotonic() + float(timeout)
    last = None
    while time.monotonic() < deadline:
        try:
            o = client.get_object(Bucket=bucket, Key=key)
            body = o["Body"].read().decode("utf-8")
            last = {
                "found": all(n in body for n in needles),
                "content_type": o.get("ContentType"),
                "cache_control": o.get("CacheControl"),
                "etag": o.get("ETag"),
                "body": body,
            }
            if last["found"]:
                break
        except Exception as e:  # not there yet, or the server is down
            last = {"found": False, "error": str(e)}
        time.sleep(0.02)
    print(json.dumps(last or {"found": False}))


if __name__ == "__main__":
    if sys.argv[1] == "feed":
        feed(sys.argv[2])
    elif sys.argv[1] == "s3":
        s3(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    elif sys.argv[1] == "schema":
        schema(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
