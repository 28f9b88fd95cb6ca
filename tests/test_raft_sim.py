"""Raft core: the fast deterministic simulation run, and targeted unit tests
in the etcd-io/raft style.

The simulation (tests/sim) runs whole 3- and 5-node clusters under faults and
checks the Raft invariants at every step; ``python -m tests.sim --seeds 5000``
is the long run. The unit tests below pin single behaviours with a small
synchronous network (``Net``) where every node persists its Ready at once.
"""
from __future__ import annotations

import os
import random

import pytest

from raft.core import Config, Raft, ReadOnlyOption
from raft.storage import MemoryStorage
from raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ProposalDropped,
    Role,
    Snapshot,
    SnapshotMeta,
)
from tests.sim import SCENARIOS, run_one
from tests.sim.scenarios import DEMOS
from tests.sim.cluster import copy_message

# --------------------------------------------------------------------------
# The fast simulation run (part of the normal test command).
# --------------------------------------------------------------------------

FAST_SEEDS = int(os.environ.get("RAFT_SIM_SEEDS", "30"))  # per scenario


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_simulation(scenario: str) -> None:
    sc = SCENARIOS[scenario]
    failures = []
    for seed in range(FAST_SEEDS):
        ok, msg, _ = run_one(seed, sc)
        if not ok:
            failures.append(
                f"seed {seed} scenario {scenario}: {msg}\n"
                f"  replay: python -m tests.sim --seed {seed} --scenario {scenario} -v"
            )
    assert not failures, "\n".join(failures)


def test_simulation_replays_exactly() -> None:
    a = run_one(3, SCENARIOS["chaos"])
    b = run_one(3, SCENARIOS["chaos"])
    assert a == b and a[0]


# --------------------------------------------------------------------------
# A small synchronous network for unit tests.
# --------------------------------------------------------------------------


def cc_entry(term: int, index: int, typ: ConfChangeType, node: int) -> Entry:
    return Entry(term, index, EntryType.CONF_CHANGE, ConfChange(typ, node).encode())


class Net:
    """Nodes whose Readies are handled at once (persist, queue messages,
    apply, advance); ``deliver()`` steps queued messages until quiet."""

    def __init__(
        self,
        voters=(1, 2, 3),
        learners=(),
        stores: dict[int, MemoryStorage] | None = None,
        **cfg,
    ) -> None:
        self.cfg = cfg
        self.stores: dict[int, MemoryStorage] = {}
        self.rafts: dict[int, Raft] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.reads: dict[int, list] = {}
        self.queue: list[Message] = []
        self.sent: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        for nid in tuple(voters) + tuple(learners):
            st = (stores or {}).get(nid) or MemoryStorage(voters, learners)
            self.add(nid, st)

    def add(self, nid: int, st: MemoryStorage, applied: int = 0) -> Raft:
        self.stores[nid] = st
        r = self.rafts[nid] = Raft(Config(nid, rng=random.Random(nid), applied=applied, **self.cfg), st)
        self.applied.setdefault(nid, [])
        self.reads.setdefault(nid, [])
        return r

    # -- driving ----------------------------------------------------------------
    def process(self, nid: int) -> None:
        r = self.rafts[nid]
        st = self.stores[nid]
        while r.has_ready():
            rd = r.ready()
            st.save(rd.hard_state, rd.entries, rd.snapshot)
            for m in rd.messages:
                assert m.frm == nid, f"n{nid} sends {m.type.name} with frm={m.frm}"
                self.sent.append(m)
                self.queue.append(m)
            for e in rd.committed_entries:
                self.applied[nid].append(e)
                if e.type == EntryType.CONF_CHANGE:
                    r.apply_conf_change(ConfChange.decode(e.data))
            r.advance(rd)
            self.reads[nid].extend(rd.read_states)

    def process_all(self) -> None:
        for nid in self.rafts:
            if nid not in self.down:
                self.process(nid)

    def blocked(self, m: Message) -> bool:
        return m.to in self.down or m.frm in self.down or (m.frm, m.to) in self.cut or m.to not in self.rafts

    def deliver(self, limit: int = 100000, transform=None) -> None:
        """Deliver until quiet; ``transform`` may drop (None) or edit messages."""
        self.process_all()
        n = 0
        while self.queue:
            n += 1
            assert n < limit, "network did not quiesce"
            m = self.queue.pop(0)
            if self.blocked(m):
                continue
            m = copy_message(m)
            if transform is not None and (m := transform(m)) is None:
                continue
            try:
                self.rafts[m.to].step(m)
            except ProposalDropped:
                pass
            self.process(m.to)
            if m.type == MsgType.SNAP:
                self.rafts[m.frm].report_snapshot(m.to, True)
                self.process(m.frm)

    def tick(self, n: int = 1, nodes=None) -> None:
        for _ in range(n):
            for nid in nodes or list(self.rafts):
                if nid not in self.down:
                    self.rafts[nid].tick()
            self.deliver()

    def elect(self, nid: int) -> None:
        self.rafts[nid].campaign()
        self.deliver()
        assert self.rafts[nid].role == Role.LEADER

    def isolate(self, nid: int) -> None:
        for other in self.rafts:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()

    def propose(self, nid: int, data: bytes) -> None:
        self.rafts[nid].propose(data)
        self.deliver()

    def sent_to(self, nid: int, typ: MsgType) -> list[Message]:
        return [m for m in self.sent if m.to == nid and m.type == typ]


def log_of(r: Raft) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in r.log.entries(r.log.first_index(), r.log.last_index() + 1)]


# --------------------------------------------------------------------------
# PreVote + CheckQuorum
# --------------------------------------------------------------------------


