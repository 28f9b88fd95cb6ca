"""The friendly REST API (kvstore/rest.py) over raw HTTP against a real
3-member kvstore cluster: reads and writes with their headers, listings and
paging, compare-and-swap (also racing), leases, blocking queries, Server-Sent
Events with resumption, and bad input (never a 5xx).

No timing assertions: waits are bounded by generous timeouts only."""
from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

import pytest
from multidict import CIMultiDict

from tests.procs import Cluster
from tests.test_http_gateway import started

MAX_REQUEST = 65536  # the cluster's --max-request-bytes (small: cheap 413 tests)


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def http(base: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def js(body: bytes) -> Any:
    return json.loads(body)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = started(lambda: Cluster(3, ["--max-request-bytes", str(MAX_REQUEST)]))
    try:
        # Every member answers a linearizable read: a leader is known to all.
        for n in c.nodes:
            for _ in range(200):
                st, _, _ = http(n.http_url, "GET", "/kv/probe")
                if st == 404:
                    break
        yield c
    finally:
        c.close()


@pytest.fixture
def urls(cluster: Cluster) -> list[str]:
    return [n.http_url for n in cluster.nodes]


# ---------------------------------------------------------------- basics
def test_put_get_delete_with_headers(urls: list[str]) -> None:
    a, b, c = urls
    st, h, body = http(a, "PUT", "/kv/basic/k", b"hello")
    assert st == 201
    out = js(body)
    rev = out["revision"]
    assert out["mod_revision"] == out["create_revision"] == rev and out["version"] == 1
    assert h["ETag"] == f'"{rev}"'

    st, h, body = http(b, "GET", "/kv/basic/k")
    assert st == 200 and body == b"hello"
    assert h["Content-Type"] == "application/octet-stream"
    assert h["ETag"] == f'"{rev}"'
    assert h["X-Kvstore-Create-Revision"] == h["X-Kvstore-Mod-Revision"] == str(rev)
    assert h["X-Kvstore-Version"] == "1" and h["X-Kvstore-Lease"] == "0"
    assert int(h["X-Kvstore-Revision"]) >= rev

    st, h, body = http(c, "PUT", "/kv/basic/k", b"world")
    assert st == 200
    rev2 = js(body)["revision"]
    assert js(body)["create_revision"] == rev and js(body)["version"] == 2

    st, h, body = http(a, "HEAD", "/kv/basic/k")
    assert st == 200 and body == b"" and h["ETag"] == f'"{rev2}"'

    # History, and a conditional GET.
    assert http(b, "GET", f"/kv/basic/k?rev={rev}")[2] == b"hello"
    st, h, _ = http(b, "GET", "/kv/basic/k", headers={"If-None-Match": f'"{rev2}"'})
    assert st == 304 and h["ETag"] == f'"{rev2}"'
    assert http(b, "GET", "/kv/basic/k", headers={"If-None-Match": f'"{rev}"'})[0] == 200
    assert http(c, "GET", "/kv/basic/k?serializable")[0] in (200, 404)  # local read: may lag

    st, h, body = http(c, "DELETE", "/kv/basic/k")
    assert st == 200 and js(body)["deleted"] == 1
    st, h, body = http(a, "GET", "/kv/basic/k")
    assert st == 404 and js(body) == {"error": "key not found", "code": 404}
    assert int(h["X-Kvstore-Revision"]) > rev2  # the revision to long-poll from
    assert http(a, "DELETE", "/kv/basic/k")[0] == 404


def test_binary_keys_and_values(urls: list[str]) -> None:
    a, b, _ = urls
    key = b"bin/\xff\x00 x/y?"
    path = "/kv/" + urllib.parse.quote(key, safe="/")
    value = bytes(range(256))
    assert http(a, "PUT", path, value)[0] == 201
    st, _, body = http(b, "GET", path)
    assert st == 200 and body == value
    st, _, body = http(b, "GET", "/kv/bin/?prefix")
    kv = js(body)["kvs"][0]
    assert base64.b64decode(kv["key_base64"]) == key and base64.b64decode(kv["value_base64"]) == value
    assert "key" not in kv and "value" not in kv


def test_prefix_listing_and_consistent_paging(urls: list[str]) -> None:
    a, b, c = urls
    for i in range(7):
        assert http(a, "PUT", f"/kv/list/{i}", f"v{i}".encode())[0] == 201
    http(a, "PUT", "/kv/listx", b"outside")
    st, h, body = http(b, "GET", "/kv/list/?prefix")
    out = js(body)
    assert st == 200 and out["count"] == 7 and out["more"] is False and "continue" not in out
    assert [kv["key"] for kv in out["kvs"]] == [f"list/{i}" for i in range(7)]
    assert out["kvs"][3]["value"] == "v3" and out["kvs"][3]["version"] == 1
    assert h["X-Kvstore-Revision"] == str(out["revision"])

    st, _, body = http(b, "GET", "/kv/list/?prefix&keys")
    assert all("value" not in kv for kv in js(body)["kvs"])

    # Paging: a key written between pages does not appear (one revision).
    st, _, body = http(c, "GET", "/kv/list/?prefix&limit=3")
    page = js(body)
    assert page["more"] is True and len(page["kvs"]) == 3
    seen = [kv["key"] for kv in page["kvs"]]
    http(a, "PUT", "/kv/list/9", b"late")
    while page.get("continue"):
        st, _, body = http(c, "GET", f"/kv/list/?prefix&limit=3&continue={page['continue']}")
        assert st == 200
        page = js(body)
        seen += [kv["key"] for kv in page["kvs"]]
    assert seen == [f"list/{i}" for i in range(7)]
    assert len(js(http(c, "GET", "/kv/list/?prefix")[2])["kvs"]) == 8

    st, _, body = http(a, "DELETE", "/kv/list/?prefix")
    assert st == 200 and js(body)["deleted"] == 8
    assert http(a, "GET", "/kv/listx")[2] == b"outside"


# ---------------------------------------------------- conditional writes
def test_if_match_compare_and_swap(urls: list[str]) -> None:
    a, b, _ = urls
    st, h, _ = http(a, "PUT", "/kv/cas/k", b"1", headers={"If-None-Match": "*"})
    assert st == 201
    etag = h["ETag"]
    st, h2, body = http(b, "PUT", "/kv/cas/k", b"x", headers={"If-None-Match": "*"})
    assert st == 412 and js(body)["code"] == 412 and h2["ETag"] == etag

    st, h, body = http(b, "PUT", "/kv/cas/k", b"2", headers={"If-Match": etag})
    assert st == 200
    new = h["ETag"]
    # The old ETag no longer matches: 412 with the current state in the headers.
    st, h, body = http(a, "PUT", "/kv/cas/k", b"3", headers={"If-Match": etag})
    assert st == 412 and h["ETag"] == new and js(body)["mod_revision"] == int(new.strip('"'))
    assert http(a, "GET", "/kv/cas/k")[2] == b"2"
    # Unquoted revisions work too; If-Match: * needs the key to exist.
    assert http(a, "PUT", "/kv/cas/k", b"4", headers={"If-Match": new.strip('"')})[0] == 200
    assert http(a, "PUT", "/kv/cas/nokey", b"x", headers={"If-Match": "*"})[0] == 412
    assert http(a, "PUT", "/kv/cas/k", b"5", headers={"If-Match": "*"})[0] == 200

    # DELETE with the same preconditions.
    cur = http(b, "GET", "/kv/cas/k")[1]["ETag"]
    assert http(a, "DELETE", "/kv/cas/k", headers={"If-Match": '"1"'})[0] == 412
    st, _, body = http(a, "DELETE", "/kv/cas/k", headers={"If-Match": cur})
    assert st == 200 and js(body)["deleted"] == 1
    assert http(a, "DELETE", "/kv/cas/k", headers={"If-Match": "*"})[0] == 412


def test_concurrent_if_match_writers_exactly_one_wins(urls: list[str]) -> None:
    import aiohttp

    async def run() -> list[tuple[int, int]]:
        results = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.put(urls[0] + "/kv/race/k", data=b"0") as r:
                etag = r.headers["ETag"]
            for round_ in range(10):
                async def write(url: str, who: str) -> int:
                    async with s.put(url + "/kv/race/k", data=f"{round_}-{who}".encode(),
                                     headers={"If-Match": etag}) as r:
                        await r.read()
                        return r.status

                st1, st2 = await asyncio.gather(write(urls[1], "b"), write(urls[2], "c"))
                results.append((st1, st2))
                async with s.get(urls[0] + "/kv/race/k") as r:
                    value = await r.read()
                    etag = r.headers["ETag"]
                winner = "b" if st1 == 200 else "c"
                assert value == f"{round_}-{winner}".encode()
        return results

    results = asyncio.run(run())
    for st in results:
        assert sorted(st) == [200, 412], results


# ------------------------------------------------------------------ leases
def test_ttl_and_lease(urls: list[str]) -> None:
    a, b, _ = urls
    st, h, body = http(a, "PUT", "/kv/lease/k?ttl=60", b"v")
    assert st == 201
    lease = int(h["X-Kvstore-Lease"])
    assert lease > 0 and js(body)["lease"] == str(lease)
    # The same lease seen through the gateway (one lease implementation).
    st, _, body = http(b, "POST", "/v3/lease/timetolive", json.dumps({"ID": str(lease), "keys": True}).encode())
    ttl = js(body)
    assert st == 200 and ttl["grantedTTL"] == "60" and [base64.b64decode(k) for k in ttl["keys"]] == [b"lease/k"]
    # Attach the same lease to another key, by decimal and by hex.
    assert http(b, "PUT", f"/kv/lease/k2?lease={lease}", b"v")[1]["X-Kvstore-Lease"] == str(lease)
    assert http(b, "PUT", f"/kv/lease/k3?lease={hex(lease)}", b"v")[1]["X-Kvstore-Lease"] == str(lease)
    st, _, body = http(a, "PUT", "/kv/lease/k4?lease=12345", b"v")
    assert st == 409 and js(body)["error"] == "etcdserver: requested lease not found"
    assert http(a, "PUT", "/kv/lease/k4?lease=1&ttl=5", b"v")[0] == 400
    # Revoking the lease deletes its keys.
    http(a, "POST", "/v3/lease/revoke", json.dumps({"ID": str(lease)}).encode())
    assert http(b, "GET", "/kv/lease/?prefix")[2] and js(http(b, "GET", "/kv/lease/?prefix")[2])["kvs"] == []
    # A failed conditional write with ?ttl leaves no lease behind for long; it is refused.
    http(a, "PUT", "/kv/lease/c", b"x")
    assert http(a, "PUT", "/kv/lease/c?ttl=60", b"y", headers={"If-None-Match": "*"})[0] == 412


# ---------------------------------------------------------- blocking queries
def test_long_poll_returns_on_change(urls: list[str]) -> None:
    a, b, _ = urls
    st, h, _ = http(a, "PUT", "/kv/lp/k", b"v1")
    rev = int(h["X-Kvstore-Revision"])

    async def run() -> tuple[int, dict[str, str], bytes, int]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async def poll() -> tuple[int, dict[str, str], bytes]:
                async with s.get(b + f"/kv/lp/k?wait={rev}&timeout=50s") as r:
                    return r.status, CIMultiDict(r.headers), await r.read()

            task = asyncio.ensure_future(poll())
            await asyncio.sleep(0.2)  # not needed for correctness: a change before the poll answers at once
            async with s.put(a + "/kv/lp/k", data=b"v2") as r:
                wrote = (await r.json())["revision"]
            return (*await task, wrote)

    st, h, body, wrote = asyncio.run(run())
    assert st == 200 and body == b"v2"
    assert h["ETag"] == f'"{wrote}"' and int(h["X-Kvstore-Revision"]) >= wrote

    # A change already made after the given revision answers at once.
    st, h, body = http(b, "GET", f"/kv/lp/k?wait={rev}&timeout=60s")
    assert st == 200 and body == b"v2"


def test_long_poll_times_out_with_same_etag(urls: list[str]) -> None:
    a, b, _ = urls
    st, h, _ = http(a, "PUT", "/kv/lpt/k", b"same")
    etag, rev = h["ETag"], int(h["X-Kvstore-Revision"])
    st, h2, body = http(b, "GET", f"/kv/lpt/k?wait={rev}&timeout=300ms")
    assert st == 200 and body == b"same" and h2["ETag"] == etag
    # A missing key: 404 on timeout, the creation on change.
    st, h, _ = http(b, "GET", "/kv/lpt/missing")
    assert st == 404
    st, _, _ = http(b, "GET", f"/kv/lpt/missing?wait={h['X-Kvstore-Revision']}&timeout=200ms")
    assert st == 404


def test_long_poll_prefix_and_compacted(urls: list[str]) -> None:
    a, b, c = urls
    st, h, _ = http(a, "PUT", "/kv/lpp/a", b"1")
    rev = int(h["X-Kvstore-Revision"])

    async def run() -> Any:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async def poll() -> Any:
                async with s.get(b + f"/kv/lpp/?prefix&wait={rev}&timeout=50s") as r:
                    return r.status, await r.json()

            task = asyncio.ensure_future(poll())
            await asyncio.sleep(0.2)
            async with s.put(c + "/kv/lpp/b", data=b"2") as r:
                assert r.status == 201
            return await task

    st, out = asyncio.run(run())
    assert st == 200 and [kv["key"] for kv in out["kvs"]] == ["lpp/a", "lpp/b"]

    # Waiting from a compacted revision answers the current state at once.
    st, h, _ = http(a, "PUT", "/kv/lpp/a", b"3")
    now = int(h["X-Kvstore-Revision"])
    http(a, "POST", "/v3/kv/compaction", json.dumps({"revision": now}).encode())
    st, _, body = http(b, "GET", f"/kv/lpp/a?wait={rev}&timeout=60s")
    assert st == 200 and body == b"3"


# ------------------------------------------------------------ Server-Sent Events
class SSE:
    """A minimal EventSource over aiohttp: messages as dicts."""

    def __init__(self, response: Any) -> None:
        self.r = response

    async def next(self) -> dict[str, str]:
        msg: dict[str, str] = {}
        while True:
            line = await self.r.content.readline()
            if not line:
                raise EOFError
            text = line.decode().rstrip("\r\n")
            if not text:
                if "data" in msg or "event" in msg:
                    return msg
                msg = {}
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            msg[name] = msg[name] + "\n" + value if name == "data" and name in msg else value


def test_sse_resume_with_last_event_id_no_gap_no_duplicate(urls: list[str]) -> None:
    a, b, c = urls

    async def run() -> tuple[list[int], list[int], list[Any]]:
        import aiohttp

        seen: list[int] = []
        data: list[Any] = []
        writes: list[int] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async def put(url: str, key: str, value: str) -> None:
                async with s.put(url + f"/kv/{key}", data=value.encode()) as r:
                    writes.append((await r.json())["revision"])

            async with s.get(a + "/watch/sse/") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                ev = SSE(r)
                for i in range(5):
                    await put(b, f"sse/{i}", f"v{i}")
                while not seen or seen[-1] < writes[2]:
                    m = await ev.next()
                    seen.append(int(m["id"]))
                    data.append(json.loads(m["data"]))
            # Disconnected; more changes happen meanwhile (one txn = one revision, two keys).
            for i in range(5, 8):
                await put(c, f"sse/{i}", f"v{i}")
            txn = {"success": [{"request_put": {"key": b64("sse/t1"), "value": b64("t")}},
                               {"request_put": {"key": b64("sse/t2"), "value": b64("t")}}]}
            async with s.post(b + "/v3/kv/txn", json=txn) as r:
                writes.append(int((await r.json())["header"]["revision"]))
            async with s.get(b + "/watch/sse/", headers={"Last-Event-ID": str(seen[-1])}) as r:
                ev = SSE(r)
                while seen[-1] < writes[-1]:
                    m = await ev.next()
                    seen.append(int(m["id"]))
                    data.append(json.loads(m["data"]))
        return seen, writes, data

    seen, writes, data = asyncio.run(run())
    assert seen == writes  # every revision once, in order: no gap, no duplicate
    assert data[0]["events"][0] == {"type": "PUT", "key": "sse/0", "value": "v0", "create_revision": writes[0],
                                    "mod_revision": writes[0], "version": 1, "lease": "0"}
    assert [e["key"] for e in data[-1]["events"]] == ["sse/t1", "sse/t2"]


def test_sse_exact_key_deletes_prev_kv_and_compaction_error(urls: list[str]) -> None:
    a, b, _ = urls

    async def run() -> tuple[list[dict[str, str]], dict[str, str]]:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            async with s.put(a + "/kv/ssex/k", data=b"1") as r:
                first = (await r.json())["revision"]
            async with s.get(b + f"/watch/ssex/k?exact&prev_kv&rev={first}") as r:
                ev = SSE(r)
                async with s.put(a + "/kv/ssex/k2", data=b"other") as w:  # not this key
                    await w.read()
                async with s.delete(a + "/kv/ssex/k") as w:
                    await w.read()
                msgs = [await ev.next(), await ev.next()]
            async with s.post(a + "/v3/kv/compaction", json={"revision": str(first + 1)}) as w:
                assert w.status == 200
            async with s.get(b + "/watch/ssex/", headers={"Last-Event-ID": str(first - 1)}) as r:
                err = await SSE(r).next()
                assert await r.content.read() == b""  # the stream ends after the error
            return msgs, err

    msgs, err = asyncio.run(run())
    put = json.loads(msgs[0]["data"])["events"][0]
    dele = json.loads(msgs[1]["data"])["events"][0]
    assert put["type"] == "PUT" and put["key"] == "ssex/k"
    assert dele["type"] == "DELETE" and dele["key"] == "ssex/k" and dele["prev"]["value"] == "1"
    assert err["event"] == "error"
    body = json.loads(err["data"])
    assert body["code"] == 410 and body["compact_revision"] >= body["compact_revision"] > 0


# ------------------------------------------------------------- bad input
def test_bad_input_is_4xx_never_5xx(urls: list[str]) -> None:
    a = urls[0]
    cases: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
        ("GET", "/kv/", None, {}, 400),
        ("PUT", "/kv/", b"x", {}, 400),
        ("DELETE", "/kv/", None, {}, 400),
        ("GET", "/kv/x?rev=abc", None, {}, 400),
        ("GET", "/kv/x?rev=-1", None, {}, 400),
        ("GET", "/kv/x?rev=99999999999999999999", None, {}, 400),
        ("GET", "/kv/x?rev=99999999", None, {}, 400),  # future revision (etcd's error)
        ("GET", "/kv/x?prefix&limit=-3", None, {}, 400),
        ("GET", "/kv/x?prefix=maybe", None, {}, 400),
        ("GET", "/kv/x?prefix&continue=@@@", None, {}, 400),
        ("GET", "/kv/x?prefix&continue=" + base64.urlsafe_b64encode(b"5.zzz").decode(), None, {}, 400),
        ("GET", "/kv/x?wait=1&timeout=forever", None, {}, 400),
        ("GET", "/kv/x?wait=1&timeout=3600s", None, {}, 400),
        ("GET", "/kv/x?wait=1&rev=1", None, {}, 400),
        ("GET", "/kv/x", None, {"If-None-Match": "garbage"}, 404),
        ("PUT", "/kv/x", b"v", {"If-Match": "garbage"}, 400),
        ("PUT", "/kv/x", b"v", {"If-Match": '"1", "2"'}, 400),
        ("PUT", "/kv/x", b"v", {"If-None-Match": '"3"'}, 400),
        ("PUT", "/kv/x", b"v", {"If-Match": "1", "If-None-Match": "*"}, 400),
        ("PUT", "/kv/x?ttl=0", b"v", {}, 400),
        ("PUT", "/kv/x?ttl=99999999999999", b"v", {}, 400),  # etcd: too large lease TTL
        ("PUT", "/kv/x?lease=xyz", b"v", {}, 400),
        ("PUT", "/kv/x?lease=-5", b"v", {}, 400),
        ("PUT", "/kv/x?prefix", b"v", {}, 400),
        ("PUT", "/kv/x", b"v" * (MAX_REQUEST + 1), {}, 413),
        ("PUT", "/kv/x", b"v" * (MAX_REQUEST - 10), {}, 413),  # fits the body, not the proposal
        ("DELETE", "/kv/x?prefix", None, {"If-Match": "3"}, 400),
        ("GET", "/watch/x?rev=abc", None, {}, 400),
        ("GET", "/watch/x", None, {"Last-Event-ID": "abc"}, 400),
        ("GET", "/watch/?exact", None, {}, 400),
        ("GET", "/nope", None, {}, 404),
        ("POST", "/kv/x", b"v", {}, 405),
        ("POST", "/v3/kv/range", b"{not json", {}, 400),
        ("POST", "/v3/kv/range", b'{"key": "%%%"}', {}, 400),
        ("POST", "/v3/kv/put", b'{"key": "Zm9v", "value": "' + b"A" * (4 * MAX_REQUEST) + b'"}', {}, 400),
        ("POST", "/v3/unknown", b"{}", {}, 404),
    ]
    failures = []
    for method, path, body, headers, want in cases:
        st, h, out = http(a, method, path, body, headers)
        if st != want:
            failures.append((method, path, headers, st, out[:200]))
            continue
        if path.startswith("/kv/") or path.startswith("/watch/"):
            err = js(out)
            if set(err) - {"mod_revision"} != {"error", "code"} or err["code"] != st:
                failures.append((method, path, "error body", err))
    assert not failures, failures


