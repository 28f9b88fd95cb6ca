"""Leases, locks and elections against real ``python -m kvstore`` processes:
a one-member and a three-member cluster on loopback, driven by etcdctl 3.4
(Debian's etcd-client) and by the gRPC stubs.

Waits are polls with generous deadlines; no assertion is about how long
anything took. Timing flags (from tests/procs.py): heartbeat 50 ms, election
timeout 500 ms, so the minimum lease TTL is 1 s.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

pytest.importorskip("raft.transport", reason="the peer transport has not landed yet")

from kvstore.pb import (  # noqa: E402
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2 as epb,
    v3election_pb2_grpc,
    v3lock_pb2 as lpb,
    v3lock_pb2_grpc,
)
from tests.procs import Cluster  # noqa: E402

ETCDCTL = shutil.which("etcdctl")
need_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl (Debian etcd-client) is not installed")


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def etcdctl(endpoint: str, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run(
        [ETCDCTL, "--endpoints", endpoint, "--command-timeout=10s", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def etcdctl_bg(endpoint: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.Popen(
        [ETCDCTL, "--endpoints", endpoint, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def stop(p: subprocess.Popen, sig: int = signal.SIGINT) -> str:
    """Stop a background etcdctl by its PID; returns its output."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        out, _ = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out or ""


class ReadLines:
    """Collects a background process's output lines as they come."""

    def __init__(self, p: subprocess.Popen) -> None:
        self.p = p
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGINT) -> list[str]:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._t.join(timeout=5)
        return self.lines


def lease_id(out: str) -> str:
    m = re.search(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)", out)
    assert m, out
    return m.group(1)


def stubs(endpoint: str):
    ch = grpc.insecure_channel(endpoint)
    return SimpleStubs(ch)


class SimpleStubs:
    def __init__(self, ch: grpc.Channel) -> None:
        self.ch = ch
        self.kv = rpc_pb2_grpc.KVStub(ch)
        self.lease = rpc_pb2_grpc.LeaseStub(ch)
        self.maint = rpc_pb2_grpc.MaintenanceStub(ch)
        self.lock = v3lock_pb2_grpc.LockStub(ch)
        self.election = v3election_pb2_grpc.ElectionStub(ch)

    def close(self) -> None:
        self.ch.close()


def leader_and_followers(cluster: Cluster) -> tuple[str, list[str]]:
    """(leader endpoint, follower endpoints), once all live members agree."""

    def probe():
        ids: dict[int, str] = {}
        leaders = set()
        for n in cluster.nodes:
            if not n.alive:
                continue
            s = stubs(n.endpoint)
            try:
                st = s.maint.Status(rpc_pb2.StatusRequest(), timeout=2)
            except grpc.RpcError:
                return None
            finally:
                s.close()
            ids[st.header.member_id] = n.endpoint
            leaders.add(st.leader)
        if len(leaders) != 1 or 0 in leaders or next(iter(leaders)) not in ids:
            return None
        lead = ids[next(iter(leaders))]
        return lead, [e for e in ids.values() if e != lead]

    return wait_for(probe, 30, "an agreed leader")


@pytest.fixture(scope="module")
def one():
    c = Cluster(1)
    try:
        c.start(60)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def three():
    c = Cluster(3)
    try:
        c.start(60)
        yield c
    finally:
        c.close()


# ------------------------------------------------------------ one member


@need_etcdctl
def test_etcdctl_lease_lifecycle(one: Cluster):
    ep = one.nodes[0].endpoint
    lid = lease_id(etcdctl(ep, "lease", "grant", "30").stdout)
    etcdctl(ep, "put", "--lease", lid, "lc/a", "1")
    etcdctl(ep, "put", "--lease", lid, "lc/b", "2")
    etcdctl(ep, "put", "lc/c", "3")
    out = etcdctl(ep, "lease", "timetolive", "--keys", lid).stdout
    assert re.search(rf"lease {lid} granted with TTL\(30s\), remaining\(\d+s\), attached keys\(\[lc/a lc/b\]\)", out), out
    assert lid in etcdctl(ep, "lease", "list").stdout
    out = etcdctl(ep, "lease", "keep-alive", "--once", lid).stdout
    assert f"lease {lid} keepalived with TTL(30)" in out
    assert f"lease {lid} revoked" in etcdctl(ep, "lease", "revoke", lid).stdout
    assert etcdctl(ep, "get", "--prefix", "lc/", "--keys-only").stdout.split() == ["lc/c"]
    assert f"lease {lid} already expired" in etcdctl(ep, "lease", "timetolive", lid).stdout
    p = etcdctl(ep, "lease", "revoke", lid, check=False)
    assert p.returncode != 0 and "etcdserver: requested lease not found" in p.stderr
    p = etcdctl(ep, "lease", "grant", "9000000001", check=False)
    assert p.returncode != 0 and "etcdserver: too large lease TTL" in p.stderr
    out = etcdctl(ep, "-w", "json", "lease", "timetolive", "1234").stdout
    assert '"id":4660' in out and '"ttl":-1' in out


