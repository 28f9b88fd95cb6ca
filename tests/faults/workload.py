"""Concurrent etcd-v3 clients and watchers that record a checkable history.

Clients (threads, blocking gRPC through ``kvstore.pb`` stubs) run linearizable
reads, puts, deletes, compare-and-set txns and multi-key read-write txns on a
small key set.  Every write carries a unique value.  An operation that fails
with a timeout or an unavailable/ambiguous error is recorded as *unknown*: it
may or may not have taken effect.  After such an error the client continues as
a new logical process (as Jepsen does) and talks to another node.

Watchers keep a Watch stream on the key prefix open, reconnecting to another
node after every error and resuming from their last revision + 1.

``check_*`` functions verify the recorded history once the run is over.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import grpc

from kvstore.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.faults.linearizability import Cas, Delete, Get, Input, Op, Put, Txn, check

PREFIX = "/kvf/"
# Ambiguous errors: the request may have been applied.  Anything else is a
# definite failure (the request was rejected).
AMBIGUOUS = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED}


def key_bytes(k: str) -> bytes:
    return (PREFIX + k).encode()


def range_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass
class Record:
    """One operation as recorded by a client (JSON-serialisable)."""

    client: int          # logical process (changes after an unknown outcome)
    thread: int          # the physical client thread
    node: str
    kind: str            # get / put / delete / cas / txn
    input: Any
    invoke: float
    complete: float | None = None
    status: str = "pending"  # ok / fail / unknown
    output: Any = None
    revision: int | None = None       # response header revision
    mod_revision: int | None = None   # of the key read (get)
    error: str | None = None

    def to_op(self) -> Op:
        """The linearizability-checker view of this record."""
        inp = _to_input(self.kind, self.input)
        if self.status == "ok":
            return Op(self.client, self.invoke, self.complete, inp,
                      _to_output(self.kind, self.input, self.output), self)
        return Op(self.client, self.invoke, None, inp, None, self)


def _to_input(kind: str, x: Any) -> Input:
    if kind == "get":
        return Get(x["key"])
    if kind == "put":
        return Put(x["key"], x["value"])
    if kind == "delete":
        return Delete(x["key"])
    if kind == "cas":
        return Cas(x["key"], x["expected"], x["new"])
    return Txn((), tuple(Get(k) for k in x["reads"]) + tuple(Put(k, v) for k, v in x["writes"]))


def _to_output(kind: str, x: Any, out: Any) -> Any:
    if kind == "txn":  # results of the reads, then of the (unchecked) puts
        return (True, tuple(out) + (None,) * len(x["writes"]))
    return out


# --------------------------------------------------------------------------- #
# Clients


class Conn:
    """A channel that tracks its connectivity (one polling thread for its life)."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self._ready = threading.Event()
        self.channel.subscribe(self._on_state, try_to_connect=True)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self._ready.set()
        else:
            self._ready.clear()

    def ready(self, timeout: float) -> bool:
        """True once connected (waiting up to ``timeout``). A channel whose
        server went away turns IDLE and stays so until asked to connect (a
        restarted member would never be used again): waiting asks."""
        if self._ready.is_set():
            return True
        fut = grpc.channel_ready_future(self.channel)  # subscribes with try_to_connect
        try:
            fut.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            fut.cancel()
            return False
        return True

    def close(self) -> None:
        self.channel.unsubscribe(self._on_state)
        time.sleep(0.3)  # let grpc's connectivity poller notice before closing
        self.channel.close()


@dataclass
class WorkloadConfig:
    keys: Sequence[str] = ("k0", "k1", "k2", "k3")
    txn_keys: Sequence[str] = ("m0", "m1")  # keys shared by multi-key txns (one partition)
    clients: int = 6
    timeout: float = 2.0                     # per request
    weights: dict[str, int] = field(default_factory=lambda: {
        "get": 40, "put": 20, "cas": 20, "delete": 5, "txn": 15})
    seed: int = 0
    # Serializable (possibly stale) reads: wrong on purpose, to show the checks catch it.
    serializable_reads: bool = False


