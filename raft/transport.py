"""Peer transport: Raft messages between members over gRPC (grpc.aio).

Our own internal service (proto/raftpb/raft.proto), served on each member's
peer URLs:

* ``Stream``: one long-lived client-streaming call per (sender, receiver)
  pair. Each write carries one ``MessageBatch``: everything queued for that
  peer at that moment. No RPC per message, no head-of-line blocking between
  peers (one sender task per peer).
* ``Snapshot``: one call per MsgSnap, on its own connection: the message,
  then the application's snapshot data in chunks (1 MiB by default), then a
  trailer with size and CRC-32. The receiver writes a temporary file in
  ``snapshot_dir``, fsyncs, renames, and only then hands the message and the
  path to the application.

Identity (cluster id, sender, receiver) travels in the call metadata and is
checked before a single message is read: a member of another cluster, or a
peer that thinks we are someone else, is refused with FAILED_PRECONDITION.

Delivery is best effort, as Raft expects: a per-peer queue is bounded (the
oldest messages are dropped first, since newer ones supersede them), and
every drop or failed connection is reported through ``on_unreachable`` so the
leader stops pipelining to that follower and probes instead.

All methods must be called on the event loop thread; every callback is
invoked on it and must not block.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import os
import random
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import AsyncIterator, BinaryIO, Callable
from urllib.parse import urlsplit

import grpc
import grpc.aio

from .codec import decode_message, encode_message, frame_message
from .pb import raft_pb2 as pb
from .pb import raft_pb2_grpc as pb_grpc
from .types import Message, MsgType

__all__ = ["PeerTransport", "PeerAddress", "parse_peer_url"]

log = logging.getLogger("raft.transport")

MD_CLUSTER = "kvstore-cluster-id"
MD_FROM = "kvstore-from"
MD_TO = "kvstore-to"
MD_ACCEPTED = "kvstore-accepted"  # receiver -> sender: identity checked, stream open
# Refusal text a receiver gives a peer it knows was removed: the only way a
# removed member learns its fate, since the leader stops talking to it.
MEMBER_REMOVED = "member removed from the cluster"

MAX_GRPC_MESSAGE = 64 << 20  # one MsgApp is bounded by the core's max_size_per_msg
MAX_BATCH_BYTES = 4 << 20  # per stream write, so one peer's backlog cannot form a giant frame
SNAPSHOT_CHUNK = 1 << 20
TEMP_PREFIX = ".snap-recv-"
TEMP_SUFFIX = ".tmp"

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    # Our own back-off decides when to retry; a private subchannel pool keeps
    # a fresh channel from inheriting another one's reconnect back-off.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Detect a peer that vanished without closing TCP (power loss, SIGSTOP).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.so_reuseport", 0),  # a second member on the same port must fail to start
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]

# Full method name of the message stream. The sender bypasses the generated
# stub for it: batches are sent as pre-encoded bytes (see codec.frame_message).
_STREAM_METHOD = "/{}/{}".format(
    pb.DESCRIPTOR.services_by_name["RaftPeer"].full_name, "Stream"
)

# Errors that a lost or refused connection produces on the client side.
_STREAM_ERRORS = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, ConnectionError)


# ------------------------------------------------------------------ addresses
@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A parsed peer URL: the gRPC target to dial, the address to bind, TLS."""

    url: str
    target: str  # for grpc.aio.*_channel
    bind: str  # for server.add_*_port
    tls: bool