def test_rejoining_node_does_not_depose_healthy_leader() -> None:
    net = Net()
    net.elect(1)
    term = net.rafts[1].term
    net.isolate(3)
    net.tick(100)
    # Pre-votes fail while cut off: the isolated node's term never rises.
    assert net.rafts[3].term == term
    assert net.rafts[1].role == Role.LEADER
    net.heal()
    net.tick(50)
    assert net.rafts[1].role == Role.LEADER and net.rafts[1].term == term
    assert net.rafts[3].lead == 1 and net.rafts[3].term == term
    net.propose(1, b"after")
    assert net.applied[3][-1].data == b"after"


def test_vote_ignored_within_leader_lease() -> None:
    # A node with a higher term (e.g. restarted after campaigning alone)
    # asks for votes: followers that hear from the leader ignore it.
    net = Net()
    net.elect(1)
    term = net.rafts[1].term
    net.rafts[2].step(Message(MsgType.VOTE, to=2, frm=3, term=term + 5, index=100, log_term=term + 4))
    assert net.rafts[2].term == term and net.rafts[2].lead == 1
    net.rafts[1].step(Message(MsgType.PRE_VOTE, to=1, frm=3, term=term + 5, index=100, log_term=term + 4))
    net.process(1)
    assert net.rafts[1].role == Role.LEADER and net.rafts[1].term == term


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    net = Net()
    net.elect(1)
    net.isolate(1)
    net.tick(2 * net.rafts[1].cfg.election_tick + 1, nodes=[1])
    assert net.rafts[1].role == Role.FOLLOWER


# --------------------------------------------------------------------------
# Fast back-off
# --------------------------------------------------------------------------


def test_fast_backoff_long_divergent_log() -> None:
    common = [Entry(1, i) for i in range(1, 11)]
    lead_log = common + [Entry(3, i) for i in range(11, 61)]
    div_log = common + [Entry(2, i) for i in range(11, 211)]  # 200 divergent entries
    stores = {}
    for nid, ents, term in ((1, lead_log, 3), (2, div_log, 3), (3, lead_log, 3)):
        st = MemoryStorage((1, 2, 3))
        st.save(HardState(term, NONE, 10), ents, None)
        stores[nid] = st
    net = Net(stores=stores)
    net.elect(1)
    net.deliver()
    rejects = [m for m in net.sent if m.frm == 2 and m.type == MsgType.APP_RESP and m.reject]
    assert 1 <= len(rejects) <= 2, len(rejects)
    assert log_of(net.rafts[2]) == log_of(net.rafts[1])
    assert net.rafts[2].log.committed == net.rafts[1].log.committed == net.rafts[1].log.last_index()


def test_fast_backoff_follower_with_short_log() -> None:
    lead_log = [Entry(1, i) for i in range(1, 101)]
    stores = {1: MemoryStorage((1, 2, 3)), 3: MemoryStorage((1, 2, 3))}
    for nid in (1, 3):
        stores[nid].save(HardState(1, NONE, 0), lead_log, None)
    net = Net(stores=stores)
    net.elect(1)
    rejects = [m for m in net.sent if m.frm == 2 and m.type == MsgType.APP_RESP and m.reject]
    assert len(rejects) == 1
    assert log_of(net.rafts[2]) == log_of(net.rafts[1])


# --------------------------------------------------------------------------
# The commit rule (Figure 8)
# --------------------------------------------------------------------------


def test_old_term_entry_not_committed_by_counting_replicas() -> None:
    # Leader of term 3 holds entry 2 from term 2; followers ack entry 2 but
    # not the leader's own term-3 entry: entry 2 must stay uncommitted.
    st = MemoryStorage((1, 2, 3))
    st.save(HardState(2, NONE, 1), [Entry(1, 1), Entry(2, 2)], None)
    r = Raft(Config(1, rng=random.Random(1)), st)
    r.campaign()
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=3))
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=3))
    assert r.role == Role.LEADER and r.term == 3 and r.log.last_index() == 3
    rd = r.ready()  # the leader's own entry counts once it is durable
    st.save(rd.hard_state, rd.entries, rd.snapshot)
    r.advance(rd)
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=3, index=2))
    r.step(Message(MsgType.APP_RESP, to=1, frm=3, term=3, index=2))
    assert r.log.committed == 1, "an old-term entry was committed by counting replicas"
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=3, index=3))
    assert r.log.committed == 3  # the current-term entry commits the old one too


