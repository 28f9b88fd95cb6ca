"""The Raft state machine: pure, synchronous and deterministic.

It never touches a clock, socket or disk. It advances through ``tick()``,
``step(message)`` and the proposal calls, and hands its work back as a
``Ready`` (see raft.types.Ready for the driver's obligations). Election jitter
comes from the injected ``random.Random``, so a seed replays a run exactly.

Implemented: PreVote, CheckQuorum (with the follower-side lease that stops a
rejoining node from deposing a healthy leader), pipelined replication with
bounded inflight windows (one append per follower per Ready), fast back-off by
term, the current-term commit rule, batched ReadIndex (one confirming heartbeat
round in flight at a time), optional lease reads (see ``_lease_held``),
leader transfer (TimeoutNow), one-at-a-time membership changes with
learners, and snapshots.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import IntEnum

from .log import RaftLog
from .progress import Progress, ProgressState
from .storage import LogStorage
from .types import (
    NONE,
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

CAMPAIGN_TRANSFER = b"transfer"

_VOTE_RESP = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}
_UNTERMED = (MsgType.PROP, MsgType.READ_INDEX)
_FROM_LEADER = (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP)


class ReadOnlyOption(IntEnum):
    SAFE = 0  # confirm leadership with a heartbeat round (one per batch)
    LEASE_BASED = 1  # answer locally while the leader holds a lease (Raft._lease_held)


@dataclass
class Config:
    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    max_committed_size_per_ready: int = 8 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE
    # Lease reads rest on clocks: the tick rates of any two members differ by
    # at most this fraction (over any stretch of time, n ticks of one member
    # take at least (1 - max_clock_drift) times as long as n ticks of
    # another), counting the lateness of a tick (a paused process) as drift.
    max_clock_drift: float = 0.1
    applied: int = 0  # restart hint: entries up to here were already applied
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("raft node id must be non-zero")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick > 0")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max_inflight_msgs must be positive")
        if self.read_only == ReadOnlyOption.LEASE_BASED:
            if not self.check_quorum:
                # Followers ignoring votes while a leader may hold its lease is
                # CheckQuorum's follower-side lease.
                raise ValueError("lease-based reads require check_quorum")
            if not 0 <= self.max_clock_drift < 1:
                raise ValueError("max_clock_drift must be in [0, 1)")
            if self.lease_ticks < 1:
                raise ValueError("election_tick is too small for a lease with this max_clock_drift")

    @property
    def lease_ticks(self) -> int:
        """Ticks after sending a heartbeat that a quorum answered during which
        the leader may serve reads alone. A follower ignores votes for
        ``election_tick`` of its ticks after that heartbeat reached it: at
        least ``election_tick - 1`` of its tick periods (the first tick may
        follow at once), which last at least ``(election_tick - 1) * (1 -
        drift)`` of the leader's. Less half a tick: the driver reports a
        tick late by more than half a period (raft.node), so a read may see
        a tick count that far behind."""
        return int((self.election_tick - 1) * (1 - self.max_clock_drift) - 0.5)


class _PendingRead:
    __slots__ = ("index", "requester", "acks")

    def __init__(self, index: int, requester: int, leader: int) -> None:
        self.index = index
        self.requester = requester
        self.acks: set[int] = {leader}


class Raft:
    """One Raft participant. Not thread-safe: drive it from one thread/loop."""

    def __init__(self, config: Config, storage: LogStorage) -> None:
        config.validate()
        self.id = config.id
        self.cfg = config
        self.rng = config.rng
        self.log = RaftLog(storage)
        hard, conf = storage.initial_state()
        self.term = hard.term
        self.vote = hard.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self._voters: tuple[int, ...] = ()
        self._voter_set: frozenset[int] = frozenset()
        self._apply_conf_state(conf)
        if hard.commit:
            self.log.commit_to(hard.commit)
        if config.applied:
            self.log.applied_to(min(config.applied, self.log.committed))
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self._lease_reads = config.read_only == ReadOnlyOption.LEASE_BASED
        self._lease_ticks = config.lease_ticks
        # This node's clock in ticks (from 1; 0 means "no tick"). Heartbeats
        # carry it in ``index`` and the answers echo it, so the leader knows
        # when what a follower acknowledged was sent.
        self._ticks = 1
        # Ticks since a leader's message last reached this node, or since it
        # started (a restarted node may have acknowledged a leader's heartbeat
        # just before): see _votes_held. Unlike election_elapsed, no role change
        # resets it.
        self._since_leader = 0
        # Leader: per voter, the send tick of the latest heartbeat it answered
        # in this term; and whether a transfer ended lease reads for the term.
        self._hb_acked: dict[int, int] = {}
        self._lease_floor = 0  # heartbeats sent before this tick no longer count (clock_stalled)
        self._lease_revoked = False
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self._reads: dict[bytes, _PendingRead] = {}
        self._read_queue: list[bytes] = []
        self._reads_waiting_commit: list[Message] = []
        # Heartbeats queued in ``msgs`` and not yet handed out in a Ready: a
        # new read rides on them instead of starting another round.
        self._hb_batch: list[Message] = []
        # Context of the heartbeat round confirming reads that is in flight;
        # reads arriving meanwhile wait for the next round (see _ack_read).
        self._read_round: bytes | None = None
        # Appends are broadcast once per Ready (see _flush_appends), so the
        # proposals and commit advances of one loop turn share one message.
        self._append_pending = False
        self._commit_in_term = False  # cache of _committed_in_current_term
        self._beats = 0  # heartbeat intervals (BEAT) so far
        self._prev_hard = HardState(self.term, self.vote, self.log.committed)
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._reset_randomized_timeout()
        self._replay_conf_changes()

    # ------------------------------------------------------------------ config
    @property
    def voters(self) -> tuple[int, ...]:
        return self._voters

    def _update_voters(self) -> None:
        """Cache the voter ids; call after every change to ``prs`` membership."""
        self._voters = tuple(i for i, p in self.prs.items() if not p.is_learner)
        self._voter_set = frozenset(self._voters)

    def conf_state(self) -> ConfState:
        return ConfState(
            tuple(sorted(i for i, p in self.prs.items() if not p.is_learner)),
            tuple(sorted(i for i, p in self.prs.items() if p.is_learner)),
        )

    @property
    def promotable(self) -> bool:
        pr = self.prs.get(self.id)
        return pr is not None and not pr.is_learner

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def _apply_conf_state(self, conf: ConfState) -> None:
        nxt = self.log.last_index() + 1
        self.prs = {}
        for v in conf.voters:
            self.prs[v] = Progress(nxt, self.cfg.max_inflight_msgs)
        for l in conf.learners:
            self.prs[l] = Progress(nxt, self.cfg.max_inflight_msgs, is_learner=True)
        self._update_voters()

    def _replay_conf_changes(self) -> None:
        """Restart with ``Config.applied`` past the snapshot: the entries up to
        it are not handed out again, so the conf changes among them (already
        applied by the application) are re-applied here, on top of the
        snapshot's configuration, to rebuild the membership at ``applied``."""
        lo = self.log.first_index()
        hi = self.log.applied + 1
        while lo < hi:
            ents = self.log.entries(lo, hi, self.cfg.max_size_per_msg)
            for e in ents:
                if e.type == EntryType.CONF_CHANGE:
                    self.apply_conf_change(ConfChange.decode(e.data))
            lo = ents[-1].index + 1

    # ---------------------------------------------------------------- public API
    def tick(self) -> None:
        self._ticks += 1
        self._since_leader += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        self.step(Message(MsgType.HUP))

    def propose(self, data: bytes) -> None:
        """Raises ProposalDropped when this node cannot accept it now."""
        self.step(Message(MsgType.PROP, frm=self.id, entries=[Entry(0, 0, EntryType.NORMAL, data)]))

    def propose_many(self, datas: list[bytes]) -> None:
        """Many proposals, one append: the batching path for busy servers."""
        ents = [Entry(0, 0, EntryType.NORMAL, d) for d in datas]
        self.step(Message(MsgType.PROP, frm=self.id, entries=ents))

    def propose_conf_change(self, cc: ConfChange) -> None:
        self.step(
            Message(MsgType.PROP, frm=self.id, entries=[Entry(0, 0, EntryType.CONF_CHANGE, cc.encode())])
        )

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; answered as a ReadState in a
        later Ready. Batch many client reads under one ``ctx``."""
        self.step(Message(MsgType.READ_INDEX, frm=self.id, context=ctx))

    def transfer_leader(self, target: int) -> None:
        self.step(Message(MsgType.TRANSFER_LEADER, frm=self.id, index=target))

    def report_unreachable(self, node: int) -> None:
        self.step(Message(MsgType.UNREACHABLE, frm=node))

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.step(Message(MsgType.SNAP_STATUS, frm=node, reject=not ok))

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Called by the driver when a conf-change entry is applied."""
        if self.log.unstable_snapshot is not None:
            # A snapshot was received after the Ready carrying this entry was
            # taken (the driver steps messages while it persists): the
            # snapshot's configuration already includes this change and
            # everything after it, so applying it now would regress it.
            return self.conf_state()
        nid = cc.node_id
        nxt = self.log.last_index() + 1
        if cc.type == ConfChangeType.ADD_NODE:
            pr = self.prs.get(nid)
            if pr is None:
                pr = self.prs[nid] = Progress(nxt, self.cfg.max_inflight_msgs)
                pr.recent_active = True
            pr.is_learner = False
        elif cc.type == ConfChangeType.ADD_LEARNER:
            if nid not in self.prs:
                pr = self.prs[nid] = Progress(nxt, self.cfg.max_inflight_msgs, is_learner=True)
                pr.recent_active = True
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.prs.pop(nid, None)
            if nid == self.lead_transferee:
                self.lead_transferee = NONE
        self._update_voters()
        if self.role == Role.LEADER:
            if not self.promotable:
                # A leader removed (or demoted) steps down; the rest elect anew.
                self._become_follower(self.term, NONE)
            else:
                # A smaller quorum may commit more; new members need appends.
                self._maybe_commit()
                self._bcast_append()
        return self.conf_state()

    # --------------------------------------------------------------- Ready cycle
    def _soft_changed(self) -> bool:
        ps = self._prev_soft
        return self.lead != ps.leader or self.role != ps.role

    def _hard_changed(self) -> bool:
        ph = self._prev_hard
        return self.term != ph.term or self.vote != ph.vote or self.log.committed != ph.commit

    def has_ready(self) -> bool:
        """Also turns the appends asked for since the last Ready into messages."""
        self._flush_appends()
        if self.msgs or self.read_states or self.log.unstable or self.log.unstable_snapshot:
            return True
        if self._soft_changed() or self._hard_changed():
            return True
        return self.log.has_next_committed_entries()

    def ready(self) -> Ready:
        self._flush_appends()
        rd = Ready()
        if self._soft_changed():
            rd.soft_state = SoftState(self.lead, self.role)
        if self._hard_changed():
            rd.hard_state = HardState(self.term, self.vote, self.log.committed)
        rd.entries = list(self.log.unstable)
        rd.snapshot = self.log.unstable_snapshot
        rd.committed_entries = self.log.next_committed_entries(self.cfg.max_committed_size_per_ready)
        rd.messages, self.msgs = self.msgs, []
        self._hb_batch = []
        rd.read_states, self.read_states = self.read_states, []
        rd.must_sync = bool(rd.entries) or rd.snapshot is not None or (
            rd.hard_state is not None
            and (rd.hard_state.term != self._prev_hard.term or rd.hard_state.vote != self._prev_hard.vote)
        )
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snapshot_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            self._self_ack()
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        elif rd.snapshot is not None:
            self.log.applied_to(rd.snapshot.meta.index)

    def _stable_index(self) -> int:
        """Last index known to be on this node's disk."""
        return min(self.log.last_index(), self.log.unstable_offset - 1)

    def _self_ack(self) -> None:
        """The leader's own vote for its durable entries."""
        if self.role != Role.LEADER:
            return
        pr = self.prs.get(self.id)
        if pr is not None and pr.maybe_update(self._stable_index()) and self._maybe_commit():
            self._release_reads_waiting_commit()
            self._bcast_append()

    # --------------------------------------------------------------- role changes
    def _reset_randomized_timeout(self) -> None:
        et = self.cfg.election_tick
        self.randomized_election_timeout = et + self.rng.randrange(et)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.lead_transferee = NONE
        self.votes = {}
        last = self.log.last_index()
        for nid, pr in self.prs.items():
            learner = pr.is_learner
            npr = self.prs[nid] = Progress(last + 1, self.cfg.max_inflight_msgs, learner)
            if nid == self.id:
                npr.match = self._stable_index()
        self.pending_conf_index = 0
        self._reads.clear()
        self._read_queue.clear()
        self._reads_waiting_commit.clear()
        self._hb_batch = []
        self._read_round = None
        self._append_pending = False
        self._commit_in_term = False
        self._hb_acked.clear()
        self._lease_revoked = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Unlike a real candidate, a pre-candidate keeps its term and vote.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        for pr in self.prs.values():
            pr.recent_active = True
        # No conf change until this term's first entry is applied: this is the
        # fix for single-server changes across leader changes.
        self.pending_conf_index = self.log.last_index() + 1
        self._append_entries([Entry(0, 0)])

    # --------------------------------------------------------------- elections
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MsgType.HUP))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MsgType.CHECK_QUORUM))
            if self.role == Role.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # transfer timed out
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(MsgType.BEAT))

    def _has_unapplied_conf_change(self) -> bool:
        lo = self.log.applied + 1
        hi = self.log.committed + 1
        if lo >= hi:
            return False
        try:
            ents = self.log.entries(lo, hi)
        except CompactedError:
            return False
        return any(e.type == EntryType.CONF_CHANGE for e in ents)

    def _hup(self, transfer: bool = False) -> None:
        if self.role == Role.LEADER or not self.promotable:
            return
        if self._has_unapplied_conf_change():
            return  # our view of the membership may be stale
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            mtype, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            mtype, term = MsgType.VOTE, self.term
        won = self._poll(self.id, True)
        if won is True:
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        last, last_term = self.log.last_index(), self.log.last_term()
        for nid in self.voters:
            if nid != self.id:
                self._send(Message(mtype, to=nid, term=term, index=last, log_term=last_term, context=ctx))

    def _poll(self, nid: int, granted: bool) -> bool | None:
        """Record a vote; True = won, False = lost, None = undecided."""
        self.votes.setdefault(nid, granted)
        voters = self.voters
        yes = sum(1 for v in voters if self.votes.get(v) is True)
        no = sum(1 for v in voters if self.votes.get(v) is False)
        q = len(voters) // 2 + 1
        if yes >= q:
            return True
        if no > len(voters) - q:
            return False
        return None

    # ----------------------------------------------------------------- stepping
    def _in_lease(self) -> bool:
        """Whether to ignore a (pre)vote request for a higher term: a leader
        reached us within an election timeout (CheckQuorum's follower lease)."""
        if self._votes_held():
            return True
        return self.cfg.check_quorum and self.lead != NONE and self.election_elapsed < self.cfg.election_tick

    def _votes_held(self) -> bool:
        """Lease reads: a leader's lease counts on every member that answered
        its heartbeat granting no (non-transfer) vote for ``election_tick``
        ticks. So this is counted from the last leader message itself, not
        from ``election_elapsed`` and ``lead``, which a step-down (any
        higher-term message) resets, and from start, as a restarted node may
        have answered a heartbeat just before. Without lease reads such a
        vote is harmless, and a new cluster elects at once."""
        return self._lease_reads and self._since_leader < self.cfg.election_tick

    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                if m.context != CAMPAIGN_TRANSFER and self._in_lease():
                    return  # we heard from a live leader recently: ignore
            if m.type == MsgType.PRE_VOTE:
                pass  # never change term on a pre-vote
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # the term rises only once the real election starts
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MsgType.HEARTBEAT, MsgType.APP):
                # A stale leader (e.g. back from a partition) learns our term
                # and steps down, instead of being ignored forever.
                self._send(Message(MsgType.APP_RESP, to=m.frm))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        t = m.type
        if t in _FROM_LEADER:
            self._since_leader = 0  # m.term == self.term here: a current leader
        if t == MsgType.HUP:
            self._hup(transfer=False)
        elif t in (MsgType.VOTE, MsgType.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == MsgType.PRE_VOTE and m.term > self.term)
            )
            if m.context != CAMPAIGN_TRANSFER and self._votes_held():
                can_vote = False  # e.g. a vote in a term we stepped down to
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self._send(Message(_VOTE_RESP[t], to=m.frm, term=m.term))
                if t == MsgType.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self._send(Message(_VOTE_RESP[t], to=m.frm, term=self.term, reject=True))
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MsgType.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            m.to = self.lead
            self._send(m)
        elif t == MsgType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MsgType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MsgType.TRANSFER_LEADER:
            if self.lead != NONE:
                m.to = self.lead
                self._send(m)
        elif t == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MsgType.READ_INDEX:
            if m.frm != self.id:
                return  # another node's read reached a non-leader: it retries
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            m.to = self.lead
            self._send(m)
        elif t == MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t == MsgType.PROP or t == MsgType.READ_INDEX:
            raise ProposalDropped("no leader")
        if t == MsgType.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MsgType.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif (t == MsgType.PRE_VOTE_RESP and self.role == Role.PRE_CANDIDATE) or (
            t == MsgType.VOTE_RESP and self.role == Role.CANDIDATE
        ):
            won = self._poll(m.frm, not m.reject)
            if won is True:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif won is False:
                self._become_follower(self.term, NONE)

    # ----------------------------------------------------------- follower side
    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=last_new))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                MsgType.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        # ``index`` echoes the leader's send tick (see Raft._ticks), only from a
        # member that holds its vote for the lease (_votes_held): a member
        # without lease reads must not count towards one.
        index = m.index if self._lease_reads else 0
        self._send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, index=index, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self._restore(snap):
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term + 1, NONE)  # defensive: never as leader
            return False
        cs = meta.conf_state
        # A snapshot that does not list this node is still installed: a new
        # member's ADD comes after the leader's latest snapshot, and refusing
        # it would leave the member unable to catch up (the leader would
        # resend the same snapshot every heartbeat until it compacts again).
        # The node is then not promotable until it applies its own ADD.
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already have it: fast-forward
            return False
        self.log.restore(snap)
        self._apply_conf_state(cs)
        pr = self.prs.get(self.id)
        if pr is not None:
            pr.match = meta.index
        return True

    # -------------------------------------------------------------- leader side
    def _append_entries(self, ents: list[Entry]) -> None:
        li = self.log.last_index()
        term = self.term
        for i, e in enumerate(ents, 1):
            e.term = term
            e.index = li + i
        self.log.append(ents)
        # The leader counts its own entries only once they are durable
        # (advance): its appends may leave before its own fsync (thesis
        # §10.2.1), so the commit index must never rest on an unsynced copy.

    def _maybe_commit(self) -> bool:
        matches = sorted((p.match for p in self.prs.values() if not p.is_learner), reverse=True)
        if not matches:
            return False
        mci = matches[len(matches) // 2]
        # §5.4.2: only entries of the current term are committed by counting.
        if mci > self.log.committed and self.log.term(mci) == self.term:
            self.log.commit_to(mci)
            return True
        return False

    def _send(self, m: Message) -> None:
        # Always this node: the transport refuses a message whose sender is
        # not the peer it came from. So a forwarded TRANSFER_LEADER names its
        # target in ``index``, and only a node's own reads are forwarded.
        m.frm = self.id
        if m.type not in _VOTE_RESP.values() and m.type not in (MsgType.VOTE, MsgType.PRE_VOTE):
            if m.type not in _UNTERMED:
                m.term = self.term
        self.msgs.append(m)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries(pr.next, self.log.last_index() + 1, self.cfg.max_size_per_msg)
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        committed = self.log.committed
        self._send(Message(MsgType.APP, to=to, index=prev, log_term=prev_term, entries=ents, commit=committed))
        pr.sent_append(ents[-1].index if ents else prev, len(ents))
        pr.sent_commit = committed
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't stream a snapshot to a node that is likely down
        snap = self.log.snapshot()
        if snap.is_empty:
            raise AssertionError("need a snapshot but none is available")
        pr.become_snapshot(snap.meta.index)
        self._send(Message(MsgType.SNAP, to=to, snapshot=snap))
        return True

    def _bcast_append(self) -> None:
        """Ask for appends to every follower; sent by _flush_appends when the
        next Ready is taken."""
        self._append_pending = True

    def _flush_appends(self) -> None:
        """One append per follower for everything a loop turn asked for: the
        new entries of all its proposals and the latest commit index, instead
        of a message per proposal batch plus an empty one per commit advance.
        A follower that has every entry and the commit index gets nothing."""
        if not self._append_pending:
            return
        self._append_pending = False
        if self.role != Role.LEADER:
            return
        last = self.log.last_index()
        committed = self.log.committed
        for nid, pr in self.prs.items():
            if nid != self.id and (pr.next <= last or pr.sent_commit < committed):
                self._send_append(nid)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        if ctx:
            self._read_round = ctx
        committed = self.log.committed
        batch = []
        for nid, pr in self.prs.items():
            if nid != self.id:
                m = Message(
                    MsgType.HEARTBEAT, to=nid, index=self._ticks, commit=min(pr.match, committed), context=ctx
                )
                self._send(m)
                batch.append(m)
        self._hb_batch = batch

    def _committed_in_current_term(self) -> bool:
        """Once true it stays true for the rest of the term (the commit index
        only grows, over entries of this term), so it is asked of the log
        once per term rather than once per read."""
        if not self._commit_in_term:
            self._commit_in_term = self.log.term(self.log.committed) == self.term
        return self._commit_in_term

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.BEAT:
            self._beats += 1
            self._bcast_heartbeat(self._read_queue[-1] if self._read_queue else b"")
            return
        if t == MsgType.CHECK_QUORUM:
            active = sum(
                1 for nid, p in self.prs.items() if not p.is_learner and (nid == self.id or p.recent_active)
            )
            for nid, p in self.prs.items():
                if nid != self.id:
                    p.recent_active = False
            if active < self._quorum():
                self._become_follower(self.term, NONE)
            return
        if t == MsgType.PROP:
            self._leader_propose(m)
            return
        if t == MsgType.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MsgType.TRANSFER_LEADER:
            pr = self.prs.get(m.index)
            if pr is not None:
                self._leader_transfer(m.index, pr)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MsgType.APP_RESP:
            self._handle_append_response(m, pr)
        elif t == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflight_full and pr.inflight:
                pr.inflight.popleft()
            # A follower behind the log gets an append: the next entries, or
            # an empty one at the end of those in flight, which it rejects
            # if one of them was lost. Read rounds bring many responses per
            # heartbeat interval, so the empty one goes once per interval.
            due = pr.beat_checked != self._beats
            if pr.match < self.log.last_index() and self._send_append(m.frm, send_if_empty=due):
                pr.beat_checked = self._beats
            if self._lease_reads and m.index >= self._lease_floor and m.index > self._hb_acked.get(m.frm, 0):
                self._hb_acked[m.frm] = m.index
            if m.context:
                self._ack_read(m.context, m.frm)
        elif t == MsgType.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            pr.probe_sent = True  # wait for the next heartbeat response
        elif t == MsgType.UNREACHABLE:
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()

    def _leader_propose(self, m: Message) -> None:
        local = m.frm == self.id
        if not m.entries:
            return
        if self.id not in self.prs:
            raise ProposalDropped("leader was removed from the cluster")
        if self.lead_transferee != NONE:
            if local:
                raise ProposalDropped("leadership transfer in progress")
            return
        # Fresh objects: the message may be delivered twice or shared.
        ents = [Entry(0, 0, e.type, e.data) for e in m.entries]
        for i, e in enumerate(ents):
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    if local:
                        raise ProposalDropped("a configuration change is already in progress")
                    ents[i] = Entry(0, 0)  # keep the batch, neutralise the change
                else:
                    self.pending_conf_index = self.log.last_index() + i + 1
        self._append_entries(ents)
        self._bcast_append()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decrease_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            # Only the answer to the current probe (at next-1 or beyond) says
            # where the follower's log ends. A late ack of an older append --
            # e.g. arriving just after a snapshot moved ``next`` past the
            # compaction point -- would send ``next`` back below it and the
            # same snapshot out again.
            if m.index >= pr.next - 1:
                pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.free_inflight_to(m.index)
        if self._maybe_commit():
            self._release_reads_waiting_commit()
            self._bcast_append()
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass  # fill the pipeline up to the inflight limit
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=m.frm))

    def _leader_transfer(self, target: int, pr: Progress) -> None:
        if pr.is_learner:
            return
        if self.lead_transferee != NONE:
            if self.lead_transferee == target:
                return
            self.lead_transferee = NONE
        if target == self.id:
            return
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        self.lead_transferee = target
        # The target campaigns with CAMPAIGN_TRANSFER, which followers grant
        # inside their lease: no lease read from now on in this term. Reads
        # answered before were answered before any TimeoutNow left.
        self._lease_revoked = True
        if pr.match == self.log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to=target))
        else:
            self._send_append(target)

    # ---------------------------------------------------------------- ReadIndex
    def _leader_read_index(self, m: Message) -> None:
        if not self._committed_in_current_term():
            # Our commit index may lag the real one until this term's first
            # entry commits; answer afterwards. This holds for a single voter
            # too: after a restart its commit index can lag (the commit-only
            # hard state is not synced) until its own new entry is durable.
            self._reads_waiting_commit.append(m)
            return
        if len(self.voters) == 1 or self._lease_held():
            self._answer_read(m.frm, self.log.committed, m.context)
            return
        ctx = m.context
        if ctx in self._reads:
            return
        self._reads[ctx] = _PendingRead(self.log.committed, m.frm, self.id)
        self._read_queue.append(ctx)
        if self._hb_batch:
            # One heartbeat round confirms every read queued before its
            # context: reads arriving between two Readies share one round.
            for hb in self._hb_batch:
                hb.context = ctx
            self._read_round = ctx
        elif self._read_round is None:
            self._bcast_heartbeat(ctx)
        # Else a round is in flight. It started before this read arrived, so
        # it cannot confirm it: the read waits for the next round, which
        # starts when this one completes (or at the next heartbeat tick) and
        # serves every read queued by then.

    def clock_stalled(self) -> None:
        """The driver's ticks fell behind real time (a stalled event loop, a
        paused process): heartbeats acknowledged so far may have been sent
        longer ago than their tick numbers say. The lease starts again from
        heartbeats sent from now on (even with no acknowledgement counted yet:
        answers still in flight must not count); reads meanwhile take a
        heartbeat round."""
        if self._lease_reads:
            self._ticks += 1
            self._lease_floor = self._ticks
            self._hb_acked.clear()

    def _lease_held(self) -> bool:
        """Lease reads: whether no other leader can have been elected yet, so
        our commit index (of this term) is the latest. A quorum (counting us)
        answered heartbeats sent at tick ``t`` or later; each of them ignores
        votes for ``election_tick`` of its ticks after the heartbeat reached
        it, which is after ``t`` -- longer than ``lease_ticks`` of ours (see
        Config.lease_ticks). Measured from the send, never from the answer's
        arrival, so delayed answers cannot stretch it. When it lapses, reads
        take a heartbeat round (which also renews it)."""
        if not self._lease_reads or self._lease_revoked:
            return False
        acked = self._hb_acked
        now = self._ticks
        sent = sorted((now if v == self.id else acked.get(v, 0) for v in self._voters), reverse=True)
        t = sent[self._quorum() - 1]
        return t > 0 and now < t + self._lease_ticks

    def _release_reads_waiting_commit(self) -> None:
        if self._reads_waiting_commit and self._committed_in_current_term():
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for m in waiting:
                self._leader_read_index(m)

    def _ack_read(self, ctx: bytes, frm: int) -> None:
        st = self._reads.get(ctx)
        if st is None:
            return
        st.acks.add(frm)
        if len(st.acks & self._voter_set) < self._quorum():
            return
        # A heartbeat round confirms this read and every read queued before it.
        pos = self._read_queue.index(ctx)
        done, self._read_queue = self._read_queue[: pos + 1], self._read_queue[pos + 1 :]
        for c in done:
            r = self._reads.pop(c)
            self._answer_read(r.requester, r.index, c)
        if self._read_round is not None and self._read_round not in self._reads:
            # The round in flight is done: one new round for every read that
            # arrived meanwhile.
            self._read_round = None
            if self._read_queue:
                self._bcast_heartbeat(self._read_queue[-1])

    def _answer_read(self, requester: int, index: int, ctx: bytes) -> None:
        if requester == self.id or requester == NONE:
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, to=requester, index=index, context=ctx))

    # ------------------------------------------------------------------ status
    def progress(self) -> dict[int, tuple[int, int, str]]:
        """Leader only: ``{id: (match, next, state)}`` for operators and
        learner promotion checks."""
        if self.role != Role.LEADER:
            return {}
        return {nid: (p.match, p.next, p.state.name) for nid, p in self.prs.items()}
