"""The Watch service through real gRPC stubs against a real single-member
kvstore (Raft, MVCC on LMDB, apply loop) run in-process, plus etcdctl and a
differential run of the same scenario against real etcd 3.4.

No timing assertions: waits are "until a condition holds", bounded by a
generous timeout that only turns a hang into a failure.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import grpc
import pytest

from kvstore.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.procs import free_ports
from tests.test_watch_hub import check_stream

pytest.importorskip("kvstore.mvcc.store", reason="the MVCC store has not landed yet")

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
WAIT = 20.0  # seconds before a wait counts as a hang


# ------------------------------------------------------------------ servers
@contextlib.asynccontextmanager
async def kvstore_server(*extra: str, progress_interval: float | None = None):
    """A one-member kvstore in this event loop: yields (KvServer, endpoint)."""
    from kvstore.api import add_services
    from kvstore.config import parse
    from kvstore.server import KvServer

    root = tempfile.mkdtemp(prefix="kvstore-watch-")
    cp, pp, hp = free_ports(3)
    cfg = parse([
        "--name", "n1", "--data-dir", os.path.join(root, "n1"),
        "--listen-client-urls", f"http://127.0.0.1:{cp}",
        "--listen-peer-urls", f"http://127.0.0.1:{pp}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
        "--initial-cluster", f"n1=http://127.0.0.1:{pp}",
        "--listen-client-http-urls", f"http://127.0.0.1:{hp}",
        "--heartbeat-interval", "20", "--election-timeout", "200",
        *extra,
    ], environ={})
    if progress_interval is not None:
        cfg.watch_progress_notify_interval = progress_interval
    server = KvServer(cfg)
    from kvstore.rpc.server import RpcServer

    gs = RpcServer(max_receive_message_length=cfg.max_request_bytes + 512 * 1024)
    started = False
    try:
        await server.start()
        started = True
        add_services(gs, server)
        await gs.listen(f"http://127.0.0.1:{cp}")
        endpoint = f"127.0.0.1:{cp}"
        async with grpc.aio.insecure_channel(endpoint) as ch:
            await put_until_ready(rpc_pb2_grpc.KVStub(ch))
        yield server, endpoint
    finally:
        await gs.stop(None)
        if started:
            await server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def etcd_server(*extra: str):
    """Real etcd 3.4 as a subprocess, killed by PID: yields its endpoint."""
    root = tempfile.mkdtemp(prefix="etcd-watch-")
    cp, pp = free_ports(2)
    proc = subprocess.Popen(
        [ETCD, "--name", "e1", "--data-dir", os.path.join(root, "e1"),
         "--listen-client-urls", f"http://127.0.0.1:{cp}", "--advertise-client-urls", f"http://127.0.0.1:{cp}",
         "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-cluster", f"e1=http://127.0.0.1:{pp}", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"127.0.0.1:{cp}"
        async with grpc.aio.insecure_channel(endpoint) as ch:
            await put_until_ready(rpc_pb2_grpc.KVStub(ch))
        yield endpoint
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)


async def put_until_ready(kv) -> None:
    """The first write (key "ready", revision 2) once the member serves."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        try:
            await kv.Put(rpc_pb2.PutRequest(key=b"ready", value=b"1"), timeout=2)
            return
        except grpc.aio.AioRpcError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------- client