def test_figure8_overwritten_entry_was_never_committed() -> None:
    """Raft paper, Figure 8, played on five nodes (classic Raft: no PreVote,
    no CheckQuorum leases, so the old leader's rivals can be elected)."""
    net = Net(voters=(1, 2, 3, 4, 5), pre_vote=False, check_quorum=False)
    net.elect(1)  # term 1; its empty entry 1 is committed everywhere
    votes = (MsgType.VOTE, MsgType.VOTE_RESP)

    def among(*ids):
        return lambda m: m if m.frm in ids and m.to in ids else None

    def votes_among(*ids):
        return lambda m: m if m.type in votes and m.frm in ids and m.to in ids else None

    def win(nid, *voters):
        r = net.rafts[nid]
        for _ in range(5):
            r.campaign()
            net.deliver(transform=votes_among(nid, *voters))
            if r.role == Role.LEADER:
                return r
        raise AssertionError(f"n{nid} not elected")

    # (a) S1 replicates "a" at index 2 to S2 only.
    net.rafts[1].propose(b"a")
    net.deliver(transform=among(1, 2))
    assert net.rafts[2].log.term(2) == 1 and net.rafts[1].log.committed == 1
    # (b) S1 crashes; S5 is elected by S3 and S4 and appends at index 2 alone.
    net.down = {1}
    r5 = win(5, 3, 4)
    r5.propose(b"b")
    net.process(5)
    net.queue.clear()
    t5 = r5.log.term(2)
    assert t5 > 1
    # (c) S5 crashes; S1 restarts and is elected by S2 and S3; it gets entry 2
    # ("a", term 1) onto S3 -- a majority -- but not its own new entry.
    net.down = {5}
    net.add(1, net.stores[1])
    r1 = win(1, 2, 3)

    def only_index_2(m):
        if m.frm not in (1, 2, 3) or m.to not in (1, 2, 3):
            return None
        if m.type == MsgType.APP:
            m.entries = [e for e in m.entries if e.index <= 2]
        return m

    r1.tick()  # heartbeats unpause the probes dropped during the election
    net.deliver(transform=only_index_2)
    assert net.rafts[3].log.term(2) == 1
    assert r1.progress()[2][0] == 2 and r1.progress()[3][0] == 2
    assert r1.log.committed == 1, "entry 2 of term 1 committed by counting replicas"
    # (d) S1 crashes; S5 restarts and wins with S2, S3, S4 (its last term is
    # higher) and overwrites entry 2 everywhere: it was never committed.
    net.down = {1}
    net.add(5, net.stores[5])
    win(5, 2, 3, 4).tick()
    net.deliver(transform=among(2, 3, 4, 5))
    for n in (2, 3, 4, 5):
        assert net.rafts[n].log.term(2) == t5
    assert not any(e.data == b"a" for n in net.applied for e in net.applied[n])


# --------------------------------------------------------------------------
# ReadIndex
# --------------------------------------------------------------------------


def test_read_index_batches_many_reads_into_one_round() -> None:
    net = Net()
    net.elect(1)
    net.propose(1, b"x")
    r = net.rafts[1]
    commit = r.log.committed
    for k in range(20):
        r.read_index(b"ctx%d" % k)
    rd_msgs_before = len(net.sent)
    net.process(1)
    hbs = [m for m in net.sent[rd_msgs_before:] if m.type == MsgType.HEARTBEAT]
    assert len(hbs) == 2, "one heartbeat round (one per follower) for all 20 reads"
    net.deliver()
    got = net.reads[1]
    assert sorted(rs.request_ctx for rs in got) == sorted(b"ctx%d" % k for k in range(20))
    assert all(rs.index == commit for rs in got)


def read_round_in_flight(ctx: bytes) -> tuple[Net, Raft]:
    """A 3-node cluster led by node 1 whose heartbeat round for read ``ctx``
    is queued in the network, not delivered."""
    net = Net()
    net.elect(1)
    r = net.rafts[1]
    r.read_index(ctx)
    net.process(1)
    return net, r


def test_read_index_answered_by_last_round_when_earlier_rounds_lost() -> None:
    net, r = read_round_in_flight(b"a")
    net.queue.clear()  # the first round is lost
    r.read_index(b"b")
    net.deliver()
    assert net.reads[1] == [], "b waits for the round in flight, which never completes"
    net.tick(1)  # the heartbeat tick starts a new round carrying the newest read
    assert [rs.request_ctx for rs in net.reads[1]] == [b"a", b"b"]


def test_reads_arriving_during_a_round_wait_for_the_next_one() -> None:
    # At most one heartbeat round for reads in flight: the reads that arrive
    # meanwhile (the leader's own and forwarded ones) share the next round,
    # and the round in flight, which started before they arrived, never
    # answers them.
    net, r = read_round_in_flight(b"a")
    round1 = [m for m in net.queue if m.type == MsgType.HEARTBEAT]
    assert [m.context for m in round1] == [b"a", b"a"]
    r.read_index(b"b")
    net.rafts[2].read_index(b"c")
    net.process(2)  # c is forwarded: the leader gets it after round 1 left
    net.propose(1, b"x")  # also delivers: round 1's acks, then round 2's
    hbs = [m.context for m in net.sent if m.type == MsgType.HEARTBEAT]
    assert hbs == [b"a", b"a", b"c", b"c"], "exactly two rounds, the second for b and c"
    assert [rs.request_ctx for rs in net.reads[1]] == [b"a", b"b"]
    assert [rs.request_ctx for rs in net.reads[2]] == [b"c"]


def test_round_in_flight_does_not_answer_later_reads() -> None:
    net, r = read_round_in_flight(b"a")
    r.read_index(b"b")  # arrives after round "a" started
    for frm in (2, 3):
        r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=frm, term=r.term, context=b"a"))
    rd = r.ready()
    assert [rs.request_ctx for rs in rd.read_states] == [b"a"]
    assert [m.context for m in rd.messages if m.type == MsgType.HEARTBEAT] == [b"b", b"b"], "next round starts at once"
    r.advance(rd)
    r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=3, term=r.term, context=b"b"))
    assert [rs.request_ctx for rs in r.ready().read_states] == [b"b"]


def test_follower_reads_of_one_turn_share_one_round() -> None:
    net = Net()
    net.elect(1)
    for nid, ctx in ((2, b"p"), (3, b"q")):
        net.rafts[nid].read_index(ctx)
        net.process(nid)
    forwarded = [net.queue.pop(0) for _ in range(2)]
    for m in forwarded:
        net.rafts[1].step(copy_message(m))  # both before the leader's next Ready
    rd = net.rafts[1].ready()
    assert [m.context for m in rd.messages if m.type == MsgType.HEARTBEAT] == [b"q", b"q"]


