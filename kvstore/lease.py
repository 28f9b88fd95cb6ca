"""The lessor: lease expiry decided by the leader, committed through Raft.

Lease *existence* lives in the MVCC store (granted and revoked by applied Raft
entries, identical on every member). Lease *time* lives here, in memory, and
only the leader's clock matters:

* While this member leads ("primary", etcd's word) every lease has a deadline
  on a monotonic clock, kept in a heap. Every ``check_interval`` the leader
  takes the expired leases, at most ``revoke_rate`` per second (etcd: 1000/s,
  issue #9360/#12105: a mass expiry must not flood the log), and proposes one
  ``LeaseRevoke`` per lease. Proposals made together share one Raft append, so
  a storm becomes a few large batches. Every member applies the revoke and
  deletes the attached keys in the same revision.
* A lease whose revoke is in flight is re-tried after ``retry_interval`` if the
  revoke never applies (lost proposal, leader change).
* Followers track no deadline ("forever") and never expire anything.
* On becoming leader (``set_primary(True)``) every lease gets its full granted
  TTL again plus ``extend`` (the election timeout), exactly like etcd's
  ``Promote``: no lease expires because of an election. If many leases would
  then expire in the same second, their deadlines are spread so at most 3/4 of
  the revoke rate falls in any one second (etcd does the same).
* Renewals (keep-alive) are served only by the leader; ``LeaseRouter`` forwards
  a follower's renewals and TTL queries to the leader's client gRPC URL (what
  etcd 3.4 does over its peer HTTP ``/leases`` endpoint). Renewal through a
  Raft entry was rejected: a keep-alive per lease per TTL/3 would put every
  heartbeat of every client in the log.
* TTL checkpointing (etcd's experimental ``LeaseCheckpoint``) is not done: a new
  leader grants the full TTL, the documented etcd 3.4 default.
* A leader whose process was paused (SIGSTOP, a stalled disk: etcd #15247,
  where such a leader revoked every lease on waking) does not expire leases
  for the time it could not serve keep-alives: when the expiry check runs
  much later than scheduled, every deadline moves by the missed time first.

The lessor is an ``Applier`` lease observer (``on_grant``/``on_revoke`` after
each committed batch, ``on_restore`` after a snapshot is installed), and is
rebuilt from ``store.lease_list()`` at start, so restarts and snapshot
restores keep it consistent with the store.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

import grpc

from . import errors
from .errors import EtcdError
from .pb import internal_pb2, rpc_pb2, rpc_pb2_grpc

log = logging.getLogger("kvstore.lease")

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL (seconds)
DEFAULT_REVOKE_RATE = 1000  # etcd's leaseRevokeRate (revokes per second)
EXPIRED_RETRY_INTERVAL = 3.0  # etcd's expiredLeaseRetryInterval
CHECK_INTERVAL = 0.5  # etcd checks for expired leases every 500 ms
MAX_PENDING_REVOKES = 64  # revoke proposals in flight at once
SESSION_TTL = 60  # etcd's concurrency.Session default TTL (Lock/Campaign without a lease)
FORWARD_HEADER = "kvstore-lease-forwarded"  # set on a follower → leader call

FOREVER = math.inf

Proposer = Callable[[internal_pb2.InternalRequest], Awaitable[Any]]


class NotPrimary(Exception):
    """This member does not lead: lease time is not known here."""


def min_lease_ttl(election_ticks: int, heartbeat_ms: int) -> int:
    """etcd: ``minTTL = (3*electionTicks)/2 * heartbeat``, rounded up to whole
    seconds (2 s with the default 10 ticks of 100 ms)."""
    return max(1, math.ceil(((3 * election_ticks) // 2) * heartbeat_ms / 1000))


@dataclass
class _Lease:
    id: int
    ttl: int
    expiry: float = FOREVER  # clock time the lease runs out; FOREVER on a follower
    slot: float = FOREVER  # heap position in force (expiry, or a revoke retry time)
    revoked: asyncio.Future[None] | None = field(default=None, repr=False)

    def remaining(self, now: float) -> float:
        return self.expiry - now


class Lessor:
    def __init__(
        self,
        store: Any,
        propose: Proposer,
        *,
        min_ttl: int = 1,
        extend: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        revoke_rate: int = DEFAULT_REVOKE_RATE,
        retry_interval: float = EXPIRED_RETRY_INTERVAL,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.store = store
        self.propose = propose
        self.min_ttl = min_ttl
        self.extend = extend
        self.clock = clock
        self.revoke_rate = revoke_rate
        self.retry_interval = retry_interval
        self.check_interval = check_interval
        self.primary = False
        self._leases: dict[int, _Lease] = {}
        self._heap: list[tuple[float, int]] = []
        self._burst = max(1.0, revoke_rate / 2)
        self._tokens = self._burst
        self._tokens_at = clock()
        self.pause_threshold = max(1.0, extend)
        self._last_check: float | None = None
        self._demoted: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.on_restore()

    # ----------------------------------------------------- Applier observer
    def on_grant(self, lease_id: int, ttl: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is None:
            lease = self._leases[lease_id] = _Lease(lease_id, ttl)
        lease.ttl = ttl
        if self.primary:
            self._schedule(lease, self.clock() + ttl, expiry=True)

    def on_revoke(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            lease.slot = FOREVER
            if lease.revoked is not None and not lease.revoked.done():
                lease.revoked.set_result(None)

    def on_restore(self) -> None:
        """Rebuild from the store (start, or a snapshot installed)."""
        now = self.clock()
        present = dict(_lease_items(self.store.lease_list()))
        for lid in [lid for lid in self._leases if lid not in present]:
            self.on_revoke(lid)
        for lid, ttl in present.items():
            lease = self._leases.get(lid)
            if lease is None:
                lease = self._leases[lid] = _Lease(lid, ttl)
                lease.expiry = now + ttl if self.primary else FOREVER
            lease.ttl = ttl
        self._rebuild_heap()

    # ----------------------------------------------------------- leadership
    def set_primary(self, primary: bool) -> None:
        if primary and not self.primary:
            self.promote(self.extend)
        elif not primary and self.primary:
            self.demote()

    def promote(self, extend: float) -> None:
        """Become the lease authority: every lease gets ``extend`` + its TTL."""
        self.primary = True
        self._demoted = None
        now = self.clock()
        leases = list(self._leases.values())
        for lease in leases:
            lease.expiry = now + extend + lease.ttl
        if len(leases) >= self.revoke_rate:
            self._spread(leases, now, extend)
        self._rebuild_heap()
        log.info("lessor promoted: %d leases renewed", len(leases))

    def _spread(self, leases: list[_Lease], now: float, extend: float) -> None:
        """etcd's Promote: keep the expiries of any one second below 3/4 of
        the revoke rate, so leases piled up by the renewal don't expire at once."""
        leases.sort(key=lambda l: (l.expiry, l.id))
        target = max(1, (3 * self.revoke_rate) // 4)
        base = leases[0].remaining(now)
        next_window = base + 1.0
        expires = 0
        for lease in leases:
            remaining = lease.remaining(now)
            if remaining > next_window:
                base = remaining
                next_window = base + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target:
                continue
            delay = expires / target - (remaining - base)
            next_window = base + delay
            lease.expiry = now + delay + extend + lease.ttl

    def demote(self) -> None:
        """No longer the authority: forget deadlines; pending renewals of
        expired leases are told to retry at the new leader."""
        self.primary = False
        for lease in self._leases.values():
            lease.expiry = FOREVER
            lease.slot = FOREVER
        self._heap = []
        if self._demoted is not None and not self._demoted.done():
            self._demoted.set_result(None)
        self._demoted = None
        log.info("lessor demoted")

    # -------------------------------------------------------------- queries
    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def lookup(self, lease_id: int) -> _Lease | None:
        return self._leases.get(lease_id)

    def lease_ids(self) -> list[int]:
        """Like etcd's ``Leases()``: sorted by expiry (then id)."""
        return [l.id for l in sorted(self._leases.values(), key=lambda l: (l.expiry, l.id))]

    def time_to_live(self, lease_id: int) -> tuple[int, int]:
        """(remaining whole seconds, granted TTL) as the leader sees them."""
        if not self.primary:
            raise NotPrimary()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND
        return max(0, int(lease.remaining(self.clock()))), lease.ttl

    def new_id(self) -> int:
        """A fresh server-chosen ID: random, positive, non-zero int64."""
        while True:
            lid = secrets.randbits(63)
            if lid and lid not in self._leases:
                return lid

    def grant_ttl(self, ttl: int) -> int:
        """The TTL a grant request gets: too large is an error, too small is
        raised to the minimum (etcd's minLeaseTTL)."""
        if ttl > MAX_LEASE_TTL:
            raise errors.LEASE_T_T_L_TOO_LARGE
        return max(ttl, self.min_ttl)

    # ---------------------------------------------------------------- renew
    def renew_now(self, lease_id: int) -> int | None:
        """``renew`` when it can answer at once: a known, unexpired lease on
        the primary. None when ``renew`` must decide (and maybe wait)."""
        if not self.primary:
            return None
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        now = self.clock()
        if lease.expiry <= now:
            return None
        expiry = now + lease.ttl
        if lease.slot <= expiry:
            # Its heap entry comes due first; expired() re-slots it then.
            # A renewal per keep-alive would otherwise grow the heap.
            lease.expiry = expiry
        else:
            self._schedule(lease, expiry, expiry=True)
        return lease.ttl

    async def renew(self, lease_id: int) -> int:
        """Reset the lease's deadline to its full TTL; returns the TTL.

        Raises ``NotPrimary`` on a follower (the caller forwards) and
        ``LEASE_NOT_FOUND`` for an unknown lease. A lease that already
        expired but whose revoke is still in flight is not revived: the call
        waits for the revoke (→ not found) or a demotion (→ ``NotPrimary``)."""
        ttl = self.renew_now(lease_id)
        if ttl is not None:
            return ttl
        if not self.primary:
            raise NotPrimary()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND
        # Expired, its revoke in flight: wait for the revoke or a demotion.
        loop = asyncio.get_running_loop()
        if lease.revoked is None:
            lease.revoked = loop.create_future()
        if self._demoted is None:
            self._demoted = loop.create_future()
        revoked, demoted = lease.revoked, self._demoted
        await asyncio.wait([revoked, demoted], return_when=asyncio.FIRST_COMPLETED)
        if revoked.done():
            raise errors.LEASE_NOT_FOUND
        raise NotPrimary()

    # --------------------------------------------------------------- expiry
    def _schedule(self, lease: _Lease, at: float, expiry: bool) -> None:
        if expiry:
            lease.expiry = at
        lease.slot = at
        heapq.heappush(self._heap, (at, lease.id))

    def _rebuild_heap(self) -> None:
        self._heap = []
        for lease in self._leases.values():
            lease.slot = lease.expiry
            if lease.expiry != FOREVER:
                self._heap.append((lease.expiry, lease.id))
        heapq.heapify(self._heap)

    def _take_tokens(self, now: float) -> int:
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self.revoke_rate)
        self._tokens_at = now
        return int(self._tokens)

    def expired(self) -> list[int]:
        """Leases due for revocation now, within the rate limit. Each is
        re-slotted ``retry_interval`` ahead, so a revoke that never applies is
        proposed again later, not on every check."""
        if not self.primary:
            return []
        now = self.clock()
        budget = self._take_tokens(now)
        out: list[int] = []
        heap = self._heap
        while heap and len(out) < budget and heap[0][0] <= now:
            at, lid = heapq.heappop(heap)
            lease = self._leases.get(lid)
            if lease is None or lease.slot != at:
                continue  # stale heap entry
            if lease.expiry > now:  # renewed meanwhile (defensive)
                self._schedule(lease, lease.expiry, expiry=False)
                continue
            self._schedule(lease, now + self.retry_interval, expiry=False)
            out.append(lid)
        self._tokens -= len(out)
        return out

    async def revoke_expired(self) -> list[int]:
        """One round: propose a revoke for each expired lease (concurrently,
        so they share Raft batches). Returns the IDs proposed."""
        ids = self.expired()
        if ids:
            sem = asyncio.Semaphore(MAX_PENDING_REVOKES)
            await asyncio.gather(*(self._revoke(lid, sem) for lid in ids))
        return ids

    async def _revoke(self, lease_id: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            if not self.primary or lease_id not in self._leases:
                return
            req = internal_pb2.InternalRequest(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=lease_id))
            try:
                await self.propose(req)
            except EtcdError as e:
                if e.message == errors.LEASE_NOT_FOUND.message:
                    self.on_revoke(lease_id)  # already gone from the store
                else:
                    log.debug("revoke of expired lease %x failed: %s (will retry)", lease_id, e.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("revoke of expired lease %x failed", lease_id)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lessor")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._pending] if t is not None]
        self._task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    def shift(self, seconds: float) -> None:
        """Move every deadline ``seconds`` later (time this leader missed)."""
        for lease in self._leases.values():
            if lease.expiry != FOREVER:
                lease.expiry += seconds
        self._rebuild_heap()

    def check_pause(self) -> float:
        """Called once per expiry check: if this check comes far later than
        scheduled, the process was not running; give the leases that time
        back. Returns the time given back."""
        now = self.clock()
        last, self._last_check = self._last_check, now
        if last is None or not self.primary:
            return 0.0
        missed = now - last - self.check_interval
        if missed <= self.pause_threshold:
            return 0.0
        log.warning("lease expiry check ran %.1fs late (process paused?): extending all leases", missed)
        self.shift(missed)
        return missed

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            self.check_pause()
            if not self.primary:
                continue
            try:
                # Revokes run in the background so a slow round (no quorum)
                # never stops the next checks; at most a few rounds overlap
                # because each lease is re-slotted retry_interval ahead.
                if len(self._pending) < 4:
                    t = asyncio.create_task(self.revoke_expired())
                    self._pending.add(t)
                    t.add_done_callback(self._pending.discard)
            except Exception:
                log.exception("lease expiry check failed")


def _lease_items(items: Iterable[Any]) -> Iterable[tuple[int, int]]:
    """Normalise ``store.lease_list()`` rows: (id, ttl) pairs or objects with
    ID/TTL (or id/ttl) attributes."""
    for it in items:
        if isinstance(it, tuple):
            yield int(it[0]), int(it[1])
        elif isinstance(it, dict):
            yield int(it.get("id", it.get("ID"))), int(it.get("ttl", it.get("TTL")))
        else:
            lid = getattr(it, "ID", None)
            if lid is None:
                lid = getattr(it, "id")
            ttl = getattr(it, "TTL", None)
            if ttl is None:
                ttl = getattr(it, "ttl")
            yield int(lid), int(ttl)


# ---------------------------------------------------------------------------
# Serving renewals and TTL queries on any member


class _Retry(Exception):
    pass


# Forwarded keep-alives use the ordinary LeaseKeepAlive method with a marker
# header, which switches the leader's handler to a member-to-member dialect:
# requests are served concurrently (one slow renewal, e.g. of a lease whose
# revoke is in flight, does not hold up the others), answers come back in any
# order and are matched by lease ID, and TTL < 0 means "could not renew here,
# retry" (not leader, timeout), TTL 0 "lease not found" as usual.
RETRY_TTL = -1


class _ForwardStream:
    """One long-lived keep-alive stream to the leader, shared by every
    renewal this follower forwards (instead of a call per keep-alive)."""

    def __init__(self, stub: rpc_pb2_grpc.LeaseStub, url: str) -> None:
        self.url = url
        self.call = stub.LeaseKeepAlive(metadata=((FORWARD_HEADER, "1"),))
        self.pending: dict[int, list[asyncio.Future[int]]] = {}
        self.closed = False
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.ensure_future(self._read())

    async def renew(self, lease_id: int, timeout: float) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.setdefault(lease_id, []).append(fut)
        try:
            async with asyncio.timeout(timeout):  # no extra tasks, unlike wait_for
                async with self._write_lock:
                    await self.call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                ttl = await fut  # cancelled on timeout: the reader skips it
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.TimeoutError) as e:
            if not isinstance(e, asyncio.TimeoutError):
                log.debug("keep-alive stream to %s failed: %s", self.url, e)
                self.close()
            raise _Retry() from None
        if ttl < 0:
            raise _Retry()
        if ttl == 0:
            raise errors.LEASE_NOT_FOUND
        return ttl

    async def _read(self) -> None:
        try:
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    break
                waiters = self.pending.get(resp.ID)
                if waiters:
                    fut = waiters.pop(0)
                    if not waiters:
                        del self.pending[resp.ID]
                    if not fut.done():
                        fut.set_result(resp.TTL)
        except asyncio.CancelledError:
            pass
        except Exception as e:
            log.debug("keep-alive stream to %s ended: %s", self.url, e)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        pending, self.pending = self.pending, {}
        for waiters in pending.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(_Retry())
        self.call.cancel()
        if not self._reader.done():
            self._reader.cancel()


