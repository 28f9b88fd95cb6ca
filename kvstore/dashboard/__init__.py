"""The operator dashboard: a built-in page at ``/`` (no build step).

The page is plain HTML, CSS and JavaScript from ``static/`` next to this
module (package data), served as they are. It talks to the endpoints every
client can use: the friendly REST API (``/kv/...``, SSE ``/watch/...``) for
the key browser and the live view, etcd's JSON gateway for logging in
(``/v3/auth/authenticate``), ``/version``; and to the one endpoint added
here, because a browser cannot reach the other members' client listeners:

``GET /dashboard/api/cluster``
    ``{"cluster_id", "member_id", "leader", "revision", "raft_term",
    "members": [{"id", "name", "peer_urls", "client_urls", "is_learner",
    "status": {...} | null, "error": str | null, "alarms": [str]}]}``.
    Member IDs are hex strings (as etcdctl prints them; they exceed
    JavaScript's exact integers). ``status`` is each member's own
    Maintenance.Status (``version``, ``db_size``, ``db_size_in_use``,
    ``leader``, ``raft_term``, ``raft_index``, ``raft_applied_index``,
    ``is_learner``, ``errors``): this member's in-process, the others' over
    gRPC at their first client URL (what ``etcdctl endpoint status
    --cluster`` does), all at once with a short timeout; ``error`` says why a
    member could not be asked. ``alarms`` come from Maintenance.Alarm (GET).
    The request's ``Authorization`` header is passed on as the token.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from importlib import resources
from typing import Any

import grpc
from aiohttp import web

from ..gateway import CallAborted, call, http_metadata, http_status
from ..pb import rpc_pb2, rpc_pb2_grpc

log = logging.getLogger("kvstore.dashboard")

STATUS_TIMEOUT = 1.5  # seconds to wait for another member's Status
MAINTENANCE = "etcdserverpb.Maintenance"
CLUSTER = "etcdserverpb.Cluster"

CONTENT_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
# The page loads nothing from elsewhere and runs no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of static/ by name: (content, content type)."""
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files(__name__).joinpath("static")
    for entry in root.iterdir():
        name = entry.name
        ext = name[name.rfind("."):] if "." in name else ""
        if entry.is_file() and ext in CONTENT_TYPES:
            out[name] = (entry.read_bytes(), CONTENT_TYPES[ext])
    return out


_ALARM_TEXT = re.compile(r"memberID:(\d+) alarm:(\w+)")  # a Status error, as etcd writes it


def _hex(n: int) -> str:
    return format(n, "x")


def _status_json(st: rpc_pb2.StatusResponse) -> dict[str, Any]:
    return {
        "version": st.version,
        "db_size": st.dbSize,
        "db_size_in_use": st.dbSizeInUse,
        "leader": _hex(st.leader) if st.leader else None,
        "raft_term": st.raftTerm,
        "raft_index": st.raftIndex,
        "raft_applied_index": st.raftAppliedIndex,
        "is_learner": st.isLearner,
        "errors": list(st.errors),
    }


def _token_metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    tok = request.headers.get("Authorization", "").strip()
    return (("token", tok),) if tok else ()


class Dashboard:
    def __init__(self, server: Any) -> None:
        self.s = server
        self.files = _static_files()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/dashboard", self.redirect),
            web.get("/dashboard/", self.redirect),
            web.get("/dashboard/static/{name}", self.static),
            web.get("/dashboard/api/cluster", self.cluster),
        ]

    # -- the page ----------------------------------------------------------------
    def _file(self, name: str) -> web.Response:
        found = self.files.get(name)
        if found is None:
            raise web.HTTPNotFound(text="Not Found\n")
        body, ctype = found
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=SECURITY_HEADERS)

    async def index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/")

    async def static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    # -- cluster status ------------------------------------------------------------
    async def cluster(self, request: web.Request) -> web.Response:
        md = http_metadata(request)
        try:
            ml = await call(self.s, CLUSTER, "MemberList", rpc_pb2.MemberListRequest(), md)
        except CallAborted as e:
            return _error(e)
        remote_md = _token_metadata(request)
        statuses = await asyncio.gather(*(self._status(m, md, remote_md) for m in ml.members))
        by_member: dict[int, list[str]] = {}
        try:
            alarms = (await call(self.s, MAINTENANCE, "Alarm",
                                 rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), md)).alarms
            for a in alarms:
                by_member.setdefault(a.memberID, []).append(rpc_pb2.AlarmType.Name(a.alarm))
        except CallAborted as e:
            # Not allowed to list them (auth): every Status carries them too.
            log.debug("dashboard: alarm list: %r", e)
            for st, _ in statuses:
                for text in (st or {}).get("errors", ()):
                    found = _ALARM_TEXT.search(text)
                    if found and found.group(2) not in by_member.get(int(found.group(1)), []):
                        by_member.setdefault(int(found.group(1)), []).append(found.group(2))
        out = []
        for m, (st, err) in zip(ml.members, statuses):
            out.append({
                "id": _hex(m.ID),
                "name": m.name,
                "peer_urls": list(m.peerURLs),
                "client_urls": list(m.clientURLs),
                "is_learner": m.isLearner,
                "status": st,
                "error": err,
                "alarms": by_member.get(m.ID, []),
            })
        leader = self.s.node.leader
        header = self.s.header()
        body = {
            "cluster_id": _hex(header.cluster_id),
            "member_id": _hex(self.s.member_id),
            "leader": _hex(leader) if leader else None,
            "revision": header.revision,
            "raft_term": header.raft_term,
            "members": out,
        }
        return web.Response(text=json.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _status(self, m: rpc_pb2.Member, md: list[tuple[str, str]],
                      remote_md: tuple[tuple[str, str], ...]) -> tuple[dict[str, Any] | None, str | None]:
        try:
            if m.ID == self.s.member_id:
                st = await call(self.s, MAINTENANCE, "Status", rpc_pb2.StatusRequest(), md)
                return _status_json(st), None
            if not m.clientURLs:
                return None, "not started (no client URLs yet)"
            url = m.clientURLs[0]
            async with self.s.member_channel(url) as channel:
                st = await rpc_pb2_grpc.MaintenanceStub(channel).Status(
                    rpc_pb2.StatusRequest(), metadata=remote_md, timeout=STATUS_TIMEOUT)
            return _status_json(st), None
        except CallAborted as e:
            return None, e.details or e.code.name
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None, "unreachable (timed out)"
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                return None, "unreachable"
            return None, e.details() or e.code().name
        except (OSError, ValueError) as e:
            return None, str(e) or type(e).__name__


def _error(e: CallAborted) -> web.Response:
    msg = e.details or e.code.name
    return web.Response(text=json.dumps({"error": msg, "code": http_status(e.code)}), status=http_status(e.code),
                        content_type="application/json")


def dashboard_routes(server: Any) -> list[web.RouteDef]:
    return Dashboard(server).routes()
