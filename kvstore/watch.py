"""The watch hub: committed events → watchers, with etcd 3.4's semantics.

Pure of gRPC. ``kvstore/api/watch.py`` turns one bidirectional Watch call
into one :class:`WatchStream`; the hub is an ``Applier`` event sink
(``notify(revision, events)``, called on the event loop after each committed
apply batch, in revision order).

Shape (as etcd's ``watchableStore``):

* **synced** watchers have been sent (or queued) every event up to the hub's
  revision. They are indexed by key range and receive live events straight
  from ``notify``. Watchers with the same range, filters and ``prev_kv`` form
  one group: an event batch is encoded once per group into the group's log
  and the bytes are shared by every watcher of the group (1,000 watchers on a
  prefix cost one encoding).
* **coalescing**: a synced watcher's queued events response is an entry that
  reads the group log when the stream sends it, so while it waits (gRPC
  writes cost tens of microseconds each, and one stream serves many
  watchers) later revisions join it: a watcher that is behind gets several
  revisions in one response (in order, cut at a revision boundary at
  ``chunk_bytes``, header = its last revision), as etcd sends catching-up
  watchers. Writes per event fall as load rises; a reader that keeps up
  still gets one response per revision. Per revision the hub touches only
  the group's streams and its idle watchers, not every watcher. A watcher
  whose response took in ``BEHIND_REVS`` or more revisions is *behind*
  (sustained load): its next responses are held until ``coalesce_delay``
  (50 ms) old, so they carry more revisions and the CPU of the writes saved
  goes to the work that produces the revisions.
* **unsynced** watchers need history: a new watch with a past
  ``start_revision``, a slow watcher whose stream queue was full, every
  watcher after a gap in notifications (a snapshot restore). One catch-up
  task reads MVCC history in bounded chunks (never splitting a revision),
  and moves a watcher to the synced set in the same synchronous step that
  read history up to the store's current revision, so the boundary has no
  gap and no duplicate. A watcher whose next revision was compacted is
  cancelled with ``compact_revision``.
* Each stream has a bounded send queue (responses and bytes, a waiting
  entry's events included). A live response that does not fit, or a waiting
  entry that would grow past the bound, moves the watcher to unsynced (it
  replays from history from its first unsent revision): memory stays
  bounded, nothing is dropped silently, and one slow stream never delays
  another (``notify`` never waits). Progress and cancel responses seal the
  entries queued before them, so no later event overtakes them.

Responses are serialized ``etcdserverpb.WatchResponse`` messages, queued as
a bytes object or a tuple of byte strings to be joined at send time (the
shared events part is one object referenced by every queue). Progress
responses (``WatchProgressRequest``) are sent only once every watcher of the
stream is synced, so all events ≤ the reported revision were queued before
it (etcd #15220); requests made meanwhile share that one answer, as in
etcd's fix.

Checked against etcd 3.4.23 (tests/test_watch_service.py runs the same
scenario on both): auto ids per stream from 0 skipping ids in use; watch_id 0
means "auto"; refusals are created+canceled responses with watch_id -1 and
etcd's mvcc reason; a cancel of an unknown id gets no answer; filters that
drop every event of a revision send nothing; prev_kv is absent on creations;
a negative start_revision is canceled with the compaction point (-1 if none);
fragments split with etcd's rule at max-request-bytes + 512 KiB.
Deliberate differences: a compaction cancel carries the header revision and
the reason "etcdserver: mvcc: required revision has been compacted" (etcd
3.4: revision 0, empty reason; clients read compact_revision); a watch from
exactly the compacted revision is canceled, because the store drops a
tombstone at that revision (etcd #18089) and refuses that replay; catch-up
responses are also cut at ~1 MiB (``chunk_bytes``) at a revision boundary.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Callable, Protocol, Sequence, Union

from . import errors
from .errors import EtcdError
from .pb import kv_pb2, rpc_pb2

log = logging.getLogger("kvstore.watch")

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
NODELETE = rpc_pb2.WatchCreateRequest.NODELETE

INVALID_WATCH_ID = -1  # clientv3.InvalidWatchID: progress and refused creates
DEFAULT_PROGRESS_INTERVAL = 600.0  # etcd: 10 min (+ up to 10 % jitter)
MIN_PROGRESS_INTERVAL = 0.1  # etcd's minWatchProgressInterval
DEFAULT_COALESCE_DELAY = 0.05  # the longest a behind watcher's response is held (etcd resyncs every 100 ms)
# A response that had to take in this many revisions marks its watcher as
# behind: revisions come faster than its stream writes, and its next
# responses are held up to ``coalesce_delay``. Fewer (a short burst, a
# reader that just keeps up) changes nothing: latency stays a write away.
BEHIND_REVS = 3
GRPC_OVERHEAD = 512 * 1024  # etcd's fragment limit is max-request-bytes + this

# etcd's mvcc error strings, sent as cancel_reason of refused creates.
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
# etcd 3.4 sends compaction cancels with an empty reason (clients look at
# compact_revision); we add the gRPC error text, which every client accepts.
COMPACTED_CANCEL_REASON = errors.COMPACTED.message

Item = Union[bytes, tuple]  # one serialized WatchResponse, or its parts


class History(Protocol):
    """What the hub needs from the MVCC store (``kvstore.mvcc.MvccStore``)."""

    @property
    def current_revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def events(
        self, start_rev: int, end_rev: int | None, key: bytes, range_end: bytes,
        limit: int | None = None, prev_kv: bool = False,
    ) -> tuple[list[kv_pb2.Event], int]:
        """Events with start_rev <= revision < end_rev on [key, range_end)
        (etcd's range convention), in revision order; ``limit`` is soft (a
        revision is never split). Returns (events, revision to resume from);
        raises errors.COMPACTED if start_rev <= the compacted revision."""
        ...

    def prev_kv(self, key: bytes, mod_revision: int) -> kv_pb2.KeyValue | None: ...


# --------------------------------------------------------------- wire helpers
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _int_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value) if value else b""


def encode_event(ev: kv_pb2.Event, prev: kv_pb2.KeyValue | None) -> bytes:
    """``WatchResponse.events`` field bytes for ``ev`` with ``prev`` as its
    prev_kv (or none), whatever ``ev.prev_kv`` holds."""
    body = _int_field(1, ev.type) + _len_field(2, ev.kv.SerializeToString())
    if prev is not None:
        body += _len_field(3, prev.SerializeToString())
    return _len_field(11, body)


def response_prefix(
    header: bytes,
    watch_id: int,
    *,
    created: bool = False,
    canceled: bool = False,
    compact_revision: int = 0,
    cancel_reason: str = "",
    fragment: bool = False,
) -> bytes:
    """A WatchResponse without events; ``header`` is the encoded header field."""
    out = header + _int_field(2, watch_id) + _int_field(3, created) + _int_field(4, canceled)
    out += _int_field(5, compact_revision)
    if cancel_reason:
        out += _len_field(6, cancel_reason.encode())
    return out + _int_field(7, fragment)


def item_bytes(item: Item) -> bytes:
    return item if isinstance(item, bytes) else b"".join(item)


def _is_create(ev: kv_pb2.Event) -> bool:
    return ev.type == PUT and ev.kv.create_revision == ev.kv.mod_revision


# -------------------------------------------------------------------- watcher
SYNCED, UNSYNCED, CANCELED = "synced", "unsynced", "canceled"


class Watcher:
    __slots__ = (
        "id", "id_field", "stream", "key", "end", "noput", "nodelete", "prev_kv", "progress_notify",
        "fragment", "next_rev", "state", "group", "progress_due", "entry", "behind",
    )

    def __init__(self, stream: "WatchStream", wid: int, req: rpc_pb2.WatchCreateRequest,
                 key: bytes, end: bytes | None, next_rev: int) -> None:
        self.id = wid
        self.id_field = _int_field(2, wid)  # its part of every response, encoded once
        self.stream = stream
        self.key = key
        self.end = end  # None: the single key; b"": every key >= key; else [key, end)
        self.noput = NOPUT in req.filters
        self.nodelete = NODELETE in req.filters
        self.prev_kv = req.prev_kv
        self.progress_notify = req.progress_notify
        self.fragment = req.fragment
        self.next_rev = next_rev  # lowest revision not yet delivered (when not synced)
        self.state = ""
        self.group: _Group | None = None
        self.progress_due = True  # etcd: progress[id]; cleared when events are sent
        self.entry: _Entry | None = None  # its open (still growing) queued events response
        self.behind = False  # its last response had BEHIND_REVS or more revisions

    @property
    def group_key(self) -> tuple:
        return (self.key, self.end, self.noput, self.nodelete, self.prev_kv)

    def wants(self, ev: kv_pb2.Event) -> bool:
        return not ((self.noput and ev.type == PUT) or (self.nodelete and ev.type == DELETE))

    def __repr__(self) -> str:
        return f"Watcher(id={self.id}, key={self.key!r}, end={self.end!r}, next={self.next_rev}, {self.state})"


class _Seg:
    """A run of a group's event log: one (revision, header field, event
    parts, size) per revision. Segments are chained; a queued response holds
    its first segment, so the log is freed as responses are sent."""

    __slots__ = ("items", "bytes", "next")

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes, tuple[bytes, ...], int]] = []
        self.bytes = 0
        self.next: _Seg | None = None


SEG_ITEMS = 64  # revisions per log segment
SEG_BYTES = 256 << 10  # ... or bytes: what a lagging response can pin beyond its own events


class _Group:
    """Synced watchers sharing range, filters and prev_kv, and the log of the
    encoded events they were sent (or will be: queued responses read it)."""

    __slots__ = ("key", "end", "noput", "nodelete", "prev_kv", "watchers", "members", "seg", "total", "open")

    def __init__(self, w: Watcher) -> None:
        self.key, self.end = w.key, w.end
        self.noput, self.nodelete, self.prev_kv = w.noput, w.nodelete, w.prev_kv
        self.watchers: dict[Watcher, None] = {}
        self.members: dict[WatchStream, _Member] = {}  # its watchers per stream
        self.seg = _Seg()
        self.total = 0  # bytes ever appended to the log
        self.open = 0  # open entries reading the log

    def contains(self, key: bytes) -> bool:
        if self.end is None:
            return key == self.key
        return self.key <= key and (not self.end or key < self.end)

    def append(self, rev: int, header: bytes, parts: tuple[bytes, ...], size: int) -> None:
        seg = self.seg
        if not self.open:
            if seg.items:  # nobody reads on: drop the log (sealed entries keep their part)
                seg = self.seg = _Seg()
        elif len(seg.items) >= SEG_ITEMS or seg.bytes >= SEG_BYTES:
            seg.next = seg = self.seg = _Seg()
        seg.items.append((rev, header, parts, size))
        seg.bytes += size
        self.total += size


class _Member:
    """One stream's synced watchers of one group: ``idle`` ones have no
    open entry (the next event queues one), ``open`` ones have."""

    __slots__ = ("stream", "idle", "open")

    def __init__(self, stream: "WatchStream") -> None:
        self.stream = stream
        self.idle: dict[Watcher, None] = {}
        self.open: dict[Watcher, _Entry] = {}


class _Entry:
    """A queued events response of a synced watcher, read from its group's
    log when the stream sends it. While it waits (the stream is behind), the
    events of later revisions join it: one response then carries several
    revisions, so the writes per event fall as load rises (etcd also sends a
    catching-up watcher several revisions in one response). An entry is
    *open* (it takes every revision logged before it is sent) until sealed at
    a log position (the watcher left the synced set, or a progress response
    is queued after it) or killed (evicted: the watcher replays from
    ``start_rev``)."""

    __slots__ = (
        "w", "g", "seg", "idx", "start_rev", "start_total", "end_seg", "end_idx", "size", "dead", "born",
    )

    def __init__(self, w: Watcher, g: _Group, seg: _Seg, idx: int, start_rev: int, start_total: int) -> None:
        self.w, self.g, self.seg, self.idx = w, g, seg, idx
        self.start_rev = start_rev
        self.start_total = start_total  # g.total before its first revision
        self.end_seg: _Seg | None = None  # sealed: the log position it stops at
        self.end_idx = 0
        self.size = 0  # sealed: its events' bytes
        self.dead = False
        self.born = time.monotonic()

    @property
    def pending(self) -> int:
        """Bytes of its events (what the stream's queue accounts for it)."""
        return self.size if self.end_seg is not None else self.g.total - self.start_total


def _store_range_end(end: bytes | None) -> bytes:
    """Our range form → etcd's (b"" single key, b"\\0" from key)."""
    if end is None:
        return b""
    return end or b"\0"


# --------------------------------------------------------------------- stream
class WatchStream:
    """One client stream: its watchers and its bounded send queue.

    The adapter calls :meth:`create`, :meth:`cancel`, :meth:`request_progress`
    for requests and sends what :meth:`get` returns; :meth:`close` at the end.
    """

    def __init__(self, hub: "WatchHub") -> None:
        self.hub = hub
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self._queue: deque[tuple[Item, int] | _Entry] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.unsynced = 0  # watchers of this stream in the hub's unsynced set
        self.progress_requested = False
        self.closed = False
        self._hold_left = 0.0  # get(): how long the head entry is still held
        self._progress_timer: asyncio.TimerHandle | None = None

    # -- requests --------------------------------------------------------------
    def create(self, req: rpc_pb2.WatchCreateRequest) -> int:
        """Register a watch; its created (or refused) response is queued now,
        before any event of it. Returns the watch id (-1 if refused)."""
        hub = self.hub
        if self.closed:
            return INVALID_WATCH_ID
        hub.check_store()
        rev = hub.rev
        key = req.key or b"\0"
        end: bytes | None = req.range_end or None
        if end == b"\0":
            end = b""
        if end and key >= end:
            return self._refuse(rev, ERR_EMPTY_RANGE)
        wid = req.watch_id
        if wid == 0:  # clientv3.AutoWatchID
            while self._next_id in self.watchers:
                self._next_id += 1
            wid = self._next_id
            self._next_id += 1
        elif wid in self.watchers:
            return self._refuse(rev, ERR_DUPLICATE_ID)
        start = req.start_revision
        w = Watcher(self, wid, req, key, end, start if start > 0 else rev + 1)
        self.watchers[wid] = w
        self._push_control(response_prefix(hub.header_field(rev), wid, created=True))
        if start < 0:
            # etcd: such a watcher is "compacted" at once, reporting the
            # compaction point (-1 before any compaction).
            hub.cancel_compacted(w, hub.history.compact_revision or -1)
        elif start == 0 or start > rev:
            hub.add_synced(w)
        else:
            hub.add_unsynced(w)
        if w.progress_notify:
            self._arm_progress()
        return wid

    def _refuse(self, rev: int, reason: str) -> int:
        self._push_control(
            response_prefix(self.hub.header_field(rev), INVALID_WATCH_ID, created=True, canceled=True,
                            cancel_reason=reason)
        )
        return INVALID_WATCH_ID

    def cancel(self, watch_id: int) -> bool:
        """WatchCancelRequest: canceled response, or nothing for an unknown id."""
        w = self.watchers.get(watch_id)
        if w is None:
            return False
        self.hub.remove(w)
        self._push_control(response_prefix(self.hub.header_field(self.hub.rev), watch_id, canceled=True))
        return True

    def request_progress(self) -> None:
        """WatchProgressRequest: one response with watch_id -1 and the header
        revision, once every event up to it has been queued on this stream."""
        self.hub.check_store()
        self.progress_requested = True
        self.maybe_send_progress()

    def maybe_send_progress(self) -> None:
        if self.progress_requested and self.unsynced == 0 and not self.closed:
            self.progress_requested = False
            self.seal_entries()  # no event above the progress revision before it
            self._push_control(response_prefix(self.hub.header_field(self.hub.rev), INVALID_WATCH_ID))

    # -- per-watch progress_notify -------------------------------------------------
    def _arm_progress(self) -> None:
        if self._progress_timer is not None or self.closed:
            return
        interval = self.hub.progress_interval
        interval += random.uniform(0, interval / 10)  # etcd's jitter
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (pure unit tests): call progress_tick() by hand
        self._progress_timer = loop.call_later(interval, self.progress_tick)

    def progress_tick(self) -> None:
        """Every interval: an empty response to each progress_notify watcher
        that is synced and got no event since the last tick (as etcd)."""
        self._progress_timer = None
        self.hub.check_store()
        any_progress = False
        for w in list(self.watchers.values()):
            if not w.progress_notify:
                continue
            any_progress = True
            if w.progress_due and w.state == SYNCED and w.entry is None:
                hdr = self.hub.header_field(self.hub.rev)
                data = response_prefix(hdr, w.id)
                if self.has_room(len(data)):
                    self._push(data)
            w.progress_due = True
        if any_progress:
            self._arm_progress()

    # -- queue -------------------------------------------------------------------
    def has_room(self, size: int) -> bool:
        hub = self.hub
        if not self._queue:
            return True
        return len(self._queue) < hub.queue_max_items and self._bytes + size <= hub.queue_max_bytes

    def below_low_watermark(self) -> bool:
        hub = self.hub
        return len(self._queue) <= hub.queue_max_items // 2 and self._bytes <= hub.queue_max_bytes // 2

    def _push(self, item: Item, size: int | None = None) -> None:
        if self.closed:
            return
        if size is None:
            size = len(item) if isinstance(item, bytes) else sum(map(len, item))
        q = self._queue
        q.append((item, size))
        self._bytes += size
        self._ready.set()
        if len(q) >= self.hub.queue_max_items or self._bytes > self.hub.queue_max_bytes:
            self._room.clear()

    def _push_control(self, data: bytes) -> None:
        """Control responses are never refused (they are bounded by the
        requests, and requests stop being read while the queue is full)."""
        self._push(data, len(data))

    def seal_entries(self) -> None:
        """Stop this stream's open entries at the log's current end, so
        what is queued after them is not overtaken by later events."""
        for w in self.watchers.values():
            if w.entry is not None:
                self.hub.seal(w.entry)

    def push_events(self, w: Watcher, header: bytes, parts: Sequence[bytes], size: int) -> None:
        """Queue one events response for ``w`` (fragmented if it asked and the
        response reaches the limit, with etcd's splitting rule)."""
        w.progress_due = False
        for item, n in self._responses(w, header, parts, size):
            self._push(item, n)

    def _responses(self, w: Watcher, header: bytes, parts: Sequence[bytes], size: int) -> list[tuple[Item, int]]:
        total = len(header) + len(w.id_field) + size
        limit = self.hub.max_response_bytes
        if not w.fragment or total < limit or len(parts) < 2:
            return [((header, w.id_field, *parts), total)]
        prefix = header + w.id_field
        fprefix = prefix + _int_field(7, True)
        out: list[tuple[Item, int]] = []
        i = 0
        while i < len(parts):
            cur_size = len(fprefix)
            j = i
            while j < len(parts):
                cur_size += len(parts[j])
                if j > i and cur_size >= limit:
                    break
                j += 1
            last = j == len(parts)
            p = prefix if last else fprefix
            item = (p, *parts[i:j])
            out.append((item, sum(map(len, item))))
            i = j
        return out

    def push_entry(self, e: _Entry, size: int) -> None:
        """Queue an open entry whose first revision has ``size`` bytes."""
        self._queue.append(e)
        self._bytes += size
        self._ready.set()
        if len(self._queue) >= self.hub.queue_max_items or self._bytes > self.hub.queue_max_bytes:
            self._room.clear()

    def _materialize(self, e: _Entry) -> Item:
        """The response of a popped entry: its events from the log, as many
        revisions as fit one response (the rest is queued again)."""
        hub = self.hub
        g, w = e.g, e.w
        is_open = e.end_seg is None
        if is_open:
            end_seg, end_idx = g.seg, len(g.seg.items)
        else:
            end_seg, end_idx = e.end_seg, e.end_idx
        self._bytes -= e.pending
        room = min(hub.chunk_bytes, hub.max_response_bytes - len(w.id_field) - 64)
        parts: list[bytes] = []
        size = 0
        header = b""
        seg, i = e.seg, e.idx
        cut = False
        nrevs = 0
        while True:
            items = seg.items
            stop = end_idx if seg is end_seg else len(items)
            while i < stop:
                rev, hdr, ps, n = items[i]
                if header and size + n > room:
                    cut = True
                    break
                parts.extend(ps)
                size += n
                header = hdr
                i += 1
                nrevs += 1
            if cut or seg is end_seg:
                break
            seg, i = seg.next, 0
        if cut:
            rest = _Entry(w, g, seg, i, items[i][0], e.start_total + size)
            rest.end_seg, rest.end_idx = e.end_seg, e.end_idx
            rest.born = e.born  # a backlog's next chunk is not held again
            if is_open:
                w.entry = rest
                g.members[self].open[w] = rest
                self._queue.append(rest)  # it takes its turn again
            else:
                rest.size = e.size - size
                self._queue.appendleft(rest)  # before what was queued after it
            self._bytes += rest.pending
        elif is_open:
            w.entry = None
            g.open -= 1
            m = g.members[self]
            del m.open[w]
            m.idle[w] = None
        w.progress_due = False
        w.behind = nrevs >= BEHIND_REVS
        first, *more = self._responses(w, header, parts, size)
        for item, n in reversed(more):  # fragments: next, in order
            self._queue.appendleft((item, n))
            self._bytes += n
        return first[0]

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def get_nowait(self) -> Item | None:
        """The next response (nothing is held back: tests and tools)."""
        return self._pop(False)

    def _pop(self, hold: bool) -> Item | None:
        q = self._queue
        item = None
        while q:
            x = q[0]
            if type(x) is tuple:
                q.popleft()
                item, size = x
                self._bytes -= size
                break
            if x.dead:
                q.popleft()
                continue
            if hold and self._hold(x):
                return None
            q.popleft()
            item = self._materialize(x)
            break
        if not q:
            self._ready.clear()
        if self.has_room(0):
            self._room.set()
        if self.unsynced and self.below_low_watermark():
            self.hub.wake_sync()
        return item

    def _hold(self, e: _Entry) -> bool:
        """Under load, hold a behind watcher's open entry until it is
        ``coalesce_delay`` old, so that it takes in more revisions: the
        writes per event fall further and the CPU they free goes to the
        writes of the revisions themselves. A watcher that keeps up is never
        held (one write per event at low load)."""
        delay = self.hub.coalesce_delay
        if not e.w.behind or e.end_seg is not None or delay <= 0:
            return False
        left = e.born + delay - time.monotonic()
        if left <= 0:
            return False
        self._hold_left = left
        return True

    async def get(self) -> Item | None:
        """The next response to send; None once the stream is closed."""
        while True:
            if self.closed:
                return None
            self._hold_left = 0.0
            item = self._pop(True)
            if item is not None:
                return item
            if not self._hold_left:
                await self._ready.wait()
                continue
            self._ready.clear()  # a push wakes us early (the head may change: a seal, a control)
            timer = asyncio.get_running_loop().call_later(self._hold_left, self._ready.set)
            try:
                await self._ready.wait()
            finally:
                timer.cancel()

    async def wait_room(self) -> None:
        """For the request reader: wait while the send queue is full."""
        while not self._room.is_set() and not self.closed:
            await self._room.wait()

    def drain(self) -> list[rpc_pb2.WatchResponse]:
        """Everything queued, decoded (tests and tools)."""
        out = []
        while (item := self.get_nowait()) is not None:
            out.append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
        return out

    def close(self) -> None:
        if self.closed:
            return
        for w in list(self.watchers.values()):
            self.hub.remove(w)
        self.closed = True
        self._queue.clear()
        self._bytes = 0
        self._ready.set()
        self._room.set()
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        self.hub.streams.discard(self)


# ------------------------------------------------------------------------ hub
class WatchHub:
    def __init__(
        self,
        history: History,
        header: Callable[[int], rpc_pb2.ResponseHeader] | None = None,
        *,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        max_response_bytes: int = 1_572_864 + GRPC_OVERHEAD,
        queue_max_items: int = 256,
        queue_max_bytes: int = 16 << 20,
        chunk_events: int = 1000,
        chunk_bytes: int = 1 << 20,
        chunk_revs: int = 10_000,
        sync_round_events: int = 10_000,
        coalesce_delay: float = DEFAULT_COALESCE_DELAY,
        prev_kv: Callable[[kv_pb2.Event], kv_pb2.KeyValue | None] | None = None,
    ) -> None:
        self.history = history
        self._header = header or (lambda rev: rpc_pb2.ResponseHeader(revision=rev))
        self.progress_interval = max(MIN_PROGRESS_INTERVAL, progress_interval)
        self.max_response_bytes = max_response_bytes
        self.queue_max_items = max(2, queue_max_items)
        self.queue_max_bytes = queue_max_bytes
        self.chunk_events = max(1, chunk_events)  # etcd: 1000 revisions per catch-up response
        self.chunk_bytes = chunk_bytes
        self.chunk_revs = max(1, chunk_revs)
        self.sync_round_events = sync_round_events
        self.coalesce_delay = coalesce_delay
        self._prev_kv_lookup = prev_kv
        self.rev = history.current_revision  # every event <= rev has been dispatched
        self.streams: set[WatchStream] = set()
        self._key_groups: dict[bytes, dict[tuple, _Group]] = {}
        self._range_groups: dict[tuple, _Group] = {}
        self.unsynced: dict[Watcher, None] = {}
        self._sync_event = asyncio.Event()
        self._sync_task: asyncio.Task | None = None
        self._closed = False

    # -- streams -----------------------------------------------------------------
    def open_stream(self) -> WatchStream:
        s = WatchStream(self)
        self.streams.add(s)
        return s

    def close(self) -> None:
        self._closed = True
        for s in list(self.streams):
            s.close()
        if self._sync_task is not None:
            self._sync_task.cancel()
            self._sync_task = None

    def header_field(self, rev: int) -> bytes:
        return _len_field(1, self._header(rev).SerializeToString())

    @property
    def synced_count(self) -> int:
        return sum(len(g.watchers) for gs in self._key_groups.values() for g in gs.values()) + sum(
            len(g.watchers) for g in self._range_groups.values()
        )

    # -- watcher sets -------------------------------------------------------------
    def add_synced(self, w: Watcher) -> None:
        gk = w.group_key
        if w.end is None:
            groups = self._key_groups.setdefault(w.key, {})
        else:
            groups = self._range_groups
        g = groups.get(gk)
        if g is None:
            g = groups[gk] = _Group(w)
        g.watchers[w] = None
        m = g.members.get(w.stream)
        if m is None:
            m = g.members[w.stream] = _Member(w.stream)
        m.idle[w] = None
        w.group = g
        w.state = SYNCED

    def _remove_synced(self, w: Watcher) -> None:
        """Out of the synced set; its open entry (if any) keeps what it has."""
        g = w.group
        w.group = None
        if g is None:
            return
        if w.entry is not None:
            self.seal(w.entry)
        del g.watchers[w]
        m = g.members[w.stream]
        m.idle.pop(w, None)
        if not m.idle and not m.open:
            del g.members[w.stream]
        if not g.watchers:
            gk = w.group_key
            if w.end is None:
                groups = self._key_groups[w.key]
                del groups[gk]
                if not groups:
                    del self._key_groups[w.key]
            else:
                del self._range_groups[gk]

    def seal(self, e: _Entry) -> None:
        """An open entry stops growing: it ends at the log's current end."""
        g, w = e.g, e.w
        e.size = g.total - e.start_total
        e.end_seg, e.end_idx = g.seg, len(g.seg.items)
        w.entry = None
        g.open -= 1
        m = g.members[w.stream]
        del m.open[w]
        m.idle[w] = None

    def _evict(self, m: _Member, s: WatchStream, size: int) -> None:
        """Growing ``m``'s open entries by ``size`` each would break the
        stream's byte bound: its oldest ones are dropped and their watchers
        replay from where the entry started, from history, once the stream
        has drained (as a live response that does not fit)."""
        for w, e in list(m.open.items()):
            if s._bytes + size * len(m.open) <= self.queue_max_bytes:
                return
            s._bytes -= e.pending
            e.dead = True
            e.g.open -= 1
            del m.open[w]
            w.entry = None
            w.next_rev = e.start_rev
            self.add_unsynced(w)

    def add_unsynced(self, w: Watcher) -> None:
        if w.state == SYNCED:
            self._remove_synced(w)
        if w.state != UNSYNCED:
            w.state = UNSYNCED
            self.unsynced[w] = None
            w.stream.unsynced += 1
        self.wake_sync()

    def _leave_unsynced(self, w: Watcher) -> None:
        if w.state == UNSYNCED:
            del self.unsynced[w]
            w.stream.unsynced -= 1

    def make_synced(self, w: Watcher) -> None:
        self._leave_unsynced(w)
        self.add_synced(w)
        w.stream.maybe_send_progress()

    def remove(self, w: Watcher) -> None:
        """Forget a watcher (cancel, stream close, compaction)."""
        if w.state == SYNCED:
            self._remove_synced(w)
        else:
            self._leave_unsynced(w)
        w.state = CANCELED
        s = w.stream
        if s.watchers.get(w.id) is w:
            del s.watchers[w.id]
        s.maybe_send_progress()

    def cancel_compacted(self, w: Watcher, compact_rev: int) -> None:
        w.stream._push_control(
            response_prefix(
                self.header_field(self.rev), w.id, canceled=True, compact_revision=compact_rev,
                cancel_reason=COMPACTED_CANCEL_REASON,
            )
        )
        self.remove(w)

    # -- gaps ---------------------------------------------------------------------
    def check_store(self) -> None:
        """The store moved without telling us (a snapshot was restored): every
        synced watcher catches up from history."""
        cur = self.history.current_revision
        if cur > self.rev:
            self._resync(cur)

    def on_restore(self) -> None:
        """Applier hook: a snapshot replaced the store's contents."""
        self.check_store()

    def _resync(self, new_rev: int) -> None:
        base = self.rev + 1
        for g in [*self._range_groups.values()] + [g for gs in self._key_groups.values() for g in gs.values()]:
            for w in list(g.watchers):
                w.next_rev = max(w.next_rev, base)
                if w.next_rev <= new_rev:
                    self.add_unsynced(w)
        self.rev = new_rev

    # -- live events -------------------------------------------------------------------
    def notify(self, revision: int, events: Sequence[kv_pb2.Event]) -> None:
        """Applier event sink: the events of one committed batch (one or more
        revisions, in order). Never blocks, never drops."""
        i, n = 0, len(events)
        while i < n:
            rev = events[i].kv.mod_revision
            j = i + 1
            while j < n and events[j].kv.mod_revision == rev:
                j += 1
            if rev > self.rev:
                if rev > self.rev + 1:
                    self._resync(rev - 1)
                self._dispatch(rev, events[i:j])
                self.rev = rev
            i = j
        if revision > self.rev:
            self.rev = revision

    def _dispatch(self, rev: int, evs: Sequence[kv_pb2.Event]) -> None:
        matched: dict[_Group, list[int]] = {}
        key_groups, range_groups = self._key_groups, self._range_groups
        for idx, ev in enumerate(evs):
            k = ev.kv.key
            gs = key_groups.get(k)
            if gs:
                for g in gs.values():
                    matched.setdefault(g, []).append(idx)
            if range_groups:
                for g in range_groups.values():
                    if g.key <= k and (not g.end or k < g.end):
                        matched.setdefault(g, []).append(idx)
        if not matched:
            return
        header: bytes | None = None
        cache: dict[tuple[int, bool], bytes] = {}
        for g, idxs in matched.items():
            parts = []
            for idx in idxs:
                ev = evs[idx]
                if (g.noput and ev.type == PUT) or (g.nodelete and ev.type == DELETE):
                    continue
                ck = (idx, g.prev_kv)
                b = cache.get(ck)
                if b is None:
                    b = cache[ck] = encode_event(ev, self.prev_kv_of(ev) if g.prev_kv else None)
                parts.append(b)
            if not parts:
                continue
            if header is None:
                header = self.header_field(rev)
            self._log(g, rev, header, tuple(parts), sum(map(len, parts)))

    def _log(self, g: _Group, rev: int, header: bytes, parts: tuple[bytes, ...], size: int) -> None:
        """One revision's events for a group: they join every open entry of
        its watchers (one bytes-accounting step per stream, not per watcher);
        idle watchers get a new entry, or replay from history later if their
        stream's queue is full."""
        max_bytes = self.queue_max_bytes
        members = list(g.members.values())
        for m in members:
            if m.open:
                s = m.stream
                if s._bytes + size * len(m.open) > max_bytes:
                    self._evict(m, s, size)
                s._bytes += size * len(m.open)
        g.append(rev, header, parts, size)
        seg = g.seg
        idx = len(seg.items) - 1
        start_total = g.total - size
        need = len(header) + size + 11
        max_items = self.queue_max_items
        for m in members:
            if not m.idle:
                continue
            s = m.stream
            q = s._queue
            for w in list(m.idle):
                if w.next_rev > rev:
                    continue  # a watch from a future revision
                if not q or (len(q) < max_items and s._bytes + need <= max_bytes):
                    e = w.entry = _Entry(w, g, seg, idx, rev, start_total)
                    del m.idle[w]
                    m.open[w] = e
                    g.open += 1
                    w.progress_due = False
                    s.push_entry(e, size)
                else:
                    # Slow stream: catch up from history once it drains.
                    w.next_rev = max(w.next_rev, rev)
                    self.add_unsynced(w)

    def prev_kv_of(self, ev: kv_pb2.Event) -> kv_pb2.KeyValue | None:
        """The key's value before ``ev`` (none for a creation, or if compacted)."""
        if _is_create(ev):
            return None
        if ev.HasField("prev_kv"):
            return ev.prev_kv
        if self._prev_kv_lookup is not None:
            return self._prev_kv_lookup(ev)
        return None

    # -- catch-up ----------------------------------------------------------------
    def wake_sync(self) -> None:
        if self._closed:
            return
        self._sync_event.set()
        if self._sync_task is None or self._sync_task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (pure unit tests): call sync_round() by hand
            self._sync_task = loop.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while not self._closed:
            try:
                more = self.sync_round()
            except Exception:
                log.exception("watch catch-up failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if more:
                await asyncio.sleep(0)
                continue
            self._sync_event.clear()
            await self._sync_event.wait()

    def sync_round(self) -> bool:
        """One bounded catch-up step over the unsynced watchers whose streams
        have room. True if more work is ready right away."""
        if not self.unsynced:
            return False
        self.check_store()
        hist = self.history
        cur = self.rev
        compact = hist.compact_revision
        groups: dict[tuple, list[Watcher]] = {}
        for w in self.unsynced:
            if w.stream.below_low_watermark():
                groups.setdefault((w.key, w.end, w.next_rev, w.prev_kv), []).append(w)
        budget = self.sync_round_events
        header = None
        more = False
        for (key, end, start, want_prev), ws in groups.items():
            if budget <= 0:
                return True
            if start > cur:
                for w in ws:
                    self.make_synced(w)
                continue
            if start <= compact:
                # etcd 3.4 still replays from the compacted revision itself,
                # but a tombstone at it is gone (etcd #18089): our store
                # refuses that replay, so the watch is canceled instead.
                for w in ws:
                    self.cancel_compacted(w, compact)
                continue
            try:
                evs, upto = self._read_chunk(start, cur, key, end, want_prev)
            except EtcdError as e:
                if e.message != errors.COMPACTED.message:
                    raise
                for w in ws:
                    self.cancel_compacted(w, hist.compact_revision)
                continue
            encoded = [encode_event(ev, self.prev_kv_of(ev) if want_prev else None) for ev in evs]
            evs, encoded, upto = self._trim_bytes(evs, encoded, upto)
            budget -= max(len(evs), (upto - start + 1) // 10, 1)
            if header is None:
                header = self.header_field(cur)
            bodies: dict[tuple[bool, bool], tuple[list[bytes], int]] = {}
            for w in ws:
                if w.state != UNSYNCED or not w.stream.below_low_watermark():
                    continue
                fk = (w.noput, w.nodelete)
                body = bodies.get(fk)
                if body is None:
                    parts = [b for ev, b in zip(evs, encoded) if w.wants(ev)]
                    body = bodies[fk] = (parts, sum(map(len, parts)))
                if body[0]:
                    w.stream.push_events(w, header, body[0], body[1])
                w.next_rev = upto + 1
                if upto >= cur:
                    self.make_synced(w)
                else:
                    # to the back of the line: rounds are fair between watchers
                    del self.unsynced[w]
                    self.unsynced[w] = None
                    if w.stream.below_low_watermark():
                        more = True  # else its stream wakes us once drained
        return more

    def _trim_bytes(self, evs, encoded, upto):
        """Cut a chunk at a revision boundary once it exceeds ``chunk_bytes``
        (clients' default receive limit is 4 MiB; etcd itself does not cut)."""
        total = 0
        budget = self.chunk_bytes
        for i, b in enumerate(encoded):
            if i and total + len(b) > budget and evs[i].kv.mod_revision != evs[i - 1].kv.mod_revision:
                return evs[:i], encoded[:i], evs[i - 1].kv.mod_revision
            total += len(b)
        return evs, encoded, upto

    def _read_chunk(self, start: int, end: int, key: bytes, range_end: bytes | None,
                    prev_kv: bool) -> tuple[list[kv_pb2.Event], int]:
        """Events in [start, end], about ``chunk_events`` of them at most but
        never part of a revision, scanning at most ``chunk_revs`` revisions (a
        narrow range far behind must not hold the loop through all history).
        Returns (events, last revision covered)."""
        end = min(end, start + self.chunk_revs - 1)
        evs, next_rev = self.history.events(
            start, end + 1, key, _store_range_end(range_end), limit=self.chunk_events, prev_kv=prev_kv
        )
        return evs, min(next_rev - 1, end)


def hub_for(server) -> WatchHub:
    """The server's one hub, created on first use and registered as an event
    sink of its applier (gRPC Watch, the HTTP gateway and v3election share it)."""
    hub = getattr(server, "watch_hub", None)
    if hub is None:
        store = server.store
        cfg = server.cfg
        interval = getattr(cfg, "watch_progress_notify_interval", None) or DEFAULT_PROGRESS_INTERVAL
        hub = WatchHub(
            store,
            server.header,
            progress_interval=interval,
            max_response_bytes=cfg.max_request_bytes + GRPC_OVERHEAD,
            prev_kv=lambda ev: store.prev_kv(ev.kv.key, ev.kv.mod_revision),
        )
        server.applier.event_sinks.append(hub)
        server.watch_hub = hub
    return hub
