"""kvctl end to end against a real 3-process kvstore cluster (and etcd where
the command is the API's): table and JSON output, errors (one line, non-zero
exit, never a traceback), the console script, and snapshot save → restore
into a new one-node cluster with the same keys and revisions.

Most commands run in-process (``main(argv)``, fast); a few run as real
processes to check the console script, signals and stdin."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from kvstore.cli.__main__ import main
from kvstore.client import Client
from tests import etcd_single
from tests.procs import Cluster, Node, free_ports

KVCTL = [sys.executable, "-m", "kvstore.cli"]


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
def eps(request):
    target = request.getfixturevalue("cluster" if request.param == "kvstore" else "etcd")
    return ",".join(target.endpoints)


def run(capsys, *argv, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *argv, **kw) -> str:
    rc, out, err = run(capsys, *argv, **kw)
    assert rc == 0, err
    return out


def table_rows(out: str) -> list[list[str]]:
    lines = out.strip().splitlines()
    assert len({len(x) for x in lines}) == 1, "table columns not aligned"
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines if x.startswith("|")]


def test_kv_commands(capsys, monkeypatch, eps):
    p = f"/kvctl-{time.monotonic_ns()}/"
    e = ["--endpoints", eps]
    assert ok(capsys, *e, "put", p + "a", "1") == "OK\n"
    ok(capsys, *e, "put", p + "b", "two words")
    assert ok(capsys, *e, "put", p + "c", stdin="from stdin", monkeypatch=monkeypatch) == "OK\n"
    assert ok(capsys, *e, "get", p + "a") == f"{p}a\n1\n"
    assert ok(capsys, *e, "get", p, "--prefix", "--print-value-only") == "1\ntwo words\nfrom stdin\n"
    assert ok(capsys, *e, "get", p, "--prefix", "--keys-only", "--limit", "2") == f"{p}a\n{p}b\n"
    assert ok(capsys, *e, "get", p, "--prefix", "--count-only") == "3\n"
    assert ok(capsys, *e, "get", p, "--prefix", "--order", "DESCEND", "--keys-only").splitlines()[0] == p + "c"

    rows = table_rows(ok(capsys, *e, "get", p, "--prefix", "-w", "table"))
    assert rows[0] == ["KEY", "VALUE", "CREATE REV", "MOD REV", "VERSION", "LEASE"]
    assert [r[:2] for r in rows[1:]] == [[p + "a", "1"], [p + "b", "two words"], [p + "c", "from stdin"]]

    doc = json.loads(ok(capsys, *e, "get", p, "--prefix", "-w", "json"))
    assert doc["count"] == 3 and doc["kvs"][0] == {
        "key": p + "a", "value": "1", "create_revision": doc["kvs"][0]["create_revision"],
        "mod_revision": doc["kvs"][0]["mod_revision"], "version": 1, "lease": 0}
    rev_a = doc["kvs"][0]["mod_revision"]
    put_doc = json.loads(ok(capsys, *e, "-w", "json", "put", p + "a", "1b", "--prev-kv"))
    assert put_doc["prev_kv"]["value"] == "1" and put_doc["header"]["revision"] > rev_a
    assert ok(capsys, *e, "get", p + "a", "--rev", str(rev_a), "--print-value-only") == "1\n"

    txn = f'value("{p}a") = "1b"\n\nput {p}t yes\nget {p}a\n\nput {p}t no\n'
    assert ok(capsys, *e, "txn", stdin=txn, monkeypatch=monkeypatch) == f"SUCCESS\n\nOK\n\n{p}a\n1b\n"
    doc = json.loads(ok(capsys, *e, "txn", "-w", "json", stdin=txn.replace('"1b"', '"zz"'), monkeypatch=monkeypatch))
    assert doc["succeeded"] is False and doc["responses"] == [{"put": {"prev_kv": None}}]
    assert ok(capsys, *e, "get", p + "t", "--print-value-only") == "no\n"

    assert ok(capsys, *e, "del", p + "t") == "1\n"
    assert json.loads(ok(capsys, *e, "-w", "json", "del", p, "--prefix"))["deleted"] == 3
    assert ok(capsys, *e, "get", p, "--prefix") == ""
    ok(capsys, *e, "put", "--", "-dash", "v")
    assert ok(capsys, *e, "get", "--", "-dash") == "-dash\nv\n"


def test_lease_commands(capsys, eps):
    e = ["--endpoints", eps]
    out = ok(capsys, *e, "lease", "grant", "60")
    assert out.startswith("lease ") and out.rstrip().endswith("granted with TTL(60s)")
    lid = out.split()[1]
    p = f"/lease-{time.monotonic_ns()}"
    ok(capsys, *e, "put", p, "v", "--lease", lid)
    out = ok(capsys, *e, "lease", "timetolive", lid, "--keys")
    assert f"lease {lid} granted with TTL(60s)" in out and f"attached keys([{p}])" in out
    assert lid in [r[0] for r in table_rows(ok(capsys, *e, "lease", "list"))]
    assert json.loads(ok(capsys, *e, "-w", "json", "lease", "keep-alive", lid, "--once"))["ttl"] == 60
    assert ok(capsys, *e, "lease", "revoke", lid) == f"lease {lid} revoked\n"
    assert ok(capsys, *e, "get", p) == ""
    assert ok(capsys, *e, "lease", "timetolive", lid) == f"lease {lid} already expired\n"
    rc, out, err = run(capsys, *e, "lease", "keep-alive", lid, "--once")
    assert rc == 1 and "expired or revoked" in err


def test_cluster_commands(capsys, cluster):
    e = ["--endpoints", ",".join(cluster.endpoints)]
    with Client(cluster.endpoints) as c:  # members publish their client URLs shortly after start
        deadline = time.monotonic() + 30
        while not all(m.client_urls for m in c.member_list()) and time.monotonic() < deadline:
            time.sleep(0.05)
    rows = table_rows(ok(capsys, *e, "member", "list"))
    assert rows[0] == ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]
    assert sorted(r[2] for r in rows[1:]) == ["n1", "n2", "n3"]
    members = json.loads(ok(capsys, *e, "-w", "json", "member", "list"))["members"]
    assert {m["name"] for m in members} == {"n1", "n2", "n3"}

    st = json.loads(ok(capsys, "--endpoints", cluster.endpoints[0], "-w", "json", "endpoint", "status", "--cluster"))
    assert len(st) == 3 and sum(s["is_leader"] for s in st) == 1
    rows = table_rows(ok(capsys, *e, "endpoint", "status"))
    assert rows[0][:5] == ["ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER"] and len(rows) == 4
    rows = table_rows(ok(capsys, *e, "endpoint", "health", "--cluster", "-w", "table"))
    assert [r[1] for r in rows[1:]] == ["true"] * 3
    assert "is healthy" in ok(capsys, *e, "-w", "simple", "endpoint", "health")

    # a learner that never starts: added, not promotable, removed
    peer = f"http://127.0.0.1:{free_ports(1)[0]}"
    out = ok(capsys, *e, "member", "add", "n4", "--peer-urls", peer, "--learner")
    assert out.startswith("Learner member ") and 'KVSTORE_INITIAL_CLUSTER_STATE="existing"' in out
    assert f"n4={peer}" in out
    new_id = out.split()[2]
    rows = table_rows(ok(capsys, *e, "member", "list"))
    assert [r[5] for r in rows if r[0] == new_id] == ["true"]
    rc, _, err = run(capsys, *e, "member", "promote", new_id)
    assert rc == 1 and err.startswith("Error: ") and "learner" in err and err.count("\n") == 1
    assert ok(capsys, *e, "member", "remove", new_id).startswith(f"Member {new_id} removed from cluster ")
    assert len(table_rows(ok(capsys, *e, "member", "list"))) == 4

    assert ok(capsys, *e, "alarm", "list") == ""
    rev = Client(cluster.endpoints).put("/compact-me", "x").revision
    assert ok(capsys, *e, "compaction", str(rev)) == f"compacted revision {rev}\n"
    out = ok(capsys, *e, "defrag", "--cluster")
    assert out.count("Finished defragmenting") == 3
    assert ok(capsys, *e, "version").startswith("kvctl version:")


def test_errors_are_one_line_with_nonzero_exit(capsys, cluster):
    free = free_ports(1)[0]
    rc, out, err = run(capsys, "--endpoints", f"127.0.0.1:{free}", "--command-timeout", "1s", "get", "k")
    assert rc == 1 and err.startswith("Error: ") and err.count("\n") == 1 and "cannot connect" in err
    rc, out, err = run(capsys, "--endpoints", ",".join(cluster.endpoints), "get", "k", "--rev", "999999999")
    assert rc == 1 and err == "Error: etcdserver: mvcc: required revision is a future revision\n"
    rc, out, err = run(capsys, "--endpoints", ",".join(cluster.endpoints), "lease", "revoke", "123")
    assert rc == 1 and "lease not found" in err
    for argv in (["get"], ["lease", "revoke", "xyz"], ["frobnicate"], ["get", "k", "--limit", "x"]):
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and err.startswith("Error: ") and "Traceback" not in err
    rc, out, err = run(capsys, "txn", "--file", os.devnull + "x")
    assert rc == 1 and "Traceback" not in err
    # a real process: no traceback either, KVCTL_ENDPOINTS honoured
    env = dict(os.environ, KVCTL_ENDPOINTS=f"127.0.0.1:{free}")
    r = subprocess.run(KVCTL + ["--command-timeout", "1s", "put", "k", "v"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.startswith("Error: put 'k'") and "Traceback" not in r.stderr


def test_console_script_env_endpoints_and_watch(cluster):
    env = dict(os.environ, KVCTL_ENDPOINTS=",".join(cluster.endpoints))
    exe = os.path.join(os.path.dirname(sys.executable), "kvctl")
    cmd = [exe] if os.path.exists(exe) else KVCTL
    p = f"/watch-{time.monotonic_ns()}/"
    with Client(cluster.endpoints) as c:
        r1 = c.put(p + "a", "1").revision
        c.delete(p + "a")
    # From a known revision: the events are shown whenever the watch starts.
    w = subprocess.Popen(cmd + ["watch", p, "--prefix", "--rev", str(r1), "-w", "json"], stdout=subprocess.PIPE,
                         text=True, env=env)
    try:
        first, second = json.loads(w.stdout.readline()), json.loads(w.stdout.readline())
        assert (first["type"], first["kv"]["key"], first["revision"]) == ("PUT", p + "a", r1)
        assert (second["type"], second["revision"]) == ("DELETE", r1 + 1)
        w.send_signal(signal.SIGINT)
        assert w.wait(10) == 0
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    r = subprocess.run(cmd + ["get", p, "--prefix", "--count-only"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout == "0\n"


def test_snapshot_save_and_restore_into_a_new_cluster(capsys, cluster, tmp_path):
    p = "/snap/"
    with Client(cluster.endpoints, timeout=10) as c:
        for i in range(20):
            c.put(f"{p}k{i:02d}", f"v{i}")
        for i in range(0, 20, 3):
            c.put(f"{p}k{i:02d}", f"v{i}-updated")
        c.delete(f"{p}k05")
        lease = c.grant(600)
        c.put(f"{p}leased", "x", lease=lease.id)
        before = c.get_prefix("")
    snap = str(tmp_path / "backup.db")
    e = ["--endpoints", ",".join(cluster.endpoints)]
    assert ok(capsys, *e, "snapshot", "save", snap) == f"Snapshot saved at {snap}\n"
    assert not os.path.exists(snap + ".part")
    st = json.loads(ok(capsys, "-w", "json", "snapshot", "status", snap))
    assert st["revision"] >= before.revision and st["totalKey"] >= before.count and st["format"] == "bbolt"
    rows = table_rows(ok(capsys, "snapshot", "status", snap))
    assert rows[0] == ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]

    # restore into a new one-node cluster
    cport, pport, hport = free_ports(3)
    node = Node("r1", cport, pport, hport, str(tmp_path / "r1"))
    ic = f"r1={node.peer_url}"
    restore = ["snapshot", "restore", snap, "--name", "r1", "--data-dir", node.data_dir, "--initial-cluster", ic,
               "--initial-advertise-peer-urls", node.peer_url]
    assert "Restored snapshot" in ok(capsys, *restore)
    rc, _, err = run(capsys, *restore)  # the data dir exists now
    assert rc == 1 and "exists" in err
    node.start(ic)
    try:
        r1 = Cluster.__new__(Cluster)
        r1.nodes = [node]
        r1.wait_healthy(30)
        with Client(node.endpoint, timeout=10) as c:
            after = c.get_prefix("")
            want = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in before.kvs]
            got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in after.kvs]
            assert got == want
            assert after.revision == st["revision"]
            assert [m.name for m in c.member_list()] == ["r1"]
            assert lease.id in c.leases()
            assert c.put("/after-restore", "1").revision == after.revision + 1
    finally:
        node.kill()

    # a damaged file is refused; so is a bare file without --skip-hash-check
    bad = str(tmp_path / "bad.db")
    data = open(snap, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[:-1] + bytes([data[-1] ^ 1]))
    rc, _, err = run(capsys, "snapshot", "restore", bad, "--data-dir", str(tmp_path / "x"))
    assert rc == 1 and "SHA-256 mismatch" in err and not os.path.exists(tmp_path / "x")
    with open(bad, "wb") as f:
        f.write(data[:-32])
    rc, _, err = run(capsys, "snapshot", "restore", bad, "--data-dir", str(tmp_path / "x"))
    assert rc == 1 and "--skip-hash-check" in err


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl not installed")
def test_snapshot_status_agrees_with_etcdctl(capsys, etcd, cluster, tmp_path):
    for name, eps in (("etcd", etcd.endpoint), ("kvstore", cluster.endpoints[0])):
        snap = str(tmp_path / f"{name}.db")
        ok(capsys, "--endpoints", eps, "snapshot", "save", snap)
        mine = json.loads(ok(capsys, "-w", "json", "snapshot", "status", snap))
        r = subprocess.run(["etcdctl", "-w", "json", "snapshot", "status", snap], capture_output=True, text=True,
                           env=dict(os.environ, ETCDCTL_API="3"))
        assert r.returncode == 0, r.stderr
        theirs = json.loads(r.stdout)
        assert {k: mine[k] for k in ("hash", "revision", "totalKey", "totalSize")} == theirs, name