class Workload:
    """Client threads recording a shared history, against a list of endpoints."""

    def __init__(self, endpoints: Callable[[], Sequence[tuple[str, str]]], cfg: WorkloadConfig) -> None:
        self.endpoints = endpoints  # () -> [(node name, host:port)], may change during the run
        self.cfg = cfg
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._process_ids = itertools.count(cfg.clients)
        self._values = itertools.count(1)
        self.revisions_backwards: list[str] = []

    def start(self) -> None:
        for t in range(self.cfg.clients):
            th = threading.Thread(target=self._client, args=(t,), daemon=True, name=f"client-{t}")
            th.start()
            self._threads.append(th)

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(self.cfg.timeout * 3 + 5)

    def _record(self, r: Record) -> None:
        with self._lock:
            self.records.append(r)

    def _client(self, thread: int) -> None:
        rng = random.Random(self.cfg.seed * 1000 + thread)
        process = thread
        conns: dict[str, Conn] = {}
        last_rev = 0
        known: dict[str, str | None] = {}
        kinds = list(self.cfg.weights)
        weights = [self.cfg.weights[k] for k in kinds]
        node_i = thread
        try:
            while not self._stop.is_set():
                eps = list(self.endpoints())
                if not eps:
                    time.sleep(0.1)
                    continue
                name, ep = eps[node_i % len(eps)]
                conn = conns.get(ep)
                if conn is None:
                    conn = conns[ep] = Conn(ep)
                if not conn.ready(0.5):  # don't invoke an op on a connection that can't be made
                    node_i += 1
                    continue
                kind = rng.choices(kinds, weights)[0]
                rec = self._invoke(conn.channel, thread, process, name, kind, rng, known)
                if rec.status == "ok":
                    if rec.revision is not None:
                        if rec.revision < last_rev:
                            self.revisions_backwards.append(
                                f"thread {thread}: revision {rec.revision} after {last_rev} ({rec.kind} on {name})")
                        last_rev = max(last_rev, rec.revision)
                    if rng.random() < 0.2:
                        node_i += 1
                else:
                    if rec.status == "unknown":
                        process = next(self._process_ids)
                    node_i += 1
                    time.sleep(rng.uniform(0.05, 0.2))
        finally:
            for conn in conns.values():
                conn.close()

    def _invoke(self, ch: grpc.Channel, thread: int, process: int, node: str, kind: str,
                rng: random.Random, known: dict[str, str | None]) -> Record:
        kv = rpc_pb2_grpc.KVStub(ch)
        cfg = self.cfg
        keys = list(cfg.keys) + list(cfg.txn_keys)
        key = rng.choice(keys)
        new = f"v{next(self._values)}"
        if kind == "get":
            inp: Any = {"key": key}
        elif kind == "put":
            inp = {"key": key, "value": new}
        elif kind == "delete":
            inp = {"key": key}
        elif kind == "cas":
            inp = {"key": key, "expected": known.get(key), "new": new}
        else:
            a, b = cfg.txn_keys[0], cfg.txn_keys[1]
            writes = [(a, new), (b, f"v{next(self._values)}")] if rng.random() < 0.7 else []
            inp = {"reads": [a, b], "writes": writes}
        rec = Record(process, thread, node, kind, inp, invoke=time.monotonic())
        try:
            if kind == "get":
                r = kv.Range(rpc_pb2.RangeRequest(key=key_bytes(key), serializable=cfg.serializable_reads),
                             timeout=cfg.timeout)
                rec.output = r.kvs[0].value.decode() if r.kvs else None
                rec.mod_revision = r.kvs[0].mod_revision if r.kvs else None
                known[key] = rec.output
            elif kind == "put":
                r = kv.Put(rpc_pb2.PutRequest(key=key_bytes(key), value=new.encode()), timeout=cfg.timeout)
                known[key] = new
            elif kind == "delete":
                r = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key_bytes(key)), timeout=cfg.timeout)
                rec.output = r.deleted
                known[key] = None
            elif kind == "cas":
                exp = inp["expected"]
                cmp = (rpc_pb2.Compare(key=key_bytes(key), target=rpc_pb2.Compare.VERSION,
                                       result=rpc_pb2.Compare.EQUAL, version=0)
                       if exp is None else
                       rpc_pb2.Compare(key=key_bytes(key), target=rpc_pb2.Compare.VALUE,
                                       result=rpc_pb2.Compare.EQUAL, value=exp.encode()))
                put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_bytes(key), value=new.encode()))
                r = kv.Txn(rpc_pb2.TxnRequest(compare=[cmp], success=[put]), timeout=cfg.timeout)
                rec.output = bool(r.succeeded)
                if r.succeeded:
                    known[key] = new
            else:
                ops = [rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key_bytes(k)))
                       for k in inp["reads"]]
                ops += [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_bytes(k), value=v.encode()))
                        for k, v in inp["writes"]]
                r = kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=cfg.timeout)
                reads = []
                for resp in r.responses[:len(inp["reads"])]:
                    kvs = resp.response_range.kvs
                    reads.append(kvs[0].value.decode() if kvs else None)
                rec.output = reads
                for k, v in zip(inp["reads"], reads):
                    known[k] = v
                for k, v in inp["writes"]:
                    known[k] = v
            rec.complete = time.monotonic()
            rec.status = "ok"
            rec.revision = r.header.revision
        except grpc.RpcError as e:
            rec.complete = time.monotonic()
            code = e.code()  # type: ignore[attr-defined]
            rec.error = f"{code.name}: {e.details()}"  # type: ignore[attr-defined]
            rec.status = "unknown" if code in AMBIGUOUS else "fail"
            known.pop(key, None)
        self._record(rec)
        return rec


