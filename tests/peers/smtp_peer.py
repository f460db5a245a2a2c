"""A real SMTP server for the email channel's integration tests (aiosmtpd).

It accepts mail over STARTTLS (with a certificate issued by a throw-away test CA it
creates with `openssl`) and AUTH when asked, parses every message with Python's own
`email` package, and appends one JSON line per message to --out: the connection it
came over (client address and port, so the test can count connections), the
envelope, the decoded headers, and the text and HTML parts. The Rust test reads that
file; nothing here shares code with the channel under test.

Fault injection: --reject ADDR answers 550 to RCPT TO:<ADDR>; --tempfail ADDR answers
450; --close-on-rcpt-once answers 421 to the first RCPT the server sees and closes that
connection, then behaves.

--auth-log FILE appends one JSON line per AUTH attempt the server sees (the mechanism's
decoded login and whether it succeeded), so a test can prove that no password was
sent.
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl
import subprocess
import sys
import threading
import logging
import time
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def make_certs(directory):
    """A test CA and a server certificate for 127.0.0.1 / localhost signed by it.
    Returns (ca.pem, cert.pem, key.pem)."""
    os.makedirs(directory, exist_ok=True)
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr = os.path.join(directory, "key.pem"), os.path.join(directory, "server.csr")
    cert, ext = os.path.join(directory, "cert.pem"), os.path.join(directory, "ext.cnf")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=Clarion Test CA")
    run("openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return ca, cert, key


class Handler:
    def __init__(self, args):
        self.args = args
        self.out = open(args.out, "a", buffering=1, encoding="utf-8")
        self.lock = threading.Lock()
        self.count = 0
        self.closed_once = False

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.args.close_on_rcpt_once and not self.closed_once:
            self.closed_once = True
            asyncio.get_running_loop().call_later(0.05, server.transport.close)
            return "421 4.3.2 Service shutting down, closing transmission channel"
        if address.lower() in self.args.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address.lower() in self.args.tempfail:
            return f"450 4.2.1 <{address}>: Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            queue_id = f"Q{self.count:06d}"
        record = {
            "peer": f"{session.peer[0]}:{session.peer[1]}",
            # session.ssl covers STARTTLS only; the transport knows about implicit TLS.
            "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
            "auth_user": (session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "queue_id": queue_id,
        }
        if not self.args.quiet:
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            record["headers"] = {k.lower(): str(v) for k, v in msg.items()}
            record["content_type"] = msg.get_content_type()
            record["parts"] = [p.get_content_type() for p in msg.iter_parts()] if msg.is_multipart() else []
            text, html = msg.get_body(("plain",)), msg.get_body(("html",))
            record["text"] = text.get_content() if text is not None else None
            record["html"] = html.get_content() if html is not None else None
            record["defects"] = [str(d) for d in msg.defects]
        self.out.write(json.dumps(record) + "\n")
        return f"250 2.0.0 Ok: queued as {queue_id}"


def main():
    # aiosmtpd logs a warning about its own deprecated Session.login_data on every
    # AUTH; keep errors only.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # Implicit TLS looks like "AUTH without TLS" to aiosmtpd (see below).
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--certs", help="directory for a generated test CA and server certificate (enables STARTTLS, required)")
    p.add_argument("--implicit-tls", action="store_true", help="with --certs: TLS from the first byte (SMTPS) instead of STARTTLS")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--reject", action="append", default=[])
    p.add_argument("--tempfail", action="append", default=[])
    p.add_argument("--close-on-rcpt-once", action="store_true")
    p.add_argument("--quiet", action="store_true", help="record the envelope only (for the benchmark)")
    p.add_argument("--auth-log", help="append one JSON line per AUTH attempt to this file")
    args = p.parse_args()
    args.reject = [a.lower() for a in args.reject]
    args.tempfail = [a.lower() for a in args.tempfail]

    kwargs = {}
    if args.certs:
        _, cert, key = make_certs(args.certs)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        if args.implicit_tls:
            kwargs.update(ssl_context=ctx)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)
    if args.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (isinstance(auth_data, LoginPassword)
                  and auth_data.login.decode() == args.user
                  and auth_data.password.decode() == args.password)
            if args.auth_log:
                login = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None
                with open(args.auth_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"mechanism": mechanism, "login": login,
                                        "tls": session.ssl is not None, "ok": ok}) + "\n")
            # handled=False: let aiosmtpd answer 535 itself on failure.
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
        # aiosmtpd counts only STARTTLS as TLS when deciding whether to offer AUTH;
        # over implicit TLS the whole connection is encrypted anyway.
        kwargs.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=bool(args.certs) and not args.implicit_tls)

    controller = Controller(Handler(args), hostname="127.0.0.1", port=args.port,
                            ident="clarion-test-peer", **kwargs)
    controller.start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
