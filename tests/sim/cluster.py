"""Deterministic simulation of a whole Raft cluster on the pure core.

Everything — message delays, losses, partitions, crashes, client load,
membership changes — is drawn from one RNG seeded by ``(scenario, seed)``,
and events are ordered by (time, sequence number), so a run replays exactly.

Time is counted in units; one Raft tick is ``TICK`` units. Each node is
driven as a real driver would be: after a call into Raft, if it has a Ready,
a "ready" event is scheduled a little later (so several steps batch into one
Ready). Handling a Ready follows the contract in ``raft.types.Ready``:
persist (snapshot, entries, hard state; one sync when ``must_sync``), then
send the messages, then apply the snapshot and the committed entries (calling
``apply_conf_change`` for conf-change entries), then ``advance``. Some node
incarnations run "async": they take the Ready, keep stepping incoming
messages while it is being persisted, and finish it later, like an asyncio
driver awaiting an fsync.

The run has a chaos phase (faults on), then a final phase: the network heals,
every node is restarted, faults stop, and the cluster must elect a leader,
commit a new proposal and bring every member up to it within a bounded number
of ticks. Every acknowledged proposal must then be on every member.
"""
from __future__ import annotations

import heapq
import random
import sys

from raft.core import Config, Raft, ReadOnlyOption
from raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MsgType,
    ProposalDropped,
    Role,
    SnapshotMeta,
)

from .checker import Checker, Violation
from .node import SimNode, apply_membership
from .scenarios import Scenario

TICK = 10
FINAL_TICKS = 400  # the cluster must recover within this many ticks of healing
MAX_FINAL_SNAPS = 3  # copies of one snapshot sent to one node after healing
MAX_BACKLOG = 48  # clients hold back while the leader has this many uncommitted entries

EV_TICK, EV_DELIVER, EV_READY, EV_DONE, EV_NODE_TICK = 0, 1, 2, 3, 4


class _TransferKeepsLease(Raft):
    """Demo only: the leader keeps serving lease reads during a transfer."""

    def _leader_transfer(self, target: int, pr) -> None:
        super()._leader_transfer(target, pr)
        self._lease_revoked = False


def copy_message(m: Message) -> Message:
    return Message(
        m.type,
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [Entry(e.term, e.index, e.type, e.data) for e in m.entries],
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        m.snapshot,  # frozen dataclass with bytes: immutable
    )