def test_follower_read_is_forwarded_and_answered() -> None:
    net = Net()
    net.elect(1)
    net.propose(1, b"x")
    net.rafts[3].read_index(b"f")
    net.deliver()
    assert [(rs.index, rs.request_ctx) for rs in net.reads[3]] == [(net.rafts[1].log.committed, b"f")]


def test_read_reaching_a_follower_from_another_node_is_not_misattributed() -> None:
    # Regression (sim seeds 43/transfer, 99/partition with the original core): a follower
    # that received another node's READ_INDEX (sent to a stale leader) forwarded
    # it as its own, so the answer went to the wrong node -- unsafe if both use
    # the same context. Now it is dropped (the asker retries), and every message
    # a node sends has frm == its id, as the transport requires.
    net = Net()
    net.elect(1)
    net.rafts[2].step(Message(MsgType.READ_INDEX, to=2, frm=3, context=b"r"))
    net.deliver()
    assert net.reads[2] == [] and net.reads[3] == []
    net.rafts[3].read_index(b"r")
    net.deliver()
    assert [rs.request_ctx for rs in net.reads[3]] == [b"r"]


def test_read_waits_for_commit_in_current_term() -> None:
    # A new leader's commit index may lag until its own first entry commits.
    st = MemoryStorage((1, 2, 3))
    st.save(HardState(1, NONE, 1), [Entry(1, 1), Entry(1, 2)], None)
    r = Raft(Config(1, rng=random.Random(1)), st)
    r.campaign()
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=2))
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=2))
    assert r.role == Role.LEADER and r.log.committed == 1
    r.read_index(b"early")
    rd = r.ready()
    assert not any(m.context == b"early" for m in rd.messages) and not rd.read_states
    st.save(rd.hard_state, rd.entries, rd.snapshot)
    r.advance(rd)
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=3))
    assert r.log.committed == 3
    rd = r.ready()
    assert any(m.type == MsgType.HEARTBEAT and m.context == b"early" for m in rd.messages)
    r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=3, term=2, context=b"early"))
    assert [(rs.index, rs.request_ctx) for rs in r.ready().read_states] == [(3, b"early")]


def test_single_voter_read_after_restart_waits_for_its_own_entry() -> None:
    # Regression (sim seeds 2, 4, 18 of scenario "single"): a restarted single
    # voter answered reads with its commit index from the hard state, which
    # can lag (commit-only hard states are not synced) -- a stale read. Since
    # the leader counts its own entries only once durable, it must wait for
    # its new term's entry like any leader.
    st = MemoryStorage((1,))
    st.save(HardState(1, 1, 2), [Entry(1, 1), Entry(1, 2), Entry(1, 3)], None)  # 3 was committed
    r = Raft(Config(1, rng=random.Random(1)), st)
    r.campaign()
    assert r.role == Role.LEADER
    r.read_index(b"x")
    rd = r.ready()
    assert not rd.read_states
    st.save(rd.hard_state, rd.entries, rd.snapshot)
    r.advance(rd)
    assert [(rs.index, rs.request_ctx) for rs in r.ready().read_states] == [(4, b"x")]


# --------------------------------------------------------------------------
# Lease reads
# --------------------------------------------------------------------------

LEASE = ReadOnlyOption.LEASE_BASED


def lease_net() -> tuple[Net, Raft]:
    """3 voters with lease reads, elected by ticking (a member ignores votes
    for an election timeout after it starts), leader lease held."""
    net = Net(read_only=LEASE)
    for _ in range(100):
        net.tick()
        leads = [r for r in net.rafts.values() if r.role == Role.LEADER]
        if leads:
            net.tick()  # a heartbeat round, answered: the lease starts
            assert leads[0]._lease_held()
            return net, leads[0]
    raise AssertionError("no leader elected")


def read_round_sent(net: Net, ctx: bytes) -> bool:
    return any(m.type == MsgType.HEARTBEAT and m.context == ctx for m in net.sent)


def test_lease_config() -> None:
    # (election_tick - 1) * (1 - drift) less half a tick (a tick may be that late unnoticed).
    assert Config(1, election_tick=10, read_only=LEASE).lease_ticks == 7
    assert Config(1, election_tick=10, read_only=LEASE, max_clock_drift=0.25).lease_ticks == 6
    with pytest.raises(ValueError, match="check_quorum"):
        Config(1, read_only=LEASE, check_quorum=False).validate()
    with pytest.raises(ValueError, match="too small"):
        Config(1, election_tick=2, read_only=LEASE).validate()
    with pytest.raises(ValueError, match="max_clock_drift"):
        Config(1, read_only=LEASE, max_clock_drift=1.0).validate()


def test_new_lease_cluster_elects_after_one_election_timeout() -> None:
    net, lead = lease_net()
    assert lead.term in (1, 2)
    assert all(r.lead == lead.id for r in net.rafts.values())


def test_lease_read_served_without_a_heartbeat_round() -> None:
    net, lead = lease_net()
    follower = next(i for i in net.rafts if i != lead.id)
    lead.read_index(b"l")
    net.rafts[follower].read_index(b"f")
    net.deliver()
    assert [(rs.index, rs.request_ctx) for rs in net.reads[lead.id]] == [(lead.log.committed, b"l")]
    assert [rs.request_ctx for rs in net.reads[follower]] == [b"f"]
    assert not read_round_sent(net, b"l") and not read_round_sent(net, b"f")


