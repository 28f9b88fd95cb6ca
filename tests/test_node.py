"""The asyncio driver with in-memory storage and network: ordering, batching,
ReadIndex, leader change."""
from __future__ import annotations

import asyncio
import random
from typing import Callable, Sequence

from raft.core import Config
from raft.node import READ_RETRY_TICKS, NodeOptions, RaftNode
from raft.storage import MemoryStorage
from raft.types import ConfChange, ConfChangeType, Entry, EntryType, Message, MsgType, Snapshot


class ListMachine:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.index = 0
        self.batches = 0

    def applied_index(self) -> int:
        return self.index

    def apply(self, entries: Sequence[Entry]) -> None:
        self.batches += 1
        for e in entries:
            if e.index <= self.index:
                continue
            if e.type == EntryType.NORMAL and e.data:
                self.data.append(e.data)
            self.index = e.index

    def restore(self, snapshot: Snapshot, data_path: str | None) -> None:
        raise AssertionError("no snapshots in this test")

    def checkpoint(self) -> None:
        pass


class CountingStorage(MemoryStorage):
    def __init__(self, voters):
        super().__init__(voters)
        self.syncs = 0

    def save(self, hard_state, entries, snapshot, sync=True):
        if sync:
            self.syncs += 1
        super().save(hard_state, entries, snapshot, sync)


class Net:
    """Delivers on the next loop turn, like a real transport; can cut nodes off."""

    def __init__(self) -> None:
        self.nodes: dict[int, RaftNode] = {}
        self.down: set[int] = set()
        self.hold: Callable[[Message], bool] = lambda m: False  # True: keep it in ``held``
        self.held: list[Message] = []
        self.sent: list[Message] = []

    def release(self, drop: bool = False) -> None:
        held, self.held = self.held, []
        if not drop:
            loop = asyncio.get_running_loop()
            for m in held:
                loop.call_soon(self.nodes[m.to].step, m)

    def transport(self, me: int) -> "Net._T":
        return Net._T(self, me)

    class _T:
        def __init__(self, net: "Net", me: int) -> None:
            self.net, self.me = net, me

        def send(self, messages: list[Message]) -> None:
            loop = asyncio.get_running_loop()
            for m in messages:
                if self.me in self.net.down or m.to in self.net.down:
                    continue
                self.net.sent.append(m)
                if self.net.hold(m):
                    self.net.held.append(m)
                    continue
                loop.call_soon(self.net.nodes[m.to].step, m)


async def make_cluster(n: int = 3):
    ids = list(range(1, n + 1))
    net = Net()
    machines, stores = {}, {}
    for i in ids:
        machines[i] = ListMachine()
        stores[i] = CountingStorage(ids)
        node = RaftNode(
            Config(i, election_tick=10, rng=random.Random(i)), stores[i], machines[i], net.transport(i),
            NodeOptions(tick_interval=0.01),
        )
        net.nodes[i] = node
    for node in net.nodes.values():
        await node.start()
    return net, machines, stores


