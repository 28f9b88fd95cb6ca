"""Fast fault-injection tests for the normal test run.

The system under test is tests.faults.cluster.DEFAULT_SYSTEM, or
$KVSTORE_FAULT_SYSTEM (etcd | kvstore).  $KVSTORE_FAULT_TIME sets the length
of each short run (default 12 s).  The long version is
``python -m tests.faults --time 600`` (see tests/faults/run.py).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.faults.cluster import NS_PREFIX, Cluster, default_system
from tests.faults.run import run, unavailable

SYSTEM = default_system()
_reason = unavailable(SYSTEM)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_reason is not None, reason=f"{SYSTEM}: {_reason}")]
RUN_TIME = float(os.environ.get("KVSTORE_FAULT_TIME", "12"))


def _our_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def _eventually(fn, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return fn()
        time.sleep(0.2)


def test_harness_partition_kill_pause_membership_and_cleanup() -> None:
    """Faults do what they claim, clients reach every node, and nothing is left behind."""
    import grpc

    from kvstore.pb import rpc_pb2, rpc_pb2_grpc
    from tests.faults.linearizability import Get, Op, Put, check

    c = Cluster(SYSTEM, 3)
    try:
        c.start()
        stubs = {n.name: rpc_pb2_grpc.KVStub(grpc.insecure_channel(n.endpoint)) for n in c.nodes}

        def put(node: str, value: bytes) -> bool:
            stubs[node].Put(rpc_pb2.PutRequest(key=b"/h/k", value=value), timeout=5)
            return True

        def local_read(node: str) -> bytes | None:
            r = stubs[node].Range(rpc_pb2.RangeRequest(key=b"/h/k", serializable=True), timeout=2)
            return r.kvs[0].value if r.kvs else None

        lead = c.leader()
        assert lead is not None
        put(lead.name, b"a")
        for n in c.nodes:
            assert _eventually(lambda name=n.name: local_read(name) == b"a")

        # Cut a follower off: the majority goes on, the follower's local state
        # stays behind, and the client still reaches it.
        lone = next(n for n in c.nodes if n is not lead)
        c.isolate(lone)
        t0 = time.monotonic()
        _eventually(lambda: put(lead.name, b"b"))
        t1 = time.monotonic()
        time.sleep(1.0)
        t2 = time.monotonic()
        stale = local_read(lone.name)
        t3 = time.monotonic()
        assert stale == b"a"
        assert c.status(lone) is not None
        # That read is exactly what the checker must reject.
        history = [Op(0, 0, 1, Put("k", "a")), Op(0, t0, t1, Put("k", "b")),
                   Op(1, t2, t3, Get("k"), stale.decode())]
        assert check(history).status == "illegal"
        c.heal()
        assert _eventually(lambda: local_read(lone.name) == b"b")

        # SIGKILL and restart on the same data dir; SIGSTOP/SIGCONT.
        c.kill(lone)
        assert not lone.alive
        put(lead.name, b"c")
        c.restart(lone)
        c.wait_healthy()
        assert _eventually(lambda: local_read(lone.name) == b"c")
        c.pause(lone)
        with pytest.raises(grpc.RpcError):
            local_read(lone.name)
        c.resume(lone)
        assert _eventually(lambda: local_read(lone.name) == b"c")

        # Remove a member and add it back with an empty data dir.
        c.member_remove(lone)
        assert lone.name not in c.member_ids()
        c.member_add(lone)
        c.wait_healthy()
        # Listed by name once it has published its attributes ("" until then).
        assert _eventually(lambda: lone.name in c.member_ids())
        assert _eventually(lambda: local_read(lone.name) == b"c")
    finally:
        c.close()
    assert not _our_namespaces(c.prefix)
    assert not any(n.alive for n in c.nodes)
    assert not os.path.exists(c.run_dir)


@pytest.mark.parametrize("nodes,nemesis", [
    (3, "all"),
    (5, "kill-leader,isolate-leader,split,partition-minority,pause"),
])
def test_short_fault_run(nodes: int, nemesis: str) -> None:
    """A short run with faults is linearizable, loses nothing and watchers see everything."""
    res = run(SYSTEM, duration=RUN_TIME, nodes=nodes, nemesis=nemesis, clients=5,
              check_timeout=120, log=print)
    assert res.ok, f"{res.summary}\nrun dir kept: {res.run_dir}"
    assert res.counts.get("ok", 0) > 0
    assert not _our_namespaces(NS_PREFIX + f"{os.getpid()}-")
