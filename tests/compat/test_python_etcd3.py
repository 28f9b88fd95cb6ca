"""The PyPI client ``etcd3`` 0.12.0 (python-etcd3) against a real 3-process
kvstore cluster.

python-etcd3 0.12.0 needs protobuf 3.20.x and tenacity 6.3.1, which clash with
the project's own protobuf, so it lives in a virtualenv of its own
(``.venv-etcd3/``, git-ignored, created on first use) and every client script
runs there as a subprocess that prints one JSON object the test asserts on.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from tests.procs import REPO, Cluster

pytestmark = pytest.mark.timeout(240)

VENV = os.path.join(REPO, ".venv-etcd3")
PINS = ["etcd3==0.12.0", "protobuf==3.20.3", "tenacity==6.3.1", "grpcio"]
PROBE = (
    "import etcd3, google.protobuf, tenacity; "
    "assert etcd3.__version__ == '0.12.0', etcd3.__version__; "
    "assert google.protobuf.__version__ == '3.20.3', google.protobuf.__version__"
)


def _venv_ok(py: str) -> bool:
    if not os.path.exists(py):
        return False
    return subprocess.run([py, "-c", PROBE], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def etcd3_python() -> str:
    """The interpreter of .venv-etcd3, created (python -m venv + pip) if missing."""
    py = os.path.join(VENV, "bin", "python")
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    with open(os.path.join(tempfile.gettempdir(), "kvstore-venv-etcd3.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time
        if not _venv_ok(py):
            base = getattr(sys, "_base_executable", None) or sys.executable
            p = subprocess.run([base, "-m", "venv", "--clear", VENV], capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                pytest.skip(f"cannot create {VENV}: {p.stderr.strip()[-300:]}")
            p = subprocess.run(
                [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
                capture_output=True, text=True, timeout=600,
            )
            if p.returncode != 0 or not _venv_ok(py):
                pytest.skip(
                    f"pip could not install {' '.join(PINS)} into {VENV} (no access to PyPI?): "
                    f"{p.stderr.strip()[-300:]}"
                )
    return py


PRELUDE = '''
import json, sys, threading, time
import etcd3

EPS = sys.argv[1].split(",")


def mk(ep):
    host, port = ep.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=15)


client = mk(EPS[0])
out = {}


def md(m):
    if m is None:
        return None
    return {"key": m.key.decode(), "create_revision": m.create_revision, "mod_revision": m.mod_revision,
            "version": m.version, "lease_id": m.lease_id}


def kvs(pairs):
    return [[v.decode(), m.key.decode()] for v, m in pairs]
'''


def run_client(py: str, endpoints: list[str], body: str, timeout: float = 90) -> dict:
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    p = subprocess.run([py, "-c", code, ",".join(endpoints)], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"client script failed:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def client(etcd3_python: str, kv_cluster: Cluster):
    def run(body: str, endpoints: list[str] | None = None, timeout: float = 90) -> dict:
        return run_client(etcd3_python, endpoints or kv_cluster.endpoints, body, timeout)

    return run


def test_get_put_delete(client) -> None:
    out = client('''
        k = "/p3/kv/a"
        r = client.put(k, "1")
        out["put_rev"] = r.header.revision
        v, m = client.get(k)
        out["get"] = [v.decode(), md(m)]
        out["missing"] = list(client.get("/p3/kv/none"))
        r = client.put(k, "2", prev_kv=True)
        out["put_prev"] = [r.prev_kv.value.decode(), r.prev_kv.version, r.header.revision]
        gr = client.get_response(k)
        out["count"] = gr.count
        out["header"] = [gr.header.cluster_id != 0, gr.header.member_id != 0, gr.header.raft_term > 0]
        out["serializable"] = client.get(k, serializable=True)[0].decode()
        out["put_if_not_exists"] = [client.put_if_not_exists("/p3/kv/b", "x"), client.put_if_not_exists("/p3/kv/b", "y")]
        out["replace"] = [client.replace("/p3/kv/b", "x", "z"), client.replace("/p3/kv/b", "x", "w")]
        out["b"] = client.get("/p3/kv/b")[0].decode()
        out["delete"] = client.delete(k)
        out["delete_again"] = client.delete(k)
        d = client.delete("/p3/kv/b", prev_kv=True, return_response=True)
        out["delete_resp"] = [d.deleted, d.prev_kvs[0].value.decode()]
        out["after"] = list(client.get(k))
        try:
            client.put("", "v")
        except Exception as e:
            out["empty_key"] = [type(e).__name__, str(e)]
    ''')
    rev = out["put_rev"]
    assert out["get"] == ["1", {"key": "/p3/kv/a", "create_revision": rev, "mod_revision": rev,
                                "version": 1, "lease_id": 0}]
    assert out["missing"] == [None, None]
    assert out["put_prev"] == ["1", 1, rev + 1]
    assert out["count"] == 1 and out["header"] == [True, True, True]
    assert out["serializable"] == "2"
    assert out["put_if_not_exists"] == [True, False]
    assert out["replace"] == [True, False] and out["b"] == "z"
    assert out["delete"] is True and out["delete_again"] is False
    assert out["delete_resp"] == [1, "z"]
    assert out["after"] == [None, None]
    assert "key is not provided" in out["empty_key"][1]


def test_prefix_and_ranges(client) -> None:
    out = client('''
        for k, v in [("c", "1"), ("a", "3"), ("b", "2")]:
            client.put("/p3/pf/" + k, v)
        client.put("/p3/pf/b", "2")
        client.put("/p3/pfx", "outside")
        out["prefix"] = kvs(client.get_prefix("/p3/pf/"))
        out["desc_by_mod"] = kvs(client.get_prefix("/p3/pf/", sort_order="descend", sort_target="mod"))
        out["asc_by_value"] = kvs(client.get_prefix("/p3/pf/", sort_order="ascend", sort_target="value"))
        out["asc_by_create"] = kvs(client.get_prefix("/p3/pf/", sort_order="ascend", sort_target="create"))
        out["desc_by_version"] = kvs(client.get_prefix("/p3/pf/", sort_order="descend", sort_target="version"))[0]
        out["keys_only"] = kvs(client.get_prefix("/p3/pf/", keys_only=True))
        out["range"] = kvs(client.get_range("/p3/pf/a", "/p3/pf/c"))
        out["all_has"] = "/p3/pf/a" in [m.key.decode() for _, m in client.get_all()]
        d = client.delete_prefix("/p3/pf/")
        out["deleted"] = d.deleted
        out["left"] = kvs(client.get_prefix("/p3/pf"))
    ''')
    assert out["prefix"] == [["3", "/p3/pf/a"], ["2", "/p3/pf/b"], ["1", "/p3/pf/c"]]
    assert out["desc_by_mod"] == [["2", "/p3/pf/b"], ["3", "/p3/pf/a"], ["1", "/p3/pf/c"]]
    assert out["asc_by_value"] == [["1", "/p3/pf/c"], ["2", "/p3/pf/b"], ["3", "/p3/pf/a"]]
    assert out["asc_by_create"] == [["1", "/p3/pf/c"], ["3", "/p3/pf/a"], ["2", "/p3/pf/b"]]
    assert out["desc_by_version"] == ["2", "/p3/pf/b"]
    assert out["keys_only"] == [["", "/p3/pf/a"], ["", "/p3/pf/b"], ["", "/p3/pf/c"]]
    assert out["range"] == [["3", "/p3/pf/a"], ["2", "/p3/pf/b"]]
    assert out["all_has"] is True
    assert out["deleted"] == 3
    assert out["left"] == [["outside", "/p3/pfx"]]


def test_transactions(client) -> None:
    out = client('''
        t = client.transactions
        client.put("/p3/tx/a", "1")
        v, m = client.get("/p3/tx/a")
        ok, resp = client.transaction(
            compare=[t.value("/p3/tx/a") == "1", t.version("/p3/tx/a") > 0,
                     t.create("/p3/tx/a") == m.create_revision, t.mod("/p3/tx/a") < m.mod_revision + 1,
                     t.value("/p3/tx/a") != "2", t.version("/p3/tx/none") == 0],
            success=[t.put("/p3/tx/r", "yes"), t.get("/p3/tx/a"), t.delete("/p3/tx/a")],
            failure=[t.put("/p3/tx/r", "no")],
        )
        out["ok"] = ok
        out["resp"] = [resp[0].response_put.header.revision > 0, kvs(resp[1]), resp[2].response_delete_range.deleted]
        out["r"] = client.get("/p3/tx/r")[0].decode()
        ok, resp = client.transaction(
            compare=[t.value("/p3/tx/r") == "no"],
            success=[t.put("/p3/tx/r", "never")],
            failure=[t.get("/p3/tx/r"), t.put("/p3/tx/r", "failed")],
        )
        out["ok2"] = ok
        out["resp2"] = kvs(resp[0])
        out["r2"] = client.get("/p3/tx/r")[0].decode()
        # A nested transaction.
        ok, resp = client.transaction(
            compare=[],
            success=[t.txn(compare=[t.value("/p3/tx/r") == "failed"], success=[t.put("/p3/tx/n", "inner")], failure=[])],
            failure=[],
        )
        out["nested"] = [ok, resp[0].response_txn.succeeded, client.get("/p3/tx/n")[0].decode()]
        # Errors: duplicate keys, too many operations.
        for name, ops in [("dup", [t.put("/p3/tx/d", "1"), t.put("/p3/tx/d", "2")]),
                          ("many", [t.put("/p3/tx/m%d" % i, "v") for i in range(129)])]:
            try:
                client.transaction(compare=[], success=ops, failure=[])
                out[name] = "no error"
            except Exception as e:
                out[name] = str(e)
    ''')
    assert out["ok"] is True
    assert out["resp"] == [True, [["1", "/p3/tx/a"]], 1]
    assert out["r"] == "yes"
    assert out["ok2"] is False and out["resp2"] == [["yes", "/p3/tx/r"]] and out["r2"] == "failed"
    assert out["nested"] == [True, True, "inner"]
    assert "duplicate key given in txn request" in out["dup"]
    assert "too many operations in txn request" in out["many"]


def test_watch_and_cancel(client) -> None:
    out = client('''
        events, cancel = client.watch("/p3/w/k")
        got = []

        def consume():
            for ev in events:
                got.append([type(ev).__name__, ev.key.decode(), ev.value.decode()])

        th = threading.Thread(target=consume, daemon=True)
        th.start()
        time.sleep(1.0)  # the watch is created asynchronously
        client.put("/p3/w/k", "1")
        client.put("/p3/w/other", "x")
        client.put("/p3/w/k", "2")
        client.delete("/p3/w/k")
        deadline = time.time() + 15
        while len(got) < 3 and time.time() < deadline:
            time.sleep(0.05)
        cancel()
        th.join(10)
        out["events"] = got
        out["iterator_ended"] = not th.is_alive()

        # watch_prefix from a past revision, with prev_kv.
        r0 = client.put("/p3/wp/a", "1").header.revision
        client.put("/p3/wp/b", "2")
        client.put("/p3/wp/a", "3")
        events, cancel = client.watch_prefix("/p3/wp/", start_revision=r0, prev_kv=True)
        got2 = []
        for ev in events:
            got2.append([type(ev).__name__, ev.key.decode(), ev.value.decode(), ev.mod_revision,
                         ev.prev_value.decode()])
            if len(got2) == 3:
                break
        cancel()
        out["prefix_events"] = got2
        out["r0"] = r0

        # add_watch_callback + cancel_watch: no event after cancel.
        cb = []
        wid = client.add_watch_callback("/p3/wc/k", lambda resp: cb.extend(
            [e.value.decode() for e in getattr(resp, "events", [])]))
        time.sleep(1.0)
        client.put("/p3/wc/k", "before")
        deadline = time.time() + 15
        while not cb and time.time() < deadline:
            time.sleep(0.05)
        client.cancel_watch(wid)
        time.sleep(0.5)
        client.put("/p3/wc/k", "after")
        time.sleep(1.0)
        out["callback"] = cb

        # watch_once with a timeout and a put from another client (another member).
        other = mk(EPS[1])
        threading.Timer(1.0, lambda: other.put("/p3/wo/k", "once")).start()
        ev = client.watch_once("/p3/wo/k", timeout=15)
        out["once"] = [type(ev).__name__, ev.value.decode()]
        try:
            client.watch_once("/p3/wo/never", timeout=1)
            out["timeout"] = "no"
        except etcd3.exceptions.WatchTimedOut:
            out["timeout"] = "WatchTimedOut"
    ''')
    assert out["events"] == [["PutEvent", "/p3/w/k", "1"], ["PutEvent", "/p3/w/k", "2"],
                             ["DeleteEvent", "/p3/w/k", ""]]
    assert out["iterator_ended"] is True
    r0 = out["r0"]
    assert out["prefix_events"] == [["PutEvent", "/p3/wp/a", "1", r0, ""],
                                    ["PutEvent", "/p3/wp/b", "2", r0 + 1, ""],
                                    ["PutEvent", "/p3/wp/a", "3", r0 + 2, "1"]]
    assert out["callback"] == ["before"]
    assert out["once"] == ["PutEvent", "once"]
    assert out["timeout"] == "WatchTimedOut"


def test_watch_compacted_revision(client) -> None:
    out = client('''
        from etcd3 import etcdrpc
        r1 = client.put("/p3/wz/k", "1").header.revision
        r2 = client.put("/p3/wz/k", "2").header.revision
        client.compact(r2)
        out["r2"] = r2
        responses = []
        try:
            client.add_watch_callback("/p3/wz/k", responses.append, start_revision=r1)
            deadline = time.time() + 15
            while not responses and time.time() < deadline:
                time.sleep(0.05)
            out["got"] = [[type(r).__name__, getattr(r, "compacted_revision", None)] for r in responses]
        except etcd3.exceptions.RevisionCompactedError as e:
            out["got"] = [["raised", e.compacted_revision]]
        try:
            client.kvstub.Range(etcdrpc.RangeRequest(key=b"/p3/wz/k", revision=r1), 10)
            out["range_old"] = "no error"
        except Exception as e:
            out["range_old"] = str(e)
    ''')
    # The watch is created, then canceled with the compact revision, which
    # python-etcd3 hands to the callback as RevisionCompactedError.
    assert out["got"] == [["RevisionCompactedError", out["r2"]]]
    assert "required revision has been compacted" in out["range_old"]


def test_leases_refresh_and_expiry(client, kv_cluster: Cluster) -> None:
    out = client('''
        lease = client.lease(30)
        out["id"] = lease.id
        out["ttl"] = lease.ttl
        client.put("/p3/ls/a", "1", lease=lease)
        client.put("/p3/ls/b", "2", lease=lease.id)
        out["granted"] = lease.granted_ttl
        out["remaining"] = lease.remaining_ttl
        out["keys"] = sorted(k.decode() for k in lease.keys)
        out["lease_of_a"] = client.get("/p3/ls/a")[1].lease_id
        r = lease.refresh()
        out["refresh"] = [r[0].ID, r[0].TTL]
        # Refresh through another member (a follower forwards to the leader).
        other = mk(EPS[2])
        r = list(other.refresh_lease(lease.id))
        out["refresh_other"] = [r[0].ID, r[0].TTL]
        info = other.get_lease_info(lease.id)
        out["info_other"] = [info.ID, info.grantedTTL, sorted(k.decode() for k in info.keys)]
        lease.revoke()
        out["after_revoke"] = [client.get("/p3/ls/a")[0], client.get("/p3/ls/b")[0]]
        out["remaining_after_revoke"] = lease.remaining_ttl
        r = lease.refresh()
        out["refresh_revoked_ttl"] = r[0].TTL

        # Expiry: a lease kept alive by refreshes keeps its key; once left alone it expires.
        short = client.lease(2)
        client.put("/p3/ls/short", "v", lease=short)
        for _ in range(8):
            time.sleep(0.5)
            short.refresh()
        out["kept"] = client.get("/p3/ls/short")[0].decode()
        deadline = time.time() + 20
        while client.get("/p3/ls/short")[0] is not None and time.time() < deadline:
            time.sleep(0.2)
        out["expired"] = client.get("/p3/ls/short")[0] is None
        out["expired_remaining"] = short.remaining_ttl
        # A client-chosen lease ID.
        mine = client.lease(60, lease_id=0x5eed0001)
        out["mine"] = mine.id
        try:
            client.lease(60, lease_id=0x5eed0001)
            out["dup"] = "no error"
        except Exception as e:
            out["dup"] = type(e).__name__
        mine.revoke()
    ''')
    assert out["id"] > 0 and out["ttl"] == 30
    assert out["granted"] == 30 and 25 <= out["remaining"] <= 30
    assert out["keys"] == ["/p3/ls/a", "/p3/ls/b"]
    assert out["lease_of_a"] == out["id"]
    assert out["refresh"] == [out["id"], 30]
    assert out["refresh_other"] == [out["id"], 30]
    assert out["info_other"] == [out["id"], 30, ["/p3/ls/a", "/p3/ls/b"]]
    assert out["after_revoke"] == [None, None]
    assert out["remaining_after_revoke"] == -1
    assert out["refresh_revoked_ttl"] == 0
    assert out["kept"] == "v" and out["expired"] is True and out["expired_remaining"] == -1
    assert out["mine"] == 0x5eed0001
    assert out["dup"] == "PreconditionFailedError"  # etcd: FAILED_PRECONDITION "lease already exists"


def test_locks(client) -> None:
    out = client('''
        a = client.lock("p3-lock", ttl=20)
        out["a_acquire"] = a.acquire(timeout=10)
        out["a_is_acquired"] = a.is_acquired()
        other = mk(EPS[1])
        b = other.lock("p3-lock", ttl=20)
        t0 = time.time()
        out["b_while_held"] = b.acquire(timeout=1)
        out["b_waited"] = time.time() - t0 >= 0.9
        out["b_is_acquired"] = b.is_acquired()
        # B waits; A releases after a moment; B gets it.
        threading.Timer(1.0, a.release).start()
        t0 = time.time()
        out["b_acquire"] = b.acquire(timeout=15)
        out["b_after"] = time.time() - t0 >= 0.5
        out["a_after"] = a.is_acquired()
        b.refresh()
        out["b_release"] = b.release()
        out["b_release_again"] = b.release()
        with client.lock("p3-lock", ttl=20) as c:
            out["ctx"] = c.is_acquired()
        out["ctx_after"] = client.get("/locks/p3-lock")[0] is None

        # Contention: 4 threads increment a counter under the lock, read-modify-write.
        client.put("/p3/lk/counter", "0")
        clients = [mk(EPS[i % len(EPS)]) for i in range(4)]
        errors = []

        def work(c):
            try:
                for _ in range(3):
                    lk = c.lock("p3-counter", ttl=20)
                    assert lk.acquire(timeout=60)
                    v = int(c.get("/p3/lk/counter")[0])
                    time.sleep(0.02)
                    c.put("/p3/lk/counter", str(v + 1))
                    assert lk.release()
            except Exception as e:
                errors.append(repr(e))

        ths = [threading.Thread(target=work, args=(c,)) for c in clients]
        for th in ths:
            th.start()
        for th in ths:
            th.join(120)
        out["counter"] = int(client.get("/p3/lk/counter")[0])
        out["errors"] = errors
    ''', timeout=180)
    assert out["a_acquire"] is True and out["a_is_acquired"] is True
    assert out["b_while_held"] is False and out["b_waited"] is True and out["b_is_acquired"] is False
    assert out["b_acquire"] is True and out["b_after"] is True and out["a_after"] is False
    assert out["b_release"] is True and out["b_release_again"] is False
    assert out["ctx"] is True and out["ctx_after"] is True
    assert out["errors"] == [] and out["counter"] == 12


def test_members_and_status(client, kv_cluster: Cluster) -> None:
    out = client('''
        ms = sorted(client.members, key=lambda m: m.name)
        out["members"] = [[m.id, m.name, list(m.peer_urls), list(m.client_urls)] for m in ms]
        out["status"] = []
        for ep in EPS:
            st = mk(ep).status()
            out["status"].append([st.version, st.db_size, st.leader.id if st.leader else None,
                                  st.leader.name if st.leader else None, st.raft_index, st.raft_term])
        out["hash"] = client.hash()
        out["alarms"] = list(client.list_alarms())
        client.defragment()
        r = client.put("/p3/st/k", "v").header.revision
        client.compact(r - 1, physical=True)
        out["compacted_get"] = client.get("/p3/st/k")[0].decode()
        import io
        buf = io.BytesIO()
        client.snapshot(buf)
        out["snapshot_bytes"] = len(buf.getvalue())
    ''')
    assert [m[1] for m in out["members"]] == ["n1", "n2", "n3"]
    for (mid, name, peers, clients_), node in zip(out["members"], kv_cluster.nodes):
        assert name == node.name and peers == [node.peer_url] and clients_ == [f"http://{node.endpoint}"]
    ids = {m[0] for m in out["members"]}
    leaders = {s[2] for s in out["status"]}
    assert len(leaders) == 1 and leaders <= ids
    for version, db_size, _, leader_name, raft_index, raft_term in out["status"]:
        assert version.startswith("3.4.") and db_size > 0 and raft_index > 0 and raft_term > 0
        assert leader_name in {"n1", "n2", "n3"}
    assert isinstance(out["hash"], int)
    assert out["alarms"] == []
    assert out["compacted_get"] == "v"
    assert out["snapshot_bytes"] > 32