async def wait_leader(net: Net, exclude: set[int] = frozenset()) -> RaftNode:
    for _ in range(1000):
        leaders = [n for i, n in net.nodes.items() if n.is_leader and i not in exclude and i not in net.down]
        if leaders:
            return leaders[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no leader elected")


async def wait_until(pred, what: str) -> None:
    for _ in range(2000):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_proposals_batch_and_replicate_in_order() -> None:
    async def main() -> None:
        net, machines, stores = await make_cluster()
        leader = await wait_leader(net)
        await wait_until(lambda: all(n.leader == leader.id for n in net.nodes.values()), "followers to know the leader")
        syncs_before = stores[leader.id].syncs
        for k in range(200):
            leader.propose(b"v%d" % k)
        want = [b"v%d" % k for k in range(200)]
        await wait_until(lambda: all(m.data == want for m in machines.values()), "all applied")
        # 200 proposals made in one loop turn are one append: far fewer fsyncs than proposals.
        assert stores[leader.id].syncs - syncs_before < 20
        # A follower's proposal is forwarded to the leader.
        follower = next(n for n in net.nodes.values() if not n.is_leader)
        follower.propose(b"from-follower")
        await wait_until(lambda: all(m.data[-1:] == [b"from-follower"] for m in machines.values()), "forwarded")
        for n in net.nodes.values():
            await n.stop()

    asyncio.run(main())


def test_read_index_sees_acknowledged_writes_and_batches() -> None:
    async def main() -> None:
        net, machines, _ = await make_cluster()
        leader = await wait_leader(net)
        await wait_until(lambda: all(n.leader == leader.id for n in net.nodes.values()), "followers")
        leader.propose(b"x")
        await wait_until(lambda: machines[leader.id].data == [b"x"], "leader applied")
        follower = next(n for n in net.nodes.values() if not n.is_leader)
        futs = [follower.read_index() for _ in range(50)]
        indexes = await asyncio.gather(*futs)
        assert len(set(indexes)) == 1, "50 concurrent reads share one ReadIndex round"
        await follower.wait_applied(indexes[0])
        assert machines[follower.id].data == [b"x"]
        for n in net.nodes.values():
            await n.stop()

    asyncio.run(main())


def test_new_leader_after_leader_is_cut_off_keeps_writes() -> None:
    async def main() -> None:
        net, machines, _ = await make_cluster()
        leader = await wait_leader(net)
        await wait_until(lambda: all(n.leader == leader.id for n in net.nodes.values()), "followers")
        leader.propose(b"before")
        await wait_until(lambda: all(m.data == [b"before"] for m in machines.values()), "replicated")
        net.down.add(leader.id)
        new = await wait_leader(net, exclude={leader.id})
        assert new.term > leader.term or new.id != leader.id
        new.propose(b"after")
        others = [i for i in net.nodes if i != leader.id]
        await wait_until(lambda: all(machines[i].data == [b"before", b"after"] for i in others), "new leader commits")
        net.down.clear()
        await wait_until(lambda: machines[leader.id].data == [b"before", b"after"], "old leader catches up")
        for n in net.nodes.values():
            await n.stop()

    asyncio.run(main())


def test_conf_change_adds_learner_through_driver() -> None:
    async def main() -> None:
        net, machines, _ = await make_cluster()
        leader = await wait_leader(net)
        await wait_until(lambda: all(n.leader == leader.id for n in net.nodes.values()), "followers")
        leader.propose(b"a")
        await wait_until(lambda: machines[leader.id].data == [b"a"], "applied")
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 9))
        await wait_until(lambda: 9 in leader.raft.prs and leader.raft.prs[9].is_learner, "learner added")
        assert sorted(leader.raft.voters) == [1, 2, 3]
        for n in net.nodes.values():
            await n.stop()

    asyncio.run(main())


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def known_leader_and_follower(net: Net) -> tuple[RaftNode, RaftNode]:
    leader = await wait_leader(net)
    await wait_until(lambda: all(n.leader == leader.id for n in net.nodes.values()), "followers")
    return leader, next(n for n in net.nodes.values() if not n.is_leader)


async def stop_all(net: Net) -> None:
    for n in net.nodes.values():
        await n.stop()


def test_one_read_round_in_flight_per_member() -> None:
    async def main() -> None:
        net, machines, _ = await make_cluster()
        leader, follower = await known_leader_and_follower(net)
        asks = lambda: [m for m in net.sent if m.type == MsgType.READ_INDEX and m.frm == follower.id]
        net.hold = lambda m: m.type == MsgType.READ_INDEX
        first = follower.read_index()
        await wait_until(lambda: len(net.held) == 1, "the first round to be asked")
        leader.propose(b"w")  # acknowledged after the first round started
        await wait_until(lambda: machines[leader.id].data == [b"w"], "the write applied")
        write_index = leader.applied
        later = [follower.read_index() for _ in range(10)]
        await settle()
        assert len(asks()) == 1, "no second round while one is in flight"
        net.hold = lambda m: False
        net.release()
        await first
        assert not any(f.done() for f in later), "the first round must not answer reads that came after it"
        later_indexes = await asyncio.gather(*later)
        assert len(asks()) == 2, "one more round served all ten later reads"
        assert len(set(later_indexes)) == 1 and later_indexes[0] >= write_index, "later reads see the write"
        await stop_all(net)

    asyncio.run(main())


def test_lost_read_round_is_asked_again() -> None:
    async def main() -> None:
        net, _, _ = await make_cluster()
        _, follower = await known_leader_and_follower(net)
        net.hold = lambda m: m.type == MsgType.READ_INDEX
        fut = follower.read_index()
        await wait_until(lambda: len(net.held) == 1, "the round to be asked")
        net.release(drop=True)  # lost on the way to the leader
        net.hold = lambda m: False
        assert await fut >= 1
        asks = [m for m in net.sent if m.type == MsgType.READ_INDEX]
        assert len(asks) == 2 and asks[0].context == asks[1].context, f"asked again after {READ_RETRY_TICKS} ticks"
        await stop_all(net)

    asyncio.run(main())


def test_late_ticker_drops_the_lease() -> None:
    """raft.node tells the core when its ticker is late (a stalled loop or a
    paused process), so a lease counted in ticks is not stretched."""
    import types

    from raft.node import NodeOptions, RaftNode

    calls: list[str] = []
    loop = types.SimpleNamespace(time=lambda: 100.0)
    fake = types.SimpleNamespace(
        _lease_reads=True, _loop=loop, _tick_due=100.0, opts=NodeOptions(tick_interval=0.1),
        raft=types.SimpleNamespace(clock_stalled=lambda: calls.append("stalled")),
    )
    RaftNode._check_clock(fake)  # on time
    fake._tick_due = 99.96
    RaftNode._check_clock(fake)  # less than half a tick late
    assert calls == []
    fake._tick_due = 99.9
    RaftNode._check_clock(fake)
    assert calls == ["stalled"]
    fake._lease_reads = False
    RaftNode._check_clock(fake)
    assert calls == ["stalled"]


