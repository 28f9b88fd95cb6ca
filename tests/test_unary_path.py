"""The unary request path's machinery, without a cluster: the read barrier
(KvServer.read_barrier; the rounds themselves are raft.node's, see
tests/test_node.py), the proposal timeout, the per-RPC counters and the
one-table method registration (kvstore.api.add_services)."""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvstore import errors
from kvstore.config import parse
from kvstore.errors import EtcdError
from kvstore.metrics import Metrics
from kvstore.server import KvServer
from raft.types import ProposalDropped
from tests.procs import free_ports


class FakeNode:
    """Read indexes and applied index under the test's control."""

    def __init__(self) -> None:
        self.leader = 1
        self.term = 2
        self.applied = 100
        self.asks: list[asyncio.Future[int]] = []
        self.apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.leader_changed = asyncio.Event()

    def read_index(self) -> asyncio.Future[int]:
        f: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.asks.append(f)
        return f

    def wait_applied(self, index: int) -> asyncio.Future[None]:
        f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.applied >= index:
            f.set_result(None)
        else:
            self.apply_waiters.append((index, f))
        return f

    def apply(self, index: int) -> None:
        self.applied = index
        for i, f in self.apply_waiters:
            if i <= index and not f.done():
                f.set_result(None)


def new_server() -> tuple[KvServer, FakeNode]:
    """A KvServer that is never started (no files, no sockets), on a FakeNode."""
    cfg = parse([
        "--name", "n1", "--data-dir", "/nonexistent/n1",
        "--initial-cluster", "n1=http://127.0.0.1:1",
        "--initial-advertise-peer-urls", "http://127.0.0.1:1",
    ], environ={})
    s = KvServer(cfg)
    node = FakeNode()
    s.node = node  # type: ignore[assignment]
    return s, node


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def run(coro_fn) -> None:
    asyncio.run(coro_fn())


def test_read_barrier_waits_until_applied() -> None:
    async def main() -> None:
        s, node = new_server()
        t = asyncio.ensure_future(s.read_barrier())
        await turns()
        node.asks[0].set_result(120)
        await turns()
        assert not t.done()
        node.apply(120)
        await t

    run(main)


def test_dropped_read_index_is_asked_of_the_new_leader() -> None:
    async def main() -> None:
        s, node = new_server()
        t = asyncio.ensure_future(s.read_barrier())
        await turns()
        node.asks[0].set_exception(ProposalDropped("leader changed"))
        await turns()
        assert len(node.asks) == 2
        node.asks[1].set_result(10)
        await t

    run(main)


def test_read_barrier_times_out() -> None:
    async def main() -> None:
        s, node = new_server()
        with pytest.raises(EtcdError) as ei:
            await s.read_barrier(timeout=0.05)
        assert ei.value is errors.TIMEOUT
        node.leader = 0  # no leader until the deadline: etcd's "no leader"
        with pytest.raises(EtcdError) as ei:
            await s.read_barrier(timeout=0.05)
        assert ei.value is errors.NO_LEADER

    run(main)


def test_cancelled_reader_leaves_the_others() -> None:
    async def main() -> None:
        s, node = new_server()
        a = asyncio.ensure_future(s.read_barrier())
        b = asyncio.ensure_future(s.read_barrier())
        await turns()
        a.cancel()
        await turns()
        for f in node.asks:
            if not f.done():
                f.set_result(10)
        await b
        assert a.cancelled()

    run(main)


def test_proposal_wait_times_out() -> None:
    async def main() -> None:
        s, _ = new_server()
        fut = asyncio.get_running_loop().create_future()
        s._waiters[7] = fut
        with pytest.raises(EtcdError) as ei:
            await s._wait(7, fut, 0.01)
        assert ei.value is errors.TIMEOUT and 7 not in s._waiters

    run(main)


def test_rpc_counters_render_as_go_grpc_prometheus() -> None:
    m = Metrics()
    c = m.rpc_counts("etcdserverpb.KV", "Range")
    c.started += 3
    c.ok += 2
    c.handled_code("InvalidArgument")
    m.rpc_started("etcdserverpb.KV", "Put")  # started, not yet handled
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    started = {(s.labels["grpc_method"], s.labels["grpc_type"], s.labels["grpc_service"]): s.value
               for s in fams["grpc_server_started"].samples}
    assert started == {("Range", "unary", "etcdserverpb.KV"): 3, ("Put", "unary", "etcdserverpb.KV"): 1}
    handled = {(s.labels["grpc_method"], s.labels["grpc_code"]): s.value for s in fams["grpc_server_handled"].samples}
    assert handled == {("Range", "OK"): 2, ("Range", "InvalidArgument"): 1}
    assert fams["grpc_server_handled"].type == "counter"


def test_every_method_in_one_generic_handler() -> None:
    """No registered methods (grpc.aio waits on a future per registered
    method for every call), every etcd method found, each authorised."""
    from kvstore.api import MethodTable, add_services
    from kvstore.pb import rpc_pb2, v3election_pb2, v3lock_pb2

    class Recorder:
        def __init__(self) -> None:
            self.generic: list[Any] = []

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            self.generic.extend(handlers)

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    async def main() -> None:
        d = tempfile.mkdtemp(prefix="kvstore-unary-")
        pp, = free_ports(1)
        peer = f"http://127.0.0.1:{pp}"
        s = KvServer(parse([
            "--name", "n1", "--data-dir", os.path.join(d, "n1"), "--listen-peer-urls", peer,
            "--initial-cluster", f"n1={peer}", "--initial-advertise-peer-urls", peer,
        ], environ={}))
        await s.start()
        rec = Recorder()
        try:
            add_services(rec, s)  # type: ignore[arg-type]
        finally:
            await s.stop()
            shutil.rmtree(d, ignore_errors=True)
        assert len(rec.generic) == 1 and isinstance(rec.generic[0], MethodTable)
        table = rec.generic[0]
        paths = [
            f"/{svc.full_name}/{m.name}"
            for mod in (rpc_pb2, v3lock_pb2, v3election_pb2)
            for svc in mod.DESCRIPTOR.services_by_name.values()
            for m in svc.methods
        ]
        assert sorted(table.handlers) == sorted(paths)
        rng = table.service(Details("/etcdserverpb.KV/Range")).unary_unary
        assert getattr(rng, "authorizes", False)  # a common.unary method: checks itself
        lock = table.service(Details("/v3lockpb.Lock/Lock")).unary_unary
        assert lock.__qualname__.startswith("_guard_unary")
        snap = table.service(Details("/etcdserverpb.Maintenance/Snapshot")).unary_stream
        assert snap.__qualname__.startswith("_guard_stream")
        assert table.service(Details("/etcdserverpb.KV/Nope")) is None

    run(main)
