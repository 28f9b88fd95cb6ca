"""etcdctl 3.4 (Debian ``etcd-client``) against a real 3-process kvstore cluster.

Every command runs as ``ETCDCTL_API=3 etcdctl --endpoints a,b,c ...`` in a
subprocess; outputs are checked as etcd 3.4 prints them (``-w json`` field by
field where it matters). One cluster for the module; each test works under
its own key prefix, so the tests are independent of each other's order.
"""
from __future__ import annotations

import base64
import hashlib
import json
import queue
import re
import signal
import subprocess
import threading
import time

import pytest

from tests.procs import Cluster

from .conftest import ON_KVSTORE, Etcdctl, new_cluster, wait_for

pytestmark = pytest.mark.timeout(180)

ETCD_VERSION_RE = re.compile(r"^3\.4\.\d+$")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


@pytest.fixture(scope="module")
def ctl(kv_cluster: Cluster) -> Etcdctl:
    return Etcdctl(kv_cluster.endpoints)


@pytest.fixture(scope="module")
def members(ctl: Etcdctl) -> dict:
    """``member list -w json`` of the fresh cluster: cluster_id and member ids."""
    out = json.loads(ctl.run("member", "list", "-w", "json").stdout)
    return {
        "cluster_id": out["header"]["cluster_id"],
        "ids": {m["ID"] for m in out["members"]},
        "by_url": {m["clientURLs"][0].removeprefix("http://"): m["ID"] for m in out["members"]},
    }


def jrun(ctl: Etcdctl, *args: str, **kw) -> dict:
    return json.loads(ctl.run(*args, "-w", "json", **kw).stdout)


def check_header(h: dict, members: dict, revision: int | None = None, cluster_api: bool = False) -> None:
    assert h["cluster_id"] == members["cluster_id"]
    assert h["member_id"] in members["ids"]
    assert h["raft_term"] >= 1
    if cluster_api:
        assert "revision" not in h  # etcd's Cluster service sets no revision
    elif revision is not None:
        assert h["revision"] == revision
    else:
        assert h["revision"] >= 1


def current_revision(ctl: Etcdctl) -> int:
    return jrun(ctl, "get", "__no_such_key__")["header"]["revision"]


def put_rev(ctl: Etcdctl, key: str, value: str, *extra: str) -> int:
    return jrun(ctl, "put", key, value, *extra)["header"]["revision"]


