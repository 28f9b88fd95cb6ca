"""kvstore.client end to end: against a real 3-process kvstore cluster and a
real single-node etcd (the same tests where the behaviour is the API's).

Covers the KV/txn/lease/lock/election API in both flavours, watches that
resume without gap or repeat across the loss of the node they are connected
to (the leader for the sync flavour, a follower for asyncio), lease
keep-alive, Lock mutual exclusion with fencing tokens, compaction errors, and
TLS + auth against etcd. No timing assertions: waits poll with generous
deadlines.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time

import pytest

from kvstore.client import (
    AsyncClient,
    AuthFailed,
    Client,
    ClientError,
    Compacted,
    OutcomeUnknown,
    Unavailable,
    WatchCompacted,
    get,
    mod_revision,
    put,
    value,
    version,
)
from tests import etcd_single
from tests.procs import Cluster


def wait_until(fn, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    yield c
    c.close()


@pytest.fixture(scope="module")
def etcd():
    if not etcd_single.available():
        pytest.skip("etcd not installed")
    e = etcd_single.Etcd().start()
    yield e
    e.close()


@pytest.fixture(params=["kvstore", "etcd"])
def endpoints(request):
    if request.param == "kvstore":
        return request.getfixturevalue("cluster").endpoints
    return request.getfixturevalue("etcd").endpoints


def leader_node(cluster):
    with Client(cluster.endpoints, timeout=5) as c:
        def find():
            for n in cluster.nodes:
                if not n.alive:
                    continue
                try:
                    if c.status(n.endpoint).is_leader:
                        return n
                except ClientError:
                    pass
            return None

        return wait_until(find, what="a leader")


# -- the API, against both ---------------------------------------------------------------------


def test_sync_api(endpoints):
    p = f"/api-{time.monotonic_ns()}/"
    with Client(endpoints, timeout=10) as c:
        r1 = c.put(p + "a", "1")
        r2 = c.put(p + "b", b"\x00bin")
        assert r2.revision > r1.revision
        kv = c.get(p + "a")
        assert (kv.key, kv.value, kv.version, kv.mod_revision) == ((p + "a").encode(), b"1", 1, r1.revision)
        assert c.get(p + "missing") is None
        rr = c.get_prefix(p)
        assert [k.key for k in rr] == [(p + "a").encode(), (p + "b").encode()] and rr.count == 2
        assert c.range(p, prefix=True, limit=1).more
        assert c.range(p, prefix=True, count_only=True).count == 2
        assert c.get(p + "a", revision=r1.revision).value == b"1"
        assert c.put(p + "a", "2", prev_kv=True).prev_kv.value == b"1"

        t = c.txn().if_(value(p + "a") == "2").then(put(p + "c", "3"), get(p, prefix=True)).else_(get(p + "a")).commit()
        assert t.succeeded and not t.retried and [k.key for k in t.responses[1].kvs][-1] == (p + "c").encode()
        t = c.txn().if_(version(p + "nope") > 0).then(put(p + "x", "1")).else_(get(p + "a")).commit()
        assert not t.succeeded and t.responses[0].kvs[0].value == b"2"

        d = c.delete(p + "c", prev_kv=True)
        assert d.deleted == 1 and d.prev_kvs[0].value == b"3"
        assert c.delete_prefix(p).deleted == 2

        with c.lease(5) as ls:
            c.put(p + "leased", "v", lease=ls.id)
            ttl = c.time_to_live(ls.id, keys=True)
            assert ttl.granted_ttl >= 5 and ttl.keys == [(p + "leased").encode()]
            assert ls.id in c.leases()
        assert c.get(p + "leased") is None and ls.lost.is_set()
        assert c.time_to_live(ls.id).ttl == -1

        with c.lock(p + "lock", ttl=5) as lk:
            assert lk.key.startswith((p + "lock/").encode()) and lk.revision > 0 and lk.held
            assert c.txn().if_(lk.guard()).then(put(p + "fenced", "1")).commit().succeeded
        assert c.get(lk.key) is None

        e = c.election(p + "el")
        assert e.leader() is None
        with e.campaign("me", ttl=5) as ld:
            assert e.leader().value == b"me" and ld.revision == e.leader().create_revision
            ld.proclaim("me2")
            assert e.leader().value == b"me2"
        assert e.leader() is None

        st = c.status(c.endpoints[0])
        assert st.leader and st.version
        assert len(c.member_list()) >= 1
        assert c.alarms() == []


def test_async_api(endpoints):
    p = f"/aapi-{time.monotonic_ns()}/"

    async def main():
        async with AsyncClient(endpoints, timeout=10) as c:
            r = await c.put(p + "a", "1")
            assert (await c.get(p + "a")).mod_revision == r.revision
            t = await c.txn().if_(value(p + "a") == "1").then(put(p + "b", "2")).commit()
            assert t.succeeded
            w = await c.watch_prefix(p)
            await c.put(p + "c", "3")
            await c.delete(p + "a")
            e1, e2 = await w.get(10), await w.get(10)
            assert (e1.type, e1.key, e2.type, e2.key) == ("PUT", (p + "c").encode(), "DELETE", (p + "a").encode())
            w.close()
            async with await c.lease(5) as ls:
                await c.put(p + "l", "v", lease=ls.id)
                assert (await c.time_to_live(ls.id)).ttl > 0
            assert await c.get(p + "l") is None
            async with c.lock(p + "lock", ttl=5) as lk:
                assert (await c.txn().if_(lk.guard()).then(put(p + "f", "1")).commit()).succeeded
            el = c.election(p + "el")
            async with await el.campaign("v", ttl=5) as ld:
                assert (await el.leader()).value == b"v"
                await ld.proclaim("w")
                obs = el.observe()
                async for kv in obs:
                    assert kv.value == b"w"
                    break
                obs.close()
            assert await el.leader() is None

    asyncio.run(main())


def test_watch_from_a_compacted_revision_says_to_relist(endpoints):
    p = f"/compact-{time.monotonic_ns()}/"
    with Client(endpoints, timeout=10) as c:
        first = c.put(p + "k", "1").revision
        last = c.put(p + "k", "2").revision
        c.compact(last)
        with pytest.raises(Compacted):
            c.get(p + "k", revision=first)
        with pytest.raises(WatchCompacted) as ei:
            w = c.watch_prefix(p, start_revision=first)
            w.get(10)
        assert ei.value.compact_revision == last and "re-list" in ei.value.message


def test_lease_keepalive_keeps_keys_alive(endpoints):
    p = f"/ka-{time.monotonic_ns()}/"
    with Client(endpoints, timeout=10) as c:
        ls = c.lease(2)
        c.put(p + "k", "v", lease=ls.id)
        time.sleep(5)  # 2.5 TTLs: only the keep-alive thread keeps the key
        assert c.get(p + "k") is not None and ls.alive
        ls.close()  # stop renewing: the lease expires
        wait_until(lambda: c.get(p + "k") is None, what="the key to expire")
        wait_until(lambda: ls.lost.is_set() or not ls.alive, what="the lease to be known lost")


# -- kvstore cluster: failures --------------------------------------------------------------------


def _write_all(writer: Client, keys: list[str]) -> dict[bytes, int]:
    """Put each key once; an ambiguous failure is resolved by reading the key back."""
    written: dict[bytes, int] = {}
    for k in keys:
        try:
            written[k.encode()] = writer.put(k, "x").revision
        except (OutcomeUnknown, Unavailable):
            kv = wait_until(lambda: _try_get(writer, k), what=f"read-back of {k}")
            if kv[0] is not None:
                written[k.encode()] = kv[0].mod_revision
    return written


def _try_get(c: Client, k: str):
    try:
        return (c.get(k),)
    except ClientError:
        return None


def _check_events(events, written: dict[bytes, int]) -> None:
    got = [(e.key, e.revision) for e in events]
    want = sorted(written.items(), key=lambda kv: kv[1])
    assert len(got) == len(set(got)), "duplicated events"
    assert got == want, "missed or reordered events"


def test_watch_resumes_after_its_node_the_leader_is_killed(cluster):
    target = leader_node(cluster)
    others = [n for n in cluster.nodes if n is not target]
    p = f"/resume-{time.monotonic_ns()}/"
    with Client([target.endpoint] + [n.endpoint for n in others], timeout=10) as wc, \
            Client([n.endpoint for n in others], timeout=10) as writer:
        w = wc.watch_prefix(p)
        assert wc._endpoint(None).target == target.endpoint
        written = _write_all(writer, [f"{p}{i:03d}" for i in range(15)])
        events = [w.get(20) for _ in range(10)]
        target.kill()
        written.update(_write_all(writer, [f"{p}{i:03d}" for i in range(15, 40)]))
        while len(events) < len(written):
            e = w.get(30)
            assert e is not None, f"watch stalled after {len(events)} of {len(written)} events"
            events.append(e)
        _check_events(events, written)
        assert wc._endpoint(None).target != target.endpoint
        w.close()
    target.restart()
    cluster.wait_healthy()


def test_async_watch_resumes_after_its_follower_node_is_killed(cluster):
    leader = leader_node(cluster)
    target = next(n for n in cluster.nodes if n is not leader)
    others = [n for n in cluster.nodes if n is not target]
    p = f"/aresume-{time.monotonic_ns()}/"

    async def main():
        async with AsyncClient([target.endpoint] + [n.endpoint for n in others], timeout=10) as wc:
            w = await wc.watch_prefix(p)
            with Client([n.endpoint for n in others], timeout=10) as writer:
                written = await asyncio.to_thread(_write_all, writer, [f"{p}{i:03d}" for i in range(10)])
                events = [await w.get(20) for _ in range(5)]
                target.kill()
                written.update(await asyncio.to_thread(_write_all, writer, [f"{p}{i:03d}" for i in range(10, 30)]))
            while len(events) < len(written):
                e = await w.get(30)
                assert e is not None
                events.append(e)
            _check_events(events, written)
            w.close()

    try:
        asyncio.run(main())
    finally:
        target.restart()
        cluster.wait_healthy()


def test_lock_mutual_exclusion_with_fencing_tokens(cluster):
    p = f"/excl-{time.monotonic_ns()}/"
    counter = p + "counter"
    holders: list[int] = []
    tokens: list[int] = []
    errors: list[str] = []
    guard = threading.Lock()

    def worker(i: int) -> None:
        eps = cluster.endpoints[i % 3:] + cluster.endpoints[:i % 3]
        try:
            with Client(eps, timeout=10) as c:
                for _ in range(3):
                    with c.lock(p + "lock", ttl=5) as lk:
                        with guard:
                            if holders:
                                errors.append(f"{i} entered while {holders} held the lock")
                            holders.append(i)
                            tokens.append(lk.revision)
                        kv = c.get(counter)
                        n = int(kv.value) if kv else 0
                        time.sleep(0.01)
                        r = (c.txn().if_(lk.guard(), mod_revision(counter) == (kv.mod_revision if kv else 0))
                             .then(put(counter, str(n + 1))).commit())
                        if not r.succeeded:
                            errors.append(f"{i}: fenced increment failed")
                        with guard:
                            holders.remove(i)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert tokens == sorted(tokens) and len(set(tokens)) == 12
    with Client(cluster.endpoints, timeout=10) as c:
        assert c.get(counter).value == b"12"
        with c.lock(p + "lock", ttl=5) as lk:
            stale = lk.guard()
        # a holder that lost the lock cannot write with its old token
        assert not c.txn().if_(stale).then(put(counter, "bad")).commit().succeeded
        assert c.get(counter).value == b"12"


# -- etcd with TLS and auth --------------------------------------------------------------------------


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    with open(os.path.join(d, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name, cn in (("server", "localhost"), ("client", "root")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)


@pytest.mark.skipif(shutil.which("openssl") is None or not etcd_single.available(), reason="needs openssl and etcd")
def test_tls_and_auth_against_etcd(tmp_path):
    d = str(tmp_path)
    make_certs(d)
    j = lambda n: os.path.join(d, n)
    e = etcd_single.Etcd(["--cert-file", j("server.pem"), "--key-file", j("server.key"),
                          "--trusted-ca-file", j("ca.pem"), "--client-cert-auth"]).start()
    try:
        tls = dict(ca_cert=j("ca.pem"), cert=j("client.pem"), key=j("client.key"))
        with Client(e.endpoint, timeout=10, **tls) as c:
            c.put("/tls", "ok")
            assert c.get("/tls").value == b"ok"
        with Client(e.endpoint, timeout=3, ca_cert=j("ca.pem")) as c:  # no client certificate
            with pytest.raises(ClientError):
                c.get("/tls")
        # auth: root user, then auth enable (etcdctl), then user/password through the client
        ctl = ["etcdctl", "--endpoints", f"https://{e.endpoint}", "--cacert", j("ca.pem"), "--cert",
               j("client.pem"), "--key", j("client.key")]
        env = dict(os.environ, ETCDCTL_API="3")
        subprocess.run(ctl + ["user", "add", "root:s3cret"], check=True, capture_output=True, env=env)
        subprocess.run(ctl + ["auth", "enable"], check=True, capture_output=True, env=env)
        with Client(f"https://{e.endpoint}", timeout=10, user="root", password="s3cret", **tls) as c:
            c.put("/auth", "yes")
            assert c.get("/auth").value == b"yes"
            c._token = "bogus-token"  # an expired/invalid token: re-authenticate and retry
            assert c.get("/auth").value == b"yes"
        with Client(e.endpoint, timeout=5, user="root", password="wrong", **tls) as c:
            with pytest.raises(AuthFailed):
                c.get("/auth")
    finally:
        e.close()


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl to enable auth")
def test_auth_against_kvstore():
    with Cluster(1) as c:
        c.start()
        env = dict(os.environ, ETCDCTL_API="3")
        ctl = ["etcdctl", "--endpoints", c.endpoints[0]]
        subprocess.run(ctl + ["user", "add", "root:s3cret"], check=True, capture_output=True, env=env)
        subprocess.run(ctl + ["auth", "enable"], check=True, capture_output=True, env=env)
        with Client(c.endpoints, timeout=10, user="root:s3cret") as cl:
            cl.put("/auth", "yes")
            assert cl.get("/auth").value == b"yes"
            cl._token = "bogus-token"  # re-authenticates and retries
            with cl.lock("/auth-lock", ttl=5):
                assert cl.get("/auth").value == b"yes"
        with Client(c.endpoints, timeout=5, user="root", password="wrong") as cl:
            with pytest.raises(AuthFailed):
                cl.get("/auth")
        with Client(c.endpoints, timeout=5) as cl:  # no credentials
            with pytest.raises(ClientError):
                cl.get("/auth")
