"""etcd's JSON gateway (kvstore/gateway.py) against the real thing.

* Differential: the same request bodies go to a fresh single-node kvstore and
  a fresh single-node etcd 3.4 (/usr/bin/etcd), in the same order, and the
  normalised answers must be equal (status, JSON field names and values,
  int64 as strings, bytes as base64, defaults left out, error bodies).
  Normalised: the header keeps only ``revision`` (cluster/member ids and the
  raft term differ by nature); TTLs counting down are compared as present.
* ``etcd3gw`` (PyPI), unmodified, against a 3-node kvstore cluster: get, put,
  delete, prefixes, transactions, leases, watches and locks.
* Raw HTTP edge cases: streams, malformed input, sizes, routes.
* Every gateway path through a follower of a 3-member kvstore and of a
  3-member etcd: same status, error and JSON shape.

Differences found that are not the gateway's but the services' (the same
over gRPC), compared around here: etcd 3.4 answers Alarm and Defragment
without a header, and sends Snapshot chunks without a header and with
remaining_bytes not counting the trailing checksum.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

from tests.compat.etcd_procs import ETCD, EtcdCluster
from tests.procs import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def post(base: str, path: str, body: Any = None, raw: bytes | None = None, timeout: float = 15.0,
         method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode(errors="replace")


def retry_post(base: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """Retries 503s (an election right after start)."""
    deadline = time.monotonic() + timeout
    while True:
        status, out = post(base, path, body)
        if status != 503 or time.monotonic() > deadline:
            return status, out
        time.sleep(0.1)


def stream_lines(base: str, path: str, body: bytes, n: int, timeout: float = 15.0,
                 events: int | None = None) -> tuple[int, list[Any]]:
    """The first ``n`` JSON lines of a streaming answer (or as many as carry
    ``events`` watch events), then hang up."""

    def enough(out: list[Any]) -> bool:
        if events is not None:
            return sum(len(x.get("result", {}).get("events", [])) for x in out) >= events
        return len(out) >= n

    async def run() -> tuple[int, list[Any]]:
        import aiohttp

        out: list[Any] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(base + path, data=body) as r:
                while not enough(out):
                    line = await r.content.readline()
                    if not line:
                        break
                    if line.strip():
                        out.append(json.loads(line))
                return r.status, out

    return asyncio.run(run())


def normalise(obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "header" and isinstance(v, dict):
                v = {kk: vv for kk, vv in v.items() if kk == "revision"}
            out[k] = normalise(v)
        return out
    if isinstance(obj, list):
        return [normalise(x) for x in obj]
    return obj


def wait_published(base: str, names: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, out = post(base, "/v3/cluster/member/list", {})
        if status == 200 and sorted(m.get("name", "") for m in out.get("members", [])) == sorted(names) and all(
            m.get("clientURLs") for m in out["members"]
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"members not published: {out}")
        time.sleep(0.1)


# ------------------------------------------------------------------ fixtures
def started(make: Any, timeout: float = 60.0, tries: int = 3) -> Any:
    """``make()``'s cluster, started; made anew (new free ports) when one of
    its ports was taken between choosing and binding it (other processes
    on this machine open connections from the same port range)."""
    for attempt in range(tries):
        c = make()
        try:
            return c.start(timeout=timeout)
        except (RuntimeError, TimeoutError) as e:
            c.close()
            if attempt == tries - 1 or "in use" not in str(e).lower():
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[str, str]]:
    """(kvstore HTTP URL, etcd client URL), both fresh single members."""
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    kv = started(lambda: Cluster(1))
    try:
        et = started(lambda: EtcdCluster(1))
    except BaseException:
        kv.close()
        raise
    try:
        wait_published(kv.nodes[0].http_url, ["n1"])
        yield kv.nodes[0].http_url, et.nodes[0].http_url
    finally:
        kv.close()
        et.close()


@pytest.fixture(scope="module")
def cluster3() -> Iterator[Cluster]:
    c = started(lambda: Cluster(3))
    try:
        wait_published(c.nodes[0].http_url, ["n1", "n2", "n3"])
        yield c
    finally:
        c.close()


# -------------------------------------------------------------- differential
LEASE_ID = 7587869190040123456  # explicit, so both sides name the same lease

# (path, body); each answer of kvstore must equal etcd's after normalise().
SEQUENCE: list[tuple[str, Any]] = [
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("bar")}),
    ("/v3/kv/range", {"key": b64("foo")}),
    ("/v3/kv/range", {"key": b64("missing")}),
    ("/v3/kv/range", {}),  # key not provided
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True}),
    ("/v3/kv/put", {"key": b64("fop"), "value": b64("1")}),
    ("/v3/kv/put", {"key": b64("fox"), "value": b64("")}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp"), "sort_order": "DESCEND", "sort_target": "KEY"}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp"), "limit": 1}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp"), "keys_only": True}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp"), "count_only": True}),
    ("/v3/kv/range", {"key": b64("fo"), "rangeEnd": b64("fp"), "countOnly": True}),  # lowerCamel names
    ("/v3/kv/range", {"key": b64("\0"), "range_end": b64("\0"), "revision": "2"}),  # int64 as a string
    ("/v3/kv/range", {"key": b64("foo"), "revision": 1000}),  # future revision
    ("/v3/kv/range", {"key": b64("foo"), "max_mod_revision": 2, "min_mod_revision": 2}),
    ("/v3/kv/put", {"key": b64("nope"), "ignore_value": True}),  # key not found
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("x"), "ignore_value": True}),  # value provided
    ("/v3/kv/txn", {
        "compare": [{"key": b64("foo"), "target": "VALUE", "result": "EQUAL", "value": b64("baz")}],
        "success": [{"request_range": {"key": b64("foo")}},
                    {"request_put": {"key": b64("foo"), "value": b64("qux"), "prev_kv": True}}],
        "failure": [{"request_range": {"key": b64("fop")}}],
    }),
    ("/v3/kv/txn", {
        "compare": [{"key": b64("foo"), "target": "MOD", "result": "LESS", "mod_revision": "2"}],
        "success": [{"request_delete_range": {"key": b64("fox")}}],
        "failure": [{"request_range": {"key": b64("fop")}},
                    {"request_txn": {"success": [{"request_put": {"key": b64("n"), "value": b64("1")}}]}}],
    }),
    ("/v3/kv/txn", {"success": [{"request_put": {"key": b64("d"), "value": b64("1")}},
                                {"request_put": {"key": b64("d"), "value": b64("2")}}]}),  # duplicate key
    ("/v3/kv/txn", {"compare": [{"key": b64("foo"), "target": "VERSION", "result": "GREATER", "version": 0}]}),
    ("/v3/lease/grant", {"TTL": 600, "ID": str(LEASE_ID)}),
    ("/v3/lease/grant", {"TTL": 600, "ID": str(LEASE_ID)}),  # lease already exists
    ("/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": str(LEASE_ID)}),
    ("/v3/kv/put", {"key": b64("leased2"), "value": b64("v"), "lease": "12345"}),  # lease not found
    ("/v3/lease/timetolive", {"ID": str(LEASE_ID), "keys": True}),
    ("/v3/kv/lease/timetolive", {"ID": "999"}),
    ("/v3/lease/leases", {}),
    ("/v3/kv/lease/leases", {}),
    ("/v3/lock/lock", {"name": b64("mylock"), "lease": str(LEASE_ID)}),
    ("/v3/election/campaign", {"name": b64("el"), "lease": str(LEASE_ID), "value": b64("me")}),
    ("/v3/election/leader", {"name": b64("el")}),
    ("/v3/election/leader", {"name": b64("nobody")}),
    ("/v3/kv/deleterange", {"key": b64("fo"), "range_end": b64("fp"), "prev_kv": True}),
    ("/v3/kv/deleterange", {"key": b64("nothing")}),
    ("/v3/kv/compaction", {"revision": 3}),
    ("/v3/kv/range", {"key": b64("foo"), "revision": 2}),  # compacted
    ("/v3/kv/compaction", {"revision": 3}),  # already compacted
    ("/v3beta/kv/range", {"key": b64("leased")}),
    ("/v3/kv/lease/revoke", {"ID": str(LEASE_ID)}),
    ("/v3/lease/revoke", {"ID": str(LEASE_ID)}),  # lease not found
    ("/v3/kv/range", {"key": b64("leased")}),
    ("/v3/kv/range", {"key": "@@@@"}),  # bad base64
    ("/v3/kv/range", {"key": b64("x"), "sort_order": 7}),  # unknown enum value
    ("/v3/lease/grant", {"TTL": "9000000000000"}),  # too large TTL
    ("/v3/kv/txn", {"success": [{"request_put": {"key": ""}}]}),
    ("/v3/lock/unlock", {"key": b64("mylock/694d")}),
    ("/v3/election/proclaim", {"leader": {"name": b64("el"), "key": b64("el/x"), "rev": 5, "lease": "1"},
                               "value": b64("v")}),  # not leader
    ("/v3/election/resign", {"leader": {"name": b64("el"), "key": b64("el/x"), "rev": 5, "lease": "1"}}),
    ("/v3/election/proclaim", {}),  # leader missing
    ("/v3/cluster/member/remove", {"ID": "1"}),
    ("/v3/cluster/member/update", {"ID": "1", "peerURLs": ["http://127.0.0.1:1"]}),
    ("/v3/cluster/member/add", {"peerURLs": ["bad"]}),
    ("/v3/cluster/member/promote", {"ID": "1"}),
    ("/v3/maintenance/transfer-leadership", {"targetID": "1"}),
]

# Answers that differ from etcd's in the servicers, not in the encoding
# (the same difference shows over gRPC): etcd 3.4 sends these without a
# header. Compared here with the header left out.
HEADERLESS_IN_ETCD = [
    ("/v3/maintenance/alarm", {}),
    ("/v3/maintenance/alarm", {"action": "GET"}),
    ("/v3/maintenance/defragment", {}),
]


def _strip_ttl(path: str, out: Any) -> Any:
    # A TTL counting down may differ by a second between the two servers.
    if "timetolive" in path and isinstance(out, dict) and out.get("TTL") not in (None, "-1"):
        out = dict(out, TTL="<counting>")
    return out


def test_differential_sequence_matches_etcd(pair: tuple[str, str]) -> None:
    kv, etcd = pair
    diffs = []
    for path, body in SEQUENCE:
        ks, kout = retry_post(kv, path, body)
        es, eout = retry_post(etcd, path, body)
        kn, en = normalise(_strip_ttl(path, kout)), normalise(_strip_ttl(path, eout))
        if ks != es or kn != en:
            diffs.append(f"{path} {json.dumps(body)}\n  kvstore {ks} {kn}\n  etcd    {es} {en}")
    assert not diffs, "\n".join(diffs)


def test_differential_headerless_answers(pair: tuple[str, str]) -> None:
    kv, etcd = pair
    for path, body in HEADERLESS_IN_ETCD:
        ks, kout = retry_post(kv, path, body)
        es, eout = retry_post(etcd, path, body)
        assert ks == es == 200
        kout.pop("header", None)
        assert kout == eout


def test_differential_observe_and_snapshot_streams(pair: tuple[str, str]) -> None:
    kv, etcd = pair
    out = []
    for base in pair:
        assert post(base, "/v3/lease/grant", {"TTL": 600, "ID": "77"})[0] == 200
        assert post(base, "/v3/election/campaign", {"name": b64("obs"), "lease": "77", "value": b64("me")})[0] == 200
        status, lines = stream_lines(base, "/v3/election/observe", json.dumps({"name": b64("obs")}).encode(), 1)
        out.append((status, normalise(lines)))
    assert out[0] == out[1]
    for base in pair:
        status, lines = stream_lines(base, "/v3/maintenance/snapshot", b"{}", 2, timeout=30)
        assert status == 200 and all("blob" in ln["result"] for ln in lines)
    # A malformed request of a server stream: 400 with code 3 on both.
    for base in pair:
        status, lines = stream_lines(base, "/v3/election/observe", b"garbage", 1)
        assert status == 400 and lines[0]["code"] == 3


def test_differential_watch_stream(pair: tuple[str, str]) -> None:
    kv, etcd = pair
    for base in pair:
        for i in range(3):
            assert post(base, "/v3/kv/put", {"key": b64(f"w/{i}"), "value": b64(f"v{i}")})[0] == 200
        assert post(base, "/v3/kv/deleterange", {"key": b64("w/1")})[0] == 200
    rev = int(post(kv, "/v3/kv/range", {"key": b64("w/0")})[1]["kvs"][0]["mod_revision"])
    body = json.dumps({"create_request": {"key": b64("w/"), "range_end": b64("w0"), "start_revision": rev,
                                          "prev_kv": True}}).encode()
    ks, klines = stream_lines(kv, "/v3/watch", body, 0, events=4)
    es, elines = stream_lines(etcd, "/v3/watch", body, 0, events=4)
    assert ks == es == 200
    # etcd may batch catch-up events differently: compare the events themselves.
    def flat(lines: list[Any]) -> tuple[list[Any], list[Any]]:
        control = [normalise({k: v for k, v in ln["result"].items() if k != "events"}) for ln in lines[:1]]
        events = [ev for ln in lines for ev in ln["result"].get("events", [])]
        return control, events

    kc, kev = flat(klines)
    ec, eev = flat(elines)
    assert kc == ec
    assert kev == eev and len(kev) == 4

    # Several requests in one body: two creates and a progress request.
    body = (json.dumps({"create_request": {"key": b64("a")}}) + json.dumps(
        {"create_request": {"key": b64("b"), "range_end": b64("c")}}) + json.dumps({"progress_request": {}})).encode()
    ks, klines = stream_lines(kv, "/v3/watch", body, 3)
    es, elines = stream_lines(etcd, "/v3/watch", body, 3)
    assert [normalise(x) for x in klines] == [normalise(x) for x in elines]


def test_differential_keepalive_stream(pair: tuple[str, str]) -> None:
    lid = "7587869190040999999"
    for base in pair:
        assert post(base, "/v3/lease/grant", {"TTL": 300, "ID": lid})[0] == 200
    body = (json.dumps({"ID": lid}) + "\n" + json.dumps({"ID": lid}) + json.dumps({"ID": "42"})).encode()
    out = []
    for base in pair:
        status, lines = stream_lines(base, "/v3/lease/keepalive", body, 3)
        out.append((status, [normalise(x) for x in lines]))
    assert out[0] == out[1]
    assert out[0][1][0]["result"]["TTL"] == "300" and "TTL" not in out[0][1][2]["result"]


def test_differential_errors_and_routes(pair: tuple[str, str]) -> None:
    kv, etcd = pair
    cases = [
        ("POST", "/v3/kv/range", b'{"key":'),  # truncated JSON
        ("POST", "/v3/kv/range", b'{"key": 5}'),  # wrong type
        ("POST", "/v3/kv/range", b'{"key":"Zm9v","limit":"x"}'),
        ("POST", "/v3/lease/grant", b'{"TTL":"abc"}'),
        ("POST", "/v3/kv/range", b'{"key":"Zm9v"} trailing'),  # first value wins, as Go's decoder
        ("POST", "/v3/kv/put", b'{"key":"Zm9v","value":"YmFy","unknown_field":{"x":1}}'),  # ignored
        ("POST", "/v3/nope", b"{}"),
        ("GET", "/v3/kv/range", None),
        ("POST", "/v3beta/maintenance/hash", b"not json"),
    ]
    for method, path, raw in cases:
        ks, kout = post(kv, path, raw=raw, method=method)
        es, eout = post(etcd, path, raw=raw, method=method)
        assert ks == es, (path, raw, kout, eout)
        assert ks < 500 or ks == 501
        if isinstance(eout, dict) and "code" in eout:
            assert kout["code"] == eout["code"], (path, raw, kout, eout)
            assert set(kout) == set(eout)
            if eout["error"].startswith("etcdserver"):
                assert kout["error"] == eout["error"]


def test_differential_shapes_of_cluster_and_maintenance(pair: tuple[str, str]) -> None:
    """Values differ by nature (ids, sizes, versions): the field names must not."""
    kv, etcd = pair
    for path in ("/v3/cluster/member/list", "/v3/maintenance/status"):
        ks, kout = post(kv, path, {})
        es, eout = post(etcd, path, {})
        assert ks == es == 200

        def shape(o: Any) -> Any:
            if isinstance(o, dict):
                return {k: shape(v) for k, v in o.items() if k not in ("raft_term",)}
            if isinstance(o, list):
                return [shape(x) for x in o[:1]]
            return type(o).__name__

        assert shape(kout) == shape(eout), (kout, eout)


def test_differential_auth(pair: tuple[str, str]) -> None:
    """Users, roles, enabling auth and calls with and without a token (the
    Authorization header), on both; then the REST API's 401/403 on kvstore.
    Runs last among the differential tests: it enables auth (and disables it
    again)."""
    kv, etcd = pair
    setup = [
        ("/v3/auth/user/list", {}),
        ("/v3/auth/user/add", {"name": "root", "password": "rootpw"}),
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/user/add", {"name": "alice", "password": "alicepw"}),
        ("/v3/auth/user/add", {"name": "alice", "password": "again"}),  # exists
        ("/v3/auth/role/add", {"name": "reader"}),
        ("/v3/auth/role/grant", {"name": "reader", "perm": {"permType": "READ", "key": b64("pub/"),
                                                              "range_end": b64("pub0")}}),
        ("/v3/auth/user/grant", {"user": "alice", "role": "reader"}),
        ("/v3/auth/user/grant", {"user": "alice", "role": "nosuchrole"}),
        ("/v3/auth/role/get", {"role": "reader"}),
        ("/v3/auth/user/get", {"name": "alice"}),
        ("/v3/auth/user/list", {}),
        ("/v3/auth/role/list", {}),
        ("/v3/kv/put", {"key": b64("pub/x"), "value": b64("1")}),
        ("/v3/auth/enable", {}),
        ("/v3/kv/range", {"key": b64("pub/x")}),  # no token
        ("/v3/auth/authenticate", {"name": "alice", "password": "wrong"}),
    ]
    diffs = []

    def compare(path: str, body: Any, headers: dict[str, dict[str, str]] | None = None) -> tuple[Any, Any]:
        ks, kout = retry_post(kv, path, body) if not headers else post(kv, path, body, headers=headers[kv])
        es, eout = retry_post(etcd, path, body) if not headers else post(etcd, path, body, headers=headers[etcd])
        kn, en = normalise(kout), normalise(eout)
        if isinstance(kn, dict) and isinstance(en, dict) and "token" in en:
            kn["token"], en["token"] = bool(kn.get("token")), True
        if ks != es or kn != en:
            diffs.append(f"{path} {json.dumps(body)}\n  kvstore {ks} {kn}\n  etcd    {es} {en}")
        return kout, eout

    for path, body in setup:
        compare(path, body)
    tokens: dict[str, dict[str, dict[str, str]]] = {}
    for user, pw in (("alice", "alicepw"), ("root", "rootpw")):
        kout, eout = compare("/v3/auth/authenticate", {"name": user, "password": pw})
        tokens[user] = {kv: {"Authorization": kout["token"]}, etcd: {"Authorization": eout["token"]}}
    alice, root = tokens["alice"], tokens["root"]
    compare("/v3/kv/range", {"key": b64("pub/x")}, alice)
    compare("/v3/kv/range", {"key": b64("secret")}, alice)  # permission denied
    compare("/v3/kv/put", {"key": b64("pub/y"), "value": b64("2")}, alice)  # read-only role
    compare("/v3/auth/user/list", {}, alice)  # not root
    compare("/v3/kv/range", {"key": b64("pub/x")}, {kv: {"Authorization": "bogus.1"},
                                                    etcd: {"Authorization": "bogus.1"}})
    compare("/v3/kv/put", {"key": b64("secret"), "value": b64("s")}, root)

    # The REST API on the same member: 401 without a token, 403 without permission.
    def rest(method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
        req = urllib.request.Request(kv + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status
        except urllib.error.HTTPError as e:
            assert json.loads(e.read())["code"] == e.code
            return e.code

    statuses = [
        rest("GET", "/kv/pub/x"),
        rest("GET", "/kv/pub/x", alice[kv]),
        rest("GET", "/kv/secret", alice[kv]),
        rest("PUT", "/kv/pub/x", alice[kv], b"v"),
        rest("GET", "/kv/pub/?prefix", alice[kv]),
        rest("GET", "/kv/pub/x?wait=1000000&timeout=10ms", alice[kv]),
        rest("GET", "/kv/secret?wait=1000000&timeout=10ms", alice[kv]),
        rest("GET", "/watch/secret", alice[kv]),
        rest("GET", "/kv/pub/x", {"Authorization": "bogus.1"}),
        rest("PUT", "/kv/secret", root[kv], b"s2"),
    ]
    # The same write on etcd, so that both stores are at the same revision.
    assert post(etcd, "/v3/kv/put", {"key": b64("secret"), "value": b64("s2")}, headers=root[etcd])[0] == 200
    compare("/v3/auth/disable", {}, root)
    assert statuses == [401, 200, 403, 403, 200, 200, 403, 403, 401, 200]
    assert not diffs, "\n".join(diffs)


def test_routes_match_the_proto_comments() -> None:
    """The gateway's table is etcd's: every "// POST /v3/..." of our protos."""
    from kvstore.gateway import ROUTES

    declared = set()
    pat = re.compile(r"//\s*POST (/v3/\S+)(?:\s+\(also POST (/v3/\S+)\))?\s*\n(?://[^\n]*\n)*\s*rpc (\w+)\(")
    for rel in ("etcd/etcdserverpb/rpc.proto", "etcd/v3lockpb/v3lock.proto", "etcd/v3electionpb/v3election.proto"):
        text = open(os.path.join(ROOT, "proto", rel)).read()
        for m in pat.finditer(text):
            for p in (m.group(1), m.group(2)):
                if p and not (m.group(3) == "HashKV"):  # etcd: Hash answers that path
                    declared.add((p[len("/v3/"):], m.group(3)))
    ours = {(p, name) for p, _, name in ROUTES}
    assert ours == declared


# ------------------------------------------------------------- etcd3gw e2e
def test_etcd3gw_end_to_end_on_three_members(cluster3: Cluster) -> None:
    from etcd3gw.client import Etcd3Client

    clients = [Etcd3Client(host="127.0.0.1", port=n.http_port, timeout=15) for n in cluster3.nodes]
    a, b, c = clients
    assert a.api_path == "/v3/"
    assert len(a.members()) == 3
    assert "leader" in a.status()

    # put / get / delete through different members
    assert a.put("gw/k1", "v1")
    assert b.get("gw/k1") == [b"v1"]
    (value, meta), = c.get("gw/k1", metadata=True)
    assert value == b"v1" and meta["key"] == b"gw/k1" and int(meta["version"]) == 1
    assert c.create("gw/k1", "other") is False
    assert c.create("gw/k2", "v2") is True
    assert a.replace("gw/k2", "v2", "v2b") is True
    assert a.replace("gw/k2", "v2", "v2c") is False
    assert sorted(v for v, _ in b.get_prefix("gw/")) == [b"v1", b"v2b"]
    assert b.get("gw/missing") == []
    assert a.delete("gw/k1") is True
    assert a.delete("gw/k1") is False
    assert c.get("gw/k1") == []

    # transactions
    txn = {
        "compare": [{"key": b64("gw/k2"), "result": "EQUAL", "target": "VALUE", "value": b64("v2b")}],
        "success": [{"request_put": {"key": b64("gw/t"), "value": b64("yes")}}],
        "failure": [{"request_put": {"key": b64("gw/t"), "value": b64("no")}}],
    }
    assert b.transaction(txn)["succeeded"] is True
    assert a.get("gw/t") == [b"yes"]

    # leases
    lease = a.lease(ttl=60)
    assert b.put("gw/leased", "x", lease=lease)
    assert 0 < lease.ttl() <= 60
    assert lease.refresh() > 0
    assert [k for k in lease.keys()] == [b"gw/leased"]
    assert lease.revoke()
    assert c.get("gw/leased") == []

    # prefix delete
    assert c.delete_prefix("gw/")
    assert a.get_prefix("gw/") == []

    # watch: events from one member, writes through others
    events, cancel = a.watch_prefix("wgw/")
    try:
        b.put("wgw/1", "one")
        c.put("wgw/2", "two")
        b.delete("wgw/1")
        got = []
        for ev in events:
            got.append((ev.get("type", "PUT"), ev["kv"]["key"], ev["kv"].get("value")))
            if len(got) == 3:
                break
    finally:
        cancel()
    assert got == [("PUT", b"wgw/1", b"one"), ("PUT", b"wgw/2", b"two"), ("DELETE", b"wgw/1", None)]

    # watch_once with a timeout
    def later() -> None:
        time.sleep(0.3)
        c.put("wgw/once", "1")

    t = threading.Thread(target=later)
    t.start()
    ev = b.watch_once("wgw/once", timeout=20)
    t.join()
    assert ev["kv"]["value"] == b"1"

    # locks (etcd3gw's recipe: a lease and a create-if-absent txn)
    lock = a.lock("gwlock", ttl=30)
    assert lock.acquire()
    other = b.lock("gwlock", ttl=30)
    assert lock.is_acquired()
    assert lock.refresh() > 0
    assert lock.release()
    assert other.acquire()
    assert other.release()


# --------------------------------------------------------- raw HTTP details
def test_gateway_streams_and_errors_raw(cluster3: Cluster) -> None:
    base = cluster3.nodes[1].http_url
    # A watch stream starts with "created", then one line per event batch.
    body = json.dumps({"create_request": {"key": b64("raw/"), "range_end": b64("raw0")}}).encode()

    async def watch_then_write() -> list[Any]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.post(base + "/v3/watch", data=body) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
                lines = [json.loads(await r.content.readline())]
                for i in range(2):
                    async with s.post(cluster3.nodes[2].http_url + "/v3/kv/put",
                                      json={"key": b64(f"raw/{i}"), "value": b64("v")}) as p:
                        assert p.status == 200
                while sum(len(ln["result"].get("events", [])) for ln in lines) < 2:
                    lines.append(json.loads(await r.content.readline()))
                return lines

    lines = asyncio.run(watch_then_write())
    assert lines[0]["result"]["created"] is True
    keys = [base64.b64decode(ev["kv"]["key"]) for ln in lines for ev in ln["result"].get("events", [])]
    assert keys == [b"raw/0", b"raw/1"]

    # A malformed first message of a stream is refused (400, code 3).
    status, out = post(base, "/v3/watch", raw=b'{"create_request":')
    assert status == 400 and out["code"] == 3
    status, out = post(base, "/v3/lease/keepalive", raw=b"[1,2]")
    assert status == 400 and out["code"] == 3

    # CORS preflight, as etcd answers it.
    req = urllib.request.Request(base + "/v3/kv/range", method="OPTIONS")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"


def test_gateway_body_limits(cluster3: Cluster) -> None:
    base = cluster3.nodes[0].http_url
    big = 2 * (1572864 + 512 * 1024) + 10  # past the gateway's body limit
    status, out = post(base, "/v3/kv/put", raw=b"{" + b" " * big + b"}")
    assert status == 413 and out["code"] == 8
    # Within the body limit but a request etcd refuses: its own error.
    status, out = post(base, "/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * (1572864 + 1))})
    assert status == 400 and out["error"] == "etcdserver: request is too large"


def test_gateway_websocket_watch(cluster3: Cluster) -> None:
    """etcd's wsproxy: the same JSON stream over a WebSocket."""
    base = cluster3.nodes[0].http_url

    async def run() -> list[Any]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.ws_connect(base + "/v3/watch") as ws:
                await ws.send_str(json.dumps({"create_request": {"key": b64("ws/k")}}))
                out = [json.loads((await ws.receive()).data)]
                async with s.post(base + "/v3/kv/put", json={"key": b64("ws/k"), "value": b64("1")}) as p:
                    assert p.status == 200
                out.append(json.loads((await ws.receive()).data))
                return out

    out = asyncio.run(run())
    assert out[0]["result"]["created"] is True
    assert base64.b64decode(out[1]["result"]["events"][0]["kv"]["value"]) == b"1"


