"""The HTTP listener: health and version endpoints, the friendly REST API
(kvstore/rest.py) and etcd's JSON gateway (kvstore/gateway.py)."""
from __future__ import annotations

import json

from aiohttp import web

from . import __version__
from .server import API_VERSION, KvServer


def _json(body: dict[str, object], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def health_handlers(server: KvServer) -> list[web.RouteDef]:
    async def health(_: web.Request) -> web.Response:
        if not server.has_leader():
            return _json({"health": "false", "reason": "no leader"}, 503)
        if server.applier.alarms.alarms:
            return _json({"health": "false", "reason": "alarm activated"}, 503)
        return _json({"health": "true", "reason": ""})

    async def livez(_: web.Request) -> web.Response:
        return _json({"live": "true"})

    async def readyz(_: web.Request) -> web.Response:
        if not server.has_leader():
            return _json({"ready": "false", "reason": "no leader"}, 503)
        return _json({"ready": "true"})

    async def version(_: web.Request) -> web.Response:
        return _json({"etcdserver": API_VERSION, "etcdcluster": API_VERSION, "kvstore": __version__})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=server.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    return [
        web.get("/metrics", metrics),
        web.get("/health", health),
        web.get("/livez", livez),
        web.get("/readyz", readyz),
        web.get("/version", version),
    ]


@web.middleware
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """aiohttp's own 404/405 answers as the REST API's JSON errors (the
    gateway's /v3/ paths keep etcd's plain-text ones)."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400 or request.path.startswith(("/v3/", "/v3beta/")):
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return web.json_response({"error": e.reason, "code": e.status}, status=e.status, headers=headers)


def build_app(server: KvServer) -> web.Application:
    from .dashboard import dashboard_routes
    from .gateway import gateway_routes
    from .rest import rest_routes

    app = web.Application(client_max_size=server.cfg.max_request_bytes + 1024, middlewares=[json_errors])
    app.add_routes(health_handlers(server))
    app.add_routes(rest_routes(server))  # /kv/, /watch/, /openapi.json
    app.add_routes(gateway_routes(server))  # etcd's /v3/ and /v3beta/
    app.add_routes(dashboard_routes(server))  # the operator dashboard: /, /dashboard/
    return app
