"""v3lockpb.Lock over gRPC: etcd's server-side mutex recipe, run in-process.

etcd serves Lock by running clientv3's ``concurrency.Mutex`` against itself;
this is the same recipe on ``KvServer.propose`` and linearizable store reads:

* The holder key is ``name + "/" + "%x" % lease`` (lowercase hex, no
  padding), created with the lease by a "create if absent" transaction that
  also reads the current owner (the key of the prefix with the smallest
  create_revision). A lock call with a lease that already waits or holds the
  key reuses it.
* A waiter repeatedly looks up the key with the largest create_revision below
  its own and waits for that key's deletion (Unlock, revoke, or expiry of its
  lease), then looks again: waiters are served in create_revision order,
  one deletion wakes exactly one waiter.
* Before answering, the waiter re-reads its own key: if its lease expired
  while it waited (etcd bug #11408, still present in etcd 3.4.23, which then
  grants the lock to a dead session) the call fails with ``session expired``.
* The returned key and the header revision are the fencing token: a guarded
  write should be a Txn comparing the key's create_revision (or existence).
  Mutual exclusion holds only for writes so guarded; a holder whose lease
  lapsed has lost the lock whether it knows it or not.
* A Lock call cancelled while waiting deletes its key, like etcd.
* Lock without a lease grants a fresh 60 s lease that nothing keeps alive
  (etcd's session default), so such a lock frees itself a minute later.

Errors are reported as etcd reports them (the recipe runs through clientv3
there): code UNKNOWN with etcd's message, e.g. ``etcdserver: requested lease
not found``. Transient errors (no leader, timeouts) keep UNAVAILABLE so
clients retry them.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

import grpc

from .. import errors
from ..errors import EtcdError
from ..lease import SESSION_TTL
from ..pb import internal_pb2, kv_pb2, rpc_pb2, v3lock_pb2, v3lock_pb2_grpc
from .lease import check_not_learner

if TYPE_CHECKING:
    from ..server import KvServer

log = logging.getLogger("kvstore.api.lock")

SESSION_EXPIRED = "session expired"  # concurrency.ErrSessionExpired
RECHECK_INTERVAL = 5.0  # a waiter re-reads the store at least this often
MAX_QUEUED_EVENTS = 10_000  # per subscription; beyond it the reader re-reads the store

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class RecipeError(Exception):
    """An error of the concurrency recipes themselves (gRPC UNKNOWN)."""


def recipe_error(e: EtcdError) -> tuple[grpc.StatusCode, str]:
    if e.code == grpc.StatusCode.UNAVAILABLE:
        return e.code, e.message
    return grpc.StatusCode.UNKNOWN, e.message


def recipe(fn: F) -> F:
    """Unary handler wrapper with etcd's error reporting for v3lock/v3election."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            check_not_learner(self.s)
            return await fn(self, request, context)
        except EtcdError as e:
            await context.abort(*recipe_error(e))
        except RecipeError as e:
            await context.abort(grpc.StatusCode.UNKNOWN, str(e))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "kvstore: internal error")

    return wrapper  # type: ignore[return-value]


def prefix_end(key: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def session_key(prefix: bytes, lease_id: int) -> bytes:
    """``fmt.Sprintf("%s%x", prefix, leaseID)`` (Go prints a negative int64 as -hex, as Python does)."""
    return prefix + format(lease_id, "x").encode()


def first_create(prefix: bytes) -> rpc_pb2.RangeRequest:
    """clientv3.WithFirstCreate(): the key of the prefix created first."""
    return rpc_pb2.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        sort_order=rpc_pb2.RangeRequest.ASCEND,
        sort_target=rpc_pb2.RangeRequest.CREATE,
        limit=1,
    )


def create_revision_is(key: bytes, rev: int) -> rpc_pb2.Compare:
    return rpc_pb2.Compare(
        key=key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL, create_revision=rev
    )


# ---------------------------------------------------------------------------
# Waiting for applied events


class Subscription:
    """Events on a key (or range) applied after the subscription was made.

    Subscribe synchronously right after the store read it continues from:
    applies and event delivery happen on the event-loop thread in one step,
    so nothing can fall between the read and the subscription."""

    __slots__ = ("key", "end", "events", "wake", "reset")

    def __init__(self, key: bytes, end: bytes | None) -> None:
        self.key = key
        self.end = end
        self.events: collections.deque[kv_pb2.Event] = collections.deque()
        self.wake = asyncio.Event()
        self.reset = False  # events were lost (snapshot restore, overflow): re-read

    def matches(self, key: bytes) -> bool:
        if self.end is None:
            return key == self.key
        return key >= self.key and (self.end == b"\0" or key < self.end)

    def push(self, ev: kv_pb2.Event) -> None:
        if self.reset:
            return
        if len(self.events) >= MAX_QUEUED_EVENTS:
            self.events.clear()
            self.reset = True
        else:
            self.events.append(ev)
        self.wake.set()

    async def next(self, timeout: float) -> kv_pb2.Event | None:
        """The next event; None on timeout or reset (the caller re-reads)."""
        while not self.events:
            if self.reset:
                return None
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return self.events.popleft()