def test_openapi_document(urls: list[str]) -> None:
    st, h, body = http(urls[0], "GET", "/openapi.json")
    doc = js(body)
    assert st == 200 and doc["openapi"].startswith("3.0")
    assert set(doc["paths"]) == {"/kv/{key}", "/watch/{prefix}"}
    assert set(doc["paths"]["/kv/{key}"]) == {"get", "put", "delete"}


def test_disconnected_watchers_are_released(urls: list[str]) -> None:
    """A client that goes away (SSE, long-poll, gateway watch, WebSocket) leaves
    no watcher behind: the member's watcher gauge comes back down."""
    import re
    import time

    import aiohttp

    base = urls[2]

    def watchers() -> int:
        text = http(base, "GET", "/metrics")[2].decode()
        m = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.M)
        if m is None:
            pytest.skip("no watcher gauge in /metrics")
        return int(float(m.group(1)))

    before = watchers()

    async def open_and_drop() -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            sse = await s.get(base + "/watch/gone/")
            await sse.content.readline()
            gw = await s.post(base + "/v3/watch", data=json.dumps({"create_request": {"key": b64("gone")}}))
            await gw.content.readline()
            ws = await s.ws_connect(base + "/v3/watch")
            await ws.send_str(json.dumps({"create_request": {"key": b64("gone")}}))
            await ws.receive()
            poll = asyncio.ensure_future(s.get(base + "/kv/gone?wait=999999999&timeout=60s"))
            while watchers() < before + 4:
                await asyncio.sleep(0.05)
            during = watchers()
            poll.cancel()
            await ws.close()
            gw.close()
            sse.close()
            return during

    during = asyncio.run(open_and_drop())
    assert during >= before + 4
    deadline = time.monotonic() + 30
    while watchers() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watchers() <= before


