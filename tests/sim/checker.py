"""Safety invariants, checked incrementally while the simulation runs.

* Election safety: at most one leader per term, over the whole history.
* Log matching: two logs holding an entry with the same index and term hold
  the same entry, with the same predecessor term (so, inductively, the same
  prefix). Checked on every entry that reaches a node's disk.
* Leader completeness: an entry known committed while the cluster was at
  term ``tc`` is in the log of every leader of a term above ``tc`` (checked
  when a leader is elected, and for current leaders when a commit is seen).
* State machine safety: no two nodes apply different entries at one index;
  applied entries are contiguous; a snapshot holds exactly the applied prefix.
* Commit monotonicity: a running node's commit index never decreases.
* Read points: a ReadIndex answer is at least every index known committed
  (durably, by any node) before the read was asked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from raft.types import CompactedError, Role

if TYPE_CHECKING:
    from .cluster import Sim
    from .node import SimNode


class Violation(AssertionError):
    pass


class Checker:
    def __init__(self, sim: "Sim") -> None:
        self.sim = sim
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.log_entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.committed: dict[int, int] = {}  # index -> term
        self.commit_term: dict[int, int] = {}  # index -> term of the cluster when first seen committed
        self.max_committed = 0
        self.applied: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        self.reads: dict[bytes, tuple[int, int]] = {}  # ctx -> (node, watermark)
        self.reads_answered = 0
        self.elections = 0

    def fail(self, msg: str) -> None:
        raise Violation(msg)

    # ----------------------------------------------------------- every call
    def observe(self, node: "SimNode") -> None:
        r = node.raft
        if r.role == Role.LEADER:
            t = r.term
            lead = self.leaders.get(t)
            if lead is None:
                self.leaders[t] = node.id
                self.elections += 1
                self.sim.trace(f"n{node.id} became leader at term {t} (last={r.log.last_index()})")
                self._check_leader_complete(node)
            elif lead != node.id:
                self.fail(f"two leaders in term {t}: n{lead} and n{node.id}")
        c = r.log.committed
        if c < node.mem_committed:
            self.fail(f"n{node.id} commit index went back from {node.mem_committed} to {c}")
        node.mem_committed = c

    def _check_leader_complete(self, node: "SimNode") -> None:
        r = node.raft
        term = r.term
        log = r.log
        lo = max(log.first_index(), 1)
        for i in range(lo, self.max_committed + 1):
            tc = self.commit_term.get(i)
            if tc is None or tc >= term:
                continue
            t = self.committed[i]
            if log.term(i) != t:
                self.fail(
                    f"leader completeness: n{node.id} leader of term {term} lacks committed "
                    f"entry {i} (term {t}, committed by term {tc}); has term {log.term(i)}"
                )

    # ---------------------------------------------------------- persistence
    def on_persist(self, node: "SimNode", rd) -> None:
        st = node.disk.live
        ents = rd.entries
        if ents:
            first = ents[0].index
            try:
                prev_t: int | None = st.term(first - 1)
            except CompactedError:
                prev_t = None
            expect = first
            le = self.log_entries
            for e in ents:
                if e.index != expect:
                    self.fail(f"n{node.id} Ready entries not contiguous at {e.index}")
                expect += 1
                key = (e.index, e.term)
                old = le.get(key)
                if old is None:
                    le[key] = (int(e.type), e.data, prev_t)
                else:
                    if old[0] != int(e.type) or old[1] != e.data:
                        self.fail(
                            f"log matching: n{node.id} entry {key} is {e.data!r}, another log has {old[1]!r}"
                        )
                    if prev_t is not None and old[2] is not None and old[2] != prev_t:
                        self.fail(
                            f"log matching: n{node.id} entry {key} follows term {prev_t}, "
                            f"another log has it after term {old[2]}"
                        )
                    if old[2] is None and prev_t is not None:
                        le[key] = (old[0], old[1], prev_t)
                prev_t = e.term
        hs = rd.hard_state
        if rd.snapshot is not None:
            m = rd.snapshot.meta
            self.record_commit(m.index, m.term, hs.term if hs else node.raft.term, node)
        if hs is not None and hs.commit > node.persisted_commit:
            first = st.first_index() - 1
            for i in range(max(node.persisted_commit + 1, first), hs.commit + 1):
                self.record_commit(i, st.term(i), hs.term, node)
            node.persisted_commit = hs.commit

    def record_commit(self, i: int, t: int, tc: int, node: "SimNode") -> None:
        if i == 0:
            return
        old = self.committed.get(i)
        if old is None:
            self.committed[i] = t
            self.commit_term[i] = tc
            if i > self.max_committed:
                self.max_committed = i
            for n in self.sim.nodes.values():
                r = n.raft
                if r is not None and r.role == Role.LEADER and r.term > tc:
                    try:
                        lt = r.log.term(i)
                    except CompactedError:
                        continue
                    if lt != t:
                        self.fail(
                            f"leader completeness: n{n.id} (leader, term {r.term}) has term {lt} "
                            f"at {i}, committed with term {t} by term {tc}"
                        )
        elif old != t:
            self.fail(f"n{node.id} commits term {t} at index {i}; term {old} was committed there")
        elif tc < self.commit_term[i]:
            self.commit_term[i] = tc

    # ---------------------------------------------------------------- apply
    def on_apply(self, node: "SimNode", index: int, term: int, typ: int, data: bytes) -> None:
        old = self.applied.get(index)
        if old is None:
            self.applied[index] = (term, typ, data)
        elif old[0] != term or old[1] != typ or old[2] != data:
            self.fail(
                f"state machine safety: n{node.id} applies {(term, typ, data)!r} at {index}; "
                f"another node applied {old!r}"
            )
        c = self.committed.get(index)
        if c is not None and c != term:
            self.fail(f"n{node.id} applies term {term} at {index} but term {c} was committed")

    def on_snapshot_state(self, node: "SimNode", snap) -> None:
        sm = node.sm
        meta = snap.meta
        if sm.applied != meta.index:
            self.fail(f"n{node.id} snapshot at {meta.index} holds state applied to {sm.applied}")
        ents = sm.entries
        if len(ents) != sm.applied:
            self.fail(f"n{node.id} snapshot state has {len(ents)} entries for applied {sm.applied}")
        if ents and ents[-1][1] != meta.term:
            self.fail(f"n{node.id} snapshot term {meta.term} but last entry term {ents[-1][1]}")
        for idx, term, typ, data in ents:
            self.on_apply(node, idx, term, typ, data)
        v, l = sm.conf()
        if (v, l) != (meta.conf_state.voters, meta.conf_state.learners):
            self.fail(f"n{node.id} snapshot conf_state {meta.conf_state} but state machine has {v}/{l}")

    # ---------------------------------------------------------------- reads
    def on_read_request(self, node: "SimNode", ctx: bytes) -> None:
        self.reads[ctx] = (node.id, self.max_committed)

    def on_read_state(self, node: "SimNode", rs) -> None:
        req = self.reads.get(rs.request_ctx)
        if req is None:
            self.fail(f"n{node.id} got a read state for unknown ctx {rs.request_ctx!r}")
        nid, watermark = req
        if nid != node.id:
            self.fail(f"read {rs.request_ctx!r} asked on n{nid} answered on n{node.id}")
        if rs.index < watermark:
            self.fail(
                f"stale read: n{node.id} read {rs.request_ctx!r} got index {rs.index}, "
                f"but {watermark} was committed before it was asked"
            )
        self.reads_answered += 1
