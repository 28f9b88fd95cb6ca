"""PeerTransport over real sockets on 127.0.0.1 (TCP, IPv6, Unix), and the codec."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft import codec
from raft import transport as transport_mod
from raft.pb import raft_pb2 as pb
from raft.transport import PeerTransport, parse_peer_url
from raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

TIMEOUT = 30.0  # generous: waiting for an event, never a speed requirement
CLUSTER = 0xC1


_members: list["Member"] = []  # every Member of the running test, stopped by run()


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        try:
            async with asyncio.timeout(120):
                await coro
        finally:
            for m in _members:
                await m.t.stop()  # idempotent; covers tests that failed midway
            _members.clear()
        # Clean shutdown: no sender, snapshot or connection task may be left.
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, leftover

    asyncio.run(main())


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Peer disconnects and refusals are normal: never an ERROR or a traceback."""
    caplog.set_level(logging.DEBUG, logger="raft.transport")
    yield caplog
    records = caplog.get_records("setup") + caplog.get_records("call")
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


class Member:
    """A transport with recording callbacks; ``wait_for`` blocks on them."""

    def __init__(self, node_id: int, tmp: Path, cluster: int = CLUSTER, **kwargs: object) -> None:
        self.id = node_id
        self.received: list[Message] = []
        self.snapshots: list[tuple[Message, str]] = []
        self.unreachable: list[int] = []
        self.snapshot_status: list[tuple[int, bool]] = []
        self.snapshot_payload: Callable[[Message], AsyncIterator[bytes]] = self._no_snapshot
        self._changed = asyncio.Event()
        self.snapshot_dir = tmp / f"snap-{node_id}"
        _members.append(self)
        self.t = PeerTransport(
            node_id,
            cluster,
            on_message=self._record(self.received),
            on_snapshot=lambda m, p: self._note(self.snapshots.append((m, p))),
            snapshot_source=lambda m: self.snapshot_payload(m),
            on_unreachable=self._record(self.unreachable),
            on_snapshot_status=lambda peer, ok: self._note(self.snapshot_status.append((peer, ok))),
            snapshot_dir=str(self.snapshot_dir),
            **kwargs,  # type: ignore[arg-type]
        )

    @staticmethod
    async def _no_snapshot(msg: Message) -> AsyncIterator[bytes]:
        return
        yield b""

    def _note(self, _: object) -> None:
        self._changed.set()

    def _record(self, into: list) -> Callable[[object], None]:  # type: ignore[type-arg]
        return lambda item: self._note(into.append(item))

    async def wait_for(self, pred: Callable[[], bool], what: str = "condition") -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                while not pred():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"member {self.id}: timed out waiting for {what}")

    @property
    def url(self) -> str:
        return self.t.listen_urls[0]


async def cluster_of(tmp: Path, n: int, **kwargs: object) -> list[Member]:
    members = [Member(i + 1, tmp, **kwargs) for i in range(n)]
    for m in members:
        await m.t.start(["http://127.0.0.1:0"])
    for m in members:
        for other in members:
            if other is not m:
                m.t.set_peer(other.id, [other.url])
    return members


async def stop_all(*members: Member) -> None:
    for m in members:
        await m.t.stop()