class Lines:
    """Reads a subprocess's stdout line by line in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def take(self, n: int, timeout: float = 15.0) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"expected {n} lines, got {out!r}; stderr: {self.stderr()}") from None
            if line is None:
                raise AssertionError(f"process ended after {out!r}; stderr: {self.stderr()}")
            out.append(line)
            self.seen.append(line)
        return out

    def until(self, pred, timeout: float = 15.0) -> list[str]:
        out: list[str] = []
        while True:
            out += self.take(1, timeout)
            if pred(out[-1]):
                return out

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------ put/get/del


def test_put_get_json_fields(ctl: Etcdctl, members: dict) -> None:
    assert ctl.run("put", "/pg/a", "hello").stdout.strip() == "OK"
    rev1 = current_revision(ctl)
    put = jrun(ctl, "put", "/pg/a", "world", "--prev-kv")
    check_header(put["header"], members, rev1 + 1)
    pk = put["prev_kv"]
    assert unb64(pk["key"]) == "/pg/a" and unb64(pk["value"]) == "hello"
    assert pk["create_revision"] == rev1 and pk["mod_revision"] == rev1 and pk["version"] == 1
    assert "lease" not in pk

    got = jrun(ctl, "get", "/pg/a")
    check_header(got["header"], members, rev1 + 1)
    assert got["count"] == 1 and "more" not in got
    (kv,) = got["kvs"]
    assert kv == {
        "key": b64("/pg/a"),
        "create_revision": rev1,
        "mod_revision": rev1 + 1,
        "version": 2,
        "value": b64("world"),
    }
    # Simple output: key line, value line.
    assert ctl.run("get", "/pg/a").stdout.splitlines() == ["/pg/a", "world"]
    assert ctl.run("get", "/pg/a", "--print-value-only").stdout.splitlines() == ["world"]
    assert ctl.run("get", "/pg/a", "--consistency", "s").stdout.splitlines() == ["/pg/a", "world"]
    # A missing key: no output, count 0.
    assert ctl.run("get", "/pg/missing").stdout == ""
    missing = jrun(ctl, "get", "/pg/missing")
    assert "kvs" not in missing and "count" not in missing
    # --hex
    assert ctl.run("get", "/pg/a", "--hex").stdout.splitlines() == [
        "\\x2f\\x70\\x67\\x2f\\x61", "\\x77\\x6f\\x72\\x6c\\x64"]


def test_put_options(ctl: Etcdctl, members: dict) -> None:
    lease = jrun(ctl, "lease", "grant", "300")["ID"]
    lease_hex = f"{lease:x}"
    ctl.run("put", "/po/k", "v1", f"--lease={lease_hex}")
    kv = jrun(ctl, "get", "/po/k")["kvs"][0]
    assert kv["lease"] == lease
    # --ignore-lease keeps the lease, --ignore-value keeps the value.
    ctl.run("put", "/po/k", "v2", "--ignore-lease")
    kv = jrun(ctl, "get", "/po/k")["kvs"][0]
    assert unb64(kv["value"]) == "v2" and kv["version"] == 2 and kv["lease"] == lease
    ctl.run("put", "/po/k", "--ignore-value", f"--lease={lease_hex}")
    kv = jrun(ctl, "get", "/po/k")["kvs"][0]
    assert unb64(kv["value"]) == "v2" and kv["version"] == 3 and kv["lease"] == lease
    # A put without a lease detaches the key from its lease.
    ctl.run("put", "/po/k", "--ignore-value")
    kv = jrun(ctl, "get", "/po/k")["kvs"][0]
    assert unb64(kv["value"]) == "v2" and "lease" not in kv
    # Errors etcd clients match on.
    p = ctl.fail("put", "/po/absent", "--ignore-value")
    assert "etcdserver: key not found" in p.stderr
    p = ctl.fail("put", "/po/k2", "v", "--lease=1234abcd")
    assert "etcdserver: requested lease not found" in p.stderr
    p = ctl.fail("put", "", "v")
    assert "etcdserver: key is not provided" in p.stderr
    ctl.run("lease", "revoke", lease_hex)


def test_get_prefix_limit_sort(ctl: Etcdctl, members: dict) -> None:
    # Keys created in this order with these values and versions:
    #   /gs/c=1 (v1), /gs/a=3 (v1), /gs/b=2 (v2: written twice), /gs/d=0 (v1)
    ctl.run("put", "/gs/c", "1")
    ctl.run("put", "/gs/a", "3")
    ctl.run("put", "/gs/b", "x")
    ctl.run("put", "/gs/d", "0")
    ctl.run("put", "/gs/b", "2")
    ctl.run("put", "/gs", "outside")  # the prefix "/gs/" does not include it
    ctl.run("put", "/gt", "after")

    def keys(*args: str) -> list[str]:
        return ctl.run("get", "/gs/", "--prefix", "--keys-only", *args).stdout.split()

    assert keys() == ["/gs/a", "/gs/b", "/gs/c", "/gs/d"]
    assert keys("--order", "DESCEND") == ["/gs/d", "/gs/c", "/gs/b", "/gs/a"]
    assert keys("--sort-by", "KEY", "--order", "ASCEND") == ["/gs/a", "/gs/b", "/gs/c", "/gs/d"]
    assert keys("--sort-by", "CREATE") == ["/gs/c", "/gs/a", "/gs/b", "/gs/d"]
    assert keys("--sort-by", "CREATE", "--order", "DESCEND") == ["/gs/d", "/gs/b", "/gs/a", "/gs/c"]
    assert keys("--sort-by", "MODIFY") == ["/gs/c", "/gs/a", "/gs/d", "/gs/b"]
    assert keys("--sort-by", "MODIFY", "--order", "DESCEND") == ["/gs/b", "/gs/d", "/gs/a", "/gs/c"]
    assert keys("--sort-by", "VALUE") == ["/gs/d", "/gs/c", "/gs/b", "/gs/a"]
    assert keys("--sort-by", "VALUE", "--order", "DESCEND") == ["/gs/a", "/gs/b", "/gs/c", "/gs/d"]
    assert keys("--sort-by", "VERSION", "--order", "DESCEND")[0] == "/gs/b"
    assert keys("--sort-by", "VERSION")[-1] == "/gs/b"

    # --limit: 'more' and the full count.
    lim = jrun(ctl, "get", "/gs/", "--prefix", "--limit", "2")
    assert [unb64(kv["key"]) for kv in lim["kvs"]] == ["/gs/a", "/gs/b"]
    assert lim["more"] is True and lim["count"] == 4
    lim = jrun(ctl, "get", "/gs/", "--prefix", "--limit", "2", "--sort-by", "MODIFY", "--order", "DESCEND")
    assert [unb64(kv["key"]) for kv in lim["kvs"]] == ["/gs/b", "/gs/d"]
    assert lim["more"] is True and lim["count"] == 4
    lim = jrun(ctl, "get", "/gs/", "--prefix", "--limit", "4")
    assert "more" not in lim and lim["count"] == 4

    # --keys-only in JSON: no values; the simple form prints an empty value line.
    ko = jrun(ctl, "get", "/gs/", "--prefix", "--keys-only")
    assert all("value" not in kv for kv in ko["kvs"]) and ko["count"] == 4
    assert ctl.run("get", "/gs/a", "--keys-only").stdout == "/gs/a\n\n"
    # --print-value-only with a prefix.
    assert ctl.run("get", "/gs/", "--prefix", "--print-value-only").stdout.split() == ["3", "2", "1", "0"]
    # An explicit range end [key, range_end).
    assert ctl.run("get", "/gs/b", "/gs/d", "--keys-only").stdout.split() == ["/gs/b", "/gs/c"]
    # --from-key: every key >= the key (here, the last ones in the keyspace).
    fk = ctl.run("get", "/gs/c", "--from-key", "--keys-only").stdout.split()
    assert fk[:3] == ["/gs/c", "/gs/d", "/gt"]


def test_get_rev(ctl: Etcdctl, members: dict) -> None:
    r1 = put_rev(ctl, "/gr/k", "one")
    r2 = put_rev(ctl, "/gr/k", "two")
    put_rev(ctl, "/gr/other", "x")
    ctl.run("del", "/gr/k")
    assert ctl.run("get", "/gr/k").stdout == ""
    assert ctl.run("get", "/gr/k", "--rev", str(r1), "--print-value-only").stdout.strip() == "one"
    old = jrun(ctl, "get", "/gr/", "--prefix", "--rev", str(r2))
    assert [unb64(kv["value"]) for kv in old["kvs"]] == ["two"]
    assert old["kvs"][0]["version"] == 2 and old["kvs"][0]["create_revision"] == r1
    # The header carries the current revision, not the requested one.
    assert old["header"]["revision"] > r2
    assert ctl.run("get", "/gr/k", "--rev", str(r1 - 1)).stdout == ""
    p = ctl.fail("get", "/gr/k", "--rev", str(r2 + 1_000_000))
    assert "etcdserver: mvcc: required revision is a future revision" in p.stderr


def test_del(ctl: Etcdctl, members: dict) -> None:
    for k in ("a", "b", "c", "d"):
        ctl.run("put", f"/dl/{k}", k.upper())
    ctl.run("put", "/dlx", "kept")
    assert ctl.run("del", "/dl/a").stdout.strip() == "1"
    assert ctl.run("del", "/dl/a").stdout.strip() == "0"
    d = jrun(ctl, "del", "/dl/b", "--prev-kv")
    check_header(d["header"], members)
    assert d["deleted"] == 1 and unb64(d["prev_kvs"][0]["value"]) == "B"
    # The simple output of --prev-kv: count, then key and value.
    assert ctl.run("del", "/dl/c", "--prev-kv").stdout.splitlines() == ["1", "/dl/c", "C"]
    ctl.run("put", "/dl/e", "E")
    assert ctl.run("del", "/dl/", "--prefix").stdout.strip() == "2"
    assert ctl.run("get", "/dl/", "--prefix").stdout == ""
    assert ctl.run("get", "/dlx", "--print-value-only").stdout.strip() == "kept"
    # A range [key, end) and --from-key.
    for k in ("1", "2", "3"):
        ctl.run("put", f"/dm/{k}", k)
    assert ctl.run("del", "/dm/1", "/dm/3").stdout.strip() == "2"
    assert ctl.run("get", "/dm/", "--prefix", "--keys-only").stdout.split() == ["/dm/3"]
    ctl.run("put", "/dm/4", "4")
    # from-key over the tail of the keyspace under a prefix that sorts last.
    ctl.run("put", "\x7f/dm/1", "1")
    ctl.run("put", "\x7f/dm/2", "2")
    assert ctl.run("del", "\x7f/dm/", "--from-key").stdout.strip() == "2"
    assert ctl.run("del", "/dm/", "--prefix").stdout.strip() == "2"


# -------------------------------------------------------------------------- txn


def test_txn_interactive_stdin(ctl: Etcdctl, members: dict) -> None:
    r_a = put_rev(ctl, "/tx/a", "1")
    put_rev(ctl, "/tx/b", "2")
    # (lease("k") compares are not tested here: etcdctl 3.4 itself panics
    # parsing them, "panic: bad value" in clientv3.mustInt64orLeaseID.)
    ctl.run("put", "/tx/l", "x")
    # Every compare target, all true: the success branch runs.
    script = "\n".join([
        'value("/tx/a") = "1"',
        'version("/tx/a") = "1"',
        f'create("/tx/a") = "{r_a}"',
        f'mod("/tx/b") > "{r_a}"',
        'value("/tx/b") != "3"',
        "",
        "put /tx/result yes",
        "get /tx/a",
        "del /tx/b",
        "",
        "put /tx/result no",
        "",
        "",
    ])
    out = ctl.run("txn", input=script).stdout.splitlines()
    assert out == ["SUCCESS", "", "OK", "", "/tx/a", "1", "", "1"]
    assert ctl.run("get", "/tx/result", "--print-value-only").stdout.strip() == "yes"
    assert ctl.run("get", "/tx/b").stdout == ""

    # A false compare: the failure branch runs, JSON output field by field.
    script = "\n".join([
        'value("/tx/a") = "1"',
        'version("/tx/a") > "5"',
        "",
        "put /tx/result yes2",
        "",
        "put /tx/result no2",
        "get /tx/ --prefix",
        "",
        "",
    ])
    res = jrun(ctl, "txn", input=script)
    check_header(res["header"], members)
    assert "succeeded" not in res  # false is omitted from the JSON
    put_resp, range_resp = res["responses"]
    assert put_resp["Response"]["ResponsePut"]["header"]["revision"] == res["header"]["revision"]
    rr = range_resp["Response"]["ResponseRange"]
    assert [unb64(kv["key"]) for kv in rr["kvs"]] == ["/tx/a", "/tx/l", "/tx/result"]
    assert rr["count"] == 3
    assert ctl.run("get", "/tx/result", "--print-value-only").stdout.strip() == "no2"

    # The prompts of the interactive form (-i) go to stdout.
    out = ctl.run("txn", "-i", input='value("/tx/a") = "1"\n\nget /tx/a\n\n\n').stdout
    assert "compares:" in out and "success requests (get, put, del):" in out
    assert "failure requests (get, put, del):" in out and out.rstrip().endswith("SUCCESS\n\n/tx/a\n1")

    # A txn reading a missing key compares against zero values.
    res = jrun(ctl, "txn", input='create("/tx/none") = "0"\n\nput /tx/none created\n\n\n')
    assert res["succeeded"] is True


def test_txn_errors(ctl: Etcdctl) -> None:
    # Duplicate keys among the puts of one branch.
    p = ctl.fail("txn", input="\nput /te/a 1\nput /te/a 2\n\n\n")
    assert "etcdserver: duplicate key given in txn request" in p.stderr
    # More than --max-txn-ops (128) operations.
    ops = "".join(f"put /te/k{i} v\n" for i in range(129))
    p = ctl.fail("txn", input="\n" + ops + "\n\n")
    assert "etcdserver: too many operations in txn request" in p.stderr
    assert ctl.run("get", "/te/", "--prefix").stdout == ""


# ------------------------------------------------------------------------ watch


def _event_lines(resp: dict) -> list[tuple[str, str, str]]:
    out = []
    for ev in resp.get("Events") or []:
        kv = ev["kv"]
        out.append(("DELETE" if ev.get("type") == 1 else "PUT", unb64(kv["key"]), unb64(kv.get("value", ""))))
    return out


def test_watch_receives_puts_made_meanwhile(ctl: Etcdctl, members: dict) -> None:
    # Without --rev: wait until the watch is live by writing a marker until it shows.
    w = Lines(ctl.popen("watch", "/wa/k"))
    try:
        def marker_seen() -> bool:
            ctl.run("put", "/wa/k", "marker")
            try:
                w.take(3, timeout=1.0)
                return True
            except AssertionError:
                return False

        wait_for(marker_seen, timeout=30, what="the watch to be established")
        # Drain lines from extra markers, then make the real changes.
        while True:
            try:
                w.take(1, timeout=0.5)
            except AssertionError:
                break
        ctl.run("put", "/wa/k", "v1")
        ctl.run("put", "/wa/other", "ignored")
        ctl.run("put", "/wa/k", "v2")
        ctl.run("del", "/wa/k")
        assert w.take(8) == ["PUT", "/wa/k", "v1", "PUT", "/wa/k", "v2", "DELETE", "/wa/k"]
    finally:
        w.stop()


def test_watch_prefix_json(ctl: Etcdctl, members: dict) -> None:
    start = current_revision(ctl) + 1
    w = Lines(ctl.popen("watch", "/wp/", "--prefix", "--rev", str(start), "-w", "json"))
    try:
        ctl.run("put", "/wp/a", "1")
        ctl.run("put", "/wpx", "outside")
        ctl.run("put", "/wp/b", "2")
        ctl.run("del", "/wp/a")
        got: list[tuple[str, str, str]] = []
        revs: list[int] = []
        while len(got) < 3:
            resp = json.loads(w.take(1)[0])
            check_header(resp["Header"], members)
            assert resp["Canceled"] is False and resp["CompactRevision"] == 0
            got += _event_lines(resp)
            revs += [ev["kv"]["mod_revision"] for ev in resp["Events"]]
        assert got == [("PUT", "/wp/a", "1"), ("PUT", "/wp/b", "2"), ("DELETE", "/wp/a", "")]
        assert revs == [start, start + 2, start + 3]
    finally:
        w.stop()


def test_watch_rev_from_the_past_and_prev_kv(ctl: Etcdctl, members: dict) -> None:
    r1 = put_rev(ctl, "/wh/a", "1")
    put_rev(ctl, "/wh/a", "2")
    put_rev(ctl, "/wh/b", "3")
    ctl.run("del", "/wh/a")
    w = Lines(ctl.popen("watch", "/wh/", "--prefix", "--rev", str(r1), "--prev-kv"))
    try:
        # PUT a=1 (no prev), PUT a=2 (prev a=1), PUT b=3, DELETE a (prev a=2), then live.
        assert w.take(3) == ["PUT", "/wh/a", "1"]
        assert w.take(5) == ["PUT", "/wh/a", "1", "/wh/a", "2"]
        assert w.take(3) == ["PUT", "/wh/b", "3"]
        assert w.take(5) == ["DELETE", "/wh/a", "2", "/wh/a", ""]
        ctl.run("put", "/wh/b", "4")
        assert w.take(5) == ["PUT", "/wh/b", "3", "/wh/b", "4"]
    finally:
        w.stop()


def test_watch_range_and_exec(ctl: Etcdctl, tmp_path) -> None:
    start = current_revision(ctl) + 1
    out = tmp_path / "execs"
    # watch [key, end) running a command per event, with ETCD_WATCH_* in its environment.
    cmd = f'echo "$ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE $ETCD_WATCH_REVISION" >> {out}'
    w = Lines(ctl.popen("watch", "/wr/b", "/wr/d", "--rev", str(start), "--", "sh", "-c", cmd))
    try:
        ctl.run("put", "/wr/a", "no")
        ctl.run("put", "/wr/b", "yes")
        ctl.run("put", "/wr/d", "no")
        ctl.run("put", "/wr/c", "yes")
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, what="exec output")
        assert out.read_text().splitlines() == [
            f'"PUT" "/wr/b" "yes" {start + 1}', f'"PUT" "/wr/c" "yes" {start + 3}']
    finally:
        w.stop()


# ------------------------------------------------------------------- compaction


def test_compaction(ctl: Etcdctl, members: dict) -> None:
    r1 = put_rev(ctl, "/cp/k", "1")
    r2 = put_rev(ctl, "/cp/k", "2")
    r3 = put_rev(ctl, "/cp/k", "3")
    assert ctl.run("compaction", str(r2)).stdout.strip() == f"compacted revision {r2}"
    p = ctl.fail("get", "/cp/k", "--rev", str(r1))
    assert "etcdserver: mvcc: required revision has been compacted" in p.stderr
    assert ctl.run("get", "/cp/k", "--rev", str(r2), "--print-value-only").stdout.strip() == "2"
    # Watching from a compacted revision: the server cancels with compact_revision.
    p = ctl.fail("watch", "/cp/k", "--rev", str(r1), "-w", "json", timeout=20)
    assert "watch was canceled (etcdserver: mvcc: required revision has been compacted)" in p.stdout + p.stderr
    resp = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][0])
    assert resp["Canceled"] is True and resp["CompactRevision"] == r2
    assert "Error: watch is canceled by the server" in p.stderr
    # Compacting again at or below the compacted revision is refused.
    p = ctl.fail("compaction", str(r2))
    assert "etcdserver: mvcc: required revision has been compacted" in p.stderr
    p = ctl.fail("compaction", str(r3 + 1_000_000))
    assert "etcdserver: mvcc: required revision is a future revision" in p.stderr
    # --physical waits for the compaction to be applied; history after it stays.
    r4 = put_rev(ctl, "/cp/k", "4")
    assert ctl.run("compaction", str(r3), "--physical").stdout.strip() == f"compacted revision {r3}"
    assert ctl.run("get", "/cp/k", "--rev", str(r3), "--print-value-only").stdout.strip() == "3"
    assert ctl.run("get", "/cp/k", "--rev", str(r4), "--print-value-only").stdout.strip() == "4"


# ------------------------------------------------------------------------ lease


def test_lease_grant_timetolive_keepalive_revoke(ctl: Etcdctl, members: dict) -> None:
    g = jrun(ctl, "lease", "grant", "120")
    check_header({k: g[k] for k in ("cluster_id", "member_id", "revision", "raft_term")}, members)
    assert g["TTL"] == 120 and g["ID"] > 0 and g["Error"] == ""
    lid = f"{g['ID']:x}"
    out = ctl.run("lease", "grant", "100").stdout.strip()
    m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\(100s\)", out)
    assert m, out
    other = m.group(1)

    ctl.run("put", "/ls/k1", "v", f"--lease={lid}")
    ctl.run("put", "/ls/k2", "v", f"--lease={lid}")
    ttl = jrun(ctl, "lease", "timetolive", lid, "--keys")
    assert ttl["id"] == g["ID"] and ttl["granted-ttl"] == 120 and 100 <= ttl["ttl"] <= 120
    assert sorted(unb64(k) for k in ttl["keys"]) == ["/ls/k1", "/ls/k2"]
    simple = ctl.run("lease", "timetolive", lid, "--keys").stdout.strip()
    assert re.fullmatch(
        rf"lease {lid:0>16} granted with TTL\(120s\), remaining\(\d+s\), attached keys\(\[/ls/k1 /ls/k2\]\)", simple
    ), simple
    assert "attached keys" not in ctl.run("lease", "timetolive", lid).stdout

    ka = ctl.run("lease", "keep-alive", "--once", lid).stdout.strip()
    assert ka == f"lease {lid:0>16} keepalived with TTL(120)"
    kaj = jrun(ctl, "lease", "keep-alive", "--once", lid)
    assert kaj["ID"] == g["ID"] and kaj["TTL"] == 120

    ids = {e["id"] for e in jrun(ctl, "lease", "list")["leases"]}
    assert {g["ID"], int(other, 16)} <= ids
    listed = ctl.run("lease", "list").stdout.splitlines()
    assert listed[0].startswith("found ") and lid.lstrip("0") in [x.lstrip("0") for x in listed[1:]]

    assert ctl.run("lease", "revoke", lid).stdout.strip() == f"lease {lid:0>16} revoked"
    assert ctl.run("get", "/ls/", "--prefix").stdout == ""
    p = ctl.fail("lease", "revoke", lid)
    assert "etcdserver: requested lease not found" in p.stderr
    assert ctl.run("lease", "timetolive", lid).stdout.strip() == f"lease {lid:0>16} already expired"
    gone = jrun(ctl, "lease", "timetolive", lid)
    assert gone["ttl"] == -1 and gone["granted-ttl"] == 0
    p = ctl.fail("lease", "keep-alive", "--once", lid)
    assert "etcdserver: requested lease not found" in p.stderr
    ctl.run("lease", "revoke", other)


def test_lease_expiry_and_streaming_keepalive(ctl: Etcdctl) -> None:
    lid = f"{jrun(ctl, 'lease', 'grant', '2')['ID']:x}"
    ctl.run("put", "/le/k", "v", f"--lease={lid}")
    # A streaming keep-alive holds the key past its TTL...
    ka = Lines(ctl.popen("lease", "keep-alive", lid))
    try:
        first = ka.take(1, timeout=20)[0]
        assert first == f"lease {lid:0>16} keepalived with TTL(2)"
        time.sleep(3.0)
        assert ctl.run("get", "/le/k", "--print-value-only").stdout.strip() == "v"
    finally:
        ka.stop(signal.SIGINT)
    # ...and once it stops, the lease expires and takes the key with it.
    wait_for(lambda: ctl.run("get", "/le/k").stdout == "", timeout=20, what="lease expiry")
    assert ctl.run("lease", "timetolive", lid).stdout.strip() == f"lease {lid:0>16} already expired"


# ------------------------------------------------------------------ lock, elect


def test_lock_mutual_exclusion(ctl: Etcdctl, tmp_path) -> None:
    log = tmp_path / "lock.log"
    script = (
        f'echo "$N in $ETCD_LOCK_KEY $ETCD_LOCK_REV" >> {log}; sleep 1; echo "$N out" >> {log}'
    )
    procs = []
    for name in ("A", "B", "C"):
        env = dict(Etcdctl.env(), N=name)
        procs.append(subprocess.Popen(
            ctl.argv("lock", "/lk/mutex", "--ttl", "10", "--", "sh", "-c", script),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    lines = log.read_text().splitlines()
    assert len(lines) == 6
    holders, revs = [], []
    for i in range(0, 6, 2):
        who, inout, key, rev = lines[i].split()
        assert inout == "in" and lines[i + 1] == f"{who} out", lines  # no overlap
        assert re.fullmatch(r"/lk/mutex/[0-9a-f]+", key), key
        holders.append(who)
        revs.append(int(rev))
    assert sorted(holders) == ["A", "B", "C"]
    assert revs == sorted(revs) and len(set(revs)) == 3  # fencing revisions increase
    # Every session key is gone once its holder released the lock.
    assert ctl.run("get", "/lk/mutex/", "--prefix").stdout == ""


def test_lock_holder_blocks_contender(ctl: Etcdctl) -> None:
    # Without a command etcdctl prints the key and holds the lock until interrupted.
    a = Lines(ctl.popen("lock", "/lk/hold"))
    b = None
    try:
        a_key = a.take(1, timeout=20)[0]
        assert a_key.startswith("/lk/hold/")
        assert ctl.run("get", a_key, "--keys-only").stdout.split() == [a_key]
        b = Lines(ctl.popen("lock", "/lk/hold"))
        with pytest.raises(AssertionError):
            b.take(1, timeout=2.0)  # B waits while A holds the lock
        a.stop(signal.SIGINT)  # A unlocks on interrupt
        b_key = b.take(1, timeout=20)[0]
        assert b_key.startswith("/lk/hold/") and b_key != a_key
        assert ctl.run("get", a_key).stdout == ""
    finally:
        a.stop(signal.SIGINT)
        if b is not None:
            b.stop(signal.SIGINT)


def test_elect_campaign_and_listen(ctl: Etcdctl) -> None:
    listener = Lines(ctl.popen("elect", "/el/e1", "--listen"))
    a = Lines(ctl.popen("elect", "/el/e1", "p-a"))
    b = None
    try:
        a_key, a_val = a.take(2, timeout=20)
        assert a_key.startswith("/el/e1/") and a_val == "p-a"
        # The listener reports the leader's key and proposal.
        assert listener.until(lambda ln: ln == "p-a", timeout=20)[-2:] == [a_key, "p-a"]
        b = Lines(ctl.popen("elect", "/el/e1", "p-b"))
        with pytest.raises(AssertionError):
            b.take(1, timeout=2.0)  # B is a follower while A leads
        assert ctl.run("get", "/el/e1/", "--prefix", "--keys-only", "--sort-by", "CREATE").stdout.split()[0] == a_key
        a.stop(signal.SIGINT)  # A resigns
        b_key, b_val = b.take(2, timeout=20)
        assert b_key.startswith("/el/e1/") and b_key != a_key and b_val == "p-b"
        assert listener.until(lambda ln: ln == "p-b", timeout=20)[-2:] == [b_key, "p-b"]
    finally:
        a.stop(signal.SIGINT)
        if b is not None:
            b.stop(signal.SIGINT)
        listener.stop(signal.SIGINT)


# ----------------------------------------------------------------------- member


def member_add(ctl: Etcdctl, *args: str) -> subprocess.CompletedProcess[str]:
    """``member add``, waiting out etcd's 5 s connectivity window after start
    (its strict reconfiguration check answers 'unhealthy cluster' until then)."""
    deadline = time.monotonic() + 15
    while True:
        p = ctl.run("member", "add", *args, check=False)
        if p.returncode == 0 or "unhealthy cluster" not in p.stderr or time.monotonic() > deadline:
            return p
        time.sleep(0.5)


def test_member_list(ctl: Etcdctl, members: dict, kv_cluster: Cluster) -> None:
    ml = jrun(ctl, "member", "list")
    check_header(ml["header"], members, cluster_api=True)
    by_name = {m["name"]: m for m in ml["members"]}
    for n in kv_cluster.nodes[:3]:
        m = by_name[n.name]
        assert m["peerURLs"] == [n.peer_url]
        assert m["clientURLs"] == [f"http://{n.endpoint}"]
        assert not m.get("isLearner", False)
    rows = ctl.run("member", "list").stdout.splitlines()
    assert len(rows) == 3
    for row in rows:
        mid, status, name, peer, client, learner = [c.strip() for c in row.split(",")]
        assert status == "started" and learner == "false" and int(mid, 16) in members["ids"]
        assert name in by_name and peer == by_name[name]["peerURLs"][0]
    table = ctl.run("member", "list", "-w", "table").stdout
    assert "IS LEARNER" in table and "| started |" in table


def test_member_add_learner_promote_remove(ctl: Etcdctl, members: dict, kv_cluster: Cluster) -> None:
    """A real fourth process joins as a learner, is promoted, then removed."""
    n4 = kv_cluster.add_node("n4")
    added = json.loads(member_add(ctl, "n4", f"--peer-urls={n4.peer_url}", "--learner", "-w", "json").stdout)
    check_header(added["header"], members, cluster_api=True)
    m = added["member"]
    assert m["peerURLs"] == [n4.peer_url] and m["isLearner"] is True and "name" not in m
    assert any(x["ID"] == m["ID"] and x.get("isLearner") for x in added["members"])
    mid = f"{m['ID']:x}"
    row = [r for r in ctl.run("member", "list").stdout.splitlines() if r.startswith(mid)]
    assert [c.strip() for c in row[0].split(",")] == [mid, "unstarted", "", n4.peer_url, "", "true"]
    # A learner cannot be promoted before it has caught up.
    p = ctl.fail("member", "promote", mid)
    assert "etcdserver: can only promote a learner member which is in sync with leader" in p.stderr

    n4.start(kv_cluster.initial_cluster, "existing")
    kv_cluster.wait_healthy(60, nodes=[n4])

    def started() -> bool:
        ml = jrun(ctl, "member", "list")["members"]
        return any(x["ID"] == m["ID"] and x.get("name") == "n4" and x.get("clientURLs") for x in ml)

    wait_for(started, timeout=30, interval=0.3, what="n4 to publish its name")
    # A learner serves serializable reads only.
    ctl.run("put", "/mb/seen", "by the learner")
    learner = Etcdctl([n4.endpoint])
    wait_for(lambda: learner.run("get", "/mb/seen", "--consistency", "s").stdout != "", what="learner catch-up")
    for args in (("put", "/mb/k", "v"), ("get", "/mb/seen"), ("del", "/mb/seen"), ("member", "list")):
        p = learner.fail(*args)
        assert "etcdserver: rpc not supported for learner" in p.stderr, (args, p.stderr)
    st = json.loads(learner.run("endpoint", "status", "-w", "json").stdout)[0]["Status"]
    assert st["isLearner"] is True

    def promote() -> bool:
        p = ctl.run("member", "promote", mid, check=False)
        if p.returncode == 0:
            assert p.stdout.strip() == f"Member {mid:>16} promoted in cluster {members['cluster_id']:16x}"
            return True
        assert "in sync with leader" in p.stderr, p.stderr
        return False

    wait_for(promote, timeout=60, interval=0.5, what="learner promotion")
    ml = jrun(ctl, "member", "list")["members"]
    assert not [x for x in ml if x["ID"] == m["ID"]][0].get("isLearner", False)
    assert len(ml) == 4
    # A promoted member serves writes.
    Etcdctl([n4.endpoint]).run("put", "/mb/k", "from-n4")
    assert ctl.run("get", "/mb/k", "--print-value-only").stdout.strip() == "from-n4"
    p = ctl.fail("member", "promote", mid)
    assert "etcdserver: can only promote a learner member" in p.stderr

    out = ctl.run("member", "remove", mid).stdout.strip()
    assert out == f"Member {mid:>16} removed from cluster {members['cluster_id']:16x}"
    assert len(jrun(ctl, "member", "list")["members"]) == 3
    # The removed member shuts itself down.
    wait_for(lambda: not n4.alive, timeout=30, what="the removed member to exit")
    p = ctl.fail("member", "remove", mid)
    assert "etcdserver: member not found" in p.stderr


def test_member_add_voter_unstarted_then_remove(ctl: Etcdctl, members: dict, kv_cluster: Cluster) -> None:
    p = member_add(ctl, "dup", f"--peer-urls={kv_cluster.nodes[0].peer_url}")
    assert p.returncode != 0
    assert "etcdserver: Peer URLs already exists" in p.stderr
    p = member_add(ctl, "bad", "--peer-urls=not-a-url")
    assert p.returncode != 0
    assert "URL" in p.stderr or "url" in p.stderr
    # A voter that never starts: the 3 live members still form a quorum of 4.
    out = member_add(ctl, "ghost", "--peer-urls=http://127.0.0.1:9").stdout
    m = re.search(r"Member ([0-9a-f]+) added to cluster ([0-9a-f]+)", out)
    assert m and int(m.group(2), 16) == members["cluster_id"]
    assert 'ETCD_NAME="ghost"' in out and 'ETCD_INITIAL_CLUSTER_STATE="existing"' in out
    assert "ghost=http://127.0.0.1:9" in out
    p = ctl.fail("member", "promote", m.group(1))
    assert "etcdserver: can only promote a learner member" in p.stderr
    ctl.run("member", "update", m.group(1), "--peer-urls=http://127.0.0.1:10")
    row = [r for r in ctl.run("member", "list").stdout.splitlines() if r.startswith(m.group(1))][0]
    assert "http://127.0.0.1:10" in row
    ctl.run("member", "remove", m.group(1))
    assert ctl.run("put", "/mg/k", "still writable").stdout.strip() == "OK"


def test_member_add_refused_while_a_voter_is_down(ctl: Etcdctl) -> None:
    out = member_add(ctl, "ghost2", "--peer-urls=http://127.0.0.1:12").stdout
    ghost = re.search(r"Member ([0-9a-f]+) added", out).group(1)
    try:
        # etcd's strict reconfiguration check: no new member while a voter is not connected.
        p = ctl.run("member", "add", "voter2", "--peer-urls=http://127.0.0.1:11", check=False)
        p2 = ctl.run("member", "add", "learner2", "--peer-urls=http://127.0.0.1:13", "--learner", check=False)
        assert p.returncode != 0 and "etcdserver: unhealthy cluster" in p.stderr
        assert p2.returncode != 0 and "etcdserver: unhealthy cluster" in p2.stderr
    finally:
        for row in ctl.run("member", "list").stdout.splitlines():
            mid, _, name, peer = [c.strip() for c in row.split(",")][:4]
            if peer in ("http://127.0.0.1:11", "http://127.0.0.1:12", "http://127.0.0.1:13"):
                ctl.run("member", "remove", mid)
        assert ghost


# ---------------------------------------------------------------- endpoint etc.


def test_endpoint_status_and_health(ctl: Etcdctl, members: dict, kv_cluster: Cluster) -> None:
    st = json.loads(ctl.run("endpoint", "status", "--cluster", "-w", "json").stdout)
    assert len(st) == 3
    leaders = {s["Status"]["leader"] for s in st}
    assert len(leaders) == 1 and leaders <= members["ids"]
    for s in st:
        status = s["Status"]
        check_header(status["header"], members)
        assert s["Endpoint"].startswith("http://127.0.0.1:")
        assert members["by_url"][s["Endpoint"].removeprefix("http://")] == status["header"]["member_id"]
        assert ETCD_VERSION_RE.match(status["version"]), status["version"]
        assert status["dbSize"] > 0 and 0 < status["dbSizeInUse"] <= status["dbSize"]
        assert status["raftTerm"] >= 1 and status["raftIndex"] >= 1
        assert status["raftAppliedIndex"] >= 1
        assert not status.get("isLearner", False) and not status.get("errors")
    table = ctl.run("endpoint", "status", "-w", "table").stdout
    assert "IS LEADER" in table and table.count("true") >= 1
    simple = ctl.run("endpoint", "status").stdout.splitlines()
    assert len(simple) == 3 and all(ln.split(", ")[2].startswith("3.4.") for ln in simple)

    health = ctl.run("endpoint", "health", "--cluster").stdout.splitlines()
    health += ctl.run("endpoint", "health", "--cluster").stderr.splitlines()
    ok = [h for h in health if "is healthy: successfully committed proposal" in h]
    assert len(ok) == 3, health
    hj = json.loads(ctl.run("endpoint", "health", "-w", "json").stdout)
    assert sorted(h["endpoint"] for h in hj) == sorted(kv_cluster.endpoints[:3])
    assert all(h["health"] is True for h in hj)
    hs = json.loads(ctl.run("endpoint", "hashkv", "--cluster", "-w", "json").stdout)
    assert len(hs) == 3


def test_endpoint_hashkv_equal_across_members(ctl: Etcdctl) -> None:
    rev = put_rev(ctl, "/hk/k", "v")
    # Wait until every member applied rev (serializable reads are local).
    for ep in ctl.endpoints:
        wait_for(lambda ep=ep: Etcdctl([ep]).run("get", "/hk/k", "--consistency", "s").stdout != "",
                 what=f"{ep} to apply")
    hs = json.loads(ctl.run("endpoint", "hashkv", "--cluster", "--rev", str(rev), "-w", "json").stdout)
    hashes = {h["HashKV"]["hash"] for h in hs}
    assert len(hs) == 3 and len(hashes) == 1, hs


def test_snapshot_save(ctl: Etcdctl, kv_cluster: Cluster, tmp_path) -> None:
    ctl.run("put", "/sn/k", "in the snapshot")
    path = str(tmp_path / "snap.db")
    p = ctl.fail("snapshot", "save", path)
    assert "snapshot must be requested to one selected node" in p.stderr
    p = ctl.run("snapshot", "save", path, endpoints=[kv_cluster.nodes[0].endpoint])
    assert f"Snapshot saved at {path}" in p.stdout
    data = open(path, "rb").read()
    # As etcd: the store's bytes followed by their SHA-256 (what restore verifies).
    body, digest = data[:-32], data[-32:]
    assert len(body) > 0 and hashlib.sha256(body).digest() == digest
    if not ON_KVSTORE:
        return
    # The body is etcd's backend format (bbolt): it restores into a store holding the key.
    from kvstore import bbolt
    from kvstore.mvcc import MvccStore
    from kvstore.pb import rpc_pb2

    d = tmp_path / "restored"
    bbolt.restore_snapshot(path, str(d))
    st = MvccStore(str(d))
    try:
        got = st.range(rpc_pb2.RangeRequest(key=b"/sn/k"))
        assert [kv.value for kv in got.kvs] == [b"in the snapshot"]
    finally:
        st.close()


def test_snapshot_status(ctl: Etcdctl, kv_cluster: Cluster, tmp_path) -> None:
    path = str(tmp_path / "snap.db")
    ctl.run("snapshot", "save", path, endpoints=[kv_cluster.nodes[0].endpoint])
    st = json.loads(ctl.run("snapshot", "status", path, "-w", "json").stdout)
    assert st["revision"] > 0 and st["totalKey"] > 0


def test_snapshot_restore(ctl: Etcdctl, kv_cluster: Cluster, tmp_path) -> None:
    path = str(tmp_path / "snap.db")
    ctl.run("snapshot", "save", path, endpoints=[kv_cluster.nodes[0].endpoint])
    ctl.run("snapshot", "restore", path, "--data-dir", str(tmp_path / "restored"))


def test_defrag(ctl: Etcdctl, kv_cluster: Cluster) -> None:
    ctl.run("put", "/df/k", "v")
    out = ctl.run("defrag", "--cluster").stdout.splitlines()
    assert sorted(out) == sorted(f"Finished defragmenting etcd member[http://{ep}]" for ep in kv_cluster.endpoints[:3])
    out = ctl.run("defrag", endpoints=[kv_cluster.nodes[1].endpoint]).stdout.strip()
    assert out == f"Finished defragmenting etcd member[{kv_cluster.nodes[1].endpoint}]"
    assert ctl.run("get", "/df/k", "--print-value-only").stdout.strip() == "v"


def test_alarm_list_disarm_healthy(ctl: Etcdctl) -> None:
    assert ctl.run("alarm", "list").stdout == ""
    assert ctl.run("alarm", "disarm").stdout == ""
    assert "alarms" not in jrun(ctl, "alarm", "list")


def test_alarm_nospace() -> None:
    """A separate one-member cluster with a tiny quota: NOSPACE is raised,
    writes are refused with etcd's error, and disarm (after compaction and
    defrag free space) lets writes through again."""
    c = new_cluster(1, extra_args=["--quota-backend-bytes", str(4 << 20)])
    try:
        c.start(timeout=60)
        ctl = Etcdctl(c.endpoints)
        blob = "x" * (512 << 10)
        err = ""
        for i in range(40):
            p = ctl.run("put", f"/ns/{i % 4}", input=blob, check=False)
            if p.returncode != 0:
                err = p.stderr
                break
        assert "etcdserver: mvcc: database space exceeded" in err, err
        mid = jrun(ctl, "member", "list")["members"][0]["ID"]
        assert ctl.run("alarm", "list").stdout == f"memberID:{mid} alarm:NOSPACE \n"
        st = json.loads(ctl.run("endpoint", "status", "-w", "json").stdout)[0]["Status"]
        assert st["errors"] == [f"memberID:{mid} alarm:NOSPACE "]
        p = ctl.fail("put", "/ns/more", "v")
        assert "etcdserver: mvcc: database space exceeded" in p.stderr
        # Reads and deletes still work.
        assert ctl.run("get", "/ns/", "--prefix", "--keys-only").stdout != ""
        ctl.run("del", "/ns/", "--prefix")
        rev = current_revision(ctl)
        ctl.run("compaction", str(rev), "--physical")
        ctl.run("defrag")
        assert ctl.run("alarm", "disarm").stdout == f"memberID:{mid} alarm:NOSPACE \n"
        assert ctl.run("alarm", "list").stdout == ""
        assert ctl.run("put", "/ns/after", "v").stdout.strip() == "OK"
    finally:
        c.close()


def test_move_leader(ctl: Etcdctl, members: dict, kv_cluster: Cluster) -> None:
    def status() -> list[dict]:
        return json.loads(ctl.run("endpoint", "status", "-w", "json").stdout)

    st = status()
    leader = st[0]["Status"]["leader"]
    leader_ep = [s["Endpoint"] for s in st if s["Status"]["header"]["member_id"] == leader][0]
    target = sorted(members["ids"] - {leader})[0]
    # Only the leader can transfer: a follower endpoint alone is refused.
    follower_ep = [s["Endpoint"] for s in st if s["Status"]["header"]["member_id"] != leader][0]
    p = ctl.fail("move-leader", f"{target:x}", endpoints=[follower_ep])
    assert "no leader endpoint given" in p.stderr
    out = ctl.run("move-leader", f"{target:x}").stdout.strip()
    assert out == f"Leadership transferred from {leader:x} to {target:x}"
    assert leader_ep in ctl.endpoints
    wait_for(lambda: {s["Status"]["leader"] for s in status()} == {target}, timeout=20, what="new leader")
    p = ctl.fail("move-leader", "1234")
    assert "etcdserver: bad leader transferee" in p.stderr
    assert ctl.run("put", "/ml/k", "after move").stdout.strip() == "OK"