@need_etcdctl
def test_etcdctl_lease_expires_and_min_ttl(one: Cluster):
    ep = one.nodes[0].endpoint
    out = etcdctl(ep, "lease", "grant", "0").stdout
    assert "granted with TTL(1s)" in out  # raised to the minimum (1 s with these timings)
    lid = lease_id(out)
    etcdctl(ep, "put", "--lease", lid, "exp/a", "1")
    wait_for(lambda: "already expired" in etcdctl(ep, "lease", "timetolive", lid).stdout, what="expiry")
    assert etcdctl(ep, "get", "exp/a").stdout == ""


@need_etcdctl
def test_etcdctl_keep_alive_keeps_lease(one: Cluster):
    ep = one.nodes[0].endpoint
    lid = lease_id(etcdctl(ep, "lease", "grant", "3").stdout)
    etcdctl(ep, "put", "--lease", lid, "ka/a", "1")
    ka = ReadLines(etcdctl_bg(ep, "lease", "keep-alive", lid))
    try:
        # several TTLs' worth of keep-alives (etcdctl sends one every TTL/3)
        wait_for(lambda: sum("keepalived" in l for l in ka.lines) >= 10, 60, "keep-alives")
        assert "ka/a" in etcdctl(ep, "get", "ka/a").stdout
    finally:
        ka.stop()
    wait_for(lambda: etcdctl(ep, "get", "ka/a").stdout == "", what="expiry after keep-alive stopped")


def test_leases_survive_restart(one: Cluster):
    n = one.nodes[0]
    s = stubs(n.endpoint)
    try:
        g = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=300))
        s.kv.Put(rpc_pb2.PutRequest(key=b"rs/a", value=b"1", lease=g.ID))
    finally:
        s.close()
    assert n.terminate() == 0
    n.restart()
    one.wait_healthy(60)
    s = stubs(n.endpoint)
    try:
        ttl = wait_for(
            lambda: _ttl(s, g.ID), 30, "lease after restart"
        )
        assert ttl.grantedTTL == 300 and 0 < ttl.TTL <= 301 and list(ttl.keys) == [b"rs/a"]
        assert g.ID in [l.ID for l in s.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest()).leases]
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"rs/a")).count == 0
    finally:
        s.close()


def test_paused_leader_does_not_revoke_on_waking(one: Cluster):
    """etcd #15247: a leader that was not running for longer than a TTL must
    not expire every lease when it wakes up."""
    n = one.nodes[0]
    s = stubs(n.endpoint)
    try:
        g = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=3))
        s.kv.Put(rpc_pb2.PutRequest(key=b"pause/a", value=b"1", lease=g.ID))
        n.signal(signal.SIGSTOP)
        try:
            time.sleep(5)  # longer than the TTL
        finally:
            n.signal(signal.SIGCONT)
        (r,) = list(s.lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=g.ID)]), timeout=30))
        assert r.TTL == 3  # still alive, renewed
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"pause/a")).count == 1
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))
    finally:
        s.close()


def _ttl(s: SimpleStubs, lid: int):
    try:
        return s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lid, keys=True), timeout=5)
    except grpc.RpcError:
        return None


@need_etcdctl
def test_etcdctl_lock_mutual_exclusion_and_handover(one: Cluster):
    ep = one.nodes[0].endpoint
    first = ReadLines(etcdctl_bg(ep, "lock", "mtx"))
    try:
        wait_for(lambda: any(l.startswith("mtx/") for l in first.lines), what="first holder")
        second = etcdctl_bg(ep, "lock", "mtx", "echo", "second-holds")
        # the second is queued: its key exists, but it does not hold the lock
        wait_for(lambda: len(etcdctl(ep, "get", "--prefix", "mtx/", "--keys-only").stdout.split()) == 2,
                 what="second waiter's key")
        assert second.poll() is None
    finally:
        first.stop()  # SIGINT: etcdctl unlocks
    out, _ = second.communicate(timeout=30)
    assert "second-holds" in out
    wait_for(lambda: etcdctl(ep, "get", "--prefix", "mtx/", "--keys-only").stdout.strip() == "",
             what="lock keys cleaned up")


