"""The asyncio client: ``AsyncClient`` and its watch, lease, lock and election
objects. The operations, their requests, decoding and retry rules are the
ones of the blocking client (``kvstore.client.core``); only the I/O differs.

Use one ``AsyncClient`` per event loop (gRPC asyncio channels belong to the
loop that created them).
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import IO, Any

import grpc

from ..pb import rpc_pb2, v3election_pb2
from . import core
from . import model as M
from .backoff import Deadline
from .core import FATAL, REAUTH, Call, Endpoint, Operations
from .errors import (
    ClientError,
    LeaseExpired,
    LockTimeout,
    NotLeader,
    Timeout,
    Unavailable,
    WatchError,
    server_error,
)
from .sync import SnapshotAccumulator, SnapshotInfo
from .txn import Compare, create_revision
from .watchstate import FATAL_WATCH_CODES, WatchResume

_END = object()


class AsyncClient(Operations):
    """``async with AsyncClient("a:2379,b:2379") as c: await c.put("k", "v")``.

    Every operation of ``Client`` exists here as a coroutine (``await
    c.get(k)``, ``await c.txn().if_(...).then(...).commit()``); ``watch``,
    ``lease``, ``lock`` and ``election`` return asyncio counterparts.
    """

    def __init__(self, endpoints: str | Sequence[str] | None = None, **options: Any) -> None:
        self._o = core.make_options(endpoints, **options)
        self._channels: dict[Endpoint, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[Endpoint, str], Any] = {}
        self._cur = 0
        self._token: str | None = None
        self._closed = False
        self._children: list[Any] = []

    @property
    def endpoints(self) -> list[str]:
        return [e.target for e in self._o.endpoints]

    @property
    def timeout(self) -> float:
        return self._o.timeout

    def _endpoint(self, text: str | None) -> Endpoint:
        if text is None:
            return self._o.endpoints[self._cur % len(self._o.endpoints)]
        for e in self._o.endpoints:
            if e.target == text:
                return e
        return Endpoint.parse(text)

    def _rotate(self, failed: Endpoint) -> None:
        if self._o.endpoints[self._cur % len(self._o.endpoints)] == failed:
            self._cur = (self._cur + 1) % len(self._o.endpoints)

    def _channel(self, ep: Endpoint) -> grpc.aio.Channel:
        if self._closed:
            raise Unavailable("client is closed", "CANCELLED")
        ch = self._channels.get(ep)
        if ch is None:
            opts = self._o.channel_options()
            if self._o.use_tls(ep):
                ch = grpc.aio.secure_channel(ep.target, self._o.credentials(), options=opts)
            else:
                ch = grpc.aio.insecure_channel(ep.target, options=opts)
            self._channels[ep] = ch
        return ch

    def _stub(self, ep: Endpoint, service: str) -> Any:
        stub = self._stubs.get((ep, service))
        if stub is None:
            stub = self._stubs[(ep, service)] = core.STUBS[service](self._channel(ep))
        return stub

    async def _ready(self, ep: Endpoint, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self._channel(ep).channel_ready(), timeout)
            return True
        except TimeoutError:
            return False

    async def _metadata(self, ep: Endpoint, extra: Sequence[tuple[str, str]], dl: Deadline) -> list[tuple[str, str]]:
        md = list(extra)
        if self._o.user is not None:
            if self._token is None:
                req = rpc_pb2.AuthenticateRequest(name=self._o.user, password=self._o.password or "")
                try:
                    resp = await self._stub(ep, "Auth").Authenticate(req, timeout=dl.cap(self._o.timeout))
                except grpc.RpcError as e:
                    code, details = core.rpc_failure(e)
                    if core.classify(code, details) == FATAL:
                        raise server_error(code, details) from None
                    raise
                self._token = resp.token
            md.append(("token", self._token or ""))
        return md

    def _run(self, call: Call) -> Any:
        return self._execute(call)

    async def _execute(self, call: Call) -> Any:
        total = self._o.timeout if call.timeout is None else call.timeout
        dl = Deadline(None if math.isinf(total) else total)
        bo = self._o.backoff()
        n = 1 if call.endpoint else len(self._o.endpoints)
        failures = 0
        att = core.Attempts(call)
        while True:
            if dl.expired():
                raise core.not_applied(call, att.last, deadline=True)
            ep = self._endpoint(call.endpoint)
            if not await self._ready(ep, dl.cap(self._o.dial_timeout)):
                att.cannot_connect(ep.target)
            else:
                try:
                    md = await self._metadata(ep, call.metadata, dl)
                    fn = getattr(self._stub(ep, call.service), call.method)
                    t = core.attempt_timeout(call, dl.remaining(), total)
                    if call.stream_once:
                        stream = fn(timeout=t, metadata=md)
                        try:
                            await stream.write(call.request)
                            resp = await stream.read()
                        finally:
                            stream.cancel()
                        if resp is grpc.aio.EOF:
                            raise Unavailable(f"{ep.target}: stream ended without an answer")
                    else:
                        resp = await fn(call.request, timeout=t, metadata=md)
                    return core.finish(call, resp, att.retried)
                except grpc.RpcError as e:
                    action = att.rpc_error(e, ep.target)
                    if isinstance(action, core.Done):
                        return action.value
                    if action == REAUTH:
                        self._token = None
                        continue
                except Unavailable as e:  # a stream with no answer
                    att.no_answer(e)
            if call.endpoint:
                raise core.not_applied(call, att.last, deadline=False)
            self._rotate(ep)
            failures += 1
            if failures % n == 0:
                d = dl.cap(bo.next())
                if d:
                    await asyncio.sleep(d)

    # -- streams and sessions -------------------------------------------------------------------
    async def watch(self, key: M.Bytesish, range_end: M.Bytesish | None = None, *, prefix: bool = False,
                    from_key: bool = False, start_revision: int = 0, prev_kv: bool = False,
                    progress_notify: bool = False, no_put: bool = False, no_delete: bool = False,
                    timeout: float | None = None) -> AsyncWatch:
        create = M.watch_create(key, range_end, prefix=prefix, from_key=from_key, start_revision=start_revision,
                                prev_kv=prev_kv, progress_notify=progress_notify, no_put=no_put,
                                no_delete=no_delete)
        w = AsyncWatch(self, WatchResume(create, f"watch {core.describe(key)}"))
        await w._start(self.timeout if timeout is None else timeout)
        return w

    async def watch_prefix(self, prefix: M.Bytesish, **kw: Any) -> AsyncWatch:
        return await self.watch(prefix, prefix=True, **kw)

    async def lease(self, ttl: int, *, keepalive: bool = True, timeout: float | None = None) -> AsyncLease:
        g = await self.grant(ttl, id=core.random_lease_id(), timeout=timeout)
        return AsyncLease(self, g.id, g.ttl, keepalive)

    def lock(self, name: M.Bytesish, *, ttl: int = 60, lease: AsyncLease | None = None) -> AsyncLock:
        return AsyncLock(self, name, ttl, lease)

    def election(self, name: M.Bytesish) -> AsyncElection:
        return AsyncElection(self, name)

    async def snapshot(self, out: IO[bytes], *, endpoint: str | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       timeout: float | None = None) -> SnapshotInfo:
        dl = Deadline(timeout)
        candidates = [self._endpoint(endpoint)] if endpoint else list(self._o.endpoints)
        last = "no endpoint"
        for ep in candidates:
            if not await self._ready(ep, dl.cap(self._o.dial_timeout)):
                last = f"{ep.target}: cannot connect"
                continue
            acc = SnapshotAccumulator(out, progress)
            try:
                md = await self._metadata(ep, (), dl)
                call = self._stub(ep, "Maintenance").Snapshot(rpc_pb2.SnapshotRequest(), timeout=dl.remaining(),
                                                              metadata=md)
                async for resp in call:
                    if not acc.revision:
                        acc.revision = resp.header.revision
                    acc.add(resp.blob, resp.remaining_bytes)
            except grpc.RpcError as e:
                code, details = core.rpc_failure(e)
                if core.classify(code, details) == FATAL:
                    raise server_error(code, details) from None
                if acc.written == 0:
                    last = f"{ep.target}: {details}"
                    continue
                raise Unavailable(f"snapshot: stream from {ep.target} broke: {details}") from None
            return acc.finish(ep.target)
        raise Unavailable(f"snapshot: no endpoint available: {last}")

    async def close(self) -> None:
        children, self._children = self._children, []
        for ch in children:
            try:
                ch.close()
            except Exception:
                pass
        self._closed = True
        chans, self._channels = list(self._channels.values()), {}
        self._stubs = {}
        for c in chans:
            await c.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _adopt(self, child: Any) -> None:
        self._children.append(child)

    def _disown(self, child: Any) -> None:
        if child in self._children:
            self._children.remove(child)


class AsyncWatch:
    """``async for ev in w``; ``await w.get(timeout)``; ``w.close()``."""

    def __init__(self, client: AsyncClient, state: WatchResume) -> None:
        self._c = client
        self._state = state
        self._q: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def revision(self) -> int:
        return self._state.floor

    async def _start(self, timeout: float | None) -> None:
        call = await self._open(Deadline(timeout), first=True)
        self._c._adopt(self)
        self._task = asyncio.ensure_future(self._run(call))

    async def _open(self, dl: Deadline, first: bool = False) -> Any:
        c = self._c
        bo = c._o.backoff()
        n = len(c._o.endpoints)
        failures = 0
        last = "no attempt"
        if not first:
            c._rotate(c._endpoint(None))
        while not self._closed:
            if dl.expired():
                raise Timeout(f"{self._state.what}: could not start: {last}", "DEADLINE_EXCEEDED")
            ep = c._endpoint(None)
            if await c._ready(ep, dl.cap(c._o.dial_timeout)):
                call = None
                try:
                    md = await c._metadata(ep, (core.REQUIRE_LEADER,), dl)
                    call = c._stub(ep, "Watch").Watch(metadata=md)
                    self._call = call
                    await call.write(self._state.request())
                    created = await asyncio.wait_for(self._first(call), dl.cap(max(2.0, c._o.timeout / 2)))
                    if created:
                        return call
                    last = f"{ep.target}: watch stream ended"
                except TimeoutError:
                    last = f"{ep.target}: watch not confirmed in time"
                    if call is not None:
                        call.cancel()
                except grpc.RpcError as e:
                    code, details = core.rpc_failure(e)
                    last = f"{ep.target}: {details}"
                    if self._closed:
                        break
                    if code is not None and code.name in FATAL_WATCH_CODES:
                        raise server_error(code, details) from None
                    if core.classify(code, details) == REAUTH:
                        c._token = None
            else:
                last = f"{ep.target}: cannot connect"
            c._rotate(ep)
            failures += 1
            if failures % n == 0:
                d = dl.cap(bo.next())
                if d:
                    await asyncio.sleep(d)
        raise WatchError(f"{self._state.what}: closed", "CANCELLED")

    async def _first(self, call: Any) -> bool:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return False
            self._state.on_response(resp)
            if resp.created:
                return True

    async def _run(self, call: Any) -> None:
        try:
            while not self._closed:
                try:
                    while True:
                        resp = await call.read()
                        if resp is grpc.aio.EOF:
                            break
                        for ev in self._state.on_response(resp):
                            self._q.put_nowait(ev)
                except grpc.RpcError as e:
                    code, details = core.rpc_failure(e)
                    if self._closed:
                        break
                    if code is not None and code.name in FATAL_WATCH_CODES:
                        self._q.put_nowait(server_error(code, details))
                        break
                except ClientError as e:
                    self._q.put_nowait(e)
                    break
                if self._closed:
                    break
                call.cancel()
                try:
                    call = await self._open(Deadline(None))
                except ClientError as e:
                    if not self._closed:
                        self._q.put_nowait(e)
                    break
        except asyncio.CancelledError:
            pass
        finally:
            self._q.put_nowait(_END)

    async def get(self, timeout: float | None = None) -> M.Event | None:
        try:
            item = await asyncio.wait_for(self._q.get(), timeout)
        except TimeoutError:
            return None
        if item is _END:
            self._q.put_nowait(_END)
            return None
        if isinstance(item, Exception):
            self._q.put_nowait(_END)
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[M.Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[M.Event]:
        while True:
            item = await self._q.get()
            if item is _END:
                self._q.put_nowait(_END)
                return
            if isinstance(item, Exception):
                self._q.put_nowait(_END)
                raise item
            yield item

    def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
        self._q.put_nowait(_END)
        self._c._disown(self)

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncLease:
    """A lease kept alive by a task every TTL/3; ``lost`` (asyncio.Event) is
    set once it is known gone (TTL 0 answered, or no renewal within the TTL)."""

    def __init__(self, client: AsyncClient, lease_id: int, ttl: int, keepalive: bool = True) -> None:
        self._c = client
        self.id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._callbacks: list[Callable[[AsyncLease], None]] = []
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._expires = loop.time() + ttl
        self._task: asyncio.Task[None] | None = None
        if keepalive:
            client._adopt(self)
            self._task = asyncio.ensure_future(self._keepalive())

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and self._loop.time() < self._expires

    def remaining(self) -> float:
        return 0.0 if self.lost.is_set() else max(0.0, self._expires - self._loop.time())

    def on_lost(self, cb: Callable[[AsyncLease], None]) -> None:
        self._callbacks.append(cb)
        if self.lost.is_set():
            cb(self)

    def _lose(self, why: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = why
        self.lost.set()
        for cb in list(self._callbacks):
            try:
                cb(self)
            except Exception:
                pass

    async def _keepalive(self) -> None:
        bo = self._c._o.backoff()
        interval = max(0.2, self.ttl / 3)
        try:
            while True:
                sent = self._loop.time()
                left = self._expires - sent
                if left <= 0:
                    self._lose("no keep-alive succeeded within the lease TTL")
                    return
                try:
                    ttl = await self._c.keep_alive_once(self.id, timeout=max(0.5, min(left, interval * 2)))
                except ClientError:
                    if self._loop.time() >= self._expires:
                        self._lose("no keep-alive succeeded within the lease TTL")
                        return
                    await asyncio.sleep(min(bo.next(), max(0.05, self._expires - self._loop.time())))
                    continue
                bo.reset()
                if ttl <= 0:
                    self._lose("the lease expired or was revoked")
                    return
                self._expires = sent + ttl
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._c._disown(self)

    async def revoke(self) -> None:
        self.close()
        try:
            await self._c.revoke(self.id)
        except ClientError as e:
            if "lease not found" not in e.message:
                raise
        self._lose("revoked")

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.revoke()


async def _drop_lease(lease: AsyncLease) -> None:
    try:
        await lease.revoke()
    except ClientError:
        lease.close()


class AsyncLock:
    """``async with c.lock("name") as lk:`` — see ``kvstore.client.sync.Lock``."""

    def __init__(self, client: AsyncClient, name: M.Bytesish, ttl: int = 60, lease: AsyncLease | None = None) -> None:
        self._c = client
        self.name = M.to_bytes(name)
        self.ttl = ttl
        self._given_lease = lease
        self.lease: AsyncLease | None = lease
        self.key = b""
        self.revision = 0
        self._acquired = False

    @property
    def lost(self) -> asyncio.Event:
        assert self.lease is not None, "lock not acquired"
        return self.lease.lost

    @property
    def held(self) -> bool:
        return self._acquired and self.lease is not None and self.lease.alive

    async def acquire(self, timeout: float | None = None) -> AsyncLock:
        dl = Deadline(timeout)
        own = self._given_lease is None
        lease = self.lease if not own else await self._c.lease(self.ttl, timeout=dl.cap(self._c.timeout))
        self.lease = lease
        assert lease is not None
        try:
            try:
                key, _ = await self._c.lock_rpc(self.name, lease.id,
                                                timeout=dl.remaining() if timeout is not None else math.inf)
            except Timeout:
                raise LockTimeout(f"lock {core.describe(self.name)}: not acquired within {timeout}s") from None
            kv = await self._c.get(key)
            if kv is None or kv.lease != lease.id:
                raise LeaseExpired(f"lock {core.describe(self.name)}: session lease lost while acquiring")
        except BaseException:
            if own:
                await asyncio.shield(_drop_lease(lease))
            raise
        self.key, self.revision = key, kv.create_revision
        self._acquired = True
        return self

    def guard(self) -> Compare:
        return create_revision(self.key) == self.revision

    async def release(self) -> None:
        if not self._acquired:
            return
        try:
            await self._c.unlock_rpc(self.key)
        finally:
            self._acquired = False  # key and revision stay readable (the last token held)
            if self._given_lease is None and self.lease is not None:
                await _drop_lease(self.lease)

    async def __aenter__(self) -> AsyncLock:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class AsyncLeadership:
    def __init__(self, election: AsyncElection, leader: v3election_pb2.LeaderKey, lease: AsyncLease,
                 own_lease: bool) -> None:
        self._e = election
        self.leader_key = leader
        self.lease = lease
        self._own = own_lease
        self.resigned = False

    @property
    def key(self) -> bytes:
        return self.leader_key.key

    @property
    def revision(self) -> int:
        return self.leader_key.rev

    @property
    def lost(self) -> asyncio.Event:
        return self.lease.lost

    def guard(self) -> Compare:
        return create_revision(self.key) == self.revision

    async def proclaim(self, value: M.Bytesish) -> None:
        try:
            await self._e._c.proclaim_rpc(self.leader_key, value)
        except NotLeader:
            raise NotLeader(f"election {core.describe(self._e.name)}: not the leader any more", "") from None

    async def resign(self) -> None:
        if self.resigned:
            return
        self.resigned = True
        try:
            await self._e._c.resign_rpc(self.leader_key)
        finally:
            if self._own:
                await _drop_lease(self.lease)

    async def __aenter__(self) -> AsyncLeadership:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.resign()


class AsyncElection:
    def __init__(self, client: AsyncClient, name: M.Bytesish) -> None:
        self._c = client
        self.name = M.to_bytes(name)

    async def campaign(self, value: M.Bytesish, *, ttl: int = 60, lease: AsyncLease | None = None,
                       timeout: float | None = None) -> AsyncLeadership:
        dl = Deadline(timeout)
        own = lease is None
        ls = lease or await self._c.lease(ttl, timeout=dl.cap(self._c.timeout))
        try:
            try:
                leader = await self._c.campaign_rpc(self.name, ls.id, value,
                                                    timeout=dl.remaining() if timeout is not None else math.inf)
            except Timeout:
                raise LockTimeout(f"campaign {core.describe(self.name)}: not elected within {timeout}s") from None
        except BaseException:
            if own:
                await asyncio.shield(_drop_lease(ls))
            raise
        return AsyncLeadership(self, leader, ls, own)

    async def leader(self) -> M.KeyValue | None:
        return await self._c.leader(self.name)

    def observe(self) -> AsyncObservation:
        return AsyncObservation(self._c, self.name)


class AsyncObservation:
    def __init__(self, client: AsyncClient, name: bytes) -> None:
        self._c = client
        self.name = name
        self._closed = False
        self._call: Any = None
        self._last: tuple[bytes, int] | None = None
        client._adopt(self)

    def __aiter__(self) -> AsyncIterator[M.KeyValue]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[M.KeyValue]:
        c = self._c
        bo = c._o.backoff()
        while not self._closed:
            ep = c._endpoint(None)
            if await c._ready(ep, c._o.dial_timeout):
                try:
                    md = await c._metadata(ep, (core.REQUIRE_LEADER,), Deadline(c.timeout))
                    call = c._stub(ep, "Election").Observe(v3election_pb2.LeaderRequest(name=self.name), metadata=md)
                    self._call = call
                    async for resp in call:
                        bo.reset()
                        kv = M.KeyValue.of(resp.kv)
                        ident = (kv.key, kv.mod_revision)
                        if ident != self._last:
                            self._last = ident
                            yield kv
                except grpc.RpcError as e:
                    code, details = core.rpc_failure(e)
                    if self._closed:
                        return
                    if code is not None and code.name in FATAL_WATCH_CODES:
                        raise server_error(code, details) from None
            c._rotate(ep)
            await asyncio.sleep(bo.next())

    def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        self._c._disown(self)
