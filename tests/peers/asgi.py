"""What the ASGI test peers (apns_peer.py, webhook_peer.py) share: Hypercorn's
lifespan handshake and reading a request's whole body."""


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