def parse_peer_url(url: str) -> PeerAddress:
    """``http://127.0.0.1:2380``, ``http://[::1]:2380``, ``http://host:2380``,
    ``https://...`` (needs credentials) or ``unix:///path/to/socket``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"peer URL {url!r}: expected unix:///absolute/path")
        return PeerAddress(url, f"unix://{parts.path}", f"unix://{parts.path}", False)
    if scheme not in ("http", "https"):
        raise ValueError(f"peer URL {url!r}: scheme must be http, https or unix")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"peer URL {url!r}: {e}") from None
    if not host or port is None:
        raise ValueError(f"peer URL {url!r}: host and port are required")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"peer URL {url!r}: unexpected path or query")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None:
        hostport = f"{host}:{port}"
        target = f"dns:///{hostport}"
    elif ip.version == 6:
        hostport = f"[{host}]:{port}"
        target = f"ipv6:{hostport}"  # literal addresses skip the resolver
    else:
        hostport = f"{host}:{port}"
        target = f"ipv4:{hostport}"
    return PeerAddress(url, target, hostport, scheme == "https")


def _url_with_port(addr: PeerAddress, port: int) -> str:
    """The URL actually served, once port 0 has been replaced by the kernel's pick."""
    if addr.bind.startswith("unix:"):
        return addr.url
    parts = urlsplit(addr.url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{port}"


# ----------------------------------------------------------------------- peers
@dataclass(eq=False)
class _Peer:
    id: int
    addrs: list[PeerAddress]
    queue: collections.deque[bytes] = field(default_factory=collections.deque)  # framed messages
    queued_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    snapshot_task: asyncio.Task[None] | None = None
    next_addr: int = 0
    failing: bool = False  # in a failure episode: log at debug, not warning


class _StreamFailed(Exception):
    """A stream failed or was refused (logged by the sender loop, never raised to callers)."""


class PeerTransport:
    """Raft messages to and from the other members of one cluster.

    Callbacks (all run on the event loop, none may block):

    ``on_message(msg)``            a message from a peer, already addressed to us
    ``on_snapshot(msg, path)``     a MsgSnap whose data is complete and durable at
                                   ``path``; the file now belongs to the application
    ``snapshot_source(msg)``       async iterator of the application data to send
                                   after an outgoing MsgSnap
    ``on_unreachable(peer)``       a message to ``peer`` was dropped or its stream failed
    ``on_snapshot_status(peer, ok)`` outcome of an outgoing snapshot transfer
    ``is_removed(peer)``           optional: True refuses that member's streams
                                   with MEMBER_REMOVED
    ``on_removed()``               optional: a peer refused *us* as removed

    TLS: pass ``server_credentials`` (used for ``https://`` listen URLs) and
    ``channel_credentials`` (used to dial ``https://`` peer URLs; either the
    credentials or a callable returning them, called for every new connection
    so that rotated certificates are picked up).
    ``authorize_peer(context)``: an extra check of every incoming call (e.g.
    the peer certificate from ``context.auth_context()``): returns None to
    accept, or the reason to refuse it with PERMISSION_DENIED.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: int,
        *,
        on_message: Callable[[Message], None],
        on_snapshot: Callable[[Message, str], None],
        snapshot_source: Callable[[Message], AsyncIterator[bytes]],
        on_unreachable: Callable[[int], None],
        on_snapshot_status: Callable[[int, bool], None],
        is_removed: Callable[[int], bool] | None = None,
        on_removed: Callable[[], None] | None = None,
        snapshot_dir: str,
        server_credentials: grpc.ServerCredentials | None = None,
        channel_credentials: grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials] | None = None,
        authorize_peer: Callable[[grpc.aio.ServicerContext], str | None] | None = None,
        queue_messages: int = 4096,
        queue_bytes: int = 64 << 20,
        snapshot_chunk: int = SNAPSHOT_CHUNK,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
    ) -> None:
        if node_id <= 0:
            raise ValueError("node_id must be positive")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._on_message = on_message
        self._on_snapshot = on_snapshot
        self._snapshot_source = snapshot_source
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._is_removed = is_removed
        self._on_removed = on_removed
        self.snapshot_dir = snapshot_dir
        self._server_credentials = server_credentials
        self._channel_credentials = channel_credentials
        self._authorize_peer = authorize_peer
        self._queue_messages = max(1, queue_messages)
        self._queue_bytes = queue_bytes
        self._chunk = max(1, snapshot_chunk)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._peers: dict[int, _Peer] = {}
        self._server: grpc.aio.Server | None = None
        self._stopped = False
        self._retired: set[asyncio.Task[None]] = set()  # tasks of removed peers, still unwinding
        self._unreachable_pending: set[int] = set()
        self._refusal_logged: dict[int, float] = {}
        self._handlers: set[asyncio.Task[object]] = set()  # running RPC handlers
        self.listen_urls: list[str] = []  # as served (port 0 resolved)
        self._md_base = ((MD_CLUSTER, str(cluster_id)), (MD_FROM, str(node_id)))

    def set_security(
        self,
        *,
        server_credentials: grpc.ServerCredentials | None = None,
        channel_credentials: grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials] | None = None,
        authorize_peer: Callable[[grpc.aio.ServicerContext], str | None] | None = None,
    ) -> None:
        """The constructor's TLS arguments, for an owner that did not build the
        transport itself. Only before ``start()`` and the first ``set_peer()``."""
        if self._server is not None or self._peers:
            raise RuntimeError("set_security() after start() or set_peer()")
        self._server_credentials = server_credentials
        self._channel_credentials = channel_credentials
        self._authorize_peer = authorize_peer

    # ------------------------------------------------------------- lifecycle
    async def start(self, listen_urls: list[str]) -> None:
        """Serve the peer service on ``listen_urls`` (port 0 picks a free port;
        see ``listen_urls`` afterwards). Raises OSError if an address cannot
        be bound."""
        if self._server is not None:
            raise RuntimeError("transport already started")
        os.makedirs(self.snapshot_dir, exist_ok=True)
        self._remove_stale_temp_files()
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        pb_grpc.add_RaftPeerServicer_to_server(_Servicer(self), server)
        bound = []
        try:
            for url in listen_urls:
                addr = parse_peer_url(url)
                try:
                    if addr.tls:
                        if self._server_credentials is None:
                            raise ValueError(f"{url}: https listen URL needs server_credentials")
                        port = server.add_secure_port(addr.bind, self._server_credentials)
                    else:
                        port = server.add_insecure_port(addr.bind)
                except RuntimeError as e:
                    raise OSError(errno.EADDRINUSE, f"cannot listen on {url}: {e}") from None
                bound.append(_url_with_port(addr, port))
            await server.start()
        except BaseException:
            await server.stop(None)
            raise
        self._server = server
        self.listen_urls = bound
        log.info("member %x serving peers on %s", self.node_id, ", ".join(bound))

    async def stop(self) -> None:
        """Cancel every sender and snapshot task, close their channels, stop
        the server (incoming streams are cancelled). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        tasks = list(self._retired)
        for peer in self._peers.values():
            tasks += [t for t in (peer.task, peer.snapshot_task) if t is not None]
        self._peers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(None)  # cancels every incoming call
            self._server = None
        if self._handlers:
            # gRPC returns from stop() before cancelled handlers have unwound
            # (temp file cleanup runs there): wait for them, within reason.
            _, stuck = await asyncio.wait(set(self._handlers), timeout=10.0)
            if stuck:
                log.warning("%d peer RPC handler(s) did not finish after stop", len(stuck))

    # ----------------------------------------------------------------- peers
    def set_peer(self, node_id: int, urls: list[str]) -> None:
        """Add a peer or change its URLs (the connection is re-established;
        queued messages are kept)."""
        if self._stopped:
            raise RuntimeError("transport stopped")
        if node_id == self.node_id:
            raise ValueError("a member is not its own peer")
        addrs = [parse_peer_url(u) for u in urls]
        if not addrs:
            raise ValueError(f"peer {node_id:x}: no URLs")
        if any(a.tls for a in addrs) and self._channel_credentials is None:
            raise ValueError(f"peer {node_id:x}: https URLs need channel_credentials")
        peer = self._peers.get(node_id)
        if peer is not None:
            if peer.addrs == addrs:
                return
            self._retire(peer.task)
            peer.addrs, peer.next_addr = addrs, 0
        else:
            peer = self._peers[node_id] = _Peer(node_id, addrs)
        peer.task = asyncio.get_running_loop().create_task(self._run_sender(peer), name=f"raft-peer-{node_id:x}")

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer: its queue is dropped, its tasks are cancelled."""
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            self._retire(peer.task)
            self._retire(peer.snapshot_task)

    def _retire(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    # ------------------------------------------------------------------ send
    def send(self, messages: list[Message]) -> None:
        """Queue messages for their peers and return at once (never awaits).
        MsgSnap starts a snapshot transfer of its own."""
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                log.debug("no peer %x: dropping %s", m.to, m.type.name)
                continue
            if m.type == MsgType.SNAP:
                self._start_snapshot(peer, m)
                continue
            try:
                frame = frame_message(m)  # encoded here, once: errors belong to this message
            except (ValueError, TypeError) as e:
                log.error("dropping unencodable %s to %x: %s", m.type.name, m.to, e)
                continue
            q = peer.queue
            q.append(frame)
            peer.queued_bytes += len(frame)
            if len(q) > self._queue_messages or peer.queued_bytes > self._queue_bytes:
                dropped = 0
                while len(q) > 1 and (len(q) > self._queue_messages or peer.queued_bytes > self._queue_bytes):
                    peer.queued_bytes -= len(q.popleft())
                    dropped += 1
                log.debug("queue to %x full: dropped %d oldest message(s)", peer.id, dropped)
                self._report_unreachable(peer.id)
            peer.wake.set()

    def _report_unreachable(self, peer_id: int) -> None:
        """Deferred to the loop: send() runs inside the caller's Ready handling,
        which must not be re-entered; one report per peer per loop turn."""
        if peer_id not in self._unreachable_pending:
            self._unreachable_pending.add(peer_id)
            asyncio.get_running_loop().call_soon(self._fire_unreachable, peer_id)

    def _fire_unreachable(self, peer_id: int) -> None:
        self._unreachable_pending.discard(peer_id)
        if not self._stopped:
            try:
                self._on_unreachable(peer_id)
            except Exception:
                log.exception("on_unreachable(%x) failed", peer_id)

    # ---------------------------------------------------------- sender task
    def _open_channel(self, addr: PeerAddress) -> grpc.aio.Channel:
        if addr.tls:
            creds = self._channel_credentials
            assert creds is not None
            if callable(creds):
                creds = creds()
            return grpc.aio.secure_channel(addr.target, creds, options=_CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(addr.target, options=_CHANNEL_OPTIONS)

    def _metadata(self, peer_id: int) -> tuple[tuple[str, str], ...]:
        return (*self._md_base, (MD_TO, str(peer_id)))

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential back-off, capped."""
        return random.uniform(0.5, 1.0) * min(self._backoff_cap, self._backoff_base * (2 ** min(attempt, 30)))

    async def _run_sender(self, peer: _Peer) -> None:
        """Keep one stream to ``peer`` open while there is traffic; reconnect
        with back-off after any failure."""
        attempt = 0
        while True:
            while not peer.queue:  # connect lazily: an idle peer costs nothing
                peer.wake.clear()
                await peer.wake.wait()
            addr = peer.addrs[peer.next_addr % len(peer.addrs)]
            channel = self._open_channel(addr)
            try:
                await self._stream(peer, channel)
                reason = "stream ended"
            except _STREAM_ERRORS as e:
                reason = _describe(e)
            except _StreamFailed as e:
                reason = str(e)
                if MEMBER_REMOVED in reason and self._on_removed is not None:
                    self._on_removed()
            finally:
                await channel.close()
            if peer.failing:
                log.debug("peer %x (%s) still unreachable: %s", peer.id, addr.url, reason)
            else:  # first failure since the last working stream
                log.warning("peer %x (%s) unreachable: %s", peer.id, addr.url, reason)
                peer.failing = True
                attempt = 0
            self._report_unreachable(peer.id)
            peer.next_addr += 1
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _stream(self, peer: _Peer, channel: grpc.aio.Channel) -> None:
        """Open a stream, wait until the receiver accepted it, then write
        batches until the call fails. Messages stay queued until the stream is
        accepted, so none is lost to a connection that never came up."""
        open_stream = channel.stream_unary(
            _STREAM_METHOD, request_serializer=None, response_deserializer=pb.StreamAck.FromString
        )
        call = open_stream(metadata=self._metadata(peer.id))
        call.add_done_callback(lambda _: peer.wake.set())
        try:
            md = await call.initial_metadata()
            if not any(k == MD_ACCEPTED for k, _ in md or ()):
                code = await call.code()
                raise _StreamFailed(f"{code.name}: {await call.details()}")
            if peer.failing:
                log.info("peer %x reachable again", peer.id)
                peer.failing = False
            while True:
                batch = _take_batch(peer)
                if batch:
                    try:
                        await call.write(batch)
                    except _STREAM_ERRORS as e:
                        raise _StreamFailed(await _final_status(call, e)) from None
                    continue
                if call.done():
                    raise _StreamFailed(await _final_status(call, None))
                peer.wake.clear()
                if not peer.queue and not call.done():
                    await peer.wake.wait()
                    # One more loop turn lets the driver queue the rest of
                    # this burst: fewer, larger stream writes.
                    await asyncio.sleep(0)
        finally:
            if not call.done():
                call.cancel()

    # ------------------------------------------------------ snapshot sending
    def _start_snapshot(self, peer: _Peer, msg: Message) -> None:
        if peer.snapshot_task is not None and not peer.snapshot_task.done():
            # One transfer per peer at a time; the core retries after a failure.
            log.warning("snapshot to %x already in flight; rejecting another one", peer.id)
            asyncio.get_running_loop().call_soon(self._fire_snapshot_status, peer.id, False)
            return
        peer.snapshot_task = asyncio.get_running_loop().create_task(
            self._send_snapshot(peer, msg), name=f"raft-snapshot-to-{peer.id:x}"
        )

    def _fire_snapshot_status(self, peer_id: int, ok: bool) -> None:
        if not self._stopped:
            try:
                self._on_snapshot_status(peer_id, ok)
            except Exception:
                log.exception("on_snapshot_status(%x) failed", peer_id)

    async def _send_snapshot(self, peer: _Peer, msg: Message) -> None:
        """Stream ``msg`` and its data on a dedicated connection, so a large
        transfer never holds up the message stream's flow-control window."""
        addr = peer.addrs[peer.next_addr % len(peer.addrs)]
        index = msg.snapshot.meta.index if msg.snapshot is not None else 0
        ok = False
        channel = self._open_channel(addr)
        call = pb_grpc.RaftPeerStub(channel).Snapshot(metadata=self._metadata(peer.id))
        source: AsyncIterator[bytes] | None = None
        try:
            await call.write(pb.SnapshotChunk(message=encode_message(msg)))
            size = crc = 0
            pending = bytearray()
            source = self._snapshot_source(msg)
            async for blob in source:
                pending += blob
                while len(pending) >= self._chunk:
                    piece = bytes(pending[: self._chunk])
                    del pending[: self._chunk]
                    await call.write(pb.SnapshotChunk(data=piece))
                    size += len(piece)
                    crc = zlib.crc32(piece, crc)
            if pending:
                await call.write(pb.SnapshotChunk(data=bytes(pending)))
                size += len(pending)
                crc = zlib.crc32(pending, crc)
            await call.write(pb.SnapshotChunk(done=pb.SnapshotDone(size=size, crc32=crc)))
            await call.done_writing()
            await call
            ok = True
            log.info("sent snapshot at index %d (%d bytes) to %x", index, size, peer.id)
        except _STREAM_ERRORS as e:
            reason = await _final_status(call, e)
            log.warning("sending snapshot at index %d to %x failed: %s", index, peer.id, reason)
        except OSError as e:  # the application could not read its snapshot
            log.warning("sending snapshot at index %d to %x failed: snapshot source: %s", index, peer.id, e)
        except Exception:
            log.exception("sending snapshot at index %d to %x failed", index, peer.id)
        finally:
            if not call.done():
                call.cancel()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing the snapshot source failed")
            await channel.close()
        self._fire_snapshot_status(peer.id, ok)

    # ------------------------------------------------------- receiving side
    def _remove_stale_temp_files(self) -> None:
        """Partial downloads of a previous run can never be completed."""
        for name in os.listdir(self.snapshot_dir):
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(os.path.join(self.snapshot_dir, name))
                except FileNotFoundError:
                    pass

    async def _authorize(self, context: grpc.aio.ServicerContext) -> int:
        """Check the caller's identity metadata; returns the sender's id."""
        md = {k: v for k, v in context.invocation_metadata() or ()}
        try:
            cluster, frm, to = int(md[MD_CLUSTER]), int(md[MD_FROM]), int(md[MD_TO])
        except (KeyError, ValueError, TypeError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing or malformed peer identity metadata")
        if self._authorize_peer is not None:
            refusal = self._authorize_peer(context)
            if refusal is not None:
                self._warn_refusal(frm, "refused peer %x: %s", frm, refusal)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        if cluster != self.cluster_id:
            self._warn_refusal(frm, "refused peer %x of cluster %x (we are cluster %x)", frm, cluster, self.cluster_id)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cluster id mismatch: member {self.node_id:x} belongs to cluster {self.cluster_id:x}, not {cluster:x}",
            )
        if self._is_removed is not None and self._is_removed(frm):
            self._warn_refusal(frm, "refused removed member %x", frm)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{MEMBER_REMOVED}: {frm:x}")
        if to != self.node_id:
            self._warn_refusal(frm, "refused peer %x: it addressed member %x, we are %x", frm, to, self.node_id)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"this is member {self.node_id:x}, not {to:x}"
            )
        return frm

    def _warn_refusal(self, frm: int, fmt: str, *args: object) -> None:
        """A misconfigured peer retries every second: warn once a minute."""
        now = time.monotonic()
        if now - self._refusal_logged.get(frm, -1e9) >= 60.0:
            self._refusal_logged[frm] = now
            log.warning(fmt, *args)
        else:
            log.debug(fmt, *args)

    def _deliver(self, msg: Message) -> None:
        try:
            self._on_message(msg)
        except Exception:
            log.exception("on_message failed for %s from %x", msg.type.name, msg.frm)

    async def _serve_stream(self, request_iterator: AsyncIterator[pb.MessageBatch], context: grpc.aio.ServicerContext) -> pb.StreamAck:
        frm = await self._authorize(context)
        await context.send_initial_metadata(((MD_ACCEPTED, "1"),))
        log.debug("stream from %x opened", frm)
        node_id = self.node_id
        is_removed = self._is_removed
        async for batch in request_iterator:
            if is_removed is not None and is_removed(frm):
                # Removed while its stream was open: tell it, so it stops.
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{MEMBER_REMOVED}: {frm:x}")
            for p in batch.messages:
                try:
                    msg = decode_message(p)
                except ValueError as e:
                    log.warning("dropping undecodable message from %x: %s", frm, e)
                    continue
                if msg.to != node_id or msg.frm != frm or msg.type == MsgType.SNAP:
                    log.warning("dropping %s %x->%x on the stream from %x", msg.type.name, msg.frm, msg.to, frm)
                    continue
                self._deliver(msg)
        log.debug("stream from %x closed", frm)
        return pb.StreamAck()

    async def _serve_snapshot(self, request_iterator: AsyncIterator[pb.SnapshotChunk], context: grpc.aio.ServicerContext) -> pb.SnapshotAck:
        frm = await self._authorize(context)
        chunks = request_iterator.__aiter__()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot stream")
        if first.WhichOneof("payload") != "message":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "snapshot stream must start with the message")
        try:
            msg = decode_message(first.message)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad snapshot message: {e}")
        if msg.type != MsgType.SNAP or msg.snapshot is None or msg.to != self.node_id or msg.frm != frm:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a MsgSnap for this member")
        assert msg.snapshot is not None
        meta = msg.snapshot.meta
        final = os.path.join(
            self.snapshot_dir, f"{meta.term:016x}-{meta.index:016x}-from-{frm:x}-{secrets.token_hex(4)}.snap"
        )
        tmp = os.path.join(self.snapshot_dir, f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            f = open(tmp, "xb")
        except OSError as e:
            log.warning("cannot receive snapshot from %x: %s", frm, e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"receiver cannot store the snapshot: {e}")
        done = False
        try:
            size = crc = chunks_seen = 0
            trailer: pb.SnapshotDone | None = None
            async for chunk in chunks:
                kind = chunk.WhichOneof("payload")
                if kind == "data" and trailer is None:
                    data = chunk.data
                    size += len(data)
                    chunks_seen += 1
                    crc = zlib.crc32(data, crc)
                    await self._write_or_abort(context, f.write, data)
                elif kind == "done" and trailer is None:
                    trailer = chunk.done
                else:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind} chunk")
            if trailer is None:
                await context.abort(grpc.StatusCode.DATA_LOSS, "snapshot stream ended without its trailer")
            assert trailer is not None
            if trailer.size != size or trailer.crc32 != crc:
                await context.abort(grpc.StatusCode.DATA_LOSS, "snapshot data does not match its size/checksum")
            await self._write_or_abort(context, _commit_file, f, tmp, final)
            done = True
        finally:
            if not done:
                f.close()
                _unlink_quietly(tmp)
                _unlink_quietly(final)  # in case the rename happened before a cancellation
        log.info("received snapshot at index %d (%d bytes in %d chunks) from %x", meta.index, size, chunks_seen, frm)
        try:
            self._on_snapshot(msg, final)
        except Exception:
            log.exception("on_snapshot failed for the snapshot at index %d from %x", meta.index, frm)
            _unlink_quietly(final)
            await context.abort(grpc.StatusCode.INTERNAL, "receiver failed to accept the snapshot")
        return pb.SnapshotAck()

    @staticmethod
    async def _write_or_abort(context: grpc.aio.ServicerContext, fn: Callable[..., object], *args: object) -> None:
        """Disk I/O off the event loop; a full or failing disk fails this
        transfer (the sender retries later), not the process."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: let it finish before the
            # caller's cleanup closes and deletes the file under it.
            await asyncio.wait([fut])
            raise
        except OSError as e:
            log.warning("storing a received snapshot failed: %s", e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"receiver cannot store the snapshot: {e}")


class _Servicer(pb_grpc.RaftPeerServicer):
    def __init__(self, transport: PeerTransport) -> None:
        self._t = transport

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._t._handlers.add(task)
            task.add_done_callback(self._t._handlers.discard)

    async def Stream(self, request_iterator, context):  # type: ignore[override]
        self._track()
        return await self._t._serve_stream(request_iterator, context)

    async def Snapshot(self, request_iterator, context):  # type: ignore[override]
        self._track()
        return await self._t._serve_snapshot(request_iterator, context)


# ------------------------------------------------------------------ helpers
def _take_batch(peer: _Peer) -> bytes:
    """Everything queued (up to MAX_BATCH_BYTES, at least one message) as
    one encoded MessageBatch."""
    q = peer.queue
    if not q:
        return b""
    frames = [q.popleft()]
    total = len(frames[0])
    while q and total + len(q[0]) <= MAX_BATCH_BYTES:
        frame = q.popleft()
        frames.append(frame)
        total += len(frame)
    peer.queued_bytes -= total
    return b"".join(frames)


async def _final_status(call: grpc.aio.Call, error: BaseException | None) -> str:
    """Why the call failed. Prefer the call's own status: a write that races
    with the receiver's abort only reports a generic INTERNAL error."""
    if call.done():
        code = await call.code()
        if code != grpc.StatusCode.OK:
            return f"{code.name}: {await call.details()}"
    return _describe(error) if error is not None else "stream closed by the receiver"


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _commit_file(f: BinaryIO, tmp: str, final: str) -> None:
    """Make the received data durable under its final name."""
    try:
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()
    os.rename(tmp, final)
    fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