class WatchClient:
    """One Watch stream; every response is recorded in ``responses``."""

    def __init__(self, channel: grpc.aio.Channel, metadata=None) -> None:
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch(metadata=metadata)
        self.responses: list[rpc_pb2.WatchResponse] = []
        self._changed = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for r in self.call:
                self.responses.append(r)
                self._changed.set()
        except grpc.aio.AioRpcError as e:
            self.error = e
        finally:
            self._changed.set()

    async def create(self, **kw) -> None:
        await self.call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(**kw)))

    async def cancel(self, watch_id: int) -> None:
        await self.call.write(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id)))

    async def progress(self) -> None:
        await self.call.write(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    async def until(self, pred, timeout: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred(self.responses):
            if self.task.done() and not pred(self.responses):
                raise AssertionError(f"stream ended ({self.error!r}) before the condition held")
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"condition not met; got {len(self.responses)} responses")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def events(self, wid: int) -> list[kv_pb2.Event]:
        return [e for r in self.responses if r.watch_id == wid and not r.created for e in r.events]

    def close(self) -> None:
        self.call.cancel()
        self.task.cancel()


def n_created(rs) -> int:
    return sum(1 for r in rs if r.created)


def kvtuple(e: kv_pb2.Event):
    p = e.prev_kv if e.HasField("prev_kv") else None
    return (
        kv_pb2.Event.EventType.Name(e.type), e.kv.key, e.kv.value, e.kv.create_revision, e.kv.mod_revision,
        e.kv.version, e.kv.lease, p and (p.key, p.value, p.mod_revision, p.version),
    )


# --------------------------------------------------------- differential run
async def run_scenario(endpoint: str, wait_complete) -> dict:
    """The same requests on a fresh server (revision 2 = the "ready" put)."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        P = lambda k, v: kv.Put(rpc_pb2.PutRequest(key=k, value=v))  # noqa: E731
        await P(b"a", b"1")  # 3
        for i in range(5):
            await P(b"k%d" % i, b"v%d" % i)  # 4..8
        await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k0"))  # 9
        await P(b"old", b"1")  # 10
        await P(b"old", b"2")  # 11
        await kv.Compact(rpc_pb2.CompactionRequest(revision=3, physical=True))
        w = WatchClient(ch)
        await w.create(key=b"k", range_end=b"l", start_revision=4, prev_kv=True)  # 0: replay
        await w.create(key=b"k1", watch_id=7)  # 7
        await w.create(key=b"k")  # 1
        await w.create(key=b"k1", watch_id=7)  # duplicate
        await w.create(key=b"k", range_end=b"a")  # empty range
        await w.create(key=b"", range_end=b"\0", start_revision=11)  # 2: all keys from 11
        await w.create(key=b"k1", start_revision=14)  # 3: future
        await w.create(key=b"k", range_end=b"\0", filters=[rpc_pb2.WatchCreateRequest.NOPUT], prev_kv=True)  # 4
        await w.create(key=b"k2", filters=[rpc_pb2.WatchCreateRequest.NODELETE], start_revision=5)  # 5
        await w.create(key=b"old", start_revision=2)  # 6: compacted
        await w.create(key=b"f", range_end=b"g", fragment=True)  # 8
        await w.until(lambda rs: n_created(rs) == 11)
        await P(b"k1", b"x")  # 12
        await P(b"k1", b"y")  # 13
        await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k1", prev_kv=True))  # 14
        await kv.Txn(rpc_pb2.TxnRequest(success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k2", value=b"t")),
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k3", value=b"t")),
            rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"k4")),
        ]))  # 15
        await P(b"k1", b"z")  # 16
        await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k", range_end=b"l"))  # 17
        # etcd may send a cancel before events already queued for that watch
        # (and then never sends them): cancel 7 once its events arrived.
        await w.until(lambda rs: len(w.events(7)) == 5)
        await w.cancel(7)
        await w.cancel(99)  # unknown: no response
        await wait_complete(w)
        w.close()
        out: dict = {"control": [], "events": {}, "cancels": {}}
        for r in w.responses:
            if r.watch_id == -1:
                out["control"].append((r.created, r.canceled, r.cancel_reason, r.header.revision))
            elif r.created:
                out["control"].append((r.watch_id, r.header.revision))
            elif r.canceled:
                out["cancels"][r.watch_id] = r.compact_revision
            elif r.events:
                assert r.header.revision >= r.events[-1].kv.mod_revision
                out["events"].setdefault(r.watch_id, []).extend(kvtuple(e) for e in r.events)
        check_stream([r for r in w.responses if r.watch_id != -1 or r.created])
        return out


@pytest.mark.skipif(not ETCD, reason="etcd (Debian etcd-server) is not installed")
def test_same_responses_as_etcd():
    async def main():
        async def ours_complete(w: WatchClient):
            await w.progress()  # ours answers only once every event before it was sent
            await w.until(lambda rs: any(r.watch_id == -1 and not r.created for r in rs))
            await w.until(lambda rs: any(r.canceled and r.watch_id == 7 for r in rs))

        async with kvstore_server() as (_, endpoint):
            ours = await run_scenario(endpoint, ours_complete)

        want_events = sum(len(v) for v in ours["events"].values())

        async def etcd_complete(w: WatchClient):
            await w.until(lambda rs: sum(len(r.events) for r in rs) >= want_events
                          and any(r.canceled and r.watch_id == 7 for r in rs)
                          and any(r.canceled and r.compact_revision for r in rs))
            await w.progress()  # etcd 3.4 answers at once (#15220): only its revision is compared
            await w.until(lambda rs: any(r.watch_id == -1 and not r.created for r in rs))

        async with etcd_server() as endpoint:
            theirs = await run_scenario(endpoint, etcd_complete)
        return ours, theirs

    ours, theirs = asyncio.run(main())
    assert ours["events"] == theirs["events"]
    assert ours["cancels"] == theirs["cancels"] == {6: 3, 7: 0}
    assert ours["control"] == theirs["control"]
    # spot checks of what was compared
    assert [e[0] for e in ours["events"][4]] == ["DELETE"] * 5  # NOPUT, with prev_kv
    assert ours["events"][3][0][4] == 14  # the future watch starts at its revision
    assert ("mvcc: duplicate watch ID provided on the WatchStream" in {c[2] for c in ours["control"] if len(c) == 4})


# ------------------------------------------------------------- kvstore only
def test_created_and_events_carry_full_headers():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            w = WatchClient(ch)
            await w.create(key=b"p/", range_end=b"p0")
            await w.until(lambda rs: n_created(rs) == 1)
            await kv.Put(rpc_pb2.PutRequest(key=b"p/a", value=b"1"))
            await w.until(lambda rs: len(rs) == 2)
            w.close()
            return server, w.responses

    server, rs = asyncio.run(main())
    for r in rs:
        assert r.header.cluster_id == server.cluster_id and r.header.member_id == server.member_id
        assert r.header.raft_term >= 2
    assert rs[1].header.revision == rs[1].events[0].kv.mod_revision


def test_replay_then_live_under_concurrent_writes():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            hub = server.watch_hub
            hub.chunk_events = 7
            hub.queue_max_items = 8
            kv = rpc_pb2_grpc.KVStub(ch)
            n = 300

            async def writer():
                for i in range(n):
                    if i % 10 == 9:
                        await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"w/%d" % (i % 13)))
                    else:
                        await kv.Put(rpc_pb2.PutRequest(key=b"w/%d" % (i % 13), value=b"%d" % i))

            wt = asyncio.ensure_future(writer())
            clients = []
            for start in (1, 40, 0, 150, 0):
                while server.store.current_revision < start:
                    await asyncio.sleep(0.01)
                c = WatchClient(ch)
                await c.create(key=b"w/", range_end=b"w0", start_revision=start, prev_kv=True)
                clients.append((start, c))
                await asyncio.sleep(0.05)
            await wt
            final = server.store.current_revision
            for _, c in clients:
                await c.progress()
                await c.until(lambda rs: any(r.watch_id == -1 and not r.created for r in rs))
            out = []
            for start, c in clients:
                first = start or c.responses[0].header.revision + 1
                want, _ = server.store.events(first, None, b"w/", b"w0", prev_kv=True)
                out.append((c.responses, want, final))
                c.close()
            return out

    for responses, want, final in asyncio.run(main()):
        got = check_stream(responses)[0]
        assert [kvtuple(e) for e in got] == [kvtuple(e) for e in want]
        assert got and got[-1].kv.mod_revision == final
        assert responses[-1].watch_id == -1 and responses[-1].header.revision == final


def test_slow_reader_is_bounded_then_catches_up():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            hub = server.watch_hub
            hub.queue_max_items = 16
            hub.queue_max_bytes = 1 << 20  # a waiting response takes in later revisions: bound its bytes
            kv = rpc_pb2_grpc.KVStub(ch)
            stub = rpc_pb2_grpc.WatchStub(ch)
            call = stub.Watch()  # nobody reads it for now
            await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"s/", range_end=b"s0")))
            fast = WatchClient(ch)
            await fast.create(key=b"s/", range_end=b"s0")
            await fast.until(lambda rs: n_created(rs) == 1)
            big = b"x" * 50_000
            max_queued, max_bytes, went_unsynced = 0, 0, False
            for i in range(200):
                await kv.Put(rpc_pb2.PutRequest(key=b"s/%d" % (i % 5), value=big + b"%d" % i))
                for s in hub.streams:
                    max_queued = max(max_queued, s.queued)
                    max_bytes = max(max_bytes, s.queued_bytes)
                went_unsynced |= bool(hub.unsynced)
            final = server.store.current_revision
            await fast.until(lambda rs: sum(len(r.events) for r in rs) == 200)
            got = []
            while sum(len(r.events) for r in got) < 200:
                got.append(await asyncio.wait_for(call.read(), WAIT))
            call.cancel()
            fast.close()
            return max_queued, max_bytes, went_unsynced, got, fast.responses, final

    max_queued, max_bytes, went_unsynced, slow, fast, final = asyncio.run(main())
    assert went_unsynced  # the slow watcher left the synced set...
    assert max_queued <= 16 + 2 and max_bytes <= (1 << 20) + 60_000  # ...instead of queueing without bound
    for rs in (slow, fast):
        evs = check_stream(rs)[0]
        assert [e.kv.mod_revision for e in evs] == list(range(final - 199, final + 1))
        assert [e.kv.value[-3:].lstrip(b"x") for e in evs] == [b"%d" % i for i in range(200)]


def test_compaction_cancels_with_compact_revision():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(5):
                await kv.Put(rpc_pb2.PutRequest(key=b"c", value=b"%d" % i))  # 3..7
            await kv.Compact(rpc_pb2.CompactionRequest(revision=6))
            w = WatchClient(ch)
            await w.create(key=b"c", start_revision=4)
            await w.create(key=b"c", start_revision=7)
            await w.until(lambda rs: any(r.canceled for r in rs) and len(w.events(1)) == 1)
            w.close()
            return w.responses

    rs = asyncio.run(main())
    cancel = [r for r in rs if r.canceled]
    assert [(r.watch_id, r.compact_revision, r.created) for r in cancel] == [(0, 6, False)]
    assert cancel[0].cancel_reason == "etcdserver: mvcc: required revision has been compacted"
    assert check_stream(rs)[1][0].kv.mod_revision == 7  # created first, then the events


def test_progress_request_and_progress_notify():
    async def main():
        async with kvstore_server(progress_interval=0.2) as (server, endpoint), \
                grpc.aio.insecure_channel(endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            w = WatchClient(ch)
            await w.create(key=b"idle", progress_notify=True)
            await w.create(key=b"busy")
            await w.until(lambda rs: n_created(rs) == 2)
            await kv.Put(rpc_pb2.PutRequest(key=b"other", value=b"1"))
            await w.until(lambda rs: sum(1 for r in rs if r.watch_id == 0 and not r.created) >= 2)
            await w.progress()
            await w.until(lambda rs: any(r.watch_id == -1 for r in rs))
            w.close()
            return server.store.current_revision, w.responses

    rev, rs = asyncio.run(main())
    ticks = [r for r in rs if r.watch_id == 0 and not r.created]
    assert all(not r.events and not r.canceled for r in ticks)
    assert ticks[-1].header.revision == rev
    assert not any(r.watch_id == 1 and not r.created for r in rs)  # no progress_notify, no ticks
    prog = [r for r in rs if r.watch_id == -1]
    assert len(prog) == 1 and prog[0].header.revision == rev and not prog[0].created


def test_fragment_large_responses():
    async def main():
        async with kvstore_server("--max-request-bytes", "300000") as (server, endpoint), \
                grpc.aio.insecure_channel(endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(4):
                await kv.Put(rpc_pb2.PutRequest(key=b"f%d" % i, value=b"x" * 250_000))  # 3..6
            w = WatchClient(ch)
            await w.create(key=b"f", range_end=b"g", start_revision=3, fragment=True)
            await w.create(key=b"f", range_end=b"g", start_revision=3)
            await w.until(lambda rs: len(w.events(0)) == 4 and len(w.events(1)) == 4)
            w.close()
            return w.responses

    rs = asyncio.run(main())
    # etcd: fragment while the response reaches max-request-bytes + 512 KiB
    assert [(len(r.events), r.fragment) for r in rs if r.watch_id == 0 and r.events] == [(3, True), (1, False)]
    assert [(len(r.events), r.fragment) for r in rs if r.watch_id == 1 and r.events] == [(4, False)]
    check_stream(rs)


def test_require_leader_metadata():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            md = (("hasleader", "true"),)
            old = WatchClient(ch, metadata=md)
            await old.create(key=b"x")
            await old.until(lambda rs: n_created(rs) == 1)
            server.has_leader = lambda: False  # as if the leader were lost
            plain = WatchClient(ch)
            await plain.create(key=b"x")
            await plain.until(lambda rs: n_created(rs) == 1)
            # Refused when the stream opens, before any request: a request
            # written meanwhile would race the status in the grpc C-core client
            # (its failed write can turn the status into INTERNAL).
            new = WatchClient(ch, metadata=md)
            await asyncio.wait_for(new.task, WAIT)
            await asyncio.wait_for(old.task, WAIT)  # after 3 election timeouts without leader
            plain_alive = not plain.task.done()
            plain.close()
            del server.has_leader
            return new.error, old.error, plain_alive

    new_err, old_err, plain_alive = asyncio.run(main())
    for e in (new_err, old_err):
        assert e is not None and e.code() == grpc.StatusCode.UNAVAILABLE and e.details() == "etcdserver: no leader"
    assert plain_alive  # without the metadata etcd 3.4 keeps serving the watch


def test_half_close_keeps_watching_and_cancel_frees_the_stream():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            w = WatchClient(ch)
            await w.create(key=b"h")
            await w.until(lambda rs: n_created(rs) == 1)
            await w.call.done_writing()
            await kv.Put(rpc_pb2.PutRequest(key=b"h", value=b"1"))
            await w.until(lambda rs: len(w.events(0)) == 1)
            assert len(server.watch_hub.streams) == 1
            w.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while server.watch_hub.streams and loop.time() < deadline:
                await asyncio.sleep(0.02)
            return len(server.watch_hub.streams), server.watch_hub.synced_count

    assert asyncio.run(main()) == (0, 0)


def test_thousand_watchers_on_a_prefix():
    async def main():
        async with kvstore_server() as (server, endpoint), grpc.aio.insecure_channel(endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            clients = [WatchClient(ch) for _ in range(10)]
            for c in clients:
                for _ in range(100):
                    await c.create(key=b"cfg/", range_end=b"cfg0")
            for c in clients:
                await c.until(lambda rs: n_created(rs) == 100)
            for i in range(20):
                await kv.Put(rpc_pb2.PutRequest(key=b"cfg/%d" % (i % 3), value=b"v%d" % i))
            for c in clients:
                await c.until(lambda rs: sum(len(r.events) for r in rs) == 2000)
                c.close()
            return [c.responses for c in clients]

    for rs in asyncio.run(main()):
        got = check_stream(rs)
        assert len(got) == 100 and all(len(v) == 20 for v in got.values())


# ------------------------------------------------------- 3-process cluster
def test_watch_on_followers_across_a_leader_change():
    """Watches on every member (from the past and live) see every revision
    once, in order, while the leader is killed and writes move to a new one."""
    from tests.procs import Cluster

    async def status(endpoint):
        async with grpc.aio.insecure_channel(endpoint) as ch:
            return await rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=2)

    async def leader(c):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            for n in c.nodes:
                if n.alive:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        st = await status(n.endpoint)
                        if st.leader and st.leader == st.header.member_id:
                            return n
            if loop.time() > deadline:
                raise AssertionError("no leader")
            await asyncio.sleep(0.05)

    async def put(c, key, value):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            for n in c.nodes:
                if not n.alive:
                    continue
                try:
                    async with grpc.aio.insecure_channel(n.endpoint) as ch:
                        r = await rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=key, value=value), timeout=3)
                        return r.header.revision
                except grpc.aio.AioRpcError:
                    pass  # maybe applied: the key/value pairs stay unique, duplicates are visible
            if loop.time() > deadline:
                raise AssertionError("no write succeeded")
            await asyncio.sleep(0.05)

    async def main():
        with Cluster(3) as c:
            c.start()
            first = await put(c, b"lc/0", b"0")
            old = await leader(c)
            followers = [n for n in c.nodes if n is not old]
            chans = [grpc.aio.insecure_channel(n.endpoint) for n in followers]
            clients = []
            for ch in chans:
                for start in (first, 0):
                    w = WatchClient(ch)
                    await w.create(key=b"lc/", range_end=b"lc0", start_revision=start)
                    await w.until(lambda rs: n_created(rs) == 1)
                    clients.append((start, w))
            for i in range(1, 40):
                if i == 15:
                    old.kill()
                await put(c, b"lc/%d" % (i % 7), b"%d" % i)
            new = await leader(c)
            final = await put(c, b"lc/end", b"end")
            for _, w in clients:
                await w.until(lambda rs: any(e.kv.key == b"lc/end" for r in rs for e in r.events))
            for w in (w for _, w in clients):
                w.close()
            for ch in chans:
                await ch.close()
            return old, new, first, final, clients

    old, new, first, final, clients = asyncio.run(main())
    assert old is not new
    histories = []
    for start, w in clients:
        evs = check_stream(w.responses)[0]
        revs = [e.kv.mod_revision for e in evs]
        assert revs[-1] == final
        if start:
            assert revs == list(range(first, final + 1))  # only these puts write: no gap
        histories.append([(e.kv.mod_revision, e.kv.key, e.kv.value) for e in evs])
    # the watches from `first` saw the same history on both followers, the
    # live ones a suffix of it
    full = histories[0]
    assert histories[2] == full
    for h in histories[1::2]:
        assert full[len(full) - len(h):] == h
    assert [v for _, _, v in full if v != b"end"][:1] == [b"0"]


# ------------------------------------------------------------------- etcdctl
async def etcdctl_watch_until(endpoint: str, args: list[str], want_lines: int, action) -> tuple[list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        ETCDCTL, "--endpoints", endpoint, "watch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
    lines: list[str] = []
    try:
        await action()
        while len(lines) < want_lines:
            line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
            if not line:
                break
            lines.append(line.decode().rstrip("\n"))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    err = (await proc.stderr.read()).decode()
    return lines, err


async def etcdctl_session(endpoint: str) -> tuple[list[str], str]:
    """etcdctl watch of a prefix from a past revision with --prev-kv, then of a
    compacted revision, on a fresh server (revision 2 = the "ready" put)."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        await kv.Put(rpc_pb2.PutRequest(key=b"e/1", value=b"one"))  # 3

        async def writes():
            await kv.Put(rpc_pb2.PutRequest(key=b"e/1", value=b"uno"))  # 4
            await kv.Put(rpc_pb2.PutRequest(key=b"e/2", value=b"two"))  # 5
            await kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"e/", range_end=b"e0"))  # 6

        lines, _ = await etcdctl_watch_until(endpoint, ["--prefix", "e/", "--rev", "3", "--prev-kv"], 21, writes)
        await kv.Compact(rpc_pb2.CompactionRequest(revision=5))

        async def nothing():
            pass

        _, err = await etcdctl_watch_until(endpoint, ["e/1", "--rev", "2"], 1, nothing)
        return lines, err


@pytest.mark.skipif(not ETCDCTL, reason="etcdctl (Debian etcd-client) is not installed")
def test_etcdctl_watch():
    async def main():
        async with kvstore_server() as (_, endpoint):
            ours = await etcdctl_session(endpoint)
        theirs = None
        if ETCD:
            async with etcd_server() as endpoint:
                theirs = await etcdctl_session(endpoint)
        return ours, theirs

    (lines, err), theirs = asyncio.run(main())
    assert lines == [
        "PUT", "e/1", "one",
        "PUT", "e/1", "one", "e/1", "uno",
        "PUT", "e/2", "two",
        "DELETE", "e/1", "uno", "e/1", "",
        "DELETE", "e/2", "two", "e/2", "",
    ]
    assert "watch was canceled (etcdserver: mvcc: required revision has been compacted)" in err
    if theirs is not None:
        assert (lines, err) == theirs


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
