"""Key-range permissions of one user, as etcd's range permission cache.

A role's permission is a key (``range_end`` empty), a range ``[key,
range_end)``, or everything from ``key`` on (``range_end == b"\\0"``). A
user's permissions are the union over its roles, kept per kind (READ, WRITE;
READWRITE counts as both) as sorted disjoint intervals, so a check is one
binary search.

A request on a single key is allowed when some permission contains the key;
a request on a range when the union of permissions covers the whole range
(etcd's ``IntervalTree.Contains``: touching intervals join).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Iterable, Optional, Sequence

from ..pb import auth_pb2

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

# An interval [begin, end); end None = no upper bound.
Interval = tuple[bytes, Optional[bytes]]


def request_interval(key: bytes, range_end: bytes = b"") -> Interval:
    """The keys a request touches: one key, a range, or from ``key`` on."""
    if not range_end:
        return key, key + b"\0"  # the smallest key after ``key``
    if range_end == b"\0":
        return key, None
    return key, range_end


def perm_interval(p: auth_pb2.Permission) -> Interval | None:
    """The keys a permission grants; None for an empty range (grants nothing)."""
    begin, end = request_interval(p.key, p.range_end)
    if end is not None and end <= begin:
        return None
    return begin, end


def _ends_before(a: Optional[bytes], b: Optional[bytes]) -> bool:
    """a < b where None is +infinity."""
    if a is None:
        return False
    return b is None or a < b


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, non-touching intervals covering the same keys."""
    out: list[Interval] = []
    for begin, end in sorted(intervals, key=lambda iv: iv[0]):
        if out:
            last_begin, last_end = out[-1]
            if last_end is None or begin <= last_end:  # overlaps or touches
                if _ends_before(last_end, end):
                    out[-1] = (last_begin, end)
                continue
        out.append((begin, end))
    return out


class Intervals:
    """A union of intervals answering "is [begin, end) covered?"."""

    __slots__ = ("_begins", "_ends")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        merged = merge(intervals)
        self._begins = [b for b, _ in merged]
        self._ends = [e for _, e in merged]

    def __bool__(self) -> bool:
        return bool(self._begins)

    def covers(self, begin: bytes, end: Optional[bytes]) -> bool:
        i = bisect_right(self._begins, begin) - 1
        if i < 0:
            return False
        have = self._ends[i]
        if have is None:
            return True
        if end is None:
            return False
        return end <= have


class UserPerms:
    """The merged READ and WRITE permissions of one user (root: everything)."""

    __slots__ = ("read", "write", "root")

    def __init__(self, perms: Sequence[auth_pb2.Permission], root: bool = False) -> None:
        reads: list[Interval] = []
        writes: list[Interval] = []
        for p in perms:
            iv = perm_interval(p)
            if iv is None:
                continue
            if p.permType in (READ, READWRITE):
                reads.append(iv)
            if p.permType in (WRITE, READWRITE):
                writes.append(iv)
        self.read = Intervals(reads)
        self.write = Intervals(writes)
        self.root = root

    def allows(self, perm_type: int, key: bytes, range_end: bytes = b"") -> bool:
        if self.root:
            return True
        begin, end = request_interval(key, range_end)
        ivs = self.write if perm_type == WRITE else self.read
        return ivs.covers(begin, end)
