"""The blocking client: ``Client``, ``Watch``, ``Lease``, ``Lock``, ``Election``.

Thread-safe; background work (watch readers, lease keep-alives) runs on
daemon threads that ``close()`` stops.
"""
from __future__ import annotations

import atexit
import hashlib
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
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
from .txn import Compare, create_revision
from .watchstate import FATAL_WATCH_CODES, WatchResume

_END = object()
_LIVE: weakref.WeakSet[Client] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Close clients left open: a gRPC channel with a connectivity
    subscription torn down during interpreter shutdown can hang the exit."""
    for c in list(_LIVE):
        try:
            c.close()
        except Exception:
            pass


class Client(Operations):
    """A blocking client for kvstore or etcd (v3 API over gRPC).

    ``Client("10.0.0.1:2379,10.0.0.2:2379", timeout=10, user="root", password="pw",
    ca_cert="ca.pem", cert="client.pem", key="client-key.pem")``; endpoints may
    be ``host:port`` or ``http(s)://host:port`` (default ``$KVSTORE_ENDPOINTS``
    or 127.0.0.1:2379). See ``kvstore.client.core`` for the retry rules.
    """

    def __init__(self, endpoints: str | Sequence[str] | None = None, **options: Any) -> None:
        self._o = core.make_options(endpoints, **options)
        self._lock = threading.RLock()
        self._channels: dict[Endpoint, grpc.Channel] = {}
        self._stubs: dict[tuple[Endpoint, str], Any] = {}
        self._cur = 0
        self._token: str | None = None
        self._closed = False
        self._children: list[Any] = []  # watches, leases, observations to stop on close
        self._watchers: dict[Endpoint, _Connectivity] = {}
        _LIVE.add(self)

    # -- plumbing --------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [e.target for e in self._o.endpoints]

    @property
    def timeout(self) -> float:
        return self._o.timeout

    def _endpoint(self, text: str | None) -> Endpoint:
        if text is None:
            with self._lock:
                return self._o.endpoints[self._cur % len(self._o.endpoints)]
        for e in self._o.endpoints:
            if e.target == text:
                return e
        return Endpoint.parse(text)

    def _rotate(self, failed: Endpoint) -> None:
        with self._lock:
            if self._o.endpoints[self._cur % len(self._o.endpoints)] == failed:
                self._cur = (self._cur + 1) % len(self._o.endpoints)

    def _channel(self, ep: Endpoint) -> grpc.Channel:
        with self._lock:
            if self._closed:
                raise Unavailable("client is closed", "CANCELLED")
            ch = self._channels.get(ep)
            if ch is None:
                opts = self._o.channel_options()
                if self._o.use_tls(ep):
                    ch = grpc.secure_channel(ep.target, self._o.credentials(), options=opts)
                else:
                    ch = grpc.insecure_channel(ep.target, options=opts)
                self._channels[ep] = ch
            return ch

    def _stub(self, ep: Endpoint, service: str) -> Any:
        with self._lock:
            stub = self._stubs.get((ep, service))
            if stub is None:
                stub = self._stubs[(ep, service)] = core.STUBS[service](self._channel(ep))
            return stub

    def _ready(self, ep: Endpoint, timeout: float | None) -> bool:
        """Wait until the channel to ``ep`` is connected (a request sent then
        is the only kind that can have an unknown outcome)."""
        ch = self._channel(ep)
        with self._lock:
            watcher = self._watchers.get(ep)
            if watcher is None:
                watcher = self._watchers[ep] = _Connectivity()
                ch.subscribe(watcher.update, try_to_connect=True)
        return watcher.wait_ready(timeout)

    def _metadata(self, ep: Endpoint, extra: Sequence[tuple[str, str]], deadline: Deadline) -> list[tuple[str, str]]:
        md = list(extra)
        if self._o.user is not None:
            if self._token is None:
                self._authenticate(ep, deadline)
            md.append(("token", self._token or ""))
        return md

    def _authenticate(self, ep: Endpoint, deadline: Deadline) -> None:
        req = rpc_pb2.AuthenticateRequest(name=self._o.user or "", password=self._o.password or "")
        try:
            resp = self._stub(ep, "Auth").Authenticate(req, timeout=deadline.cap(self._o.timeout))
        except grpc.RpcError as e:
            code, details = core.rpc_failure(e)
            if core.classify(code, details) == FATAL:
                raise server_error(code, details) from None
            raise
        self._token = resp.token

    def _sleep(self, seconds: float | None) -> None:
        if seconds and seconds > 0:
            time.sleep(seconds)

    def _run(self, call: Call) -> Any:
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
            if not self._ready(ep, dl.cap(self._o.dial_timeout)):
                att.cannot_connect(ep.target)
            else:
                try:
                    md = self._metadata(ep, call.metadata, dl)
                    fn = getattr(self._stub(ep, call.service), call.method)
                    t = core.attempt_timeout(call, dl.remaining(), total)
                    if call.stream_once:
                        stream = fn(iter([call.request]), timeout=t, metadata=md)
                        try:
                            resp = next(stream)
                        except StopIteration:
                            raise Unavailable(f"{ep.target}: stream ended without an answer") from None
                        finally:
                            stream.cancel()
                    else:
                        resp = fn(call.request, timeout=t, metadata=md)
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
                self._sleep(dl.cap(bo.next()))

    # -- streams ------------------------------------------------------------------------------
    def watch(self, key: M.Bytesish, range_end: M.Bytesish | None = None, *, prefix: bool = False,
              from_key: bool = False, start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False, no_put: bool = False, no_delete: bool = False,
              timeout: float | None = None) -> Watch:
        """Start a watch (returns once the server confirmed it): iterate it for
        ``Event``s. It survives endpoint failures and leader changes without
        losing or repeating events; it raises ``WatchCompacted`` when it cannot."""
        create = M.watch_create(key, range_end, prefix=prefix, from_key=from_key, start_revision=start_revision,
                                prev_kv=prev_kv, progress_notify=progress_notify, no_put=no_put,
                                no_delete=no_delete)
        return Watch(self, WatchResume(create, f"watch {core.describe(key)}"), timeout)

    def watch_prefix(self, prefix: M.Bytesish, **kw: Any) -> Watch:
        return self.watch(prefix, prefix=True, **kw)

    def lease(self, ttl: int, *, keepalive: bool = True, timeout: float | None = None) -> Lease:
        """Grant a lease (client-chosen ID, so the grant is retried safely) and
        keep it alive in the background until ``revoke()``/``close()``."""
        g = self.grant(ttl, id=core.random_lease_id(), timeout=timeout)
        return Lease(self, g.id, g.ttl, keepalive)

    def lock(self, name: M.Bytesish, *, ttl: int = 60, lease: Lease | None = None) -> Lock:
        """A distributed lock (server-side v3lock). ``with c.lock("jobs") as lk:``"""
        return Lock(self, name, ttl, lease)

    def election(self, name: M.Bytesish) -> Election:
        return Election(self, name)

    def snapshot(self, out: IO[bytes], *, endpoint: str | None = None,
                 progress: Callable[[int, int], None] | None = None, timeout: float | None = None) -> SnapshotInfo:
        """Stream a snapshot of the store into ``out``: the database followed by
        its 32-byte SHA-256, as etcdctl writes it. The digest is verified."""
        total_t = math.inf if timeout is None else timeout
        dl = Deadline(None if math.isinf(total_t) else total_t)
        candidates = [self._endpoint(endpoint)] if endpoint else list(self._o.endpoints)
        last = "no endpoint"
        for ep in candidates:
            if not self._ready(ep, dl.cap(self._o.dial_timeout)):
                last = f"{ep.target}: cannot connect"
                continue
            acc = SnapshotAccumulator(out, progress)
            try:
                md = self._metadata(ep, (), dl)
                for resp in self._stub(ep, "Maintenance").Snapshot(rpc_pb2.SnapshotRequest(), timeout=dl.remaining(),
                                                                    metadata=md):
                    if not acc.revision:
                        acc.revision = resp.header.revision
                    acc.add(resp.blob, resp.remaining_bytes)
            except grpc.RpcError as e:
                code, details = core.rpc_failure(e)
                if acc.written == 0 and core.classify(code, details) != FATAL:
                    last = f"{ep.target}: {details}"
                    continue
                if core.classify(code, details) == FATAL:
                    raise server_error(code, details) from None
                raise Unavailable(f"snapshot: stream from {ep.target} broke: {details}") from None
            return acc.finish(ep.target)
        raise Unavailable(f"snapshot: no endpoint available: {last}")

    def close(self) -> None:
        with self._lock:
            children, self._children = self._children, []
        for ch in children:
            try:
                ch.close()
            except Exception:
                pass
        with self._lock:
            self._closed = True
            chans, self._channels = dict(self._channels), {}
            watchers, self._watchers = dict(self._watchers), {}
            self._stubs = {}
        for ep, c in chans.items():
            w = watchers.get(ep)
            if w is not None:
                c.unsubscribe(w.update)
        # gRPC's connectivity poller notices the unsubscription within 0.2 s;
        # closing the channel under it makes it raise in its thread.
        deadline = time.monotonic() + 0.5
        for c in chans.values():
            state = getattr(c, "_connectivity_state", None)
            while getattr(state, "polling", False) and time.monotonic() < deadline:
                time.sleep(0.01)
            c.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _adopt(self, child: Any) -> None:
        with self._lock:
            self._children.append(child)

    def _disown(self, child: Any) -> None:
        with self._lock:
            if child in self._children:
                self._children.remove(child)


class _Connectivity:
    """The last connectivity state gRPC reported for a channel."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.state: grpc.ChannelConnectivity | None = None

    def update(self, state: grpc.ChannelConnectivity) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()

    def wait_ready(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.state == grpc.ChannelConnectivity.READY, timeout)


