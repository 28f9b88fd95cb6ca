"""The leader's view of one follower: how far it matches and how to feed it.

PROBE sends one append at a time until the follower's position is known;
REPLICATE pipelines appends optimistically, bounded by ``inflight``;
SNAPSHOT waits for an InstallSnapshot to finish.
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "pending_snapshot",
        "recent_active",
        "inflight",
        "max_inflight",
        "is_learner",
        "sent_commit",
        "beat_checked",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        # Last index of each append in flight; bounded, so a slow follower
        # holds at most ``max_inflight`` messages' worth of the leader's memory.
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.is_learner = is_learner
        # Commit index carried by the last append sent: a commit-only append
        # is needed only while this lags the leader's commit index.
        self.sent_commit = 0
        # Heartbeat interval (Raft._beats) in which an append last went out
        # on a heartbeat response.
        self.beat_checked = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: int) -> bool:
        """Follower acknowledged ``index``; False if the ack is stale."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Follower rejected an append at ``rejected``; back off to the hint."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale rejection
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_append(self, last_index: int, n_entries: int) -> None:
        if self.state == ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def free_inflight_to(self, index: int) -> None:
        q = self.inflight
        while q and q[0] <= index:
            q.popleft()

    @property
    def inflight_full(self) -> bool:
        return len(self.inflight) >= self.max_inflight

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflight_full
        return True
