"""A test SMSC for Clarion's SMPP channel: the `smpp34` package's SMPP 3.4 server,
behind a small TCP proxy that can drop the connection.

It accepts every bind, records each submit_sm as one JSON line in --record, and
answers ESME_RTHROTTLED to the first --throttle-first submits (then accepts, with
message ids `sim-1`, `sim-2`, ...). With --drop-after N, the proxy aborts the first
ESME connection when it sees submit_sm number N+1 (that PDU never reaches the SMSC),
so the ESME loses its session mid-window; later connections are left alone. With
--hold-ms M, each accepted submit is answered M milliseconds late, and each record
says how many submits were awaiting an answer when it arrived ("outstanding"), which
shows the ESME's window. With --bind-fail-after-drop K (and --drop-after), the
drop stands for an SMSC restart: the next K bind requests are answered by the proxy
with ESME_RBINDFAIL (0x0D), as an SMSC that is still starting up answers, and
recorded as "bind_refused"; later binds reach the SMSC. With --tls-dir D, the proxy speaks TLS: it makes a CA
(D/ca.pem) and a certificate for 127.0.0.1 signed by it, with the openssl CLI.

Prints `ready` once both listeners are up. Runs until killed.
"""

import argparse
import asyncio
import json
import os
import socket
import ssl
import struct
import subprocess

import smpp34

SUBMIT_SM = 0x00000004
BIND_COMMANDS = (0x00000001, 0x00000002, 0x00000009)  # receiver, transmitter, transceiver
ESME_RBINDFAIL = 0x0000000D


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(d):
    """A CA and a server certificate for 127.0.0.1/localhost signed by it."""

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca, key, csr, cert = (os.path.join(d, n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=Clarion test SMSC CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--throttle-first", type=int, default=0)
    p.add_argument("--drop-after", type=int, default=None)
    p.add_argument("--hold-ms", type=int, default=0)
    p.add_argument("--bind-fail-after-drop", type=int, default=0)
    p.add_argument("--tls-dir", default=None)
    args = p.parse_args()

    # The inner port is picked, released and bound again: another process may take it
    # in between, so try a few.
    for attempt in range(20):
        inner_port = free_port()
        server = smpp34.Server(host="127.0.0.1", port=inner_port, system_id="CLARIONSIM")
        try:
            await server.start()
            break
        except Exception:
            if attempt == 19:
                raise
    record = open(args.record, "a", buffering=1)
    state = {"submits": 0, "throttled": 0, "forwarded": 0, "dropped": False, "outstanding": 0,
             "refuse_binds": 0}
    held = set()

    async def answer_later(ev, mid):
        await asyncio.sleep(args.hold_ms / 1000.0)
        state["outstanding"] -= 1
        ev.accept(message_id=mid)

    def log(entry):
        record.write(json.dumps(entry) + "\n")

    async def smsc():
        while True:
            ev = await server.next()
            if isinstance(ev, smpp34.Esme):
                log({"event": "bound", "system_id": ev.system_id})
            elif isinstance(ev, smpp34.SubmitSmEvent):
                state["submits"] += 1
                entry = {
                    "event": "submit_sm",
                    "source_addr": ev.source_addr,
                    "source_addr_ton": ev.source_addr_ton,
                    "destination_addr": ev.destination_addr,
                    "dest_addr_ton": ev.dest_addr_ton,
                    "dest_addr_npi": ev.dest_addr_npi,
                    "esm_class": ev.esm_class,
                    "data_coding": ev.data_coding,
                    "registered_delivery": ev.registered_delivery,
                    "short_message": ev.short_message.hex(),
                    "outstanding": state["outstanding"] + 1,
                }
                if state["throttled"] < args.throttle_first:
                    state["throttled"] += 1
                    entry["result"] = "throttled"
                    log(entry)
                    ev.reject(smpp34.ESME_RTHROTTLED)
                else:
                    mid = "sim-%d" % state["submits"]
                    entry["result"] = "accepted"
                    entry["message_id"] = mid
                    log(entry)
                    if args.hold_ms > 0:
                        state["outstanding"] += 1
                        task = asyncio.create_task(answer_later(ev, mid))
                        held.add(task)
                        task.add_done_callback(held.discard)
                    else:
                        ev.accept(message_id=mid)

    async def handle(reader, writer):
        up_r, up_w = await asyncio.open_connection("127.0.0.1", inner_port)

        async def downstream():
            try:
                while True:
                    data = await up_r.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        down = asyncio.create_task(downstream())
        try:
            while True:
                header = await reader.readexactly(16)
                length, command_id = struct.unpack(">II", header[:8])
                body = await reader.readexactly(max(0, length - 16))
                if command_id in BIND_COMMANDS and state["refuse_binds"] > 0:
                    state["refuse_binds"] -= 1
                    log({"event": "bind_refused"})
                    # bind_*_resp with the error status; the body is the (empty)
                    # system_id, as 3.4 allows on an error.
                    sequence = struct.unpack(">I", header[12:16])[0]
                    writer.write(struct.pack(">IIII", 17, command_id | 0x80000000,
                                             ESME_RBINDFAIL, sequence) + b"\x00")
                    await writer.drain()
                    continue
                if command_id == SUBMIT_SM and args.drop_after is not None and not state["dropped"]:
                    if state["forwarded"] >= args.drop_after:
                        state["dropped"] = True
                        state["refuse_binds"] = args.bind_fail_after_drop
                        log({"event": "dropped"})
                        writer.transport.abort()
                        return
                    state["forwarded"] += 1
                up_w.write(header + body)
                await up_w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_w.close()
            down.cancel()

    tls = make_certificates(args.tls_dir) if args.tls_dir else None
    proxy = await asyncio.start_server(handle, "127.0.0.1", args.port, ssl=tls)
    print("ready", flush=True)
    await asyncio.gather(smsc(), proxy.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