# --------------------------------------------------------------------------- #
# Watchers


@dataclass
class WatchEvent:
    revision: int
    key: str
    type: str      # PUT / DELETE
    value: str | None


class Watcher:
    """A watch stream on PREFIX that survives errors by resuming elsewhere."""

    def __init__(self, ident: int, endpoints: Callable[[], Sequence[tuple[str, str]]],
                 start_revision: int) -> None:
        self.ident = ident
        self.endpoints = endpoints
        self.next_rev = start_revision
        self.events: list[WatchEvent] = []
        self.reconnects = 0
        self.errors: list[str] = []
        self.trail: list[str] = []  # where it watched from and why it left: for a stuck watcher's report
        self.problems: list[str] = []   # protocol violations seen live
        self._stop = threading.Event()
        self._call: Any = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watcher-{ident}")

    @property
    def last_revision(self) -> int:
        return self.next_rev - 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(10)

    def wait_for(self, revision: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.last_revision < revision and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.last_revision >= revision

    def _run(self) -> None:
        node_i = self.ident
        prefix = PREFIX.encode()
        conns: dict[str, Conn] = {}
        while not self._stop.is_set():
            eps = list(self.endpoints())
            if not eps:
                time.sleep(0.2)
                continue
            name, ep = eps[node_i % len(eps)]
            node_i += 1
            conn = conns.get(ep)
            if conn is None:
                conn = conns[ep] = Conn(ep)
            ch = conn.channel
            done = threading.Event()
            try:
                if not conn.ready(1.0):
                    continue
                req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                    key=prefix, range_end=range_end(prefix), start_revision=self.next_rev))
                call = rpc_pb2_grpc.WatchStub(ch).Watch(_Requests(req, done))
                self.trail.append(f"{time.monotonic():.3f} {name} from {self.next_rev}")
                with self._lock:
                    self._call = call
                if self._stop.is_set():
                    call.cancel()
                for resp in call:
                    self._on_response(resp)
                    if resp.canceled:
                        self.errors.append(f"{name}: canceled: {resp.cancel_reason}")
                        break
            except grpc.RpcError as e:
                if not self._stop.is_set():
                    self.errors.append(f"{name}: {e.code().name}")  # type: ignore[attr-defined]
                    self.trail.append(f"{time.monotonic():.3f} {name}: {e.code().name} {e.details()}")  # type: ignore[attr-defined]
            finally:
                done.set()
            if not self._stop.is_set():
                self.reconnects += 1
                time.sleep(0.1)
        for conn in conns.values():
            conn.close()

    def _on_response(self, resp: Any) -> None:
        if resp.compact_revision:
            self.problems.append(f"compacted at {resp.compact_revision} while resuming at {self.next_rev}")
        floor, seen = self.next_rev, set()
        for ev in resp.events:
            rev, key = ev.kv.mod_revision, ev.kv.key.decode()[len(PREFIX):]
            if rev < floor or (rev, key) in seen:
                self.problems.append(f"event {key}@{rev} after revision {self.last_revision} "
                                     "(duplicate or out of order)")
            floor = rev
            seen.add((rev, key))
            self.events.append(WatchEvent(
                rev, key, "PUT" if ev.type == kv_pb2.Event.PUT else "DELETE",
                ev.kv.value.decode() if ev.type == kv_pb2.Event.PUT else None))
            self.next_rev = max(self.next_rev, rev + 1)


class _Requests:
    """Request iterator for a watch stream: the create request, then block."""

    def __init__(self, first: Any, done: threading.Event) -> None:
        self.first, self.stop, self.sent = first, done, False

    def __iter__(self) -> "_Requests":
        return self

    def __next__(self) -> Any:
        if not self.sent:
            self.sent = True
            return self.first
        self.stop.wait()
        raise StopIteration