def test_lapsed_lease_falls_back_to_a_heartbeat_round() -> None:
    net, lead = lease_net()
    for f in net.rafts:
        net.cut.add((f, lead.id))  # the followers' answers are lost
    net.tick(lead.cfg.lease_ticks - 1, nodes=[lead.id])
    lead.read_index(b"still")
    net.deliver()
    assert [rs.request_ctx for rs in net.reads[lead.id]] == [b"still"]
    net.tick(1, nodes=[lead.id])  # lease_ticks since the last answered heartbeat left
    lead.read_index(b"lapsed")
    net.deliver()
    assert [rs.request_ctx for rs in net.reads[lead.id]] == [b"still"] and read_round_sent(net, b"lapsed")
    net.heal()
    net.tick(1, nodes=[lead.id])
    assert [rs.request_ctx for rs in net.reads[lead.id]] == [b"still", b"lapsed"]
    lead.read_index(b"renewed")  # the round's answers renewed the lease
    net.deliver()
    assert net.reads[lead.id][-1].request_ctx == b"renewed" and not read_round_sent(net, b"renewed")


def test_stalled_clock_drops_the_lease_until_a_new_heartbeat_is_answered() -> None:
    """The driver reports a late ticker (raft.node._check_clock): answers to
    heartbeats sent before the stall, even ones arriving after it, no longer
    hold the lease; a heartbeat sent afterwards renews it."""
    net, lead = lease_net()
    lead.tick()
    net.process(lead.id)  # a heartbeat round is queued, not yet delivered
    assert any(m.type == MsgType.HEARTBEAT for m in net.queue)
    lead.clock_stalled()
    assert not lead._lease_held()
    lead.read_index(b"after-stall")
    net.deliver()  # the old heartbeats are answered now, then the read's round
    assert read_round_sent(net, b"after-stall")  # a round, not the lease
    assert [rs.request_ctx for rs in net.reads[lead.id]] == [b"after-stall"]
    lead.read_index(b"renewed")  # that round's heartbeats were sent after the stall
    net.deliver()
    assert net.reads[lead.id][-1].request_ctx == b"renewed" and not read_round_sent(net, b"renewed")


def test_stall_before_any_acknowledgement_still_discounts_answers_in_flight() -> None:
    """A stall reported while no answer is counted yet (just after a previous
    stall, or an election) must still discount answers to heartbeats sent
    before it."""
    net, lead = lease_net()
    lead.clock_stalled()  # no acknowledgement counted now
    lead.tick()
    net.process(lead.id)  # heartbeats sent after the first stall, still in flight
    lead.clock_stalled()  # a second stall while they are
    net.deliver()  # their answers arrive after it
    assert not lead._lease_held()
    lead.read_index(b"r")
    net.deliver()
    assert read_round_sent(net, b"r")  # answered by a round, not the old answers


def test_member_without_lease_reads_does_not_count_towards_a_lease() -> None:
    """Only a member that holds its vote after a heartbeat (lease reads on)
    echoes the send tick; a leader never counts the others."""
    net = Net()  # lease reads off everywhere
    net.elect(1)
    net.tick()
    answers = [m for m in net.sent if m.type == MsgType.HEARTBEAT_RESP]
    assert answers and all(m.index == 0 for m in answers)


def test_no_lease_read_once_a_transfer_started() -> None:
    net, lead = lease_net()
    target = next(i for i in net.rafts if i != lead.id)
    no_timeout_now = lambda m: None if m.type == MsgType.TIMEOUT_NOW else m  # noqa: E731
    lead.transfer_leader(target)
    net.deliver(transform=no_timeout_now)
    lead.read_index(b"a")
    net.deliver(transform=no_timeout_now)
    assert read_round_sent(net, b"a") and [rs.request_ctx for rs in net.reads[lead.id]] == [b"a"]
    net.tick(lead.cfg.election_tick)  # the transfer times out; the term goes on
    assert lead.role == Role.LEADER and lead.lead_transferee == NONE
    lead.read_index(b"b")
    net.deliver()
    assert read_round_sent(net, b"b"), "no lease for the rest of the term"


def test_no_lease_read_before_own_term_entry_commits() -> None:
    st = MemoryStorage((1, 2, 3))
    st.save(HardState(1, NONE, 1), [Entry(1, 1), Entry(1, 2)], None)
    r = Raft(Config(1, rng=random.Random(1), read_only=LEASE), st)
    r.campaign()
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=2))
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=2))
    assert r.role == Role.LEADER and r.log.committed == 1
    r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=2, index=r._ticks))
    assert r._lease_held()
    r.read_index(b"early")
    rd = r.ready()
    assert not rd.read_states
    st.save(rd.hard_state, rd.entries, rd.snapshot)
    r.advance(rd)
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=2, index=3))
    rd = r.ready()
    assert [(rs.index, rs.request_ctx) for rs in rd.read_states] == [(3, b"early")]
    assert not any(m.context == b"early" for m in rd.messages), "served on the lease"


def test_deposed_leader_stops_lease_reads_at_once() -> None:
    net, lead = lease_net()
    lead.step(Message(MsgType.APP_RESP, to=lead.id, frm=2 if lead.id != 2 else 3, term=lead.term + 1))
    assert lead.role == Role.FOLLOWER and not lead._lease_held()
    with pytest.raises(ProposalDropped):
        lead.read_index(b"x")


def test_follower_lease_survives_a_step_down() -> None:
    # Any higher-term message makes a follower step down (lead = NONE,
    # election_elapsed = 0): with lease reads it still ignores votes until
    # an election timeout after it last heard from the leader.
    net, lead = lease_net()
    f, x = (i for i in net.rafts if i != lead.id)
    r = net.rafts[f]
    term = r.term
    r.step(Message(MsgType.APP_RESP, to=f, frm=x, term=term + 1))
    assert r.lead == NONE
    r.step(Message(MsgType.VOTE, to=f, frm=x, term=term + 1, index=100, log_term=term))
    assert r.vote == NONE