def app(frm: int, to: int, index: int, n: int = 3) -> Message:
    """A MsgApp whose entries carry every byte value."""
    ents = [Entry(2, index + k, EntryType.NORMAL, bytes(range(256)) * (k + 1) + os.urandom(7)) for k in range(n)]
    return Message(MsgType.APP, to, frm, term=2, log_term=2, index=index - 1, entries=ents, commit=index // 2, context=b"\x00ctx\xff")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- delivery
def test_batches_between_three_members_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    writes = 0
    real_take = transport_mod._take_batch

    def counting_take(peer: object) -> bytes:
        nonlocal writes
        batch = real_take(peer)  # type: ignore[arg-type]
        writes += bool(batch)
        return batch

    monkeypatch.setattr(transport_mod, "_take_batch", counting_take)

    async def scenario() -> None:
        a, b, c = await cluster_of(tmp_path, 3)
        sent: dict[int, list[Message]] = {2: [], 3: []}
        for round_no in range(5):
            batch = []
            for k in range(40):
                to = 2 + (k % 2)
                m = app(1, to, 100 * round_no + k + 1) if k % 3 else Message(MsgType.HEARTBEAT, to, 1, term=2, commit=k, context=bytes([k]))
                batch.append(m)
                sent[to].append(m)
            a.t.send(batch)
        b.t.send([Message(MsgType.VOTE_RESP, 1, 2, term=3, reject=True, reject_hint=2**64 - 1)])
        c.t.send([Message(MsgType.READ_INDEX_RESP, 1, 3, term=3, index=77, context=b"r" * 16)])
        await b.wait_for(lambda: len(b.received) == len(sent[2]), "messages from 1")
        await c.wait_for(lambda: len(c.received) == len(sent[3]), "messages from 1")
        await a.wait_for(lambda: len(a.received) == 2, "replies")
        assert b.received == sent[2]  # exact contents, in order
        assert c.received == sent[3]
        assert sorted(m.frm for m in a.received) == [2, 3]
        assert a.received[[m.frm for m in a.received].index(2)].reject_hint == 2**64 - 1
        assert not a.unreachable
        await stop_all(a, b, c)

    run(scenario())
    assert writes < 200 / 4, writes  # batched: far fewer stream writes than messages
    opened = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream from")]
    assert opened.count("stream from 1 opened") == 2  # one long-lived stream per peer


def test_flush_writes_queued_messages_at_once(tmp_path: Path) -> None:
    """flush(): no loop turn between send() and the socket, for a caller
    about to block the loop (a leader syncing its log)."""

    async def scenario() -> None:
        a, b = await cluster_of(tmp_path, 2)
        a.t.send([app(1, 2, 1)])
        a.t.flush()  # no connection yet: left to the sender task, nothing lost
        await b.wait_for(lambda: len(b.received) == 1, "the first message")
        before = a.t.stats[2].sent_bytes
        a.t.send([app(1, 2, 4), app(1, 2, 7)])
        assert a.t.stats[2].sent_bytes == before  # send() only queues
        a.t.flush()
        assert a.t.stats[2].sent_bytes > before
        time.sleep(0.2)  # the loop blocked (as by an fsync): the bytes travel anyway
        await b.wait_for(lambda: len(b.received) == 3, "the flushed messages")
        assert [m.index for m in b.received] == [0, 3, 6]
        await stop_all(a, b)

    run(scenario())


def test_traffic_counters_and_round_trip_probes(tmp_path: Path) -> None:
    """What etcd's etcd_network_peer_* metrics report: bytes each way, the
    connection's state, failures, and a round trip measured at once."""
    rtts: list[tuple[int, float]] = []

    async def scenario() -> None:
        a = Member(1, tmp_path, on_rtt=lambda peer, s: a._note(rtts.append((peer, s))))
        b = Member(2, tmp_path)
        for m in (a, b):
            await m.t.start(["http://127.0.0.1:0"])
        a.t.set_peer(2, [b.url])
        a.t.send([app(1, 2, 1), app(1, 2, 4)])
        await b.wait_for(lambda: len(b.received) == 2, "messages")
        await a.wait_for(lambda: bool(rtts), "a round trip")
        assert rtts[0][0] == 2 and 0 < rtts[0][1] < 60
        sent, got = a.t.stats[2], b.t.stats[1]
        assert sent.sent_bytes == got.received_bytes > 2 * 256
        assert sent.active and sent.sent_failures == 0 and got.received_failures == 0
        await b.t.stop()
        a.t.send([app(1, 2, 7)])
        await a.wait_for(lambda: bool(a.unreachable), "the loss noticed")
        assert not sent.active and sent.disconnects >= 1 and sent.sent_failures >= 1
        a.t.remove_peer(2)
        assert 2 not in a.t.stats
        await stop_all(a)

    run(scenario())


def test_unix_socket_and_ipv6_urls(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = Member(1, tmp_path), Member(2, tmp_path)
        sock = tmp_path / "peer.sock"
        await a.t.start(["http://[::1]:0"])
        await b.t.start([f"unix://{sock}"])
        assert a.url.startswith("http://[::1]:") and b.url == f"unix://{sock}"
        a.t.set_peer(2, [b.url])
        b.t.set_peer(1, [a.url])
        a.t.send([app(1, 2, 5)])
        b.t.send([Message(MsgType.APP_RESP, 1, 2, term=2, index=7)])
        await b.wait_for(lambda: len(b.received) == 1)
        await a.wait_for(lambda: len(a.received) == 1)
        await stop_all(a, b)

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6")
    run(scenario())


def test_other_cluster_and_wrong_member_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        b = Member(2, tmp_path)
        await b.t.start(["http://127.0.0.1:0"])
        stranger = Member(1, tmp_path / "x", cluster=CLUSTER + 1)
        confused = Member(3, tmp_path / "y")
        stranger.t.set_peer(2, [b.url])
        confused.t.set_peer(5, [b.url])  # thinks member 5 lives at b's URL
        stranger.t.send([app(1, 2, 1)])
        confused.t.send([app(3, 5, 1)])
        await stranger.wait_for(lambda: 2 in stranger.unreachable, "refusal")
        await confused.wait_for(lambda: 5 in confused.unreachable, "refusal")
        assert b.received == []
        await stop_all(stranger, confused, b)

    run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("of cluster c2 (we are cluster c1)" in m for m in messages), messages
    assert any("it addressed member 5, we are 2" in m for m in messages), messages
    assert any("FAILED_PRECONDITION" in m for m in messages), messages


def test_removed_member_learns_of_its_removal(tmp_path: Path) -> None:
    async def scenario() -> None:
        removed_events: list[None] = []
        a = Member(1, tmp_path, on_removed=lambda: removed_events.append(None))
        b = Member(2, tmp_path, is_removed=lambda frm: frm == 1)
        await b.t.start(["http://127.0.0.1:0"])
        a.t.set_peer(2, [b.url])
        a.t.send([app(1, 2, 3)])
        await a.wait_for(lambda: 2 in a.unreachable, "refusal")
        assert removed_events and b.received == []

    run(scenario())


def test_peer_that_comes_up_later_gets_later_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = Member(1, tmp_path)
        await a.t.start(["http://127.0.0.1:0"])
        url = f"http://127.0.0.1:{free_port()}"
        a.t.set_peer(2, [url])
        a.t.send([app(1, 2, 1)])
        await a.wait_for(lambda: 2 in a.unreachable, "unreachable report")
        for generation in range(2):  # first start, then a restart
            b = Member(2, tmp_path)
            await b.t.start([url])
            later = app(1, 2, 10 + generation)
            a.t.send([later])
            await b.wait_for(lambda: later in b.received, "message sent after the peer came up")
            await b.t.stop()
            a.unreachable.clear()
            a.t.send([app(1, 2, 20 + generation)])  # goes into the dead stream or the queue
            await a.wait_for(lambda: 2 in a.unreachable, "unreachable after the peer stopped")
        await a.t.stop()

    run(scenario())


def test_dead_or_stuck_peer_does_not_delay_a_live_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        # A peer that accepts TCP connections and then never says a word.
        stuck_conns: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stuck_conns.append(writer)

        blackhole = await asyncio.start_server(swallow, "127.0.0.1", 0)
        stuck_url = f"http://127.0.0.1:{blackhole.sockets[0].getsockname()[1]}"
        a, b = Member(1, tmp_path, queue_messages=16), Member(2, tmp_path)
        await a.t.start(["http://127.0.0.1:0"])
        await b.t.start(["http://127.0.0.1:0"])
        a.t.set_peer(2, [b.url])
        a.t.set_peer(3, [stuck_url])
        a.t.set_peer(4, [f"http://127.0.0.1:{free_port()}"])  # nobody listens
        expected = []
        for round_no in range(20):
            for k in range(10):
                live = app(1, 2, 10 * round_no + k + 1, n=1)
                expected.append(live)
                a.t.send([app(1, 3, k + 1, n=1), live, app(1, 4, k + 1, n=1)])
            await b.wait_for(lambda: len(b.received) == len(expected), f"messages to the live peer ({len(b.received)} of {len(expected)})")
        assert b.received == expected
        await a.wait_for(lambda: {3, 4} <= set(a.unreachable), "overflow / failure reports")
        assert 2 not in a.unreachable
        await stop_all(a, b)
        blackhole.close()
        for w in stuck_conns:
            w.close()
        await blackhole.wait_closed()

    run(scenario())


def test_unencodable_message_is_dropped_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        a, b = await cluster_of(tmp_path, 2)
        good = [app(1, 2, 5), app(1, 2, 8)]
        a.t.send([good[0], Message(MsgType.APP, 2, 1, index=-1), good[1]])
        await b.wait_for(lambda: len(b.received) == 2)
        assert b.received == good

    run(scenario())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == ["dropping unencodable APP to 2"]
    caplog.clear()  # expected error, checked above


def test_queue_keeps_newest_messages_on_overflow(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = Member(1, tmp_path, queue_messages=8)
        url = f"http://127.0.0.1:{free_port()}"
        a.t.set_peer(2, [url])
        msgs = [Message(MsgType.HEARTBEAT, 2, 1, term=1, commit=k) for k in range(50)]
        a.t.send(msgs)  # the sender task has not even run yet: 42 dropped at once
        await a.wait_for(lambda: 2 in a.unreachable, "drop report")
        b = Member(2, tmp_path)
        await b.t.start([url])
        await b.wait_for(lambda: len(b.received) >= 1, "queued messages")
        assert all(m.commit >= 42 for m in b.received)  # only the newest survived
        await stop_all(a, b)

    run(scenario())


# --------------------------------------------------------------- snapshots
def test_snapshot_transfer_in_chunks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = random.Random(7).randbytes(5 * (1 << 20) + 12345)

    async def scenario() -> None:
        a, b = await cluster_of(tmp_path, 2)

        async def source(msg: Message) -> AsyncIterator[bytes]:
            view = memoryview(data)
            for off in range(0, len(data), 300_000):  # odd sizes: re-chunked to 1 MiB
                await asyncio.sleep(0)
                yield bytes(view[off : off + 300_000])

        a.snapshot_payload = source
        snap = Snapshot(SnapshotMeta(1000, 4, ConfState((1, 2), (3,))), b"raft-level")
        msg = Message(MsgType.SNAP, 2, 1, term=4, snapshot=snap)
        a.t.send([msg, app(1, 2, 1001)])
        await b.wait_for(lambda: len(b.snapshots) == 1, "snapshot")
        await a.wait_for(lambda: a.snapshot_status == [(2, True)], "snapshot status")
        got, path = b.snapshots[0]
        assert got == msg
        assert Path(path).read_bytes() == data
        assert Path(path).parent == b.snapshot_dir
        assert [p.name for p in b.snapshot_dir.iterdir()] == [Path(path).name]  # no temp files left
        await b.wait_for(lambda: len(b.received) == 1, "the message after it")
        await stop_all(a, b)

    run(scenario())
    assert any(f"({len(data)} bytes in 6 chunks) from 1" in r.getMessage() for r in caplog.records)


def test_failed_snapshot_transfers_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        a, b = await cluster_of(tmp_path, 2)

        async def broken(msg: Message) -> AsyncIterator[bytes]:
            yield b"x" * (3 << 20)
            raise OSError("snapshot file vanished")

        a.snapshot_payload = broken
        snap = Message(MsgType.SNAP, 2, 1, term=4, snapshot=Snapshot(SnapshotMeta(9, 4, ConfState((1, 2)))))
        a.t.send([snap])
        await a.wait_for(lambda: a.snapshot_status == [(2, False)], "failure status")
        a.t.set_peer(3, [f"http://127.0.0.1:{free_port()}"])  # down
        a.t.send([Message(MsgType.SNAP, 3, 1, term=4, snapshot=snap.snapshot)])
        await a.wait_for(lambda: (3, False) in a.snapshot_status, "failure status for a dead peer")
        await stop_all(a, b)
        assert b.snapshots == []
        assert list(b.snapshot_dir.iterdir()) == []  # partial download removed

    run(scenario())
    assert any("snapshot source: snapshot file vanished" in r.getMessage() for r in caplog.records)


def test_stale_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        m = Member(1, tmp_path)
        m.snapshot_dir.mkdir()
        (m.snapshot_dir / ".snap-recv-dead.tmp").write_bytes(b"partial")
        (m.snapshot_dir / "keep.snap").write_bytes(b"app owns this")
        await m.t.start(["http://127.0.0.1:0"])
        assert sorted(p.name for p in m.snapshot_dir.iterdir()) == ["keep.snap"]
        await m.t.stop()

    run(scenario())


def test_stop_with_traffic_in_flight_is_clean(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = await cluster_of(tmp_path, 2)

        async def endless(msg: Message) -> AsyncIterator[bytes]:
            while True:
                await asyncio.sleep(0)
                yield b"y" * 65536

        a.snapshot_payload = endless
        a.t.send([Message(MsgType.SNAP, 2, 1, term=1, snapshot=Snapshot(SnapshotMeta(5, 1)))])
        a.t.send([app(1, 2, k + 1) for k in range(50)])
        await b.wait_for(lambda: len(b.received) >= 1, "traffic")
        a.t.remove_peer(2)
        a.t.set_peer(2, [b.url])
        await stop_all(b, a)  # receiver first: the sender sees its streams die
        a.t.send([app(1, 2, 99)])  # after stop: dropped quietly
        assert a.snapshot_status == []  # cancelled, not failed
        assert [p for p in b.snapshot_dir.iterdir()] == []

    run(scenario())


def test_start_fails_on_a_used_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = Member(1, tmp_path), Member(2, tmp_path)
        await a.t.start(["http://127.0.0.1:0"])
        with pytest.raises(OSError, match="cannot listen"):
            await b.t.start([a.url])
        await stop_all(a, b)

    run(scenario())


def test_garbage_and_bad_hellos_are_dropped_quietly(tmp_path: Path) -> None:
    """Not a kvstore peer: the connection is closed (no traceback, nothing
    delivered); a wrong identity in a well-formed hello gets a refusal."""
    from raft import wire

    async def scenario() -> None:
        b = Member(2, tmp_path)
        await b.t.start(["http://127.0.0.1:0"])
        port = int(b.url.rsplit(":", 1)[1])
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", wire.MAGIC + b"\xff" * 64):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(junk)
            assert await reader.read() == b""  # closed without an answer
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(wire.hello(wire.Kind.STREAM, CLUSTER, 0, 2))  # no sender id
        ftype, payload = await wire.read_frame(reader, wire.MAX_CONTROL)
        assert ftype == wire.Frame.REPLY
        assert wire.parse_reply(payload) == (wire.Code.INVALID_ARGUMENT, "missing or malformed peer identity")
        writer.close()
        assert b.received == []
        await b.t.stop()

    run(scenario())


# ------------------------------------------------------------- url parsing
@pytest.mark.parametrize(
    "url, host, port, unix_path, tls",
    [
        ("http://127.0.0.1:2380", "127.0.0.1", 2380, None, False),
        ("http://[::1]:2380", "::1", 2380, None, False),
        ("http://[0:0::1]:2380", "::1", 2380, None, False),
        ("http://node-1.example:2380/", "node-1.example", 2380, None, False),
        ("https://10.0.0.1:2380", "10.0.0.1", 2380, None, True),
        ("unix:///run/kv/peer.sock", "", 0, "/run/kv/peer.sock", False),
    ],
)
def test_parse_peer_url(url: str, host: str, port: int, unix_path: str | None, tls: bool) -> None:
    addr = parse_peer_url(url)
    assert (addr.host, addr.port, addr.unix_path, addr.tls) == (host, port, unix_path, tls)


@pytest.mark.parametrize("url", ["127.0.0.1:2380", "http://127.0.0.1", "ftp://h:1", "http://h:1/x", "unix://rel"])
def test_parse_peer_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_peer_url(url)


def test_https_requires_credentials(tmp_path: Path) -> None:
    async def scenario() -> None:
        m = Member(1, tmp_path)
        with pytest.raises(ValueError, match="client_ssl"):
            m.t.set_peer(2, ["https://127.0.0.1:2380"])
        with pytest.raises(ValueError, match="server_ssl"):
            await m.t.start(["https://127.0.0.1:0"])
        await m.t.stop()

    run(scenario())


# ------------------------------------------------------------------- codec
U64 = st.integers(0, 2**64 - 1)
ENTRIES = st.lists(
    st.builds(Entry, U64, U64, st.sampled_from(list(EntryType)), st.binary(max_size=64)),
    max_size=5,
)
SNAPSHOTS = st.builds(
    Snapshot,
    st.builds(SnapshotMeta, U64, U64, st.builds(ConfState, st.lists(U64, max_size=4).map(tuple), st.lists(U64, max_size=3).map(tuple))),
    st.binary(max_size=64),
)
MESSAGES = st.builds(
    Message,
    st.sampled_from(list(MsgType)),
    U64, U64, U64, U64, U64,
    ENTRIES,
    U64,
    st.booleans(),
    U64,
    st.binary(max_size=32),
    st.one_of(st.none(), SNAPSHOTS),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES, max_size=4))
def test_codec_round_trip(messages: list[Message]) -> None:
    wire = codec.encode_batch(messages).SerializeToString()
    decoded = codec.decode_batch(pb.MessageBatch.FromString(wire))
    assert decoded == messages
    for got in decoded:
        assert type(got.type) is MsgType
        assert all(type(e.type) is EntryType for e in got.entries)


def test_codec_rejects_unknown_enums() -> None:
    with pytest.raises(ValueError, match="message type"):
        codec.decode_message(pb.Message(type=99))
    with pytest.raises(ValueError, match="entry type"):
        codec.decode_message(pb.Message(type=MsgType.APP, entries=[pb.Entry(index=3, type=7)]))