# --------------------------------------------------------------------------- #
# Final state and checks


def read_all_events(endpoint: str, start: int, end: int, timeout: float = 30) -> list[WatchEvent]:
    """Every event on PREFIX with start <= revision <= end, via one watch."""
    w = Watcher(-1, lambda: [("final", endpoint)], start)
    w.start()
    ok = w.wait_for(end, timeout)
    w.stop()
    if not ok:
        raise RuntimeError(f"final watch reached only revision {w.last_revision} of {end}")
    return [e for e in w.events if e.revision <= end]


def current_revision(endpoint: str, timeout: float = 5) -> int:
    with grpc.insecure_channel(endpoint) as ch:
        r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=timeout)
        return r.header.revision


def final_values(endpoint: str, timeout: float = 5) -> dict[str, str]:
    p = PREFIX.encode()
    with grpc.insecure_channel(endpoint) as ch:
        r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=p, range_end=range_end(p)), timeout=timeout)
    return {kv.key.decode()[len(PREFIX):]: kv.value.decode() for kv in r.kvs}


def acknowledged_writes(records: Iterable[Record]) -> list[tuple[int, str, str, str | None]]:
    """(revision, key, PUT/DELETE, value) that acknowledged operations produced."""
    out = []
    for r in records:
        if r.status != "ok" or r.revision is None:
            continue
        if r.kind == "put":
            out.append((r.revision, r.input["key"], "PUT", r.input["value"]))
        elif r.kind == "cas" and r.output:
            out.append((r.revision, r.input["key"], "PUT", r.input["new"]))
        elif r.kind == "delete" and r.output:
            out.append((r.revision, r.input["key"], "DELETE", None))
        elif r.kind == "txn":
            out += [(r.revision, k, "PUT", v) for k, v in r.input["writes"]]
    return out


def check_durability(records: Sequence[Record], events: Sequence[WatchEvent], start: int, end: int,
                     final: dict[str, str]) -> list[str]:
    """Every acknowledged write is in the final event history at its revision,
    revisions are contiguous, reads name real writes, and the final values are
    those of the last events."""
    problems: list[str] = []
    by_rev: dict[int, list[WatchEvent]] = {}
    for e in events:
        by_rev.setdefault(e.revision, []).append(e)
    missing = [r for r in range(start, end + 1) if r not in by_rev]
    if missing:
        problems.append(f"revisions with no event in the final history: {missing[:20]}")
    have = {(e.revision, e.key, e.type, e.value) for e in events}
    lost = [w for w in acknowledged_writes(records) if w not in have]
    for w in lost[:20]:
        problems.append(f"acknowledged write lost: revision {w[0]} {w[2]} {w[1]}={w[3]}")
    for r in records:
        if r.kind == "get" and r.status == "ok" and r.output is not None:
            if (r.mod_revision, r.input["key"], "PUT", r.output) not in have:
                problems.append(f"read {r.input['key']}={r.output} at mod_revision {r.mod_revision} "
                                "matches no write in the final history")
    last: dict[str, str | None] = {}
    for e in events:
        last[e.key] = e.value
    expect = {k: v for k, v in last.items() if v is not None}
    if final != expect:
        problems.append(f"final values {final} differ from the last events {expect}")
    return problems


def check_watchers(watchers: Sequence[Watcher], reference: Sequence[WatchEvent], end: int) -> list[str]:
    """Each watcher saw exactly the reference events up to ``end``, in order, once."""
    problems = []
    ref = [asdict(e) for e in reference]
    for w in watchers:
        problems += [f"watcher {w.ident}: {p}" for p in w.problems]
        got = [asdict(e) for e in w.events if e.revision <= end]
        if got != ref:
            i = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref)))
            problems.append(f"watcher {w.ident}: {len(got)} events vs {len(ref)} in the final history; "
                            f"first difference at #{i}: got {got[i] if i < len(got) else None}, "
                            f"want {ref[i] if i < len(ref) else None}")
    return problems


def check_linearizable(records: Sequence[Record], timeout: float | None) -> Any:
    """Run the linearizability checker on the recorded operations (definite failures dropped)."""
    ops = [r.to_op() for r in records if r.status in ("ok", "unknown")]
    return check(ops, timeout=timeout)


def dump_history(records: Sequence[Record], path: str) -> None:
    with open(path, "w") as f:
        for r in sorted(records, key=lambda r: r.invoke):
            f.write(json.dumps(asdict(r)) + "\n")