@pytest.mark.parametrize("fixed", [True, False])
def test_restarted_follower_ignores_votes_for_an_election_timeout(fixed: bool) -> None:
    # The leader's lease counts on follower f, which answered its heartbeat.
    # f restarts at once; x, cut off from the leader, campaigns. Before the
    # fix (a restarted node votes at once) x won while the old leader still
    # held its lease and would answer reads stale.
    net, lead = lease_net()
    f, x = (i for i in net.rafts if i != lead.id)
    net.tick(1, nodes=[lead.id])  # a fresh heartbeat round, answered
    net.isolate(lead.id)
    net.add(f, net.stores[f])  # restart f
    if not fixed:
        net.rafts[f]._since_leader = lead.cfg.election_tick  # the old behaviour
    net.rafts[x].campaign()
    net.deliver()
    if not fixed:
        assert net.rafts[x].role == Role.LEADER and lead._lease_held()
        assert net.rafts[x].log.committed > lead.log.committed  # a lease read now would be stale
        return
    assert net.rafts[x].role != Role.LEADER and net.rafts[f].term == lead.term
    net.tick(lead.cfg.election_tick, nodes=[f])  # an election timeout later, f votes
    net.rafts[x].campaign()
    net.deliver()
    assert net.rafts[x].role == Role.LEADER


@pytest.mark.slow
def test_lease_demos_find_stale_reads() -> None:
    """The simulator's lease checks are meaningful: breaking the transfer
    fix, or drifting beyond the bound, gives a stale read within a few seeds."""
    for name, seeds in (("lease-no-transfer-fix", 60), ("lease-over-drift", 30)):
        msgs = [run_one(seed, DEMOS[name])[1] for seed in range(seeds)]
        assert any("stale read" in m for m in msgs), name


# --------------------------------------------------------------------------
# Leader transfer
# --------------------------------------------------------------------------


def test_transfer_to_up_to_date_follower() -> None:
    net = Net()
    net.elect(1)
    term = net.rafts[1].term
    net.rafts[1].transfer_leader(2)
    net.deliver()
    assert any(m.type == MsgType.TIMEOUT_NOW and m.to == 2 for m in net.sent)
    assert net.rafts[2].role == Role.LEADER and net.rafts[2].term == term + 1
    assert net.rafts[1].role == Role.FOLLOWER and net.rafts[1].lead == 2


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = Net()
    net.elect(1)
    net.isolate(3)
    for k in range(5):
        net.propose(1, b"%d" % k)
    net.heal()
    net.rafts[1].transfer_leader(3)
    net.deliver()
    assert net.rafts[3].role == Role.LEADER
    assert [e.data for e in net.applied[3] if e.data][-5:] == [b"0", b"1", b"2", b"3", b"4"]


def test_transfer_asked_on_a_follower_goes_to_the_target() -> None:
    # Regression (sim seeds 2/transfer, 4/transfer with the original core):
    # the forwarding follower replaced the target (carried in frm) with itself.
    net = Net()
    net.elect(1)
    net.rafts[3].transfer_leader(2)
    net.process(3)
    fwd = [m for m in net.queue if m.type == MsgType.TRANSFER_LEADER]
    assert len(fwd) == 1 and fwd[0].frm == 3 and fwd[0].to == 1
    net.deliver()
    assert net.rafts[2].role == Role.LEADER
    assert net.rafts[3].role == Role.FOLLOWER


def test_proposals_dropped_during_transfer_and_transfer_aborts() -> None:
    net = Net()
    net.elect(1)
    net.down.add(3)
    r = net.rafts[1]
    r.transfer_leader(3)
    net.deliver()
    assert r.lead_transferee == 3
    with pytest.raises(ProposalDropped):
        r.propose(b"during")
    net.tick(r.cfg.election_tick, nodes=[1, 2])
    assert r.role == Role.LEADER and r.lead_transferee == NONE
    net.propose(1, b"after")
    assert net.applied[2][-1].data == b"after"


# --------------------------------------------------------------------------
# Learners and membership
# --------------------------------------------------------------------------


def test_learner_never_campaigns_and_gets_no_vote_request() -> None:
    net = Net(voters=(1, 2, 3), learners=(4,))
    net.elect(1)
    assert not net.sent_to(4, MsgType.PRE_VOTE) and not net.sent_to(4, MsgType.VOTE)
    net.isolate(4)
    net.tick(100, nodes=[4])
    assert net.rafts[4].role == Role.FOLLOWER and net.rafts[4].term == net.rafts[1].term


def test_learner_not_counted_for_commit() -> None:
    net = Net(voters=(1, 2, 3), learners=(4, 5))
    net.elect(1)
    c = net.rafts[1].log.committed
    net.isolate(2)
    net.isolate(3)
    net.propose(1, b"x")
    assert net.rafts[4].log.last_index() == net.rafts[1].log.last_index()
    assert net.rafts[1].log.committed == c
    net.heal()
    net.tick(2)
    assert net.rafts[1].log.committed == net.rafts[1].log.last_index()


def test_one_pending_conf_change_at_a_time() -> None:
    net = Net()
    net.elect(1)
    r = net.rafts[1]
    net.isolate(2)
    net.isolate(3)
    r.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        r.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    # Forwarded from a follower, the second change is neutralised, not appended.
    net.heal()
    before = r.log.last_index()
    r.step(Message(MsgType.PROP, to=1, frm=2, entries=[cc_entry(0, 0, ConfChangeType.ADD_LEARNER, 5)]))
    assert r.log.term(before + 1) == r.term
    assert r.log.entries(before + 1, before + 2)[0].type == EntryType.NORMAL
    net.deliver()
    assert r.conf_state().learners == (4,)
    r.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))  # now allowed
    net.deliver()
    assert r.conf_state().learners == (4, 5)


