"""What the ASGI test peers (apns_peer.py, webhook_peer.py) share: Hypercorn's
lifespan handshake, reading a request whole, and the TLS config."""


async def lifespan(receive, send):
    """Answers the lifespan protocol until shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive):
    """The request's body, all of it."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def http_request(scope, receive, send):
    """The request this ASGI call carries, as (body, headers) with header names and
    values decoded, or None when there is none to answer (the lifespan protocol,
    answered here, or a websocket)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return None
    if scope["type"] != "http":
        return None
    body = await read_body(receive)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    return body, headers


def add_tls_arguments(parser):
    """The arguments `tls_config` reads: --port, --cert and --key."""
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)


def tls_config(args, alpn):
    """Hypercorn's config for a TLS peer on 127.0.0.1: `args` has the port, the
    certificate and its key; `alpn` lists the protocols offered."""
    from hypercorn.config import Config

    config = Config()
    config.bind = ["127.0.0.1:%d" % args.port]
    config.certfile = args.cert
    config.keyfile = args.key
    config.alpn_protocols = alpn
    config.accesslog = None
    return config
