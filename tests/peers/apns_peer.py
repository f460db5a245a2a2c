"""A stand-in for the Apple Push Notification service, for Clarion's push tests.

HTTP/2 over TLS (Hypercorn with the certificate the test made), `POST /3/device/<token>`.
Checks every request the way APNs would (method, HTTP/2, every `apns-*` header, the
ES256 provider token verified with the signing key's public half, the payload size and
shape) and writes what it saw to a JSON stats file after each request, including the
number of distinct TCP connections (by client address and port).

Answers:
  --gone-token    410 {"reason": "Unregistered", "timestamp": ...}
  --busy-token    429 {"reason": "TooManyRequests"} the first time, then 200
  --stall-token   never answered (the stream stays open), like a stalled provider;
                  counted under "stalled"
  all-zero token  400 {"reason": "BadDeviceToken"} (what the healthcheck expects)
  anything else   200 with the request's apns-id echoed
A request that fails a check gets 400 with the matching Apple reason and is listed
under "problems".

Needs PyPI hypercorn, pyjwt and cryptography (scripts/test-requirements.txt).
"""

import argparse
import asyncio
import json
import os
import re
import time

import jwt
from asgi import add_tls_arguments, http_request, tls_config
from hypercorn.asyncio import serve

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PATH_RE = re.compile(r"^/3/device/([0-9a-fA-F]+)$")
KEEP_REQUESTS = 50


class Peer:
    def __init__(self, args):
        self.args = args
        with open(args.public_key, "rb") as f:
            self.public_key = f.read()
        self.connections = set()
        self.requests = 0
        self.statuses = {}
        self.problems = []
        self.provider_tokens = set()
        self.busy_answered = False
        self.stalled = 0
        self.seen = []

    def write_stats(self):
        stats = {
            "connections": len(self.connections),
            "requests": self.requests,
            "statuses": self.statuses,
            "problems": self.problems[:20],
            "provider_tokens": len(self.provider_tokens),
            "stalled": self.stalled,
            "first_requests": self.seen,
        }
        tmp = self.args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, self.args.stats)

    def check(self, scope, headers, body):
        """Returns (Apple reason, detail) for the first problem, or None."""
        a = self.args
        if scope["method"] != "POST":
            return "MethodNotAllowed", scope["method"]
        if scope.get("http_version") != "2":
            return "BadPath", "HTTP/%s, expected HTTP/2" % scope.get("http_version")
        if not PATH_RE.match(scope["path"]):
            return "BadPath", scope["path"]
        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return "MissingProviderToken", auth[:20]
        token = auth[len("bearer "):]
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"],
                                options={"require": ["iss", "iat"], "verify_aud": False})
        except jwt.PyJWTError as e:
            return "InvalidProviderToken", str(e)
        if header.get("alg") != "ES256" or header.get("kid") != a.key_id:
            return "InvalidProviderToken", "header %r" % header
        if claims.get("iss") != a.team_id:
            return "InvalidProviderToken", "iss %r" % claims.get("iss")
        now = time.time()
        if not (now - 3600 < claims["iat"] <= now + 60):
            return "ExpiredProviderToken", "iat %r" % claims["iat"]
        self.provider_tokens.add(token)
        if headers.get("apns-topic") != a.topic:
            return "BadTopic", headers.get("apns-topic")
        if headers.get("apns-push-type") != "alert":
            return "InvalidPushType", headers.get("apns-push-type")
        if headers.get("apns-priority") not in ("10", "5"):
            return "BadPriority", headers.get("apns-priority")
        exp = headers.get("apns-expiration", "")
        if not exp.isdigit() or (exp != "0" and int(exp) < now):
            return "BadExpirationDate", exp
        # Optional for Apple; when present they must be well-formed. (The test checks
        # that Clarion's notifications carry both.)
        collapse = headers.get("apns-collapse-id")
        if collapse is not None and (not collapse or len(collapse.encode()) > 64):
            return "BadCollapseId", collapse
        if "apns-id" in headers and not UUID_RE.match(headers["apns-id"]):
            return "BadMessageId", headers["apns-id"]
        if len(body) > 4096:
            return "PayloadTooLarge", str(len(body))
        # Apple's rule: a JSON object with an `aps` dictionary. (The test checks the
        # rest of Clarion's payload from "first_requests".)
        try:
            payload = json.loads(body)
            assert isinstance(payload["aps"], dict)
        except Exception as e:  # noqa: BLE001 - any malformed payload is one answer
            return "PayloadEmpty", "payload: %r" % e
        return None

    async def __call__(self, scope, receive, send):
        request = await http_request(scope, receive, send)
        if request is None:
            return
        body, headers = request
        self.connections.add(tuple(scope["client"]))
        self.requests += 1
        status, reply = self.answer(scope, headers, body)
        if status is None:
            self.stalled += 1
            self.write_stats()
            await asyncio.Event().wait()  # never set: no answer, ever
            return
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        self.write_stats()
        out_headers = [(b"content-type", b"application/json")]
        if "apns-id" in headers:
            out_headers.append((b"apns-id", headers["apns-id"].encode()))
        data = json.dumps(reply).encode() if reply is not None else b""
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})

    def answer(self, scope, headers, body):
        problem = self.check(scope, headers, body)
        if problem is not None:
            reason, detail = problem
            self.problems.append("%s: %s" % (reason, detail))
            return 400, {"reason": reason}
        device = PATH_RE.match(scope["path"]).group(1)
        if len(self.seen) < KEEP_REQUESTS:
            self.seen.append({
                "device": device,
                "apns-id": headers.get("apns-id"),
                "apns-collapse-id": headers.get("apns-collapse-id"),
                "apns-priority": headers.get("apns-priority"),
                "apns-expiration": headers.get("apns-expiration"),
                "payload": json.loads(body),
            })
        if device == self.args.stall_token:
            return None, None
        if device == self.args.gone_token:
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        if device == self.args.busy_token and not self.busy_answered:
            self.busy_answered = True
            return 429, {"reason": "TooManyRequests"}
        if set(device) == {"0"}:
            return 400, {"reason": "BadDeviceToken"}
        return 200, None


def main():
    p = argparse.ArgumentParser(description=__doc__)
    add_tls_arguments(p)
    p.add_argument("--public-key", required=True, help="PEM public key of the .p8 signing key")
    p.add_argument("--key-id", required=True)
    p.add_argument("--team-id", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--gone-token", required=True)
    p.add_argument("--busy-token", required=True)
    p.add_argument("--stall-token", help="a device token whose requests are never answered")
    p.add_argument("--stats", required=True, help="file to write the stats JSON to")
    args = p.parse_args()

    config = tls_config(args, ["h2"])
    # Apple keeps idle connections open for a long time; so does the stand-in, so that
    # a second connection in the test means the client opened one, not that we closed.
    config.keep_alive_timeout = 600
    # Hypercorn closes a connection after 1000 requests by default, breaking the
    # streams in flight; Apple has no such limit.
    config.keep_alive_max_requests = 10_000_000
    config.h2_max_concurrent_streams = 1000
    peer = Peer(args)
    peer.write_stats()
    asyncio.run(serve(peer, config))


if __name__ == "__main__":
    main()
