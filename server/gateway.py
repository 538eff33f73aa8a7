"""The one endpoint sites can reach: a TLS reverse proxy that passes Flower's Fleet API only.

In Flower 1.42 the SuperLink serves the Fleet API (sites), the Control API (submit runs,
register keys) and the Runtime API on one port, and open-source Flower has no account login:
anyone who reaches that port could push code that runs at every site. FedSilo therefore binds
the SuperLink to 127.0.0.1 and puts this gateway on the network address. It terminates TLS
(1.2 or newer) with the federation's server certificate and forwards to the SuperLink over
loopback TLS exactly the Fleet calls a SuperNode makes; everything else is refused.

    python -m server.gateway --listen HOST:PORT --upstream 127.0.0.1:PORT --cert C --key K --ca CA
"""

from __future__ import annotations

import argparse
import ssl

import httpx
import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

# Every call of Flower 1.42's SuperNode transport (flwr/supernode/fleet_http_client.py; the
# SuperLink serves them in flwr/superlink/routers/fleet/router.py). Unary protobuf POSTs, no query.
FLEET_CALLS = frozenset(("POST", f"/v1/fleet/{name}") for name in (
    "register-node", "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
    "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
    "confirm-message-received"))
FLEET_PATHS = {path for _, path in FLEET_CALLS}

# The largest request a site sends is one PushObject. Arrays travel in chunks of at most 5 MiB
# (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE), but a ConfigRecord is one object: under SecAgg+ the masked
# update is one ConfigRecord of 8 bytes a value, 180.5 MB for full fine-tuning of MiniLM-L6
# (22.6 M values; bench/traffic measured 180.7 MB uploaded a round), 267 MB for MiniLM-L12.
# 512 MiB leaves room for those and their framing, and still bounds what one request can make
# the SuperLink (which reads a body whole) hold; --max-body changes it for bigger models.
MAX_BODY_BYTES = 512 * 1024 * 1024

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}
NOT_FLEET = ("FedSilo gateway: only the Fleet API is served to sites; "
             "run submission and key registration are coordinator-only")


class BodyTooLarge(Exception):
    pass


def target_problem(scope) -> str | None:
    """Why the raw request target is not a plain path in normal form (None when it is).

    Checked on the bytes the client sent (h11 keeps them as they came), never on a decoded or
    normalised form: a proxy that checks one spelling and forwards another can be walked past
    with `..`, `%2e%2e` or `https://host/...`. No Fleet path needs any of these."""
    raw = scope["raw_path"]
    if not raw.isascii():
        return "non-ASCII request target"
    if scope["query_string"]:
        return "query string"
    if not raw.startswith(b"/"):
        return "not a plain path (absolute-form or other target)"
    for bad, what in ((b"%", "percent-encoding"), (b"\\", "backslash"), (b"//", "empty path segment")):
        if bad in raw:
            return what
    if {b".", b".."} & set(raw.split(b"/")):
        return "dot segment"
    return None


def refuse(status: int, reason: str, headers: dict | None = None) -> Response:
    return JSONResponse({"detail": reason}, status_code=status, headers=headers)


def build_app(upstream: str, ca: str, max_body: int = MAX_BODY_BYTES):
    client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca),
                               timeout=httpx.Timeout(600.0, connect=10.0))
    base = httpx.URL(f"https://{upstream}")

    async def proxy(request: Request) -> Response:
        problem = target_problem(request.scope)
        if problem:
            return refuse(403, f"FedSilo gateway: refused request target ({problem})")
        path = request.scope["raw_path"].decode("ascii")
        if (request.method, path) not in FLEET_CALLS:
            if path in FLEET_PATHS:
                return refuse(405, f"FedSilo gateway: {request.method} not allowed", {"Allow": "POST"})
            return refuse(403, NOT_FLEET)
        declared = request.headers.get("content-length")  # h11 has checked it is a number
        if declared is not None and "transfer-encoding" in request.headers:
            return refuse(400, "FedSilo gateway: both Content-Length and Transfer-Encoding")  # smuggling
        too_large = f"FedSilo gateway: request body over {max_body} bytes"
        if declared is not None and int(declared) > max_body:
            return refuse(413, too_large)

        async def body():  # streamed on as it comes; cut off once past the limit
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > max_body:
                    raise BodyTooLarge
                yield chunk

        headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
        if declared is not None:
            headers["content-length"] = declared  # same framing upstream; chunked stays chunked
        # The path is one of FLEET_CALLS, already in normal form: what is sent is what was checked.
        try:
            reply = await client.request(request.method, base.copy_with(path=path), headers=headers,
                                         content=body())
        except BodyTooLarge:
            return refuse(413, too_large)
        except ClientDisconnect:  # the site went away mid-upload: nothing to answer, no traceback
            return Response(status_code=400)
        except httpx.TransportError as err:
            return refuse(502, f"FedSilo gateway: the SuperLink did not answer ({type(err).__name__})")
        out_headers = {k: v for k, v in reply.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
        return Response(reply.content, status_code=reply.status_code, headers=out_headers)

    async def app(scope, receive, send):  # plain ASGI: no router that would read a decoded path
        if scope["type"] == "http":
            await (await proxy(Request(scope, receive)))(scope, receive, send)

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.gateway", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--max-body", type=int, default=MAX_BODY_BYTES, metavar="BYTES",
                   help=f"largest request body passed on [default: {MAX_BODY_BYTES}]")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    # h11 (not httptools) hands over the request target exactly as sent, absolute-form included;
    # no WebSocket upgrades, no lifespan events: this app serves plain HTTP requests only.
    config = uvicorn.Config(build_app(args.upstream, args.ca, args.max_body), host=host.strip("[]"), port=int(port),
                            ssl_certfile=args.cert, ssl_keyfile=args.key, log_level="warning",
                            http="h11", ws="none", lifespan="off")
    config.load()
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2  # no TLS 1.0 / 1.1, whatever OpenSSL allows
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