class LeaseRouter:
    """Serves renewals and TTL queries where lease time is known: locally on
    the leader, else forwarded to the leader's advertised client gRPC URL (one
    hop: a forwarded call is never forwarded again; a member that lost the
    lead answers ``not leader`` and the follower retries at the new leader)."""

    def __init__(self, server: Any, timeout: float = 7.0) -> None:
        self.s = server
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, _ForwardStream] = {}

    @property
    def lessor(self) -> Lessor:
        return self.s.lessor

    async def close(self) -> None:
        streams, self._streams = self._streams, {}
        for fs in streams.values():
            fs.close()
        chans, self._channels = self._channels, {}
        for ch in chans.values():
            await ch.close()

    async def renew(self, lease_id: int, forwarded: bool = False) -> int:
        ttl = self.lessor.renew_now(lease_id)  # the leader's usual case, without a task
        if ttl is not None:
            return ttl
        return await self._route(
            lambda: self._applied_first(lambda: self.lessor.renew(lease_id)),
            lambda url, t: self._forward_renew(url, lease_id, t),
            forwarded,
        )

    async def _applied_first(self, op):
        """Run ``op``; if the lease is unknown, wait until this leader applied
        everything committed (a grant acknowledged by a follower may not be
        applied here yet) and ask once more."""
        try:
            return await op()
        except EtcdError as e:
            if e.message != errors.LEASE_NOT_FOUND.message:
                raise
        await self.s.read_barrier()
        return await op()

    async def time_to_live(
        self, lease_id: int, keys: bool, forwarded: bool = False
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        async def local() -> rpc_pb2.LeaseTimeToLiveResponse:
            remaining, granted = self.lessor.time_to_live(lease_id)
            resp = rpc_pb2.LeaseTimeToLiveResponse(ID=lease_id, TTL=remaining, grantedTTL=granted)
            if keys:
                resp.keys.extend(self.s.store.lease_keys(lease_id))
            return resp

        return await self._route(
            lambda: self._applied_first(local), lambda url, t: self._forward_ttl(url, lease_id, keys, t), forwarded
        )

    async def _route(self, local, forward, forwarded: bool):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        node = self.s.node
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.TIMEOUT
            if self.lessor.primary:
                try:
                    return await asyncio.wait_for(local(), remaining)
                except NotPrimary:
                    pass
                except asyncio.TimeoutError:
                    raise errors.TIMEOUT from None
            if forwarded:
                raise errors.NOT_LEADER
            leader = node.leader
            if leader == 0:
                try:
                    await asyncio.wait_for(node.leader_changed.wait(), remaining)
                except asyncio.TimeoutError:
                    raise errors.NO_LEADER from None
                continue
            if leader == self.s.member_id:
                await asyncio.sleep(0.05)  # promotion under way
                continue
            urls = self._client_urls(leader)
            for url in urls:
                try:
                    return await forward(url, max(0.05, deadline - loop.time()))
                except _Retry:
                    continue
            await asyncio.sleep(0.05)  # throttle, as etcd does

    def _client_urls(self, member_id: int) -> list[str]:
        for m in self.s.applier.members.members:
            if m.id == member_id:
                return list(m.client_urls)
        return []

    def _stub(self, url: str) -> rpc_pb2_grpc.LeaseStub:
        ch = self._channels.get(url)
        if ch is None:
            ch = self._channels[url] = self.s.member_channel(url)
        return rpc_pb2_grpc.LeaseStub(ch)

    async def _forward_renew(self, url: str, lease_id: int, timeout: float) -> int:
        fs = self._streams.get(url)
        if fs is None or fs.closed:
            fs = self._streams[url] = _ForwardStream(self._stub(url), url)
        return await fs.renew(lease_id, timeout)

    async def _forward_ttl(
        self, url: str, lease_id: int, keys: bool, timeout: float
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        try:
            resp = await self._stub(url).LeaseTimeToLive(
                rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
                metadata=((FORWARD_HEADER, "1"),),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as e:
            log.debug("forwarded time-to-live to %s failed: %s", url, e.details())
            raise _Retry() from None
        if resp.TTL == -1:
            raise errors.LEASE_NOT_FOUND
        return resp
