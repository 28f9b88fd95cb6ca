"""Auto compaction (--auto-compaction-mode/-retention): the policies against
etcd 3.4's schedule, the driver, and a 3-member cluster compacting by itself."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from kvstore import errors
from kvstore.compactor import AutoCompactor, Periodic, Revision, policy_for
from kvstore.config import ConfigError, parse
from kvstore.errors import EtcdError
from kvstore.pb import rpc_pb2, rpc_pb2_grpc
from tests.procs import Cluster


def drive(p: Periodic, until: float, rev_per_tick: int = 10) -> list[tuple[float, int]]:
    """Run the driver's loop by hand: sample, wait one interval, compact if due."""
    now, rev, done = 0.0, 1, []
    while now < until:
        p.record(rev)
        now += p.interval
        rev += rev_per_tick
        target = p.due(now)
        if target is not None:
            p.done(target, now)
            done.append((round(now, 6), target))
    return done


def test_periodic_keeps_the_retention_window_like_etcd() -> None:
    # 10 s: samples every 1 s; the first compaction after 10 s to the revision
    # of t=0, then every 10 s to the oldest of the last 11 samples (the last
    # taken one interval before the decision): never less than 10 s kept.
    assert drive(Periodic(10, 0.0), 31) == [(10.0, 1), (20.0, 91), (30.0, 191)]
    # 2 h: samples every 6 min, the first compaction after 2 h, then hourly.
    hours = drive(Periodic(7200, 0.0), 4 * 3600 + 1)
    assert [t for t, _ in hours] == [7200.0, 10800.0, 14400.0]
    assert [rev for _, rev in hours] == [1, 1 + 9 * 10, 1 + 19 * 10]  # sampled at 0 h, 0:54, 1:54


def test_periodic_retries_a_failed_compaction_at_the_next_sample() -> None:
    p = Periodic(10, 0.0)
    for t in range(10):
        p.record(100 + t)
    assert p.due(10.0) == 100  # failed: no done()
    p.record(110)
    assert p.due(11.0) == 100  # retried one interval later
    p.record(111)
    assert p.due(12.0) == 101  # ... with the window moved on


def test_revision_mode_keeps_the_last_n_revisions() -> None:
    r = Revision(1000)
    r.record(800)
    assert r.due(0) is None
    r.record(1500)
    assert r.due(0) == 500
    r.done(500, 0)
    assert r.due(0) is None  # the same target again: nothing to do
    r.record(1600)
    assert r.due(0) == 600


@pytest.mark.parametrize("argv,mode,retention", [
    ([], "periodic", 0.0),
    (["--auto-compaction-retention", "1"], "periodic", 3600.0),  # a bare number: hours
    (["--auto-compaction-retention", "30m"], "periodic", 1800.0),
    (["--auto-compaction-retention", "1h30m"], "periodic", 5400.0),
    (["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000"], "revision", 1000.0),
])
def test_flags(argv: list[str], mode: str, retention: float) -> None:
    cfg = parse(argv, {})
    assert (cfg.auto_compaction_mode, cfg.compaction_retention) == (mode, retention)


@pytest.mark.parametrize("argv,message", [
    (["--auto-compaction-retention", "soon"], "invalid duration"),
    (["--auto-compaction-retention=-1h"], "invalid duration"),
    (["--auto-compaction-retention", "10ms"], "at least 1s"),
    (["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"], "number of revisions"),
    (["--auto-compaction-mode", "hourly"], "periodic, revision"),
])
def test_bad_flags_are_refused_with_the_flag_name(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv, {})


def test_driver_compacts_only_on_the_leader_and_survives_errors() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        rev = [1]
        leader = [False]
        calls: list[int] = []
        results = [errors.COMPACTED, EtcdError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"), None]
        enough = asyncio.Event()

        async def compact(r: int) -> None:
            calls.append(r)
            res = results.pop(0) if results else None
            if len(calls) >= 4:
                enough.set()
            if res is not None:
                raise res

        def revision() -> int:
            rev[0] += 1
            return rev[0]

        policy = policy_for("periodic", 0.05, loop.time())
        assert isinstance(policy, Periodic)
        ac = AutoCompactor(policy, revision, lambda: leader[0], compact)
        ac.start()
        await asyncio.sleep(0.2)
        assert calls == []  # a follower samples but never compacts
        leader[0] = True
        await asyncio.wait_for(enough.wait(), 10)
        await ac.stop()
        assert calls == sorted(calls) and len(set(calls)) >= 2  # moves on after errors too
        assert policy.revs and calls[-1] < policy.revs[-1]  # always a revision from the past

    asyncio.run(main())


def test_cluster_compacts_by_itself() -> None:
    """Three members with a 1 s retention: history older than that goes away
    on every member without anyone calling Compact."""
    c = Cluster(3, ["--auto-compaction-retention", "1s"]).start()
    try:
        kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(c.nodes[0].endpoint))
        first = kv.Put(rpc_pb2.PutRequest(key=b"ac", value=b"0"), timeout=10).header.revision
        deadline = time.monotonic() + 60
        compacted = False
        i = 0
        while not compacted and time.monotonic() < deadline:
            i += 1
            kv.Put(rpc_pb2.PutRequest(key=b"ac", value=b"%d" % i), timeout=10)
            try:
                kv.Range(rpc_pb2.RangeRequest(key=b"ac", revision=first), timeout=10)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.OUT_OF_RANGE, e
                assert e.details() == errors.COMPACTED.message
                compacted = True
            time.sleep(0.05)
        assert compacted, "no auto compaction within 60 s"
        for n in c.nodes:  # every member compacted (the same request went through Raft)
            other = rpc_pb2_grpc.KVStub(grpc.insecure_channel(n.endpoint))
            with pytest.raises(grpc.RpcError) as err:
                other.Range(rpc_pb2.RangeRequest(key=b"ac", revision=first, serializable=True), timeout=10)
            assert err.value.details() == errors.COMPACTED.message
        assert kv.Range(rpc_pb2.RangeRequest(key=b"ac"), timeout=10).kvs[0].value == b"%d" % i
    finally:
        c.close()
