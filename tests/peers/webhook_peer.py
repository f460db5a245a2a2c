"""An HTTPS webhook receiver for Clarion's tests: Hypercorn over TLS (the certificate
the test made), offering HTTP/2 and HTTP/1.1 by ALPN, that checks each request's
Standard Webhooks signature with the reference library for Python (PyPI
`standardwebhooks`, an implementation Clarion did not write).

Every POST is answered 204 and appended to --out as one JSON line:
  {"path": ..., "http_version": "2" | "1.1", "verified": true | false, "why": ...,
   "body": <the JSON body>}

Needs PyPI hypercorn and standardwebhooks (scripts/test-requirements.txt).
"""

import argparse
import asyncio
import json

from asgi import add_tls_arguments, http_request, tls_config
from hypercorn.asyncio import serve
from standardwebhooks.webhooks import Webhook


class Receiver:
    def __init__(self, args):
        self.webhook = Webhook(args.secret)
        self.out = args.out

    async def __call__(self, scope, receive, send):
        request = await http_request(scope, receive, send)
        if request is None:
            return
        body, headers = request
        if scope["method"] == "POST":
            try:
                self.webhook.verify(body, headers)
                verified, why = True, "verified"
            except Exception as e:  # the library raises WebhookVerificationError
                verified, why = False, f"rejected: {e}"
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            line = {
                "path": scope["path"],
                "http_version": scope["http_version"],
                "verified": verified,
                "why": why,
                "body": parsed,
            }
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def main():
    p = argparse.ArgumentParser(description=__doc__)
    add_tls_arguments(p)
    p.add_argument("--secret", required=True, help="the whsec_ signing secret")
    p.add_argument("--out", required=True, help="file to append one JSON line per request to")
    args = p.parse_args()

    config = tls_config(args, ["h2", "http/1.1"])
    asyncio.run(serve(Receiver(args), config))


if __name__ == "__main__":
    main()
