"""The asyncio driver: runs the pure core against real time, disk and network.

One loop turns Ready batches into I/O in the order Ready demands:
persist (one write + one fsync) → send → apply → advance. Proposals made
between two turns are folded into one append, so throughput grows with load
instead of paying one fsync per request. Reads run as etcd's
linearizableReadLoop: at most one ReadIndex round in flight per member, and
every read arriving meanwhile joins the next round.
"""
from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from . import failpoints as _fp
from .core import Config, Raft, ReadOnlyOption
from .storage import LogStorage, LogWriter
from .types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    ProposalDropped,
    RaftError,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

log = logging.getLogger("raft.node")

_EARLY_TYPES = (MsgType.APP, MsgType.HEARTBEAT)
# Inline syncs (NodeOptions.inline_sync_entries) only while a synced save takes
# less than this on average: a slow disk must not freeze the loop (client
# API, heartbeats) for each small write.
INLINE_SYNC_MAX_SECONDS = 0.002

# A ReadIndex round unanswered after this many ticks (its request or answer
# was lost, or the leader dropped it) is asked again (etcd 3.5: 500 ms).
READ_RETRY_TICKS = 5
FATAL_EXIT_CODE = 70  # the process exit code after a Ready that could not be persisted or applied


class StateMachine(Protocol):
    """What the application gives the driver (cf. hashicorp/raft's FSM)."""

    def applied_index(self) -> int:
        """Last index durably reflected in the state machine (restart point)."""

    def apply(self, entries: Sequence[Entry]) -> None:
        """Apply committed entries in order. Must be deterministic and skip
        entries at or below ``applied_index()`` (they are re-delivered after a
        restart). CONF_CHANGE entries are passed too, after the driver applied
        them to Raft, so the application can update its member list."""

    def restore(self, snapshot: Snapshot, data_path: str | None) -> None:
        """Replace the whole state with the snapshot received from the leader."""

    def checkpoint(self) -> None:
        """Make everything applied so far durable (before the log is compacted)."""


class Transport(Protocol):
    def send(self, messages: list[Message]) -> None: ...

    # Optional: ``flush()`` writes what send() queued at once (raft.transport.PeerTransport).


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as e:
        log.warning("cannot remove the received snapshot %s: %s", path, e.strerror)


class SnapshotStore(LogStorage, LogWriter, Protocol):
    pass


@dataclass
class NodeOptions:
    tick_interval: float = 0.1  # seconds per tick (= heartbeat interval)
    snapshot_count: int = 10_000  # applied entries between log compactions
    catch_up_entries: int = 5_000  # entries kept after a compaction for slow followers
    observe_fsync: Callable[[float], None] | None = None  # seconds per log fsync (metrics)
    # A Ready with at most this many entries is written and synced on the loop
    # thread (while syncs are fast, see INLINE_SYNC_MAX_SECONDS): handing it to
    # the storage thread and back costs ~170 us of wake-up latency on an idle
    # VM (more than the fsync), which only pays off when a large batch leaves
    # the loop real work to do meanwhile.
    inline_sync_entries: int = 4
    # A Ready that cannot be persisted or applied (failed fsync, full log
    # store, a state machine error) cannot be skipped: the loop stops and this
    # is called. None: log it and exit the process, as etcd does.
    on_fatal: Callable[[BaseException], None] | None = None


@dataclass
class NodeStats:
    """Plain counters for operators (the server exports them as metrics)."""

    leader_changes: int = 0
    proposals_committed: int = 0  # entries this node saw committed
    proposals_applied: int = 0
    proposals_failed: int = 0  # proposals dropped before reaching the log


class NotLeader(RaftError):
    pass


def _fail(futs: Iterable[asyncio.Future[Any]], err: BaseException) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(err)