# ------------------------------------------- every path, 3 members vs 3 members
@pytest.fixture(scope="module")
def etcd3() -> Iterator[EtcdCluster]:
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    c = started(lambda: EtcdCluster(3))
    try:
        wait_published(c.nodes[0].http_url, ["n1", "n2", "n3"])
        yield c
    finally:
        c.close()


def _follower(urls: list[str]) -> str:
    for u in urls:
        st = post(u, "/v3/maintenance/status", {})[1]
        if st.get("leader") != st.get("header", {}).get("member_id"):
            return u
    return urls[0]


def _shape(o: Any) -> Any:
    """Field names and JSON types; a list as the set of its items' shapes
    (member lists come in ID order, and IDs differ)."""
    if isinstance(o, dict):
        return {k: _shape(v) for k, v in o.items()}
    if isinstance(o, list):
        return sorted({json.dumps(_shape(x), sort_keys=True) for x in o})
    return type(o).__name__


def test_every_gateway_path_on_three_members_like_etcd(cluster3: Cluster, etcd3: EtcdCluster) -> None:
    """Each of etcd 3.4's gateway paths (and a /v3beta/ alias), through a
    follower of a 3-member cluster, on kvstore and on etcd: the same status,
    the same error, the same JSON shape (values such as member IDs differ)."""
    from kvstore.gateway import ROUTES

    kv = _follower([n.http_url for n in cluster3.nodes])
    et = _follower([n.http_url for n in etcd3.nodes])
    lease = "7587869190040222222"
    tested: set[str] = set()
    diffs: list[str] = []
    learner: dict[str, str] = {}

    def both(path: str, body: Any, stream: int = 0, fill: Any = None, shape: Any = _shape) -> tuple[Any, Any]:
        tested.add(path.split("/", 2)[2])
        outs = []
        for base in (kv, et):
            b = fill(base, body) if fill else body
            if stream:
                st, lines = stream_lines(base, path, json.dumps(b).encode(), stream, timeout=30)
                out: Any = lines
            else:
                st, out = retry_post(base, path, b)
            outs.append((st, out))
        (ks, kout), (es, eout) = outs
        same_err = not (isinstance(eout, dict) and "error" in eout) or (
            isinstance(kout, dict) and kout.get("code") == eout.get("code") and kout.get("error") == eout.get("error"))
        if ks != es or shape(kout) != shape(eout) or not same_err:
            diffs.append(f"{path} {json.dumps(body)}\n  kvstore {ks} {str(kout)[:400]}\n  etcd    {es} {str(eout)[:400]}")
        return kout, eout

    both("/v3/kv/put", {"key": b64("all/a"), "value": b64("1")})
    both("/v3/kv/range", {"key": b64("all/a")})
    both("/v3beta/kv/range", {"key": b64("all/"), "range_end": b64("all0")})
    both("/v3/kv/txn", {"compare": [{"key": b64("all/a"), "target": "CREATE", "result": "GREATER",
                                     "create_revision": "0"}],
                        "success": [{"request_delete_range": {"key": b64("all/a"), "prev_kv": True}}]})
    both("/v3/kv/deleterange", {"key": b64("all/none")})
    both("/v3/kv/compaction", {"revision": "1"})
    both("/v3/watch", {"create_request": {"key": b64("all/w")}}, stream=1)
    both("/v3/lease/grant", {"TTL": 120, "ID": lease})
    both("/v3/lease/keepalive", {"ID": lease}, stream=1)
    both("/v3/lease/timetolive", {"ID": lease})
    both("/v3/kv/lease/timetolive", {"ID": "42"})
    both("/v3/lease/leases", {})
    both("/v3/kv/lease/leases", {})
    both("/v3/lock/lock", {"name": b64("all-lock"), "lease": lease})
    both("/v3/lock/unlock", {"key": b64("all-lock/" + format(int(lease), "x"))})
    camp = both("/v3/election/campaign", {"name": b64("all-el"), "lease": lease, "value": b64("v1")})
    both("/v3/election/proclaim", {"value": b64("v2")},
         fill=lambda base, b: dict(b, leader=camp[0 if base == kv else 1]["leader"]))
    both("/v3/election/leader", {"name": b64("all-el")})
    both("/v3/election/observe", {"name": b64("all-el")}, stream=1)
    both("/v3/election/resign", {},
         fill=lambda base, b: dict(b, leader=camp[0 if base == kv else 1]["leader"]))
    both("/v3/kv/lease/revoke", {"ID": lease})
    both("/v3/lease/revoke", {"ID": lease})  # not found now

    added = both("/v3/cluster/member/add", {"peerURLs": ["http://127.0.0.1:9"], "isLearner": True})
    for base, out in zip((kv, et), added):
        learner[base] = out.get("member", {}).get("ID", "0")
    both("/v3/cluster/member/promote", {}, fill=lambda base, b: {"ID": learner[base]})
    both("/v3/cluster/member/update", {"ID": "1", "peerURLs": ["http://127.0.0.1:10"]})
    both("/v3/cluster/member/remove", {}, fill=lambda base, b: {"ID": learner[base]})
    both("/v3/cluster/member/list", {})

    both("/v3/maintenance/status", {})
    both("/v3/maintenance/hash", {})
    both("/v3/maintenance/transfer-leadership", {"targetID": "1"})  # on a follower: not leader
    # Snapshot chunks: etcd 3.4 sends no header and counts remaining_bytes
    # without the trailing hash; only the blobs are compared here.
    both("/v3/maintenance/snapshot", {}, stream=1, shape=lambda lines: ["blob" in ln["result"] for ln in lines])
    tested.update({"maintenance/alarm", "maintenance/defragment"})  # see HEADERLESS_IN_ETCD

    both("/v3/auth/authenticate", {"name": "root", "password": "x"})  # auth not enabled
    both("/v3/auth/enable", {})  # no root user
    both("/v3/auth/disable", {})
    both("/v3/auth/user/add", {"name": "bob", "password": "pw"})
    both("/v3/auth/user/get", {"name": "bob"})
    both("/v3/auth/user/list", {})
    both("/v3/auth/user/changepw", {"name": "bob", "password": "pw2"})
    both("/v3/auth/role/add", {"name": "r"})
    both("/v3/auth/role/grant", {"name": "r", "perm": {"permType": "READWRITE", "key": b64("k")}})
    both("/v3/auth/role/get", {"role": "r"})
    both("/v3/auth/role/list", {})
    both("/v3/auth/user/grant", {"user": "bob", "role": "r"})
    both("/v3/auth/user/revoke", {"name": "bob", "role": "r"})
    both("/v3/auth/role/revoke", {"role": "r", "key": b64("k")})
    both("/v3/auth/role/delete", {"role": "r"})
    both("/v3/auth/user/delete", {"name": "bob"})

    assert not diffs, "\n".join(diffs)
    assert tested >= {p for p, _, _ in ROUTES}, {p for p, _, _ in ROUTES} - tested