def test_small_batches_sync_on_the_loop_large_ones_on_the_storage_thread() -> None:
    """A Ready of a few entries is synced inline (handing it to the storage
    thread and back costs more wake-up latency than the fsync); a large batch
    goes to the storage thread so the loop keeps serving meanwhile."""
    import threading

    class ThreadedStorage(CountingStorage):
        thread_safe = True

        def __init__(self, voters):
            super().__init__(voters)
            self.where: list[tuple[int, bool]] = []  # (entries, on the loop thread) per synced save

        def save(self, hard_state, entries, snapshot, sync=True):
            if sync and entries:
                self.where.append((len(entries), threading.current_thread() is threading.main_thread()))
            super().save(hard_state, entries, snapshot, sync)

    async def main() -> None:
        st = ThreadedStorage([1])
        machine = ListMachine()
        node = RaftNode(Config(1, election_tick=10, rng=random.Random(1)), st, machine, Net().transport(1),
                        NodeOptions(tick_interval=0.01, inline_sync_entries=4))
        await node.start()
        await wait_until(lambda: node.is_leader, "a one-member leader")
        st.where.clear()
        node.propose(b"one")
        await wait_until(lambda: machine.data[-1:] == [b"one"], "applied")
        for k in range(50):
            node.propose(b"v%d" % k)
        await wait_until(lambda: machine.data[-1:] == [b"v49"], "applied")
        assert st.where[0][0] <= 4 and st.where[0][1]  # "one" (with the new leader's empty entry if not yet saved)
        assert any(n > 4 and not on_loop for n, on_loop in st.where)
        assert all(on_loop == (n <= 4) for n, on_loop in st.where)
        # A slow disk (syncs averaging over INLINE_SYNC_MAX_SECONDS): even a
        # single entry goes to the storage thread, the loop is not frozen.
        node._sync_time = 1.0
        st.where.clear()
        node.propose(b"slow")
        await wait_until(lambda: machine.data[-1:] == [b"slow"], "applied")
        await node.stop()
        assert st.where == [(1, False)]

    asyncio.run(main())


def test_leader_appends_are_flushed_before_its_inline_sync() -> None:
    """Followers write their logs in parallel with the leader (§10.2.1): its
    appends go out (the transport's flush) before its own sync blocks the
    loop; a transport's sender tasks would only get to them after it."""
    events: list[tuple[str, int]] = []

    class FlushingTransport(Net._T):
        def flush(self) -> None:
            events.append(("flush", self.me))

    class SyncStorage(CountingStorage):
        thread_safe = True

        def __init__(self, me: int, voters: list[int]) -> None:
            super().__init__(voters)
            self.me = me

        def save(self, hard_state, entries, snapshot, sync=True):
            if sync and entries:
                events.append(("sync", self.me))
            super().save(hard_state, entries, snapshot, sync)

    async def main() -> None:
        net, machines = Net(), {i: ListMachine() for i in (1, 2, 3)}
        for i in (1, 2, 3):
            net.nodes[i] = RaftNode(Config(i, election_tick=10, rng=random.Random(i)), SyncStorage(i, [1, 2, 3]),
                                    machines[i], FlushingTransport(net, i), NodeOptions(tick_interval=0.01))
        for node in net.nodes.values():
            await node.start()
        leader = await wait_leader(net)
        await wait_until(lambda: all(m.data == [] for m in machines.values()) and leader.applied > 0, "settled")
        events.clear()
        leader.propose(b"x")
        await wait_until(lambda: all(m.data == [b"x"] for m in machines.values()), "applied everywhere")
        for node in net.nodes.values():
            await node.stop()
        mine = [kind for kind, who in events if who == leader.id]
        assert mine[:2] == ["flush", "sync"], events
        assert not any(kind == "flush" for kind, who in events if who != leader.id)  # followers: no early sends

    asyncio.run(main())


def test_a_snapshot_the_core_does_not_take_has_its_file_removed(tmp_path) -> None:
    """The transport saves a received snapshot's data to a file; one the core
    ignores (here: a leader takes no snapshot) is removed at once, not kept
    until a restart."""
    from raft.types import ConfState, SnapshotMeta

    async def main() -> None:
        node = RaftNode(Config(1, election_tick=10, rng=random.Random(1)), CountingStorage([1]), ListMachine(),
                        Net().transport(1), NodeOptions(tick_interval=0.01))
        await node.start()
        await wait_until(lambda: node.is_leader, "a one-member leader")
        data = tmp_path / "stale.snap"
        data.write_bytes(b"state")
        stale = Message(MsgType.SNAP, to=1, frm=2, term=node.raft.term,
                        snapshot=Snapshot(SnapshotMeta(100, 1, ConfState((1, 2))), b""))
        node.step_snapshot(stale, str(data))
        await node.stop()
        assert not data.exists()

    asyncio.run(main())
