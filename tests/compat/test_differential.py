"""Differential tests: the same generated operations against real etcd 3.4
(Debian ``etcd-server``) and kvstore, one single-member server each, through
the same gRPC stubs (kvstore.pb); responses must be equal once normalised.

Normalisation: cluster_id, member_id and raft_term of top-level headers are
zeroed, and every revision (headers, create/mod revisions, compact revisions)
is made relative to the revision each server had when the example started.
Each example works under a fresh key prefix that sorts after every earlier
one, so examples are independent of each other (also while hypothesis
shrinks), although the two servers live for the whole module.

``KVSTORE_DIFF_EXAMPLES`` sets the number of generated examples (default 50).
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.procs import Cluster

from .etcd_procs import ETCD, EtcdCluster

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(ETCD is None, reason="real etcd (Debian package etcd-server, /usr/bin/etcd) is not installed"),
]

EXAMPLES = int(os.environ.get("KVSTORE_DIFF_EXAMPLES", "50"))
RPC_TIMEOUT = 10.0
WATCH_QUIET = 0.3  # seconds without a response after which a watch is read to the end


# ------------------------------------------------------------------ servers


@dataclass
class Target:
    name: str
    channel: grpc.Channel

    def __post_init__(self) -> None:
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)

    def revision(self) -> int:
        return self.kv.Range(rpc_pb2.RangeRequest(key=b"\x01"), timeout=RPC_TIMEOUT).header.revision


@pytest.fixture(scope="module")
def targets() -> Iterator[tuple[Target, Target]]:
    etcd = EtcdCluster(1)
    kv = Cluster(1)
    chans: list[grpc.Channel] = []
    try:
        etcd.start(timeout=60)
        kv.start(timeout=60)
        chans = [grpc.insecure_channel(etcd.endpoints[0]), grpc.insecure_channel(kv.endpoints[0])]
        yield Target("etcd", chans[0]), Target("kvstore", chans[1])
    finally:
        for ch in chans:
            ch.close()
        etcd.close()
        kv.close()


# ------------------------------------------------------------ normalisation


def _rel(rev: int, base: int) -> int:
    return rev - base if rev > 0 else rev


# kvstore's documented deliberate watch differences (kvstore/watch.py): a
# compaction cancel carries the header revision and a cancel_reason (etcd
# 3.4: revision 0, no reason), and a watch from exactly the compacted
# revision is canceled (etcd replays from it). The generated tests tolerate
# exactly these; test_deliberate_difference shows each one (strict xfail).
TOLERATE_DELIBERATE = True


def normalise(msg: Any, base: int, top: bool = True) -> Any:
    """A copy of ``msg`` without cluster-specific fields and with revisions
    relative to ``base``."""
    m = type(msg)()
    m.CopyFrom(msg)
    _norm(m, base, top)
    if TOLERATE_DELIBERATE and isinstance(m, rpc_pb2.WatchResponse) and m.canceled and m.compact_revision:
        m.header.revision = 0
        m.cancel_reason = ""
    return m


def _norm(m: Any, base: int, top: bool) -> None:
    if isinstance(m, rpc_pb2.ResponseHeader):
        if top:
            m.cluster_id = m.member_id = m.raft_term = 0
        m.revision = _rel(m.revision, base)
        return
    if isinstance(m, kv_pb2.KeyValue):
        m.create_revision = _rel(m.create_revision, base)
        m.mod_revision = _rel(m.mod_revision, base)
        return
    if isinstance(m, rpc_pb2.WatchResponse):
        m.compact_revision = _rel(m.compact_revision, base)
    for fd, value in m.ListFields():
        if fd.message_type is None:
            continue
        is_header = fd.message_type.name == "ResponseHeader"
        items = value if fd.is_repeated else [value]
        for item in items:
            _norm(item, base, top and is_header)


def outcome(fn: Callable[[], Any], base: int) -> tuple[str, Any]:
    try:
        resp = fn()
    except grpc.RpcError as e:
        return ("error", (e.code().name, e.details()))
    if isinstance(resp, list):
        return ("ok", [normalise(r, base) if not isinstance(r, tuple) else r for r in resp])
    return ("ok", normalise(resp, base))


# --------------------------------------------------------------- operations

KEYS = ["a", "a/1", "a/2", "b", "b/1", "c"]
VALUES = [b"", b"v", b"w", b"xyz", b"\x00\xff"]
SORT_ORDERS = [rpc_pb2.RangeRequest.NONE, rpc_pb2.RangeRequest.ASCEND, rpc_pb2.RangeRequest.DESCEND]
SORT_TARGETS = [rpc_pb2.RangeRequest.KEY, rpc_pb2.RangeRequest.VERSION, rpc_pb2.RangeRequest.CREATE,
                rpc_pb2.RangeRequest.MOD, rpc_pb2.RangeRequest.VALUE]


def prefix_end(p: bytes) -> bytes:
    b = bytearray(p)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"


class Ctx:
    """One example on one server: key prefix, base revision, lease ids."""

    def __init__(self, target: Target, prefix: bytes, lease_base: int) -> None:
        self.t = target
        self.prefix = prefix
        self.lease_base = lease_base
        self.base = target.revision()

    def key(self, k: str) -> bytes:
        return self.prefix + k.encode()

    def rev(self, r: Any) -> int:
        """("latest") → 0; ("abs", n) → n; ("rel", n) → base + n."""
        if r is None:
            return 0
        kind, n = r
        return n if kind == "abs" else max(0, self.base + n)

    def lease(self, idx: int | None) -> int:
        return 0 if idx is None else self.lease_base + idx

    def span(self, spec: tuple) -> tuple[bytes, bytes]:
        kind = spec[0]
        if kind == "key":
            return self.key(spec[1]), b""
        if kind == "range":
            return self.key(spec[1]), self.key(spec[2])
        if kind == "prefix":
            return self.key(spec[1]), prefix_end(self.key(spec[1]))
        if kind == "fromkey":
            return self.key(spec[1]), b"\x00"
        return self.prefix, prefix_end(self.prefix)  # "all"

    # -- request builders -------------------------------------------------
    def put_req(self, op: dict) -> rpc_pb2.PutRequest:
        return rpc_pb2.PutRequest(
            key=self.key(op["key"]), value=op["value"], prev_kv=op["prev_kv"],
            ignore_value=op["ignore_value"], ignore_lease=op["ignore_lease"], lease=self.lease(op["lease"]),
        )

    def delete_req(self, op: dict) -> rpc_pb2.DeleteRangeRequest:
        key, end = self.span(op["span"])
        return rpc_pb2.DeleteRangeRequest(key=key, range_end=end, prev_kv=op["prev_kv"])

    def range_req(self, op: dict) -> rpc_pb2.RangeRequest:
        key, end = self.span(op["span"])
        return rpc_pb2.RangeRequest(
            key=key, range_end=end, limit=op["limit"], revision=self.rev(op["revision"]),
            sort_order=op["sort_order"], sort_target=op["sort_target"], serializable=op["serializable"],
            keys_only=op["keys_only"], count_only=op["count_only"],
            min_mod_revision=self.rev(op["min_mod"]), max_mod_revision=self.rev(op["max_mod"]),
            min_create_revision=self.rev(op["min_create"]), max_create_revision=self.rev(op["max_create"]),
        )

    def compare(self, c: dict) -> rpc_pb2.Compare:
        key, end = self.span(c["span"])
        cmp = rpc_pb2.Compare(key=key, range_end=end, target=c["target"], result=c["result"])
        t = c["target"]
        if t == rpc_pb2.Compare.VALUE:
            cmp.value = c["value"]
        elif t == rpc_pb2.Compare.VERSION:
            cmp.version = c["version"]
        elif t == rpc_pb2.Compare.CREATE:
            cmp.create_revision = self.rev(c["rev"])
        elif t == rpc_pb2.Compare.MOD:
            cmp.mod_revision = self.rev(c["rev"])
        else:
            cmp.lease = self.lease(c["lease"])
        return cmp

    def request_op(self, op: dict) -> rpc_pb2.RequestOp:
        kind = op["op"]
        if kind == "put":
            return rpc_pb2.RequestOp(request_put=self.put_req(op))
        if kind == "delete":
            return rpc_pb2.RequestOp(request_delete_range=self.delete_req(op))
        if kind == "range":
            return rpc_pb2.RequestOp(request_range=self.range_req(op))
        return rpc_pb2.RequestOp(request_txn=self.txn_req(op))

    def txn_req(self, op: dict) -> rpc_pb2.TxnRequest:
        return rpc_pb2.TxnRequest(
            compare=[self.compare(c) for c in op["compare"]],
            success=[self.request_op(o) for o in op["success"]],
            failure=[self.request_op(o) for o in op["failure"]],
        )

    # -- execution ---------------------------------------------------------
    def run(self, op: dict) -> tuple[str, Any]:
        kv, t = self.t.kv, RPC_TIMEOUT
        kind = op["op"]
        if kind == "put":
            return outcome(lambda: kv.Put(self.put_req(op), timeout=t), self.base)
        if kind == "delete":
            return outcome(lambda: kv.DeleteRange(self.delete_req(op), timeout=t), self.base)
        if kind == "range":
            return outcome(lambda: kv.Range(self.range_req(op), timeout=t), self.base)
        if kind == "txn":
            return outcome(lambda: kv.Txn(self.txn_req(op), timeout=t), self.base)
        if kind == "compact":
            req = rpc_pb2.CompactionRequest(revision=self.rev(op["revision"]), physical=op["physical"])
            return outcome(lambda: kv.Compact(req, timeout=t), self.base)
        if kind == "lease_grant":
            req = rpc_pb2.LeaseGrantRequest(ID=self.lease(op["lease"]), TTL=op["ttl"])
            return outcome(lambda: self.t.lease.LeaseGrant(req, timeout=t), self.base)
        if kind == "lease_revoke":
            req = rpc_pb2.LeaseRevokeRequest(ID=self.lease(op["lease"]))
            return outcome(lambda: self.t.lease.LeaseRevoke(req, timeout=t), self.base)
        if kind == "lease_ttl":
            req = rpc_pb2.LeaseTimeToLiveRequest(ID=self.lease(op["lease"]), keys=op["keys"])

            def ttl() -> Any:
                r = self.t.lease.LeaseTimeToLive(req, timeout=t)
                r.TTL = min(r.TTL, 0)  # the remaining time is a clock reading: only -1 (gone) is compared
                r.keys.sort()
                return r

            return outcome(ttl, self.base)
        if kind == "watch":
            return self.watch(op)
        raise AssertionError(kind)

    def watch(self, op: dict) -> tuple[str, Any]:
        """A watch on a fresh stream from a (past) revision; reads until
        ``n`` events arrived or nothing came for WATCH_QUIET seconds. Returns
        the created/canceled responses (without events) and the events, so
        that different batching of events into responses does not matter."""
        key, end = self.span(op["span"])
        create = rpc_pb2.WatchCreateRequest(
            key=key, range_end=end, start_revision=self.rev(op["start"]), prev_kv=op["prev_kv"],
            filters=op["filters"],
        )
        requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        requests.put(rpc_pb2.WatchRequest(create_request=create))

        def gen() -> Iterator[rpc_pb2.WatchRequest]:
            while True:
                r = requests.get()
                if r is None:
                    return
                yield r

        call = self.t.watch.Watch(gen(), timeout=RPC_TIMEOUT * 3)
        got: queue.Queue[Any] = queue.Queue()

        def pump() -> None:
            try:
                for resp in call:
                    got.put(resp)
            except grpc.RpcError as e:
                got.put(e)
            got.put(None)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        control: list[rpc_pb2.WatchResponse] = []
        events: list[kv_pb2.Event] = []
        error = None
        deadline = time.monotonic() + RPC_TIMEOUT
        try:
            while len(events) < op["n"] and time.monotonic() < deadline:
                try:
                    item = got.get(timeout=WATCH_QUIET)
                except queue.Empty:
                    break
                if item is None:
                    break
                if isinstance(item, grpc.RpcError):
                    if item.code() != grpc.StatusCode.CANCELLED:
                        error = (item.code().name, item.details())
                    break
                events.extend(item.events)
                if item.created or item.canceled or not item.events:
                    c = rpc_pb2.WatchResponse()
                    c.CopyFrom(item)
                    del c.events[:]
                    control.append(c)
                if item.canceled:
                    break
        finally:
            requests.put(None)
            call.cancel()
            th.join(5)
        if error is not None:
            return ("error", error)
        wrapped = [normalise(c, self.base) for c in control]
        wrapped += [normalise(rpc_pb2.WatchResponse(events=events), self.base)]
        return ("ok", wrapped)


# --------------------------------------------------------------- strategies

key_st = st.sampled_from(KEYS)
span_st = st.one_of(
    st.tuples(st.just("key"), key_st),
    st.tuples(st.just("range"), key_st, key_st),
    st.tuples(st.just("prefix"), st.sampled_from(["a", "a/", "b", "c", "d"])),
    st.tuples(st.just("fromkey"), key_st),
    st.just(("all",)),
)
# Offsets from the example's start revision: mostly inside its history,
# sometimes before it (compacted or empty) or after it (future).
rel_st = st.one_of(st.integers(0, 6), st.integers(-1, 14))
opt_rev_st = st.one_of(st.none(), st.none(), st.none(), st.none(), st.tuples(st.just("rel"), rel_st))
# Leases 0 and 1 are granted when each example starts; 2 never is.
lease_idx_st = st.one_of(st.none(), st.none(), st.sampled_from([0, 0, 0, 1, 1, 2]))


def _put_flags(d: dict) -> dict:
    # Keep etcd's invalid combinations (value with ignore_value, lease with
    # ignore_lease) possible but rare.
    if d["ignore_value"] and d["value"] and d["noise"] > 0:
        d["value"] = b""
    if d["ignore_lease"] and d["lease"] is not None and d["noise"] > 0:
        d["lease"] = None
    del d["noise"]
    return d


put_st = st.fixed_dictionaries({
    "op": st.just("put"), "key": key_st, "value": st.sampled_from(VALUES),
    "prev_kv": st.booleans(), "ignore_value": st.sampled_from([False] * 9 + [True]),
    "ignore_lease": st.sampled_from([False] * 9 + [True]), "lease": lease_idx_st,
    "noise": st.integers(0, 7),
}).map(_put_flags)
delete_st = st.fixed_dictionaries({"op": st.just("delete"), "span": span_st, "prev_kv": st.booleans()})
range_st = st.fixed_dictionaries({
    "op": st.just("range"), "span": span_st, "limit": st.sampled_from([0, 0, 1, 2, 3]),
    "revision": opt_rev_st, "sort_order": st.sampled_from(SORT_ORDERS), "sort_target": st.sampled_from(SORT_TARGETS),
    "serializable": st.booleans(), "keys_only": st.booleans(), "count_only": st.sampled_from([False, False, True]),
    "min_mod": opt_rev_st, "max_mod": opt_rev_st, "min_create": opt_rev_st, "max_create": opt_rev_st,
})
compare_st = st.fixed_dictionaries({
    "span": st.one_of(st.tuples(st.just("key"), key_st), st.tuples(st.just("key"), key_st), span_st),
    "target": st.sampled_from([rpc_pb2.Compare.VALUE, rpc_pb2.Compare.VERSION, rpc_pb2.Compare.CREATE,
                               rpc_pb2.Compare.MOD, rpc_pb2.Compare.LEASE]),
    "result": st.sampled_from([rpc_pb2.Compare.EQUAL, rpc_pb2.Compare.GREATER, rpc_pb2.Compare.LESS,
                               rpc_pb2.Compare.NOT_EQUAL]),
    "value": st.sampled_from(VALUES), "version": st.integers(0, 3),
    "rev": st.one_of(st.just(("abs", 0)), st.tuples(st.just("rel"), rel_st)),
    "lease": lease_idx_st,
})


def txn_st(depth: int) -> st.SearchStrategy[dict]:
    leaf = st.one_of(put_st, delete_st, range_st)
    inner = st.one_of(leaf, txn_st(depth - 1)) if depth > 0 else leaf
    return st.fixed_dictionaries({
        "op": st.just("txn"),
        "compare": st.lists(compare_st, max_size=3),
        "success": st.lists(inner, max_size=3),
        "failure": st.lists(inner, max_size=3),
    })


compact_st = st.fixed_dictionaries({
    "op": st.just("compact"), "revision": st.tuples(st.just("rel"), rel_st), "physical": st.booleans(),
})
watch_st = st.fixed_dictionaries({
    "op": st.just("watch"), "span": span_st,
    "start": st.tuples(st.just("rel"), rel_st),
    "prev_kv": st.booleans(),
    "filters": st.sampled_from([[], [], [rpc_pb2.WatchCreateRequest.NOPUT], [rpc_pb2.WatchCreateRequest.NODELETE]]),
    "n": st.integers(1, 6),
})
lease_st = st.one_of(
    st.fixed_dictionaries({"op": st.just("lease_grant"), "lease": st.integers(0, 2), "ttl": st.just(3600)}),
    st.fixed_dictionaries({"op": st.just("lease_revoke"), "lease": st.integers(0, 2)}),
    st.fixed_dictionaries({"op": st.just("lease_ttl"), "lease": st.integers(0, 2), "keys": st.booleans()}),
)
op_st = st.one_of(
    put_st, put_st, put_st, delete_st, range_st, range_st, range_st, txn_st(1), txn_st(1), compact_st,
    watch_st, watch_st, lease_st,
)
# A few puts first, so that reads, watches and compactions have history.
ops_st = st.tuples(st.lists(put_st, min_size=2, max_size=8), st.lists(op_st, min_size=1, max_size=20)).map(
    lambda t: t[0] + t[1]
)

_example_no = itertools.count(1)


def describe(op: dict) -> str:
    return repr({k: v for k, v in op.items()})


def run_both(targets: tuple[Target, Target], ops: list[dict]) -> None:
    n = next(_example_no)
    prefix = f"/d/{n:08d}/".encode()
    lease_base = 0x7E570000_0000 + n * 16
    ctxs = [Ctx(t, prefix, lease_base) for t in targets]
    ops = [{"op": "lease_grant", "lease": 0, "ttl": 3600}, {"op": "lease_grant", "lease": 1, "ttl": 3600}] + list(ops)
    for i, op in enumerate(ops):
        res_e, res_k = (c.run(op) for c in ctxs)
        if res_e != res_k and not (TOLERATE_DELIBERATE and _watch_from_compacted(op, res_e, res_k)):
            raise AssertionError(
                f"op #{i} differs: {describe(op)}\n"
                f"--- etcd:\n{_show(res_e)}\n--- kvstore:\n{_show(res_k)}\n"
                f"(ops so far: {[o['op'] for o in ops[: i + 1]]})"
            )


def _watch_from_compacted(op: dict, res_e: tuple[str, Any], res_k: tuple[str, Any]) -> bool:
    """The documented deliberate watch differences: kvstore cancels a watch
    from exactly the compacted revision (etcd replays it), and a cancellation
    for compaction carries a reason and the current header revision (etcd:
    empty, 0)."""
    if op["op"] != "watch" or res_k[0] != "ok" or res_e[0] != "ok":
        return False
    canceled = [r for r in res_k[1] if r.canceled]
    if len(canceled) == 1 and canceled[0].compact_revision == op["start"][1] and not any(
        r.canceled for r in res_e[1]
    ):
        return True

    def normalised(responses: list[Any]) -> list[Any]:
        out = []
        for r in responses:
            if not isinstance(r, tuple) and r.canceled and r.compact_revision:
                r = type(r).FromString(r.SerializeToString())
                r.cancel_reason = ""
                r.header.revision = 0
            out.append(r)
        return out

    return normalised(res_k[1]) == normalised(res_e[1])


def _show(res: tuple[str, Any]) -> str:
    kind, v = res
    if kind == "error":
        return f"error {v}"
    if isinstance(v, list):
        return "\n".join(str(x) for x in v)
    return str(v)


# -------------------------------------------------------------------- tests


def test_servers_start_alike(targets) -> None:
    etcd, kv = targets
    assert etcd.revision() >= 1 and kv.revision() >= 1


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(ops=ops_st)
def test_generated_sequences(targets, ops) -> None:
    run_both(targets, ops)


# Targeted sequences: each one a fixed operation list run through the same
# comparison (kept small; they document behaviours the generator may miss).
def _put(key: str, value: bytes = b"v", **kw: Any) -> dict:
    d = {"op": "put", "key": key, "value": value, "prev_kv": False, "ignore_value": False,
         "ignore_lease": False, "lease": None}
    d.update(kw)
    return d


def _range(span: tuple, **kw: Any) -> dict:
    d = {"op": "range", "span": span, "limit": 0, "revision": None, "sort_order": 0, "sort_target": 0,
         "serializable": False, "keys_only": False, "count_only": False, "min_mod": None, "max_mod": None,
         "min_create": None, "max_create": None}
    d.update(kw)
    return d


def _watch(span: tuple, start: int, n: int, **kw: Any) -> dict:
    d = {"op": "watch", "span": span, "start": ("rel", start), "prev_kv": False, "filters": [], "n": n}
    d.update(kw)
    return d


TARGETED = {
    "sort_ties_and_limit": [
        _put("a", b"x"), _put("b", b"x"), _put("c", b"x"), _put("a/1", b"y"), _put("b", b"x"),
        *[_range(("all",), sort_target=t, sort_order=o, limit=lim)
          for t in SORT_TARGETS for o in SORT_ORDERS for lim in (0, 2)],
    ],
    "filters_with_limit": [
        _put("a"), _put("b"), _put("a"), _put("c"), _put("b/1"),
        _range(("all",), limit=2, min_mod=("rel", 3)),
        _range(("all",), limit=1, max_create=("rel", 2), sort_order=2),
        _range(("all",), count_only=True, min_create=("rel", 2)),
        _range(("all",), keys_only=True, limit=2, revision=("rel", 3)),
    ],
    "watch_history_prev_kv_and_filters": [
        _put("a", b"1"), _put("a", b"2"), {"op": "delete", "span": ("key", "a"), "prev_kv": False}, _put("b"),
        _watch(("all",), 1, 4, prev_kv=True),
        _watch(("all",), 1, 4, filters=[rpc_pb2.WatchCreateRequest.NOPUT]),
        _watch(("prefix", "a"), 2, 2, filters=[rpc_pb2.WatchCreateRequest.NODELETE]),
    ],
    "watch_compacted": [
        _put("a", b"1"), _put("a", b"2"), _put("a", b"3"),
        {"op": "compact", "revision": ("rel", 2), "physical": True},
        _watch(("key", "a"), 1, 3),
        _range(("key", "a"), revision=("rel", 1)),
    ],
    "limits": [
        _put("big", b"x" * (1536 * 1024 + 100)),  # over --max-request-bytes, under gRPC's limit
        _put("ok", b"x" * (1024 * 1024)),
        {"op": "txn", "compare": [], "success": [_put(f"k{i}") for i in range(129)], "failure": []},
        {"op": "txn", "compare": [], "success": [_put(f"k{i}") for i in range(128)], "failure": []},
        _range(("all",), count_only=True),
    ],
    "txn_compares_every_target": [
        {"op": "lease_grant", "lease": 0, "ttl": 3600},
        _put("a", b"v", lease=0), _put("b", b"w"),
        *[{"op": "txn", "compare": [{"span": ("key", k), "target": tgt, "result": res, "value": b"v", "version": 1,
                                    "rev": ("rel", 1), "lease": 0}],
           "success": [_range(("key", k))], "failure": [_put("c", b"f")]}
          for k in ("a", "b", "z")
          for tgt in (0, 1, 2, 3, 4)
          for res in (0, 1, 2, 3)],
        {"op": "lease_revoke", "lease": 0},
        {"op": "lease_ttl", "lease": 0, "keys": True},
    ],
}


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_targeted(targets, name: str) -> None:
    run_both(targets, TARGETED[name])


DELIBERATE = {
    "compaction_cancel_fields": [
        _put("a", b"1"), _put("a", b"2"), _put("a", b"3"),
        {"op": "compact", "revision": ("rel", 2), "physical": True},
        _watch(("key", "a"), 1, 3),
    ],
    "watch_from_the_compacted_revision": [
        _put("a", b"1"), _put("b", b"2"), _put("a", b"3"),
        {"op": "compact", "revision": ("rel", 2), "physical": True},
        _watch(("all",), 2, 3),
    ],
}


@pytest.mark.xfail(
    strict=True,
    reason="documented deliberate differences of kvstore/watch.py: a compaction cancel carries the header "
    "revision and a cancel_reason (etcd 3.4: revision 0, empty reason); a watch from exactly the compacted "
    "revision is canceled (etcd replays events from it)",
)
@pytest.mark.parametrize("name", sorted(DELIBERATE))
def test_deliberate_difference(targets, name: str, monkeypatch) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "TOLERATE_DELIBERATE", False)
    run_both(targets, DELIBERATE[name])