def test_nospace_and_no_leader_are_503() -> None:
    """503 (with Retry-After) when the NOSPACE alarm is raised, and when the
    member cannot reach a quorum."""
    c = started(lambda: Cluster(1, ["--quota-backend-bytes", "200000"]))
    try:
        base = c.nodes[0].http_url
        blob = bytes(range(256)) * 200  # 51 KB
        statuses = [http(base, "PUT", f"/kv/big/{i}", blob)[0] for i in range(8)]
        assert statuses[0] == 201 and statuses[-1] == 503
        st, h, body = http(base, "PUT", "/kv/small", b"x")
        assert st == 503 and js(body) == {"error": "etcdserver: mvcc: database space exceeded", "code": 503}
        assert h["Retry-After"]
        assert http(base, "GET", "/kv/big/0")[0] == 200  # reads still work
    finally:
        c.close()

    c = started(lambda: Cluster(2))
    try:
        c.nodes[1].kill()
        base = c.nodes[0].http_url
        st, _, body = http(base, "PUT", "/kv/q", b"x")
        assert st == 503, body
        st, _, body = http(base, "GET", "/kv/q")
        assert st == 503, body
        assert http(base, "GET", "/kv/q?serializable")[0] == 404  # a local read needs no quorum
    finally:
        c.close()