@need_etcdctl
def test_etcdctl_elect(one: Cluster):
    ep = one.nodes[0].endpoint
    observer = ReadLines(etcdctl_bg(ep, "elect", "-l", "el"))
    alice = ReadLines(etcdctl_bg(ep, "elect", "el", "alice"))
    bob = None
    try:
        wait_for(lambda: "alice" in alice.lines, what="alice elected")
        wait_for(lambda: "alice" in observer.lines, what="observer sees alice")
        bob = ReadLines(etcdctl_bg(ep, "elect", "el", "bob"))
        wait_for(lambda: len(etcdctl(ep, "get", "--prefix", "el/", "--keys-only").stdout.split()) == 2,
                 what="bob campaigning")
        assert "bob" not in bob.lines
        alice.stop()  # resigns
        wait_for(lambda: "bob" in bob.lines, what="bob elected")
        wait_for(lambda: "bob" in observer.lines, what="observer sees bob")
        assert observer.lines.index("alice") < observer.lines.index("bob")
    finally:
        for p in (alice, bob, observer):
            if p is not None:
                p.stop()


# ---------------------------------------------------------- three members


def test_expiry_deletes_keys_in_same_revision_on_every_member(three: Cluster):
    leader, followers = leader_and_followers(three)
    s = stubs(followers[0])
    try:
        g = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=1))
        for k in (b"x/1", b"x/2", b"x/3"):
            put = s.kv.Put(rpc_pb2.PutRequest(key=k, value=b"v", lease=g.ID))
    finally:
        s.close()
    before = put.header.revision
    deleted_at = {}
    for ep in three.endpoints:
        m = stubs(ep)
        try:
            def gone():
                r = m.kv.Range(rpc_pb2.RangeRequest(key=b"x/", range_end=b"x0", serializable=True))
                return r if r.count == 0 else None

            cur = wait_for(gone, what=f"expiry seen on {ep}").header.revision
            counts = {
                rev: m.kv.Range(
                    rpc_pb2.RangeRequest(key=b"x/", range_end=b"x0", revision=rev, serializable=True)
                ).count
                for rev in range(before, cur + 1)
            }
            assert counts[before] == 3
            # all three keys vanish together, in one revision
            deleted_at[ep] = [rev for rev in range(before + 1, cur + 1) if counts[rev] != counts[rev - 1]]
            assert len(deleted_at[ep]) == 1 and counts[deleted_at[ep][0]] == 0
        finally:
            m.close()
    assert len({tuple(v) for v in deleted_at.values()}) == 1, deleted_at


def test_keepalive_and_timetolive_through_follower(three: Cluster):
    """A client connected to a follower keeps its lease alive (forwarded to
    the leader) and reads the leader's remaining TTL."""
    _, followers = leader_and_followers(three)
    ep = followers[0]
    s = stubs(ep)
    try:
        g = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=3))
        s.kv.Put(rpc_pb2.PutRequest(key=b"fka", value=b"v", lease=g.ID))
        stop_at = time.monotonic() + 9  # three TTLs
        answers = []

        def reqs():
            while time.monotonic() < stop_at:
                yield rpc_pb2.LeaseKeepAliveRequest(ID=g.ID)
                time.sleep(0.5)

        for r in s.lease.LeaseKeepAlive(reqs(), timeout=30):
            answers.append(r.TTL)
        assert answers and set(answers) == {3}
        ttl = s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=g.ID, keys=True))
        assert ttl.grantedTTL == 3 and 0 <= ttl.TTL <= 3 and list(ttl.keys) == [b"fka"]
        # no more keep-alives: it expires
        wait_for(lambda: _ttl(s, g.ID) is not None and _ttl(s, g.ID).TTL == -1, what="expiry")
        (r,) = list(s.lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=g.ID)]), timeout=10))
        assert (r.ID, r.TTL) == (g.ID, 0)
    finally:
        s.close()


@need_etcdctl
def test_etcdctl_keep_alive_through_follower(three: Cluster):
    _, followers = leader_and_followers(three)
    ep = followers[-1]
    lid = lease_id(etcdctl(ep, "lease", "grant", "3").stdout)
    etcdctl(ep, "put", "--lease", lid, "fk/a", "1")
    ka = ReadLines(etcdctl_bg(ep, "lease", "keep-alive", lid))
    try:
        wait_for(lambda: sum("keepalived with TTL(3)" in l for l in ka.lines) >= 10, 60, "keep-alives")
        assert "fk/a" in etcdctl(ep, "get", "fk/a").stdout
        out = etcdctl(ep, "lease", "timetolive", "--keys", lid).stdout
        assert "attached keys([fk/a])" in out, out
    finally:
        ka.stop()
    etcdctl(ep, "lease", "revoke", lid)


