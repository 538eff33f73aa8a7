"""The one endpoint sites can reach: a TLS reverse proxy that passes Flower's Fleet API only.

In Flower 1.42 the SuperLink serves the Fleet API (sites), the Control API (submit runs,
register keys) and the Runtime API on one port, and open-source Flower has no account login:
anyone who reaches that port could push code that runs at every site. FedSilo therefore binds
the SuperLink to 127.0.0.1 and puts this gateway on the network address. It terminates TLS
(1.2 or newer) with the federation's server certificate, forwards requests under /v1/fleet/ to
the SuperLink over loopback TLS, and answers everything else with 403.

    python -m server.gateway --listen HOST:PORT --upstream 127.0.0.1:PORT --cert C --key K --ca CA
"""

from __future__ import annotations

import argparse
import ssl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ALLOWED_PREFIXES = ("/v1/fleet/",)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def build_app(upstream: str, ca: str) -> Starlette:
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=ssl.create_default_context(cafile=ca),
                               timeout=httpx.Timeout(600.0, connect=10.0))

    async def proxy(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(ALLOWED_PREFIXES):
            return JSONResponse({"detail": "FedSilo gateway: only the Fleet API is served to sites; "
                                           "run submission and key registration are coordinator-only"},
                                status_code=403)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream_response = await client.request(request.method, path, params=request.query_params,
                                                 headers=headers, content=await request.body())
        out_headers = {k: v for k, v in upstream_response.headers.items() if k.lower() not in HOP_BY_HOP
                       and k.lower() != "content-encoding"}
        return Response(upstream_response.content, status_code=upstream_response.status_code,
                        headers=out_headers)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.gateway", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    config = uvicorn.Config(build_app(args.upstream, args.ca), host=host.strip("[]"), port=int(port),
                            ssl_certfile=args.cert, ssl_keyfile=args.key, log_level="warning")
    config.load()
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2  # no TLS 1.0 / 1.1, whatever OpenSSL allows
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