class Sim:
    def __init__(self, seed: int, scenario: Scenario, verbose: int = 0, size: int | None = None) -> None:
        self.seed = seed
        self.sc = scenario
        self.verbose = verbose
        self.rng = random.Random(f"{scenario.name}:{seed}")
        rng = self.rng
        self.n = size or rng.choice(scenario.sizes)
        self.now = 0
        self.tick_no = 0
        self.heap: list = []
        self.seq = 0
        self.nodes: dict[int, SimNode] = {}
        self.checker = Checker(self)
        self.blocked: set[tuple[int, int]] = set()
        self.link_clock: dict[tuple[int, int], int] = {}
        self.final_snaps: dict[tuple[int, int], int] = {}
        self.transfer_targets: set[int] = set()  # every node a transfer was asked for
        self.final = False
        self.final_start = 0
        self.final_stage = 0
        self.final_data: bytes | None = None
        self.final_index = 0
        self.final_tries = 0
        self.next_final_try = 0
        self.done = False
        self.final_members: list[SimNode] = []
        # Per-run Raft knobs.
        small = rng.random() < scenario.small_msgs
        self.max_size = rng.choice((1, 40, 200)) if small else 1 << 20
        self.max_inflight = rng.choice((1, 2, 4)) if small else 256
        self.max_apply = rng.choice((1, 100)) if small else 8 << 20
        classic = rng.random() < scenario.classic
        self.pre_vote = not classic or rng.random() < 0.5
        self.check_quorum = not classic or rng.random() < 0.5 or scenario.lease_read
        # Client bookkeeping.
        self.prop_seq = 0
        self.proposals: dict[bytes, int] = {}  # data -> proposing node
        self.acked: dict[bytes, int] = {}  # data -> index, once applied on the proposer
        self.read_seq = 0
        self.members = Membership(self) if scenario.membership else None
        self.stats = {
            "msgs": 0,
            "delivered": 0,
            "crashes": 0,
            "partitions": 0,
            "snap_msgs": 0,
            "transfers": 0,
            "conf_changes": 0,
            "readies": 0,
            "lost_writes": 0,
            "power_failures": 0,
            "members_added": 0,
            "members_removed": 0,
            "lease_reads": 0,  # reads asked on a leader holding its lease
        }

    # ---------------------------------------------------------------- tracing
    def trace(self, msg: str) -> None:
        if self.verbose:
            print(f"[{self.tick_no:4d}.{int(self.now) % TICK}] {msg}", file=sys.stderr)

    # ---------------------------------------------------------------- events
    def push(self, t: float, kind: int, a=None, b=None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def run(self) -> dict:
        voters = tuple(range(1, self.n + 1))
        learners = tuple(range(self.n + 1, self.n + 1 + self.sc.learners))
        for nid in voters + learners:
            node = self.nodes[nid] = SimNode(nid, voters, learners)
            self.start(node)
        self.trace(
            f"scenario {self.sc.name} seed {self.seed}: {self.n} nodes, max_size={self.max_size} "
            f"inflight={self.max_inflight} pre_vote={self.pre_vote} check_quorum={self.check_quorum}"
        )
        self.push(TICK, EV_TICK)
        heap = self.heap
        while not self.done:
            t, _, kind, a, b = heapq.heappop(heap)
            self.now = t
            if kind == EV_DELIVER:
                self.on_deliver(a, b)
            elif kind == EV_READY:
                self.on_ready(a, b)
            elif kind == EV_DONE:
                self.on_done(a, b)
            elif kind == EV_NODE_TICK:
                self.on_node_tick(a, b)
            else:
                self.on_tick()
        self.final_checks()
        st = dict(self.stats)
        st.update(
            ticks=self.tick_no,
            elections=self.checker.elections,
            committed=self.checker.max_committed,
            acked=len(self.acked),
            reads=self.checker.reads_answered,
            nodes=self.n,
        )
        return st

    # ------------------------------------------------------------- node life
    def start(self, node: SimNode) -> None:
        rng = self.rng
        sm = node.sm
        snap = node.disk.live.snapshot()
        if snap.meta.index > sm.applied:
            # Like a server loading its snapshot file at start.
            sm.restore(snap.data)
            self.checker.on_snapshot_state(node, snap)
            sm.checkpoint()
        cfg = Config(
            id=node.id,
            election_tick=10,
            heartbeat_tick=1,
            max_size_per_msg=self.max_size,
            max_inflight_msgs=self.max_inflight,
            max_committed_size_per_ready=self.max_apply,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            read_only=ReadOnlyOption.LEASE_BASED if self.sc.lease_read else ReadOnlyOption.SAFE,
            max_clock_drift=self.sc.lease_bound,
            applied=sm.applied,
            rng=random.Random(rng.getrandbits(64)),
        )
        cls = _TransferKeepsLease if self.sc.unsafe == "transfer" else Raft
        r = node.raft = cls(cfg, node.disk.live)
        if self.sc.unsafe == "restart":
            r._since_leader = cfg.election_tick  # demo: a restarted node votes at once
        node.inc += 1
        node.mem_committed = r.log.committed
        node.persisted_commit = r.log.committed
        node.ready_scheduled = False
        node.inflight = None
        node.async_mode = rng.random() < self.sc.async_ready
        node.started_at = self.tick_no
        node.restart_at = -1
        if self.sc.drift:
            lo, hi = TICK, TICK / (1 - self.sc.drift)
            node.period = rng.choice((lo, hi, rng.uniform(lo, hi), 0.0))
            self.push(self.now + rng.uniform(0, hi), EV_NODE_TICK, node.id, node.inc)
        self.check_conf(node, "restart")
        self.after(node)

    def crash(self, node: SimNode) -> None:
        self.trace(f"crash n{node.id} ({node.raft.role.name}, term {node.raft.term})")
        self.stats["crashes"] += 1
        node.raft = None
        node.inflight = None
        node.ready_scheduled = False
        node.inc += 1
        before = node.disk.lost
        node.disk.crash(self.rng)
        self.stats["lost_writes"] += node.disk.lost - before
        node.sm.crash()
        node.restart_at = self.tick_no + self.rng.randint(*self.sc.restart_after)

    def destroy(self, nid: int) -> None:
        node = self.nodes[nid]
        self.trace(f"destroy removed node n{nid}")
        node.raft = None
        node.inflight = None
        node.inc += 1
        node.destroyed = True

    def check_conf(self, node: SimNode, when: str) -> None:
        """Raft's configuration must match the application's view once Raft
        has caught up with what the state machine applied."""
        r = node.raft
        if r.log.applied < node.sm.applied or r.log.unstable_snapshot is not None or node.inflight is not None:
            return
        cs = r.conf_state()
        v, l = node.sm.conf()
        if cs.voters != v or cs.learners != l:
            self.checker.fail(
                f"n{node.id} ({when}) Raft conf {cs.voters}/{cs.learners} differs from the applied "
                f"configuration {v}/{l} at applied index {node.sm.applied}"
            )

    # ---------------------------------------------------------------- driver
    def after(self, node: SimNode) -> None:
        """Called after every call into a node's Raft."""
        r = node.raft
        if r is None:
            return
        self.checker.observe(node)
        if not node.ready_scheduled and node.inflight is None and r.has_ready():
            node.ready_scheduled = True
            self.push(self.now + self.rng.randint(*self.sc.ready_delay), EV_READY, node.id, node.inc)

    def on_ready(self, nid: int, inc: int) -> None:
        node = self.nodes[nid]
        if node.inc != inc or node.raft is None:
            return
        node.ready_scheduled = False
        r = node.raft
        if not r.has_ready():
            return
        rd = r.ready()
        self.stats["readies"] += 1
        prev = node.disk.live.hard_state
        needs_sync = bool(rd.entries) or rd.snapshot is not None or (
            rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) != (prev.term, prev.vote)
        )
        if needs_sync and not rd.must_sync:
            self.checker.fail(f"n{nid} Ready needs a sync but must_sync is False")
        if node.async_mode:
            hs = rd.hard_state
            if (
                self.sc.early_leader_msgs
                and r.role == Role.LEADER
                and (hs is None or (hs.term, hs.vote) == (prev.term, prev.vote))
            ):
                # The driver's optimisation (Raft thesis 10.2.1): a leader's
                # appends and heartbeats leave before its own fsync -- but not
                # from a Ready that changes the term or vote (a single voter's
                # first Ready as leader): the term they carry must be durable.
                early = [m for m in rd.messages if m.type in (MsgType.APP, MsgType.HEARTBEAT)]
                rd.messages = [m for m in rd.messages if m.type not in (MsgType.APP, MsgType.HEARTBEAT)]
                for m in early:
                    self.send(nid, m)
            node.inflight = rd
            self.push(self.now + self.rng.randint(*self.sc.fsync_delay), EV_DONE, nid, inc)
        else:
            self.finish(node, rd)

    def on_done(self, nid: int, inc: int) -> None:
        node = self.nodes[nid]
        if node.inc != inc or node.raft is None:
            return
        rd, node.inflight = node.inflight, None
        self.finish(node, rd)

    def finish(self, node: SimNode, rd) -> None:
        r = node.raft
        ck = self.checker
        # 1. persist
        node.disk.save(rd.hard_state, rd.entries, rd.snapshot, rd.must_sync)
        ck.on_persist(node, rd)
        # 2. send
        for m in rd.messages:
            self.send(node.id, m)
        # 3. apply
        sm = node.sm
        if rd.snapshot is not None:
            self.trace(f"n{node.id} installs snapshot {rd.snapshot.meta.index}/{rd.snapshot.meta.term}")
            sm.restore(rd.snapshot.data)
            ck.on_snapshot_state(node, rd.snapshot)
            sm.checkpoint()
        for e in rd.committed_entries:
            typ = int(e.type)
            ck.on_apply(node, e.index, e.term, typ, e.data)
            cc = ConfChange.decode(e.data) if typ == EntryType.CONF_CHANGE else None
            if e.index <= sm.applied:
                pass  # applied before a crash; the state machine skips it
            elif e.index != sm.applied + 1:
                ck.fail(f"n{node.id} applies {e.index} after {sm.applied}: gap")
            else:
                sm.apply(e)
                if cc is not None:
                    apply_membership(sm.voters, sm.learners, cc)
            if e.data and self.proposals.get(e.data) == node.id and e.data not in self.acked:
                self.acked[e.data] = e.index
            if cc is not None:
                self.trace(f"n{node.id} applies conf change {cc.type.name} n{cc.node_id} at {e.index}")
                r.apply_conf_change(cc)
                ck.observe(node)
        # 4. advance
        r.advance(rd)
        for rs in rd.read_states:
            ck.on_read_state(node, rs)
        if rd.committed_entries or rd.snapshot is not None:
            if self.rng.random() < self.sc.checkpoint_rate:
                sm.checkpoint()
            self.maybe_compact(node)
            self.check_conf(node, "apply")
        self.after(node)

    def maybe_compact(self, node: SimNode) -> None:
        count = self.sc.snapshot_count
        r = node.raft
        if not count or node.inflight is not None or r.log.unstable_snapshot is not None:
            return
        sm = node.sm
        applied = r.log.applied
        st = node.disk.live
        if applied != sm.applied or applied - st.first_index() + 1 < count:
            return
        node.disk.compact(SnapshotMeta(applied, 0, r.conf_state()), sm.serialize())
        sm.checkpoint()

    # --------------------------------------------------------------- network
    def send(self, frm: int, m: Message) -> None:
        sc = self.sc
        rng = self.rng
        self.stats["msgs"] += 1
        if m.frm != frm:
            # The transport refuses a message whose sender is not the peer.
            self.checker.fail(f"n{frm} sends {m.type.name} to n{m.to} with frm={m.frm}")
        if m.type == MsgType.TIMEOUT_NOW and m.to not in self.transfer_targets:
            self.checker.fail(f"n{frm} hands leadership to n{m.to}, which no transfer asked for")
        if m.type == MsgType.SNAP:
            self.stats["snap_msgs"] += 1
            if self.final:
                # On a healthy network one copy of a snapshot must be enough
                # (a newer one is fine: the leader compacted again meanwhile).
                key = (m.to, m.snapshot.meta.index)
                k = self.final_snaps[key] = self.final_snaps.get(key, 0) + 1
                if k > MAX_FINAL_SNAPS:
                    self.checker.fail(
                        f"n{frm} sent snapshot {key[1]} to n{m.to} {k} times after the network healed"
                    )
        m = copy_message(m)
        copies = 1 if self.final or rng.random() >= sc.dup else 2
        link = (frm, m.to)
        for _ in range(copies):
            t = self.now + rng.randint(*sc.delay)
            if not self.final and rng.random() < sc.long_delay:
                # Late delivery (a retransmission, a reconnect): reorders.
                t += rng.randint(0, sc.long_delay_max)
            else:
                # Otherwise a link is a stream: FIFO, like the real transport.
                t = max(t, self.link_clock.get(link, 0))
                self.link_clock[link] = t
            self.push(t, EV_DELIVER, m, frm)

    def on_deliver(self, m: Message, frm: int) -> None:
        to = m.to
        node = self.nodes.get(to)
        blocked = (frm, to) in self.blocked
        if node is None or node.raft is None or blocked or (not self.final and self.rng.random() < self.sc.drop):
            sender = self.nodes.get(frm)
            if sender is not None and sender.raft is not None:
                if blocked and self.rng.random() < self.sc.unreachable_report:
                    sender.raft.report_unreachable(to)
                    self.after(sender)
                if m.type == MsgType.SNAP:
                    sender.raft.report_snapshot(to, False)
                    self.after(sender)
            return
        self.stats["delivered"] += 1
        if self.verbose > 1:
            self.trace(
                f"n{frm}->n{to} {m.type.name} t{m.term} i{m.index} lt{m.log_term} c{m.commit} "
                f"n={len(m.entries)}{' reject' if m.reject else ''} hint={m.reject_hint}"
            )
        try:
            node.raft.step(copy_message(m))
        except ProposalDropped:
            pass
        self.after(node)
        if m.type == MsgType.SNAP:
            sender = self.nodes.get(frm)
            if sender is not None and sender.raft is not None:
                sender.raft.report_snapshot(to, True)
                self.after(sender)

    # ------------------------------------------------------------------ time
    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def leader(self) -> SimNode | None:
        best = None
        for n in self.nodes.values():
            r = n.raft
            if r is not None and r.role == Role.LEADER and (best is None or r.term > best.raft.term):
                best = n
        return best

    def on_node_tick(self, nid: int, inc: int) -> None:
        """Drift runs: each node ticks on its own clock (see Scenario.drift)."""
        node = self.nodes[nid]
        if node.inc != inc or node.raft is None:
            return
        node.raft.tick()
        self.after(node)
        period = node.period or self.rng.uniform(TICK, TICK / (1 - self.sc.drift))
        self.push(self.now + period, EV_NODE_TICK, nid, inc)

    def on_tick(self) -> None:
        self.tick_no += 1
        rng = self.rng
        sc = self.sc
        if not self.final and self.tick_no >= sc.chaos_ticks:
            self.start_final()
        nodes = [] if sc.drift else self.live()
        rng.shuffle(nodes)
        for node in nodes:
            if not self.final and rng.random() < sc.tick_skip:
                continue
            if node.raft is None:
                continue
            node.raft.tick()
            self.after(node)
        if not self.final:
            self.chaos()
        for node in list(self.nodes.values()):
            if node.raft is None and not node.destroyed and 0 <= node.restart_at <= self.tick_no:
                self.trace(f"restart n{node.id}")
                self.start(node)
        self.clients()
        if self.members is not None:
            self.members.step()
        if self.final:
            self.final_step()
        if not self.done:
            self.push(self.now + TICK, EV_TICK)

    # ---------------------------------------------------------------- faults
    def chaos(self) -> None:
        rng = self.rng
        sc = self.sc
        if self.blocked and rng.random() < sc.heal_rate:
            self.trace("heal")
            self.blocked.clear()
        if rng.random() < sc.partition_rate:
            self.partition()
        if rng.random() < sc.power_failure:
            self.trace("power failure: every node crashes")
            self.stats["power_failures"] += 1
            for node in self.live():
                self.crash(node)
        if rng.random() < sc.crash_rate:
            down = sum(1 for n in self.nodes.values() if n.raft is None and not n.destroyed)
            live = self.live()
            if live and down < sc.max_down:
                lead = self.leader()
                victim = lead if lead is not None and rng.random() < 0.4 else rng.choice(live)
                self.crash(victim)

    def partition(self) -> None:
        rng = self.rng
        ids = sorted(n.id for n in self.nodes.values() if not n.destroyed)
        lead = self.leader()
        kind = rng.random()
        if kind < 0.3 and lead is not None:
            groups = [[lead.id], [i for i in ids if i != lead.id]]
        elif kind < 0.55:
            x = rng.choice(ids)
            groups = [[x], [i for i in ids if i != x]]
        else:
            k = rng.choice((2, 2, 3))
            groups = [[] for _ in range(k)]
            for i in ids:
                groups[rng.randrange(k)].append(i)
        blocked = set()
        for gi, g in enumerate(groups):
            for gj, h in enumerate(groups):
                if gi != gj:
                    for a in g:
                        for b in h:
                            blocked.add((a, b))
        if rng.random() < self.sc.one_way and len(ids) > 1:
            a, b = rng.sample(ids, 2)
            blocked.add((a, b))
        self.blocked = blocked
        self.stats["partitions"] += 1
        self.trace(f"partition {groups} ({len(blocked)} links cut)")

    # --------------------------------------------------------------- clients
    def _propose(self, node: SimNode, datas: list[bytes]) -> None:
        for d in datas:
            self.proposals[d] = node.id
        try:
            if len(datas) == 1:
                node.raft.propose(datas[0])
            else:
                node.raft.propose_many(datas)
        except ProposalDropped:
            pass
        self.after(node)

    def clients(self) -> None:
        rng = self.rng
        sc = self.sc
        live = self.live()
        if not live or self.final:
            return
        lead = self.leader()
        # Client back-pressure (like a server refusing requests when too far
        # behind): the offered load may exceed what tiny windows can carry.
        busy = lead is not None and lead.raft.log.last_index() - lead.raft.log.committed > MAX_BACKLOG
        if not busy and rng.random() < sc.propose_rate:
            node = lead if lead is not None and rng.random() >= sc.follower_propose else rng.choice(live)
            datas = []
            for _ in range(rng.randint(1, sc.batch_max)):
                self.prop_seq += 1
                datas.append(b"p%d.%d" % (node.id, self.prop_seq))
            self._propose(node, datas)
        for _ in range(sc.reads_per_tick):
            if rng.random() < sc.read_rate:
                node = rng.choice(live)
                self.read_seq += 1
                ctx = b"r%d" % self.read_seq
                self.checker.on_read_request(node, ctx)
                if node.raft.role == Role.LEADER and node.raft._lease_held():
                    self.stats["lease_reads"] += 1
                try:
                    node.raft.read_index(ctx)
                except ProposalDropped:
                    pass
                self.after(node)
        if rng.random() < sc.transfer_rate:
            lead = self.leader()
            if lead is not None:
                voters = [v for v in lead.raft.conf_state().voters if v != lead.id]
                if voters:
                    target = rng.choice(voters)
                    via = lead if rng.random() < 0.7 else rng.choice(live)
                    self.stats["transfers"] += 1
                    self.trace(f"transfer leadership n{lead.id} -> n{target} (asked on n{via.id})")
                    self.transfer_targets.add(target)
                    via.raft.transfer_leader(target)
                    self.after(via)

    # ----------------------------------------------------------------- final
    def start_final(self) -> None:
        self.final = True
        self.final_start = self.tick_no
        self.trace("=== final phase: heal, restart everything, stop faults ===")
        self.blocked.clear()
        for node in list(self.nodes.values()):
            if node.raft is None and not node.destroyed:
                self.start(node)

    def _members(self, lead: SimNode) -> list[SimNode]:
        cs = lead.raft.conf_state()
        out = []
        for nid in cs.voters + cs.learners:
            n = self.nodes.get(nid)
            if n is not None and not n.destroyed:
                out.append(n)
        return out

    def final_step(self) -> None:
        elapsed = self.tick_no - self.final_start
        if self.final_stage == 0:
            if self.final_data is not None and self.final_data in self.acked:
                self.final_index = self.acked[self.final_data]
                self.final_stage = 1
                self.trace(f"final proposal committed at {self.final_index} after {elapsed} ticks")
            elif self.tick_no >= self.next_final_try:
                lead = self.leader()
                if lead is not None:
                    self.final_tries += 1
                    self.final_data = b"final.%d" % self.final_tries
                    self._propose(lead, [self.final_data])
                    self.next_final_try = self.tick_no + 20
        if self.final_stage == 1:
            lead = self.leader()
            if lead is not None and lead.raft.conf_state().voters:
                members = self._members(lead)
                target = max(self.final_index, max(self.acked.values(), default=0))
                if all(n.raft is not None and n.sm.applied >= target for n in members):
                    self.final_members = members
                    self.done = True
                    return
        if elapsed > FINAL_TICKS:
            lead = self.leader()
            where = "no leader" if lead is None else f"leader n{lead.id} term {lead.raft.term}"
            state = ", ".join(
                f"n{n.id}:{n.raft.role.name if n.raft else 'down'}"
                f"{'' if not n.raft else f' t{n.raft.term} c{n.raft.log.committed} a{n.sm.applied}'}"
                for n in self.nodes.values()
                if not n.destroyed
            )
            self.checker.fail(
                f"no progress {FINAL_TICKS} ticks after healing (stage {self.final_stage}, {where}): {state}"
            )

    def final_checks(self) -> None:
        for n in self.final_members:
            ents = n.sm.entries
            for i, e in enumerate(ents):
                if e[0] != i + 1:
                    self.checker.fail(f"n{n.id} state machine entries not contiguous at {i + 1}")
            for data, idx in self.acked.items():
                if idx > len(ents) or ents[idx - 1][3] != data:
                    self.checker.fail(f"acknowledged proposal {data!r} (index {idx}) missing on n{n.id}")