def test_no_conf_change_before_first_entry_of_term_applied() -> None:
    net = Net()
    r = net.rafts[1]
    r.campaign()
    r.step(Message(MsgType.PRE_VOTE_RESP, to=1, frm=2, term=r.term + 1))
    r.step(Message(MsgType.VOTE_RESP, to=1, frm=2, term=r.term))
    assert r.role == Role.LEADER
    with pytest.raises(ProposalDropped):
        r.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))


def test_add_learner_catch_up_promote_and_remove_leader() -> None:
    net = Net()
    net.elect(1)
    for k in range(5):
        net.propose(1, b"%d" % k)
    r = net.rafts[1]
    r.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.deliver()
    net.add(4, MemoryStorage((1, 2, 3), (4,)))
    net.tick(2)
    assert r.progress()[4][0] == r.log.last_index()
    r.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 4))
    net.deliver()
    assert net.rafts[4].conf_state().voters == (1, 2, 3, 4)
    r.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    net.deliver()
    assert r.role == Role.FOLLOWER  # the removed leader stepped down
    net.down.add(1)
    net.tick(40, nodes=[2, 3, 4])
    lead = [n for n in (2, 3, 4) if net.rafts[n].role == Role.LEADER]
    assert len(lead) == 1
    net.propose(lead[0], b"without 1")
    assert all(net.applied[n][-1].data == b"without 1" for n in (2, 3, 4))


def test_restart_with_applied_past_snapshot_keeps_membership() -> None:
    # Regression (sim seeds 1/chaos, 14/membership with the original core): conf
    # changes between the snapshot and Config.applied were not handed out
    # again, so a restarted node ran with its snapshot's membership.
    st = MemoryStorage((1, 2, 3))
    st.save(
        HardState(1, 1, 3),
        [Entry(1, 1), cc_entry(1, 2, ConfChangeType.ADD_LEARNER, 4), cc_entry(1, 3, ConfChangeType.ADD_NODE, 5)],
        None,
    )
    r = Raft(Config(1, applied=3, rng=random.Random(1)), st)
    assert r.conf_state() == ConfState((1, 2, 3, 5), (4,))
    assert not r.log.has_next_committed_entries()
    # With a lost commit index, only the part up to it is replayed; the rest
    # is handed out again and applied by the driver.
    st.hard_state = HardState(1, 1, 2)
    r = Raft(Config(1, applied=3, rng=random.Random(1)), st)
    assert r.conf_state() == ConfState((1, 2, 3), (4,))


def test_conf_change_applied_after_newer_snapshot_is_ignored() -> None:
    # Regression (found by review; the sim's async mode rarely reaches it): a
    # driver that steps messages while it persists a Ready (raft/node.py does) may
    # receive a snapshot before applying that Ready's conf change; the older
    # change must not overwrite the snapshot's membership.
    st = MemoryStorage((1, 2, 3))
    st.save(HardState(1, 1, 0), [Entry(1, 1), cc_entry(1, 2, ConfChangeType.ADD_NODE, 4)], None)
    r = Raft(Config(2, rng=random.Random(1)), st)
    r.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=1, commit=2))
    rd = r.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2]
    snap = Snapshot(SnapshotMeta(10, 1, ConfState((1, 2, 3), ())), b"")
    r.step(Message(MsgType.SNAP, to=2, frm=1, term=1, snapshot=snap))
    st.save(rd.hard_state, rd.entries, rd.snapshot)
    r.apply_conf_change(ConfChange.decode(rd.committed_entries[1].data))
    r.advance(rd)
    rd2 = r.ready()
    assert rd2.snapshot == snap
    st.save(rd2.hard_state, rd2.entries, rd2.snapshot)
    r.advance(rd2)
    assert r.conf_state() == snap.meta.conf_state


# --------------------------------------------------------------------------
# Snapshots and flow control
# --------------------------------------------------------------------------


def test_snapshot_install_for_lagging_follower() -> None:
    net = Net()
    net.elect(1)
    net.isolate(3)
    for k in range(20):
        net.propose(1, b"%d" % k)
    r = net.rafts[1]
    applied = r.log.applied
    net.stores[1].compact(SnapshotMeta(applied, 0, r.conf_state()), b"state@%d" % applied)
    net.propose(1, b"after compaction")
    net.heal()
    net.tick(3)
    snaps = net.sent_to(3, MsgType.SNAP)
    assert len(snaps) == 1 and snaps[0].snapshot.meta.index == applied
    assert net.stores[3].snapshot().data == b"state@%d" % applied
    assert log_of(net.rafts[3]) == log_of(r)
    assert net.rafts[3].log.committed == r.log.committed
    assert net.applied[3][-1].data == b"after compaction"


def test_new_member_installs_snapshot_taken_before_it_joined() -> None:
    # Regression (sim seeds 8/membership, 11/membership with the original core): the leader's
    # latest snapshot predates the new member's ADD_LEARNER, so it does not
    # list the member; the member refused it, and the leader resent the same
    # snapshot every heartbeat until it happened to compact again.
    net = Net()
    net.elect(1)
    for k in range(10):
        net.propose(1, b"%d" % k)
    r = net.rafts[1]
    net.stores[1].compact(SnapshotMeta(r.log.applied, 0, r.conf_state()), b"snap")
    r.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.deliver()
    r4 = net.add(4, MemoryStorage((1, 2, 3), (4,)))
    net.tick(10)
    assert len(net.sent_to(4, MsgType.SNAP)) == 1
    assert r4.log.last_index() == r.log.last_index() and r.progress()[4][2] == "REPLICATE"
    assert r4.conf_state() == ConfState((1, 2, 3), (4,))  # from the snapshot, then its own ADD
    r.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 4))
    net.deliver()
    assert r4.promotable