class SnapshotInfo:
    def __init__(self, size: int, sha256: bytes, endpoint: str, revision: int) -> None:
        self.size = size  # database bytes (without the digest)
        self.sha256 = sha256
        self.endpoint = endpoint
        self.revision = revision


class SnapshotAccumulator:
    """Writes a snapshot stream through, keeping the last 32 bytes aside: at
    the end they must be the SHA-256 of everything before them."""

    def __init__(self, out: IO[bytes], progress: Callable[[int, int], None] | None) -> None:
        self.out = out
        self.progress = progress
        self.digest = hashlib.sha256()
        self.tail = b""
        self.written = 0
        self.revision = 0

    def add(self, blob: bytes, remaining: int, revision: int = 0) -> None:
        data = self.tail + blob
        body, self.tail = data[:-32], data[-32:]
        if len(data) < 32:
            body, self.tail = b"", data
        if body:
            self.digest.update(body)
            self.out.write(body)
            self.written += len(body)
        if self.progress is not None:
            self.progress(self.written + len(self.tail), self.written + len(self.tail) + remaining)

    def finish(self, endpoint: str) -> SnapshotInfo:
        if len(self.tail) != 32:
            raise Unavailable(f"snapshot from {endpoint}: stream too short (no digest)")
        want = self.digest.digest()
        if want != self.tail:
            raise ClientError(f"snapshot from {endpoint}: SHA-256 mismatch (corrupt transfer)", "DATA_LOSS")
        self.out.write(self.tail)
        self.out.flush()
        return SnapshotInfo(self.written, want, endpoint, self.revision)