class Membership:
    """Drives membership changes under load, one at a time, retrying lost
    proposals: add a learner, wait until it caught up, promote it; remove a
    voter (often the leader); a removed node never comes back under its id."""

    RETRY = 20
    GIVE_UP = 250

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.phase: str | None = None
        self.target = 0
        self.t0 = 0
        self.last_try = 0
        self.next_action = sim.sc.member_every
        self.next_id = sim.n + sim.sc.learners + 1
        self.to_destroy: dict[int, int] = {}

    def _propose(self, lead: SimNode, cc: ConfChange) -> None:
        sim = self.sim
        via = lead
        if sim.rng.random() < 0.25:
            via = sim.rng.choice(sim.live())
        sim.stats["conf_changes"] += 1
        sim.trace(f"propose {cc.type.name} n{cc.node_id} via n{via.id}")
        try:
            via.raft.propose_conf_change(cc)
        except ProposalDropped:
            pass
        sim.after(via)
        self.last_try = sim.tick_no

    def _begin(self, phase: str, target: int, lead: SimNode, cc: ConfChange) -> None:
        self.phase, self.target, self.t0 = phase, target, self.sim.tick_no
        self._propose(lead, cc)

    def _finish(self) -> None:
        self.phase = None
        self.next_action = self.sim.tick_no + self.sim.sc.member_every

    def step(self) -> None:
        sim = self.sim
        tick = sim.tick_no
        for y, deadline in list(self.to_destroy.items()):
            n = sim.nodes[y]
            if tick >= deadline or (n.raft is not None and y not in n.sm.voters and y not in n.sm.learners):
                del self.to_destroy[y]
                if not n.destroyed:
                    sim.destroy(y)
        lead = sim.leader()
        if lead is None:
            return
        r = lead.raft
        cs = r.conf_state()
        members = set(cs.voters) | set(cs.learners)
        x = self.target
        if self.phase is None:
            if sim.final or tick < self.next_action:
                return
            ghosts = [m for m in sorted(members) if m not in sim.nodes or sim.nodes[m].destroyed]
            if ghosts:
                self._begin("remove", ghosts[0], lead, ConfChange(ConfChangeType.REMOVE_NODE, ghosts[0]))
                return
            nv = len(cs.voters)
            add = nv < sim.n or (nv == sim.n and sim.rng.random() < 0.5)
            if len(members) > sim.n + 1:
                add = False
            if add:
                x = self.next_id
                self.next_id += 1
                node = sim.nodes[x] = SimNode(x, cs.voters, tuple(sorted(cs.learners + (x,))))
                sim.trace(f"create node n{x} to join as a learner")
                sim.start(node)
                self._begin("learner", x, lead, ConfChange(ConfChangeType.ADD_LEARNER, x))
            elif nv >= 3:
                others = [v for v in cs.voters if v != lead.id]
                y = lead.id if sim.rng.random() < 0.35 or not others else sim.rng.choice(others)
                self._begin("remove", y, lead, ConfChange(ConfChangeType.REMOVE_NODE, y))
            return
        if self.phase == "learner":
            if x in cs.voters:
                self._finish()
            elif x in cs.learners:
                pr = r.progress().get(x)
                if pr is not None and pr[0] >= r.log.committed:
                    self.phase = "promote"
                    self._propose(lead, ConfChange(ConfChangeType.ADD_NODE, x))
                elif tick - self.t0 > self.GIVE_UP:
                    self._begin("remove", x, lead, ConfChange(ConfChangeType.REMOVE_NODE, x))
            elif tick - self.t0 > self.GIVE_UP:
                self.phase = None  # never joined; a late ADD_LEARNER makes a ghost, removed later
                self.to_destroy[x] = tick
                self._finish()
            elif tick - self.last_try > self.RETRY:
                self._propose(lead, ConfChange(ConfChangeType.ADD_LEARNER, x))
        elif self.phase == "promote":
            if x in cs.voters:
                sim.stats["members_added"] += 1
                self._finish()
            elif x not in members:
                self._finish()
            elif tick - self.last_try > self.RETRY:
                self._propose(lead, ConfChange(ConfChangeType.ADD_NODE, x))
        elif self.phase == "remove":
            if x not in members:
                sim.stats["members_removed"] += 1
                self.to_destroy.setdefault(x, tick + 60)
                self._finish()
            elif tick - self.last_try > self.RETRY:
                self._propose(lead, ConfChange(ConfChangeType.REMOVE_NODE, x))


def run_one(seed: int, scenario: Scenario, verbose: int = 0) -> tuple[bool, str, dict]:
    """Returns (ok, message, stats)."""
    sim = Sim(seed, scenario, verbose)
    try:
        stats = sim.run()
    except Violation as e:
        return False, f"tick {sim.tick_no}: {e}", {}
    except Exception as e:  # a crash inside the core is a failure too
        import traceback

        tb = traceback.format_exc() if verbose else ""
        return False, f"tick {sim.tick_no}: {type(e).__name__}: {e}\n{tb}", {}
    return True, "", stats
