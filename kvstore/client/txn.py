"""A readable transaction builder.

    from kvstore.client import value, version, create_revision, mod_revision, put, get, delete

    r = (c.txn()
           .if_(value("/cfg/mode") == "blue", version("/cfg/lock") == 0)
           .then(put("/cfg/mode", "green"), get("/cfg/", prefix=True))
           .else_(get("/cfg/mode"))
           .commit())
    r.succeeded, r.responses, r.revision

Comparisons are made with ``==``, ``!=``, ``<`` and ``>`` on a target
(``value``, ``version``, ``create_revision``, ``mod_revision``, ``lease``) of
a key (``prefix=True`` or ``range_end=`` compare every key of a range, as etcd
allows). A ``create_revision(k) == 0`` guard means "k does not exist".

The builder produces an ``rpc_pb2.TxnRequest`` (``.request()``); ``commit()``
sends it through the client that made the builder (for ``AsyncClient`` it
returns an awaitable). A transaction with at least one compare, or without
writes, is retried on another endpoint after an ambiguous failure (the guard
is evaluated again, ``TxnResult.retried`` says it happened); an unguarded
writing transaction never is.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..pb import rpc_pb2
from .model import (
    Bytesish,
    delete_request,
    key_range,
    put_request,
    range_request,
    to_bytes,
)

_C = rpc_pb2.Compare
_RESULTS = {"==": _C.EQUAL, "!=": _C.NOT_EQUAL, "<": _C.LESS, ">": _C.GREATER}
_RESULT_NAMES = {v: k for k, v in _RESULTS.items()}
_TARGET_NAMES = {_C.VALUE: "value", _C.VERSION: "version", _C.CREATE: "create_revision",
                 _C.MOD: "mod_revision", _C.LEASE: "lease"}


class Compare:
    """One compare of a transaction (wraps ``rpc_pb2.Compare``)."""

    __slots__ = ("pb",)

    def __init__(self, pb: rpc_pb2.Compare) -> None:
        self.pb = pb

    def __repr__(self) -> str:
        c = self.pb
        target = _TARGET_NAMES[c.target]
        operand = getattr(c, c.WhichOneof("target_union") or "value")
        return f"{target}({c.key!r}) {_RESULT_NAMES[c.result]} {operand!r}"

    def __bool__(self) -> bool:
        raise TypeError("a Compare is not a boolean: pass it to txn().if_()")


class _Target:
    """``value("k") == "v"`` and friends build ``Compare`` objects."""

    target: int = _C.VALUE
    field: str = "value"

    def __init__(self, key: Bytesish, range_end: Bytesish | None = None, *, prefix: bool = False) -> None:
        self.key, self.range_end = key_range(key, range_end, prefix)

    def _cmp(self, op: str, operand: Any) -> Compare:
        if self.target == _C.VALUE:
            operand = to_bytes(operand)
        elif not isinstance(operand, int) or isinstance(operand, bool):
            raise TypeError(f"{self.field} compares against an integer, got {operand!r}")
        c = rpc_pb2.Compare(key=self.key, range_end=self.range_end, target=self.target, result=_RESULTS[op])
        setattr(c, self.field, operand)
        return Compare(c)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._cmp("==", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._cmp("!=", other)

    def __lt__(self, other: Any) -> Compare:
        return self._cmp("<", other)

    def __gt__(self, other: Any) -> Compare:
        return self._cmp(">", other)

    def __le__(self, other: Any) -> Compare:
        raise TypeError("etcd compares support ==, !=, < and > only")

    __ge__ = __le__
    __hash__ = None  # type: ignore[assignment]


class value(_Target):
    target, field = _C.VALUE, "value"


class version(_Target):
    target, field = _C.VERSION, "version"


class create_revision(_Target):
    target, field = _C.CREATE, "create_revision"


class mod_revision(_Target):
    target, field = _C.MOD, "mod_revision"


class lease(_Target):
    target, field = _C.LEASE, "lease"


def compare(key: Bytesish, target: str, op: str, operand: Any) -> Compare:
    """Functional form: ``compare("k", "value", "==", "v")``."""
    cls = {"value": value, "version": version, "create": create_revision, "create_revision": create_revision,
           "mod": mod_revision, "mod_revision": mod_revision, "lease": lease}.get(target.lower())
    if cls is None:
        raise ValueError(f"unknown compare target {target!r}")
    if op not in _RESULTS:
        raise ValueError(f"unknown compare operator {op!r} (use ==, !=, <, >)")
    return cls(key)._cmp(op, operand)


class Op:
    """One operation of a transaction branch (wraps ``rpc_pb2.RequestOp``)."""

    __slots__ = ("pb",)

    def __init__(self, pb: rpc_pb2.RequestOp) -> None:
        self.pb = pb

    def __repr__(self) -> str:
        kind = self.pb.WhichOneof("request")
        return f"Op({kind}: {getattr(self.pb, kind)!s})".replace("\n", " ")


def put(key: Bytesish, value: Bytesish, *, lease: int = 0, prev_kv: bool = False) -> Op:
    return Op(rpc_pb2.RequestOp(request_put=put_request(key, value, lease=lease, prev_kv=prev_kv)))


def get(key: Bytesish, range_end: Bytesish | None = None, **kw: Any) -> Op:
    return Op(rpc_pb2.RequestOp(request_range=range_request(key, range_end, **kw)))


def delete(key: Bytesish, range_end: Bytesish | None = None, *, prefix: bool = False, prev_kv: bool = False) -> Op:
    return Op(rpc_pb2.RequestOp(request_delete_range=delete_request(key, range_end, prefix=prefix, prev_kv=prev_kv)))


def txn_op(compares: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op] = ()) -> Op:
    """A nested transaction as an operation."""
    return Op(rpc_pb2.RequestOp(request_txn=build_txn(compares, success, failure)))


def build_txn(compares: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op] = ()) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(
        compare=[_as_compare(c).pb for c in compares],
        success=[_as_op(o).pb for o in success],
        failure=[_as_op(o).pb for o in failure],
    )


def _as_compare(c: Compare | rpc_pb2.Compare) -> Compare:
    if isinstance(c, Compare):
        return c
    if isinstance(c, rpc_pb2.Compare):
        return Compare(c)
    raise TypeError(f"not a compare: {c!r} (build one with value(k) == v, version(k) > 0, ...)")


def _as_op(o: Op | rpc_pb2.RequestOp) -> Op:
    if isinstance(o, Op):
        return o
    if isinstance(o, rpc_pb2.RequestOp):
        return Op(o)
    raise TypeError(f"not a transaction operation: {o!r} (use put(), get(), delete())")


class TxnBuilder:
    """``if_(...).then(...).else_(...).commit()``; each part may be given once."""

    def __init__(self, committer: Callable[[rpc_pb2.TxnRequest], Any] | None = None) -> None:
        self._commit = committer
        self._compares: list[Compare] = []
        self._success: list[Op] = []
        self._failure: list[Op] = []
        self._done: set[str] = set()

    def _once(self, part: str) -> None:
        if part in self._done:
            raise ValueError(f"txn: {part}() given twice")
        self._done.add(part)

    def if_(self, *compares: Compare) -> TxnBuilder:
        self._once("if_")
        if "then" in self._done or "else_" in self._done:
            raise ValueError("txn: if_() must come before then()/else_()")
        self._compares.extend(_as_compare(c) for c in compares)
        return self

    def then(self, *ops: Op) -> TxnBuilder:
        self._once("then")
        self._success.extend(_as_op(o) for o in ops)
        return self

    def else_(self, *ops: Op) -> TxnBuilder:
        self._once("else_")
        self._failure.extend(_as_op(o) for o in ops)
        return self

    def request(self) -> rpc_pb2.TxnRequest:
        return build_txn(self._compares, self._success, self._failure)

    def commit(self, timeout: float | None = None) -> Any:
        if self._commit is None:
            raise RuntimeError("this builder has no client: use Client.txn()")
        return self._commit(self.request(), timeout)