class RaftNode:
    """Owns a ``Raft`` core; every core call happens on the event loop thread."""

    def __init__(
        self,
        config: Config,
        storage: SnapshotStore,
        state_machine: StateMachine,
        transport: Transport,
        options: NodeOptions | None = None,
        on_soft_state: Callable[[SoftState], None] | None = None,
    ) -> None:
        self.opts = options or NodeOptions()
        self.storage = storage
        self.sm = state_machine
        self.transport = transport
        self._flush: Callable[[], None] | None = getattr(transport, "flush", None)
        self.on_soft_state = on_soft_state
        # Raft re-delivers everything after its snapshot on restart, so conf
        # changes are re-applied to the core; the state machine skips entries
        # it already has (see StateMachine.apply).
        self.raft = Raft(config, storage)
        self.id = config.id
        self._proposals: list[bytes] = []
        # Reads waiting for the next round, and the one round in flight
        # (its context and readers) with its age in ticks.
        self._read_waiters: list[asyncio.Future[int]] = []
        self._read_round: tuple[bytes, list[asyncio.Future[int]]] | None = None
        self._read_round_age = 0
        self._read_seq = itertools.count(1)
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._received_snapshots: dict[int, str] = {}
        # (index, conf state) after each applied conf change, so a compaction
        # point below the applied index gets the membership in force there.
        first_snap = storage.snapshot().meta
        self._conf_history: list[tuple[int, ConfState]] = [(first_snap.index, self.raft.conf_state())]
        self._snapshot_index = first_snap.index
        self._wake = asyncio.Event()
        self._last_heard: dict[int, float] = {}  # per peer: monotonic time of its last message
        self._contact_window = config.election_tick * self.opts.tick_interval
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft-{config.id:x}-log")
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self.applied = self.raft.log.applied
        self.leader_changed = asyncio.Event()
        self._last_leader = NONE
        self.stats = NodeStats()
        hard, _ = storage.initial_state()
        self._durable_term_vote = (hard.term, hard.vote)
        self._lease_reads = config.read_only == ReadOnlyOption.LEASE_BASED
        self._sync_time = 0.0  # moving average of a synced save, seconds
        self._tick_due = float("inf")  # when the ticker's next tick is due (set once it runs)
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"raft-{self.id}-loop"),
            asyncio.create_task(self._ticker(), name=f"raft-{self.id}-ticker"),
        ]

    async def stop(self) -> None:
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._io.shutdown(wait=True)
        err = ProposalDropped("node stopped")
        self._fail_read_round(err)
        _fail(self._read_waiters, err)
        _fail((f for _, f in self._apply_waiters), err)

    # ---------------------------------------------------------------- inputs
    @property
    def is_leader(self) -> bool:
        return self.raft.role == Role.LEADER

    @property
    def leader(self) -> int:
        return self.raft.lead

    @property
    def term(self) -> int:
        return self.raft.term

    def propose(self, data: bytes) -> None:
        """Queue a proposal; it joins the next batch. Raises ProposalDropped
        at once when no leader is known."""
        if self._stopped:
            raise ProposalDropped("node stopped")
        if self.raft.lead == NONE:
            raise ProposalDropped("no leader")
        self._proposals.append(data)
        self._wake.set()

    def propose_conf_change(self, cc: ConfChange) -> None:
        self.raft.propose_conf_change(cc)
        self._wake.set()

    def transfer_leader(self, target: int) -> None:
        self.raft.transfer_leader(target)
        self._wake.set()

    def campaign(self) -> None:
        self.raft.campaign()
        self._wake.set()

    def read_index(self) -> asyncio.Future[int]:
        """Future for a linearizable read point. Callers arriving while a round
        is in flight share the next one (only a round started after a read
        arrived may answer it)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.raft.lead == NONE:
            fut.set_exception(ProposalDropped("no leader"))
            return fut
        self._read_waiters.append(fut)
        self._wake.set()
        return fut

    def wait_applied(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.applied >= index:
            fut.set_result(None)
        else:
            self._apply_waiters.append((index, fut))
        return fut

    def step(self, msg: Message) -> None:
        """Called by the transport for every received message."""
        if self._stopped:
            return
        self._last_heard[msg.frm] = time.monotonic()
        self._check_clock()
        try:
            self.raft.step(msg)
        except ProposalDropped:
            pass
        except Exception:
            log.exception("dropping message %s from %d", msg.type.name, msg.frm)
        self._wake.set()

    def in_contact(self) -> set[int]:
        """Peers heard from within the last election timeout: on the leader,
        every live follower (they answer each heartbeat)."""
        since = time.monotonic() - self._contact_window
        return {peer for peer, last in self._last_heard.items() if last >= since}

    def step_snapshot(self, msg: Message, data_path: str) -> None:
        """A MsgSnap whose application data the transport saved at ``data_path``.
        The file is the state machine's once handed to ``restore``; one the
        core does not take (stale, duplicate) is removed here."""
        if msg.snapshot is None:
            _remove(data_path)
            return
        index = msg.snapshot.meta.index
        previous = self._received_snapshots.pop(index, None)
        if previous is not None and previous != data_path:
            _remove(previous)
        self._received_snapshots[index] = data_path
        self.step(msg)
        pending = self.raft.log.unstable_snapshot
        if pending is None or pending.meta.index != index:
            self._received_snapshots.pop(index, None)
            _remove(data_path)

    def report_unreachable(self, node: int) -> None:
        self.raft.report_unreachable(node)
        self._wake.set()

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.raft.report_snapshot(node, ok)
        self._wake.set()

    # ------------------------------------------------------------------ loop
    async def _ticker(self) -> None:
        interval = self.opts.tick_interval
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += interval
            self._tick_due = deadline
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self._check_clock()
            late = loop.time() - deadline
            # Paused (SIGSTOP): don't burst the owed ticks. With lease reads
            # never: a follower's burst would shorten the time it holds its
            # vote after a heartbeat (a slow clock is the safe side there).
            if late > 5 * interval or (self._lease_reads and late > interval / 2):
                deadline = loop.time()
            self.raft.tick()
            self._age_read_round()
            self._wake.set()

    def _check_clock(self) -> None:
        """Lease reads count ticks as time: when the ticker is late (the loop
        stalled, the process was paused), the core must not trust the lease
        it had. Checked before anything that could answer a read."""
        if not self._lease_reads or self._loop is None:
            return
        if self._loop.time() - self._tick_due > self.opts.tick_interval / 2:
            self.raft.clock_stalled()

    def _age_read_round(self) -> None:
        if self._read_round is None:
            return
        self._read_round_age += 1
        if self._read_round_age >= READ_RETRY_TICKS:
            self._ask_read_index()

    def _flush_inputs(self) -> None:
        self._check_clock()
        if self._proposals:
            batch, self._proposals = self._proposals, []
            try:
                self.raft.propose_many(batch)
            except ProposalDropped as e:
                self.stats.proposals_failed += len(batch)
                log.debug("dropped %d proposals: %s", len(batch), e)
        if self._read_waiters and self._read_round is None:
            self._start_read_round()

    def _start_read_round(self) -> None:
        waiters = [f for f in self._read_waiters if not f.done()]  # not timed out
        self._read_waiters = []
        if not waiters:
            return
        ctx = self.id.to_bytes(8, "big") + next(self._read_seq).to_bytes(8, "big")
        self._read_round = (ctx, waiters)
        self._ask_read_index()

    def _ask_read_index(self) -> None:
        """(Re)send the round's request. A retry reuses the context: every
        answer to it comes from a leader round that started after the first
        ask, so after all of the round's readers arrived; the first answer
        counts, whichever ask it belongs to."""
        assert self._read_round is not None
        self._read_round_age = 0
        try:
            self.raft.read_index(self._read_round[0])
        except ProposalDropped as e:
            self._fail_read_round(ProposalDropped(str(e)))

    def _finish_read_round(self, ctx: bytes, index: int) -> None:
        rr = self._read_round
        if rr is None or rr[0] != ctx:
            return  # a second answer, or a round failed by a leader change
        self._read_round = None
        for f in rr[1]:
            if not f.done():
                f.set_result(index)

    def _fail_read_round(self, err: BaseException) -> None:
        if self._read_round is not None:
            _fail(self._read_round[1], err)
            self._read_round = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._flush_inputs()
            while self.raft.has_ready():
                await self._handle_ready()
                self._flush_inputs()
                # Let gRPC handlers and the transport feed the next batch.
                await asyncio.sleep(0)

    def _fatal(self, e: BaseException) -> None:
        """A Ready could not be persisted or applied. Without this the loop
        task ended silently and the member lived on as a zombie (healthy,
        answering, never committing)."""
        log.critical("raft loop stopped, this member cannot go on: %s: %s", type(e).__name__, e, exc_info=e)
        if self.opts.on_fatal is not None:
            self.opts.on_fatal(e)
        else:
            os._exit(FATAL_EXIT_CODE)

    def _split_messages(self, rd: Ready) -> tuple[list[Message], list[Message]]:
        """A leader's appends and heartbeats may leave before its own fsync
        (Raft thesis §10.2.1: followers write in parallel with the leader); the
        core counts the leader's own entries only once they are durable, so
        no commit rests on an unsynced copy. Everything else (votes,
        acknowledgements) waits for the fsync."""
        early: list[Message] = []
        late: list[Message] = []
        hs = rd.hard_state
        # Not when this Ready changes the term or vote: a crash before the
        # fsync could let this node win the same term again with other
        # entries at the same index and term.
        leader = self.raft.role == Role.LEADER and (hs is None or (hs.term, hs.vote) == self._durable_term_vote)
        for m in rd.messages:
            if m.type == MsgType.SNAP:
                self._describe_current_state(m)
            if leader and m.type in _EARLY_TYPES:
                early.append(m)
            else:
                late.append(m)
        return early, late

    def _note_durable(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self._durable_term_vote = (rd.hard_state.term, rd.hard_state.vote)

    async def _persist(self, rd: Ready) -> None:
        """Write one Ready to the log. A large batch is synced on the storage
        thread so the loop keeps accepting requests meanwhile (they form the
        next batch); a small one on the loop (see NodeOptions.inline_sync_entries)."""
        if not (rd.entries or rd.hard_state is not None or rd.snapshot is not None):
            return
        start = time.monotonic()
        if self._saves_on_loop(rd):
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot, rd.must_sync)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._io, self.storage.save, rd.hard_state, rd.entries, rd.snapshot, True)
        self._note_durable(rd)
        if rd.must_sync:
            took = time.monotonic() - start
            self._sync_time += (took - self._sync_time) / 8  # a moving average: a slow disk stops inline syncs
            if self.opts.observe_fsync is not None:
                self.opts.observe_fsync(took)

    def _saves_on_loop(self, rd: Ready) -> bool:
        return (
            not rd.must_sync
            or not getattr(self.storage, "thread_safe", False)
            or (len(rd.entries) <= self.opts.inline_sync_entries and self._sync_time < INLINE_SYNC_MAX_SECONDS)
        )

    async def _handle_ready(self) -> None:
        rd = self.raft.ready()
        self.stats.proposals_committed += len(rd.committed_entries)
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        snap = rd.snapshot
        if snap is not None and not snap.is_empty:
            # State first, then the log: a crash in between leaves the state
            # machine ahead of the log, which replay tolerates; the reverse
            # would leave a gap nothing can fill.
            self.sm.restore(snap, self._received_snapshots.pop(snap.meta.index, None))
            for index in [i for i in self._received_snapshots if i <= snap.meta.index]:
                _remove(self._received_snapshots.pop(index))
            log.info("restored state from snapshot at index %d term %d", snap.meta.index, snap.meta.term)
            self._conf_history = [(snap.meta.index, snap.meta.conf_state)]
            self._snapshot_index = snap.meta.index
        early, late = self._split_messages(rd)
        if _fp.ENABLED:
            early, late = await self._send_failpoint(early), await self._send_failpoint(late)
        if early:
            self.transport.send(early)
            # Out before a sync on this thread blocks the loop: followers
            # persist in parallel with us (§10.2.1). The sender tasks alone
            # would write them only after it (they take two loop turns).
            if self._flush is not None and rd.must_sync and self._saves_on_loop(rd):
                self._flush()
            else:
                await asyncio.sleep(0)
        try:
            if _fp.ENABLED:
                await self._persist_with_failpoints(rd)
            else:
                await self._persist(rd)
        except Exception as e:
            self._fatal(e)
            raise
        if late:
            self.transport.send(late)
        if rd.committed_entries:
            try:
                self._apply(rd.committed_entries)
            except Exception as e:
                self._fatal(e)
                raise
        elif snap is not None and not snap.is_empty:
            self._set_applied(snap.meta.index)
        for rs in rd.read_states:
            self._finish_read_round(rs.request_ctx, rs.index)
        self._check_clock()  # advance may answer reads waiting for this term's first commit
        self.raft.advance(rd)
        self._maybe_compact()

    async def _persist_with_failpoints(self, rd: Ready) -> None:
        """_persist between the raftBeforeSave and raftAfterSave failpoints."""
        saves = bool(rd.entries or rd.hard_state is not None or rd.snapshot is not None)
        if saves:
            await _fp.ainject("raftBeforeSave")
        await self._persist(rd)
        if saves:
            await _fp.ainject("raftAfterSave")

    async def _send_failpoint(self, messages: list[Message]) -> list[Message]:
        """raftBeforeLeaderSend / raftBeforeFollowerSend: delay or drop a Ready's
        messages (a MsgSnap is kept: the transport reports its fate)."""
        if not messages:
            return messages
        leader = self.raft.role == Role.LEADER
        drop = await _fp.ainject("raftBeforeLeaderSend" if leader else "raftBeforeFollowerSend")
        return [m for m in messages if m.type == MsgType.SNAP] if drop else messages

    def _describe_current_state(self, m: Message) -> None:
        """The data streamed with a MsgSnap is the live state machine, not the
        old compaction point: label it with the applied index and the current
        membership (as etcd's merged snapshot does), so a member added after
        the last compaction finds itself in the snapshot's configuration."""
        applied = self.raft.log.applied
        try:
            term = self.raft.log.term(applied)
        except RaftError:
            return
        data = m.snapshot.data if m.snapshot is not None else b""
        m.snapshot = Snapshot(SnapshotMeta(applied, term, self.raft.conf_state()), data)

    def _on_soft_state(self, ss: SoftState) -> None:
        if ss.leader != self._last_leader:
            if ss.leader != NONE:
                self.stats.leader_changes += 1
            # A round in flight may never be answered by a changed leadership;
            # its readers see a retryable error instead of hanging.
            self._fail_read_round(ProposalDropped("leader changed"))
            self._last_leader = ss.leader
        self.leader_changed.set()
        self.leader_changed = asyncio.Event()
        if self.on_soft_state is not None:
            self.on_soft_state(ss)

    def _apply(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                try:
                    cc = ConfChange.decode(e.data)
                except ValueError:
                    log.error("ignoring malformed conf change at %d", e.index)
                    continue
                cs = self.raft.apply_conf_change(cc)
                self._conf_history.append((e.index, cs))
        self.sm.apply(entries)
        self.stats.proposals_applied += len(entries)
        self._set_applied(entries[-1].index)

    def _set_applied(self, index: int) -> None:
        self.applied = index
        if self._apply_waiters:
            keep = []
            for idx, f in self._apply_waiters:
                if idx <= index:
                    if not f.done():
                        f.set_result(None)
                else:
                    keep.append((idx, f))
            self._apply_waiters = keep

    def _maybe_compact(self) -> None:
        applied = self.raft.log.applied
        if applied - self._snapshot_index < self.opts.snapshot_count + self.opts.catch_up_entries:
            return
        index = applied - self.opts.catch_up_entries
        self.sm.checkpoint()
        conf = self._conf_history[0][1]
        for idx, cs in self._conf_history:
            if idx <= index:
                conf = cs
        self._conf_history = [(index, conf)] + [(i, c) for i, c in self._conf_history if i > index]
        term = self.raft.log.term(index)
        self.storage.compact(SnapshotMeta(index, term, conf))
        self._snapshot_index = index
        log.info("compacted raft log up to index %d", index)

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, object]:
        r = self.raft
        return {
            "id": self.id,
            "term": r.term,
            "leader": r.lead,
            "role": r.role.name,
            "commit": r.log.committed,
            "applied": r.log.applied,
            "last_index": r.log.last_index(),
            "progress": r.progress(),
        }