def test_late_ack_after_snapshot_does_not_resend_it() -> None:
    # Regression (sim seed 6146/async): after a snapshot was reported sent the
    # follower is probed just past it; a late ack of an older append flipped
    # the progress to REPLICATE at match+1 -- below the compaction point -- and
    # the leader sent the same snapshot again.
    net = Net()
    net.elect(1)
    net.isolate(3)
    for k in range(10):
        net.propose(1, b"%d" % k)
    r = net.rafts[1]
    old_match = r.progress()[3][0]
    net.stores[1].compact(SnapshotMeta(r.log.applied, 0, r.conf_state()), b"snap")
    term = r.term
    nxt = r.progress()[3][1]
    r.step(Message(MsgType.APP_RESP, to=1, frm=3, term=term, index=nxt - 1, reject=True, reject_hint=old_match))
    assert r.progress()[3][2] == "SNAPSHOT"
    r.report_snapshot(3, True)
    r.step(Message(MsgType.APP_RESP, to=1, frm=3, term=term, index=old_match + 1))  # late
    sent = r.ready().messages
    assert len([m for m in sent if m.type == MsgType.SNAP and m.to == 3]) == 1
    probe = [m for m in sent if m.type == MsgType.APP and m.to == 3]
    assert probe and probe[-1].index == net.stores[1].snapshot().meta.index


def test_inflight_limit_bounds_appends_to_silent_follower() -> None:
    net = Net(max_inflight_msgs=3, max_size_per_msg=1)
    net.elect(1)
    net.propose(1, b"warm")  # node 2 is in REPLICATE now
    net.cut.add((2, 1))  # node 2 receives but never answers
    start = len(net.sent)
    for k in range(50):
        net.propose(1, b"%d" % k)
        net.tick(1, nodes=[1])
    apps = [m for m in net.sent[start:] if m.to == 2 and m.type == MsgType.APP and m.entries]
    assert len(apps) <= 3, len(apps)
    # Node 3 answers: everything commits regardless.
    assert net.rafts[1].log.committed == net.rafts[1].log.last_index()
    # Once node 2 answers again it catches up.
    net.heal()
    net.tick(5)
    assert net.rafts[2].log.committed == net.rafts[1].log.committed


# --------------------------------------------------------------------------
# Appends: one message per follower per Ready
# --------------------------------------------------------------------------


def apps_to(msgs: list[Message], nid: int) -> list[Message]:
    return [m for m in msgs if m.type == MsgType.APP and m.to == nid]


def append_in_flight() -> tuple[Raft, int]:
    """Leader 1 of a 3-node cluster whose append of one new entry (the
    returned index) left but is not acknowledged yet."""
    net = Net()
    net.elect(1)
    r = net.rafts[1]
    r.propose(b"a")
    net.process(1)
    return r, r.log.last_index()


def test_proposals_of_one_turn_are_one_append_per_follower() -> None:
    net = Net()
    net.elect(1)
    r = net.rafts[1]
    for k in range(3):
        r.propose(b"%d" % k)
    msgs = r.ready().messages
    for nid in (2, 3):
        (app,) = apps_to(msgs, nid)
        assert [e.data for e in app.entries] == [b"0", b"1", b"2"]


def test_commit_rides_on_the_next_append() -> None:
    r, last = append_in_flight()
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=r.term, index=last))
    assert r.log.committed == last
    r.propose(b"b")  # same loop turn: one append carries both
    msgs = r.ready().messages
    for nid in (2, 3):
        (app,) = apps_to(msgs, nid)
        assert [e.data for e in app.entries] == [b"b"] and app.commit == last


def test_commit_only_append_when_nothing_else_goes() -> None:
    # Followers learn a new commit index at once (a write through a follower
    # waits for it), but only once per follower.
    r, last = append_in_flight()
    r.step(Message(MsgType.APP_RESP, to=1, frm=2, term=r.term, index=last))
    r.step(Message(MsgType.APP_RESP, to=1, frm=3, term=r.term, index=last))
    rd = r.ready()
    for nid in (2, 3):
        (app,) = apps_to(rd.messages, nid)
        assert app.entries == [] and app.commit == last
    r.advance(rd)
    assert not r.has_ready(), "nothing more to tell the followers"


def test_read_rounds_resend_appends_in_flight_once_per_heartbeat_interval() -> None:
    # A heartbeat response from a follower behind the log re-sends an empty
    # append (it rejects it if an append in flight was lost); many read
    # rounds per interval must not each add one.
    r, last = append_in_flight()
    sent: list[Message] = []
    for k in range(5):
        ctx = b"r%d" % k
        r.read_index(ctx)
        for nid in (2, 3):
            r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=nid, term=r.term, context=ctx))
        rd = r.ready()
        sent += rd.messages
        r.advance(rd)
    assert [m.type for m in sent].count(MsgType.HEARTBEAT) == 10, "five read rounds"
    assert apps_to(sent, 2) == [] and apps_to(sent, 3) == []
    r.tick()  # a heartbeat interval
    for _ in range(3):
        r.step(Message(MsgType.HEARTBEAT_RESP, to=1, frm=2, term=r.term))
    (app,) = apps_to(r.ready().messages, 2)
    assert app.index == last and app.entries == []