class Watch:
    """Iterate for ``Event``s; ``get(timeout)`` for one event or None;
    ``close()`` (any thread) ends the iteration. ``revision``: the revision
    from which the watch would resume."""

    def __init__(self, client: Client, state: WatchResume, timeout: float | None) -> None:
        self._c = client
        self._state = state
        self._q: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._call: Any = None
        self._call_lock = threading.Lock()
        self._reqs: queue.Queue[Any] | None = None
        t = client.timeout if timeout is None else timeout
        responses = self._open(Deadline(t), first=True)
        client._adopt(self)
        self._thread = threading.Thread(target=self._run, args=(responses,), daemon=True,
                                        name=f"kvstore-{state.what}")
        self._thread.start()

    @property
    def revision(self) -> int:
        return self._state.floor

    def _set_call(self, call: Any, reqs: Any) -> None:
        with self._call_lock:
            self._call, self._reqs = call, reqs
            if self._closed.is_set():
                call.cancel()

    def _open(self, dl: Deadline, first: bool = False) -> Iterator[rpc_pb2.WatchResponse]:
        c = self._c
        bo = c._o.backoff()
        n = len(c._o.endpoints)
        failures = 0
        last = "no attempt"
        if not first:
            c._rotate(c._endpoint(None))  # the endpoint we were on just failed: try another first
        while not self._closed.is_set():
            if dl.expired():
                raise Timeout(f"{self._state.what}: could not start: {last}", "DEADLINE_EXCEEDED")
            ep = c._endpoint(None)
            if c._ready(ep, dl.cap(c._o.dial_timeout)):
                reqs: queue.Queue[Any] = queue.Queue()
                reqs.put(self._state.request())
                timer = None
                try:
                    md = c._metadata(ep, (core.REQUIRE_LEADER,), dl)
                    call = c._stub(ep, "Watch").Watch(iter(reqs.get, _END), metadata=md)
                    self._set_call(call, reqs)
                    timer = threading.Timer(dl.cap(max(2.0, c._o.timeout / 2)) or 5.0, call.cancel)
                    timer.daemon = True
                    timer.start()
                    for resp in call:
                        self._state.on_response(resp)
                        if resp.created:
                            timer.cancel()
                            return call
                    last = f"{ep.target}: watch stream ended"
                except grpc.RpcError as e:
                    code, details = core.rpc_failure(e)
                    last = f"{ep.target}: {details}"
                    if self._closed.is_set():
                        break
                    if code is not None and code.name in FATAL_WATCH_CODES:
                        raise server_error(code, details) from None
                    if core.classify(code, details) == REAUTH:
                        c._token = None
                finally:
                    if timer is not None:
                        timer.cancel()
            else:
                last = f"{ep.target}: cannot connect"
            c._rotate(ep)
            failures += 1
            if failures % n == 0:
                self._closed.wait(dl.cap(bo.next()))
        raise WatchError(f"{self._state.what}: closed", "CANCELLED")

    def _run(self, responses: Iterator[rpc_pb2.WatchResponse]) -> None:
        while not self._closed.is_set():
            try:
                for resp in responses:
                    for ev in self._state.on_response(resp):
                        self._q.put(ev)
            except grpc.RpcError as e:
                code, details = core.rpc_failure(e)
                if self._closed.is_set():
                    break
                if code is not None and code.name in FATAL_WATCH_CODES:
                    self._q.put(server_error(code, details))
                    break
            except ClientError as e:  # compacted / cancelled by the server
                self._q.put(e)
                break
            if self._closed.is_set():
                break
            try:
                responses = self._open(Deadline(None))
            except ClientError as e:
                if not self._closed.is_set():
                    self._q.put(e)
                break
        self._q.put(_END)

    def get(self, timeout: float | None = None) -> M.Event | None:
        """The next event, or None after ``timeout`` seconds (or once closed)."""
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self._q.put(_END)
            return None
        if isinstance(item, Exception):
            self._q.put(_END)
            raise item
        return item

    def __iter__(self) -> Iterator[M.Event]:
        while True:
            item = self._q.get()
            if item is _END:
                self._q.put(_END)
                return
            if isinstance(item, Exception):
                self._q.put(_END)
                raise item
            yield item

    def close(self) -> None:
        self._closed.set()
        with self._call_lock:
            call, reqs = self._call, self._reqs
        if reqs is not None:
            reqs.put(_END)
        if call is not None:
            call.cancel()
        self._q.put(_END)
        self._c._disown(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lease:
    """A granted lease, kept alive every TTL/3 by a background thread.

    ``lost`` (a threading.Event) is set when the lease is known gone: the
    server answered TTL 0 (expired or revoked), or no keep-alive succeeded
    before the TTL ran out. ``on_lost(cb)`` registers a callback (called from
    the keep-alive thread). As a context manager it is revoked on exit."""

    def __init__(self, client: Client, lease_id: int, ttl: int, keepalive: bool = True) -> None:
        self._c = client
        self.id = lease_id
        self.ttl = ttl
        self.lost = threading.Event()
        self.lost_reason = ""
        self._stop = threading.Event()
        self._callbacks: list[Callable[[Lease], None]] = []
        self._expires = time.monotonic() + ttl
        self._thread: threading.Thread | None = None
        if keepalive:
            client._adopt(self)
            self._thread = threading.Thread(target=self._keepalive, daemon=True, name=f"kvstore-lease-{lease_id:x}")
            self._thread.start()

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and time.monotonic() < self._expires

    def remaining(self) -> float:
        """Seconds the lease is known to live at least (0 when lost)."""
        return 0.0 if self.lost.is_set() else max(0.0, self._expires - time.monotonic())

    def on_lost(self, cb: Callable[[Lease], None]) -> None:
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

    def _keepalive(self) -> None:
        bo = self._c._o.backoff()
        interval = max(0.2, self.ttl / 3)
        while not self._stop.is_set():
            sent = time.monotonic()
            left = self._expires - sent
            if left <= 0:
                self._lose("no keep-alive succeeded within the lease TTL")
                return
            try:
                ttl = self._c.keep_alive_once(self.id, timeout=max(0.5, min(left, interval * 2)))
            except ClientError:
                if self._stop.is_set():
                    return
                if time.monotonic() >= self._expires:
                    self._lose("no keep-alive succeeded within the lease TTL")
                    return
                self._stop.wait(min(bo.next(), max(0.05, self._expires - time.monotonic())))
                continue
            bo.reset()
            if ttl <= 0:
                self._lose("the lease expired or was revoked")
                return
            self._expires = sent + ttl
            self._stop.wait(interval)

    def keep_alive_once(self) -> int:
        ttl = self._c.keep_alive_once(self.id)
        if ttl <= 0:
            self._lose("the lease expired or was revoked")
        else:
            self._expires = time.monotonic() + ttl
        return ttl

    def close(self) -> None:
        """Stop the keep-alive (the lease then expires after its TTL)."""
        self._stop.set()
        self._c._disown(self)

    def revoke(self) -> None:
        self.close()
        try:
            self._c.revoke(self.id)
        except ClientError as e:
            if "lease not found" not in e.message:
                raise
        self._lose("revoked")

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.revoke()


class Lock:
    """``with c.lock("name", ttl=10) as lk:`` holds the lock (etcd's v3lock
    service) for the block. ``lk.key`` and ``lk.revision`` (the key's
    create_revision) are the fencing token; ``lk.guard()`` is the compare to
    put in a transaction so a write only lands while the lock is still held.
    ``lk.lost`` is set if the session lease is lost (the lock is then gone)."""

    def __init__(self, client: Client, name: M.Bytesish, ttl: int = 60, lease: Lease | None = None) -> None:
        self._c = client
        self.name = M.to_bytes(name)
        self.ttl = ttl
        self._given_lease = lease
        self.lease: Lease | None = lease
        self.key: bytes = b""
        self.revision = 0
        self._acquired = False

    @property
    def lost(self) -> threading.Event:
        assert self.lease is not None, "lock not acquired"
        return self.lease.lost

    @property
    def held(self) -> bool:
        return self._acquired and self.lease is not None and self.lease.alive

    def acquire(self, timeout: float | None = None) -> Lock:
        dl = Deadline(timeout)
        own = self._given_lease is None
        lease = self.lease if not own else self._c.lease(self.ttl, timeout=dl.cap(self._c.timeout))
        self.lease = lease
        assert lease is not None
        try:
            try:
                key, _hdr = self._c.lock_rpc(self.name, lease.id, timeout=dl.remaining() if timeout is not None
                                             else math.inf)
            except Timeout:
                raise LockTimeout(f"lock {core.describe(self.name)}: not acquired within {timeout}s") from None
            kv = self._c.get(key)
            if kv is None or kv.lease != lease.id:
                raise LeaseExpired(f"lock {core.describe(self.name)}: session lease lost while acquiring")
        except BaseException:
            if own:
                try:
                    lease.revoke()
                except ClientError:
                    lease.close()
            raise
        self.key, self.revision = key, kv.create_revision
        self._acquired = True
        return self

    def guard(self) -> Compare:
        """The fencing compare: true only while this holder's key exists."""
        return create_revision(self.key) == self.revision

    def release(self) -> None:
        if not self._acquired:
            return
        try:
            self._c.unlock_rpc(self.key)
        finally:
            self._acquired = False  # key and revision stay readable (the last token held)
            if self._given_lease is None and self.lease is not None:
                try:
                    self.lease.revoke()
                except ClientError:
                    self.lease.close()

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Leadership:
    """Won leadership of an election (``Election.campaign``)."""

    def __init__(self, election: Election, leader: v3election_pb2.LeaderKey, lease: Lease, own_lease: bool) -> None:
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
        """The fencing token: the create_revision of the leader key."""
        return self.leader_key.rev

    @property
    def lost(self) -> threading.Event:
        return self.lease.lost

    def guard(self) -> Compare:
        return create_revision(self.key) == self.revision

    def proclaim(self, value: M.Bytesish) -> None:
        try:
            self._e._c.proclaim_rpc(self.leader_key, value)
        except NotLeader:
            raise NotLeader(f"election {core.describe(self._e.name)}: not the leader any more", "") from None

    def resign(self) -> None:
        if self.resigned:
            return
        self.resigned = True
        try:
            self._e._c.resign_rpc(self.leader_key)
        finally:
            if self._own:
                try:
                    self.lease.revoke()
                except ClientError:
                    self.lease.close()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.resign()


class Election:
    """An election on the server-side v3election service."""

    def __init__(self, client: Client, name: M.Bytesish) -> None:
        self._c = client
        self.name = M.to_bytes(name)

    def campaign(self, value: M.Bytesish, *, ttl: int = 60, lease: Lease | None = None,
                 timeout: float | None = None) -> Leadership:
        """Block until elected; the result is a context manager that resigns."""
        dl = Deadline(timeout)
        own = lease is None
        ls = lease or self._c.lease(ttl, timeout=dl.cap(self._c.timeout))
        try:
            try:
                leader = self._c.campaign_rpc(self.name, ls.id, value,
                                              timeout=dl.remaining() if timeout is not None else math.inf)
            except Timeout:
                raise LockTimeout(f"campaign {core.describe(self.name)}: not elected within {timeout}s") from None
        except BaseException:
            if own:
                try:
                    ls.revoke()
                except ClientError:
                    ls.close()
            raise
        return Leadership(self, leader, ls, own)

    def leader(self) -> M.KeyValue | None:
        return self._c.leader(self.name)

    def observe(self) -> Observation:
        """Iterate the leader's KeyValue now and after every change."""
        return Observation(self._c, self.name)


class Observation:
    """Leader changes of an election; reconnects to another endpoint after a
    failure, without repeating a value already delivered."""

    def __init__(self, client: Client, name: bytes) -> None:
        self._c = client
        self.name = name
        self._closed = threading.Event()
        self._call: Any = None
        self._last: tuple[bytes, int] | None = None
        client._adopt(self)

    def __iter__(self) -> Iterator[M.KeyValue]:
        c = self._c
        bo = c._o.backoff()
        while not self._closed.is_set():
            ep = c._endpoint(None)
            if c._ready(ep, c._o.dial_timeout):
                try:
                    md = c._metadata(ep, (core.REQUIRE_LEADER,), Deadline(c.timeout))
                    call = c._stub(ep, "Election").Observe(v3election_pb2.LeaderRequest(name=self.name), metadata=md)
                    self._call = call
                    if self._closed.is_set():
                        call.cancel()
                    for resp in call:
                        bo.reset()
                        kv = M.KeyValue.of(resp.kv)
                        ident = (kv.key, kv.mod_revision)
                        if ident != self._last:
                            self._last = ident
                            yield kv
                except grpc.RpcError as e:
                    code, details = core.rpc_failure(e)
                    if self._closed.is_set():
                        return
                    if code is not None and code.name in FATAL_WATCH_CODES:
                        raise server_error(code, details) from None
            c._rotate(ep)
            self._closed.wait(bo.next())

    def close(self) -> None:
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
        self._c._disown(self)