def test_leader_change_does_not_expire_leases(three: Cluster):
    leader, followers = leader_and_followers(three)
    s = stubs(followers[0])
    old = None
    try:
        g = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=8))
        s.kv.Put(rpc_pb2.PutRequest(key=b"lc", value=b"v", lease=g.ID))
        wait_for(lambda: (_ttl(s, g.ID) or rpc_pb2.LeaseTimeToLiveResponse(TTL=99)).TTL <= 3,
                 what="most of the TTL to pass")
        old = next(n for n in three.nodes if n.endpoint == leader)
        old.kill()
        new_leader, _ = leader_and_followers(three)
        assert new_leader != leader
        # The new leader renewed every lease to its full TTL (+ election timeout):
        ttl = wait_for(lambda: _ttl(s, g.ID), what="time-to-live from the new leader")
        assert ttl.TTL > 3 and ttl.grantedTTL == 8
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"lc")).count == 1
        s.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=g.ID))
    finally:
        s.close()
        if old is not None:
            old.restart()
            three.wait_healthy(60)


def test_grpc_lock_across_members(three: Cluster):
    eps = three.endpoints
    a, b = stubs(eps[0]), stubs(eps[1])
    try:
        la = a.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60)).ID
        lb = b.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60)).ID
        held = a.lock.Lock(lpb.LockRequest(name=b"xm", lease=la))
        assert held.key == b"xm/" + format(la, "x").encode()
        fut = b.lock.Lock.future(lpb.LockRequest(name=b"xm", lease=lb))
        wait_for(lambda: a.kv.Range(rpc_pb2.RangeRequest(key=b"xm/", range_end=b"xm0")).count == 2,
                 what="waiter queued")
        assert not fut.done()
        # the holder's fencing token: a write guarded by its key's existence
        guarded = a.kv.Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=held.key, target=rpc_pb2.Compare.CREATE,
                                     result=rpc_pb2.Compare.GREATER, create_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"xm-data", value=b"a"))],
        ))
        assert guarded.succeeded
        u = a.lock.Unlock(lpb.UnlockRequest(key=held.key))
        got = fut.result(timeout=30)
        assert got.key == b"xm/" + format(lb, "x").encode()
        assert got.header.revision >= u.header.revision
        # the old holder's guarded write now fails
        stale = a.kv.Txn(rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=held.key, target=rpc_pb2.Compare.CREATE,
                                     result=rpc_pb2.Compare.GREATER, create_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"xm-data", value=b"stale"))],
        ))
        assert not stale.succeeded
        b.lock.Unlock(lpb.UnlockRequest(key=got.key))
    finally:
        a.close()
        b.close()


def test_grpc_lock_lost_when_lease_expires(three: Cluster):
    eps = three.endpoints
    a, b = stubs(eps[1]), stubs(eps[2])
    try:
        short = a.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=1)).ID
        lb = b.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60)).ID
        a.lock.Lock(lpb.LockRequest(name=b"xl", lease=short))
        got = b.lock.Lock(lpb.LockRequest(name=b"xl", lease=lb), timeout=60)  # granted once `short` expires
        assert got.key == b"xl/" + format(lb, "x").encode()
        b.lock.Unlock(lpb.UnlockRequest(key=got.key))
    finally:
        a.close()
        b.close()


def test_grpc_election_across_members(three: Cluster):
    eps = three.endpoints
    a, b, c = stubs(eps[0]), stubs(eps[1]), stubs(eps[2])
    seen: list[epb.LeaderResponse] = []
    stream = c.election.Observe(epb.LeaderRequest(name=b"xe"))

    def read():
        try:
            for r in stream:
                seen.append(r)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        la = a.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60)).ID
        lb = b.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60)).ID
        ca = a.election.Campaign(epb.CampaignRequest(name=b"xe", lease=la, value=b"a"))
        fb = b.election.Campaign.future(epb.CampaignRequest(name=b"xe", lease=lb, value=b"b"))
        wait_for(lambda: c.kv.Range(rpc_pb2.RangeRequest(key=b"xe/", range_end=b"xe0")).count == 2,
                 what="second candidate")
        assert not fb.done()
        assert c.election.Leader(epb.LeaderRequest(name=b"xe")).kv.value == b"a"
        a.election.Proclaim(epb.ProclaimRequest(leader=ca.leader, value=b"a2"))
        a.election.Resign(epb.ResignRequest(leader=ca.leader))
        cb = fb.result(timeout=30)
        assert cb.leader.lease == lb
        assert c.election.Leader(epb.LeaderRequest(name=b"xe")).kv.value == b"b"
        wait_for(lambda: [r.kv.value for r in seen] == [b"a", b"a2", b"b"], what="observed changes")
        b.election.Resign(epb.ResignRequest(leader=cb.leader))
    finally:
        stream.cancel()
        t.join(timeout=10)
        for s in (a, b, c):
            s.close()