class KeyEvents:
    """An Applier event sink fanning applied events out to subscriptions."""

    def __init__(self, applier: Any) -> None:
        self._by_key: dict[bytes, set[Subscription]] = {}
        self._ranges: set[Subscription] = set()
        applier.event_sinks.append(self)  # notify(), and on_restore() after a snapshot

    def subscribe(self, key: bytes, end: bytes | None = None) -> Subscription:
        sub = Subscription(key, end)
        if end is None:
            self._by_key.setdefault(key, set()).add(sub)
        else:
            self._ranges.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.end is None:
            subs = self._by_key.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_key[sub.key]
        else:
            self._ranges.discard(sub)

    # EventSink
    def notify(self, revision: int, events: list[kv_pb2.Event]) -> None:
        if not self._by_key and not self._ranges:
            return
        for ev in events:
            for sub in self._by_key.get(ev.kv.key, ()):
                sub.push(ev)
            for sub in self._ranges:
                if sub.matches(ev.kv.key):
                    sub.push(ev)

    def on_restore(self) -> None:
        """The store jumped (snapshot installed): every reader re-reads."""
        subs = list(self._ranges) + [s for ss in self._by_key.values() for s in ss]
        for sub in subs:
            sub.events.clear()
            sub.reset = True
            sub.wake.set()


class Recipes:
    """The building blocks shared by Lock and Election."""

    def __init__(self, server: KvServer) -> None:
        self.s = server
        self.events = KeyEvents(server.applier)
        self._background: set[asyncio.Task[Any]] = set()

    async def txn(self, txn: rpc_pb2.TxnRequest) -> tuple[rpc_pb2.TxnResponse, int]:
        """Propose ``txn``; returns the response and the store revision it
        left (for a write, the revision it created: the fencing token)."""
        res = await self.s.propose(internal_pb2.InternalRequest(txn=txn))
        return res.response, res.response.header.revision or res.revision

    async def get(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """A linearizable read; the response header is filled."""
        await self.s.read_barrier()
        resp = self.s.store.range(req)
        resp.header.CopyFrom(self.s.header())
        return resp

    async def lease_for(self, lease_id: int) -> int:
        """The session lease: the given one, or a fresh one (etcd's NewSession)."""
        if lease_id != 0:
            return lease_id
        from .lease import grant

        return (await grant(self.s, SESSION_TTL)).ID

    def _key_present(self, key: bytes) -> bool:
        return bool(self.s.store.range(rpc_pb2.RangeRequest(key=key, count_only=True)).count)

    async def wait_delete(self, key: bytes, sub: Subscription) -> None:
        """Until ``key`` is deleted; ``sub`` was subscribed when it was seen."""
        while True:
            ev = await sub.next(RECHECK_INTERVAL)
            if ev is None:
                sub.reset = False
                if not self._key_present(key):
                    return
                continue
            if ev.type == kv_pb2.Event.DELETE:
                return

    async def wait_deletes(self, prefix: bytes, max_create_rev: int) -> rpc_pb2.ResponseHeader:
        """clientv3 concurrency's waitDeletes: until no key of ``prefix``
        created at or below ``max_create_rev`` is left."""
        req = rpc_pb2.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            sort_order=rpc_pb2.RangeRequest.DESCEND,
            sort_target=rpc_pb2.RangeRequest.CREATE,
            limit=1,
            max_create_revision=max_create_rev,
        )
        while True:
            resp = await self.get(req)
            if not resp.kvs:
                return resp.header
            key = resp.kvs[0].key
            sub = self.events.subscribe(key)  # no await since the read
            try:
                await self.wait_delete(key, sub)
            finally:
                self.events.unsubscribe(sub)

    def in_background(self, coro: Awaitable[Any], what: str) -> None:
        """Clean-up that must outlive a cancelled call."""

        async def run() -> None:
            try:
                await coro
            except EtcdError as e:
                log.warning("%s failed: %s", what, e.message)
            except Exception:
                log.exception("%s failed", what)

        t = asyncio.ensure_future(run())
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def delete(self, key: bytes) -> rpc_pb2.DeleteRangeResponse:
        res = await self.s.propose(internal_pb2.InternalRequest(delete_range=rpc_pb2.DeleteRangeRequest(key=key)))
        resp = res.response
        resp.header.CopyFrom(self.s.header(resp.header.revision or res.revision))
        return resp


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, server: KvServer, recipes: Recipes | None = None) -> None:
        self.s = server
        self.r = recipes or Recipes(server)

    @recipe
    async def Lock(self, request: v3lock_pb2.LockRequest, context: grpc.aio.ServicerContext) -> v3lock_pb2.LockResponse:
        r = self.r
        lease_id = await r.lease_for(request.lease)
        prefix = request.name + b"/"
        my_key = session_key(prefix, lease_id)
        txn = rpc_pb2.TxnRequest(
            compare=[create_revision_is(my_key, 0)],
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=my_key, value=b"", lease=lease_id)),
                rpc_pb2.RequestOp(request_range=first_create(prefix)),
            ],
            failure=[
                rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=my_key)),
                rpc_pb2.RequestOp(request_range=first_create(prefix)),
            ],
        )
        resp, rev = await r.txn(txn)
        my_rev = rev
        if not resp.succeeded:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        if not owner or owner[0].create_revision == my_rev:
            return v3lock_pb2.LockResponse(header=self.s.header(rev), key=my_key)
        try:
            await r.wait_deletes(prefix, my_rev - 1)
            mine = await r.get(rpc_pb2.RangeRequest(key=my_key))
        except BaseException:
            # Cancelled or failed while waiting: leave the queue (etcd's Unlock).
            r.in_background(r.delete(my_key), f"releasing lock key {my_key!r}")
            raise
        if not mine.kvs or mine.kvs[0].create_revision != my_rev:
            raise RecipeError(SESSION_EXPIRED)
        return v3lock_pb2.LockResponse(header=mine.header, key=my_key)

    @recipe
    async def Unlock(
        self, request: v3lock_pb2.UnlockRequest, context: grpc.aio.ServicerContext
    ) -> v3lock_pb2.UnlockResponse:
        if not request.key:
            raise errors.EMPTY_KEY
        resp = await self.r.delete(request.key)
        return v3lock_pb2.UnlockResponse(header=resp.header)
