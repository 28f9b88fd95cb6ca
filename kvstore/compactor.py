"""Auto compaction: etcd's ``--auto-compaction-mode`` / ``--auto-compaction-retention``.

Without it history grows until the backend quota raises NOSPACE (the most
common etcd surprise). As etcd 3.4 (``etcdserver/api/v3compactor``):

* **periodic** (retention a duration; a bare number means hours): keep at
  least the last ``retention`` of history. The current revision is sampled
  every ``min(retention, 1h) / 10``; the first compaction comes once
  ``retention`` has passed since the start, later ones every
  ``min(retention, 1h)``, each to the revision sampled ``retention`` ago.
* **revision** (retention a number of revisions): every 5 minutes, compact to
  ``current revision - retention`` unless that is the target of last time.

Only the leader compacts (followers keep sampling, so a new leader has the
history of revisions at once); the compaction is an ordinary Compact request
through Raft, so every member compacts at the same revision. The policies
are pure (time and revision passed in); :class:`AutoCompactor` drives one.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from . import errors
from .errors import EtcdError

log = logging.getLogger("kvstore.compactor")

HOUR = 3600.0
RETRY_DIVISOR = 10  # etcd: samples per compaction interval
REVISION_INTERVAL = 300.0  # etcd's revInterval: 5 minutes


class Periodic:
    """Keeps the revisions sampled over the last ``period`` seconds."""

    def __init__(self, period: float, now: float) -> None:
        self.period = period
        self.compact_every = min(period, HOUR)
        self.interval = self.compact_every / RETRY_DIVISOR  # the driver samples this often
        self.samples = int(period / self.interval) + 1
        self.revs: deque[int] = deque(maxlen=self.samples)  # revs[0]: the revision `period` ago
        self.last_success = now
        self.wait = period  # before the first compaction: the whole retention

    def record(self, rev: int) -> None:
        self.revs.append(rev)

    def due(self, now: float) -> int | None:
        """The revision to compact to now, if any (ask only on the leader)."""
        if not self.revs or now - self.last_success < self.wait:
            return None
        self.wait = self.compact_every
        return self.revs[0]

    def done(self, rev: int, now: float) -> None:
        self.last_success = now


class Revision:
    """Keeps the last ``retention`` revisions."""

    interval = REVISION_INTERVAL

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.current = 0
        self.prev = 0

    def record(self, rev: int) -> None:
        self.current = rev

    def due(self, now: float) -> int | None:
        rev = self.current - self.retention
        if rev <= 0 or rev == self.prev:
            return None
        return rev

    def done(self, rev: int, now: float) -> None:
        self.prev = rev


Policy = Periodic | Revision


def policy_for(mode: str, retention: float, now: float) -> Policy | None:
    if retention <= 0:
        return None
    if mode == "revision":
        return Revision(int(retention))
    return Periodic(retention, now)


class AutoCompactor:
    """Runs a policy: sample, wait an interval, compact if due and leader."""

    def __init__(
        self,
        policy: Policy,
        revision: Callable[[], int],
        is_leader: Callable[[], bool],
        compact: Callable[[int], Awaitable[None]],
    ) -> None:
        self.policy = policy
        self._revision = revision
        self._is_leader = is_leader
        self._compact = compact
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="auto-compactor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.policy
        while True:
            p.record(self._revision())
            await asyncio.sleep(p.interval)
            if not self._is_leader():
                continue
            rev = p.due(loop.time())
            if rev is not None:
                await self._try(rev, loop.time)

    async def _try(self, rev: int, now: Callable[[], float]) -> None:
        log.info("auto compaction at revision %d", rev)
        try:
            await self._compact(rev)
        except EtcdError as e:
            if e.message != errors.COMPACTED.message:  # already compacted there: as good as done
                log.warning("auto compaction at revision %d failed (retrying in %.0fs): %s",
                            rev, self.policy.interval, e.message)
                return
        except Exception as e:  # noqa: BLE001 - never let the loop die
            log.warning("auto compaction at revision %d failed (retrying in %.0fs): %s", rev, self.policy.interval, e)
            return
        self.policy.done(rev, now())
