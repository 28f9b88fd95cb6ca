"""Linearizability checker for key-value histories.

The algorithm is Wing & Gong's search as improved by Lowe ("Testing for
linearizability", 2017) and implemented by Porcupine: the history is turned into
a doubly linked list of call/return entries ordered by time; a depth-first
search linearizes one pending call at a time, backtracks when it reaches the
return of an operation it has not yet placed, and memoises every
(set of linearized operations as a bitmask, model state) it has visited.

The model is a map from keys to values (``None`` = key missing).  Histories are
partitioned into independent sub-histories: by key for single-key operations;
multi-key transactions join the keys they touch into one partition checked with
a model over that small key set.

Operations whose outcome is unknown (timed out, connection lost: ``complete is
None``) get a return time of +infinity and a step function that accepts any
output.  Such an operation may thus be placed anywhere after its invocation --
or after every completed operation, which is indistinguishable from "never
happened".  This is the "fork" trick of etcd's robustness model: both worlds
are explored and later observations prune them.  Reads with unknown outcome
have no effect and are dropped.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence, Union

Value = Hashable  # None means "missing"


# --------------------------------------------------------------------------- #
# Operation inputs


@dataclass(frozen=True)
class Get:
    """Linearizable read of one key; output: value or None (missing)."""

    key: str


@dataclass(frozen=True)
class Put:
    """Unconditional write; output ignored."""

    key: str
    value: Value


@dataclass(frozen=True)
class Delete:
    """Delete one key; output: number of keys deleted (0/1) or None to not check."""

    key: str


@dataclass(frozen=True)
class Cas:
    """Compare-and-set: if key == expected (None: key missing) then key = new.

    Output: True if it swapped, False otherwise.
    """

    key: str
    expected: Value
    new: Value


SubOp = Union[Get, Put, Delete]


@dataclass(frozen=True)
class Txn:
    """Multi-key transaction: if all compares hold run ``success`` else ``failure``.

    ``compares`` are (key, expected value) pairs (None: key missing).  Sub-ops run
    in order, each seeing the effects of the previous ones.  Output:
    ``(succeeded, results)`` with one result per executed sub-op (Get: value,
    Put: None (unchecked), Delete: deleted count or None).
    """

    compares: tuple[tuple[str, Value], ...]
    success: tuple[SubOp, ...]
    failure: tuple[SubOp, ...] = ()


Input = Union[Get, Put, Delete, Cas, Txn]


def input_keys(inp: Input) -> tuple[str, ...]:
    """All keys an operation touches."""
    if isinstance(inp, Txn):
        keys = [k for k, _ in inp.compares]
        keys += [o.key for o in inp.success + inp.failure]
        return tuple(dict.fromkeys(keys))
    return (inp.key,)


def is_read_only(inp: Input) -> bool:
    """True if the operation cannot change the state."""
    if isinstance(inp, Get):
        return True
    if isinstance(inp, Txn):
        return all(isinstance(o, Get) for o in inp.success + inp.failure)
    return False


# --------------------------------------------------------------------------- #
# History


@dataclass(frozen=True)
class Op:
    """One client request: who, when it was invoked and completed, what, result.

    ``complete`` None (or +inf) means the outcome is unknown: it may or may not
    have taken effect, at any time after ``invoke``.  ``output`` is then ignored.
    """

    client: int
    invoke: float
    complete: float | None
    input: Input
    output: Any = None
    meta: Any = field(default=None, compare=False)

    @property
    def unknown(self) -> bool:
        return self.complete is None or math.isinf(self.complete)

    def describe(self) -> str:
        end = "?" if self.unknown else f"{self.complete:.6f}"
        out = "unknown" if self.unknown else repr(self.output)
        return (f"client {self.client} [{self.invoke:.6f}, {end}] "
                f"{_describe_input(self.input)} -> {out}")


def _describe_input(inp: Input) -> str:
    if isinstance(inp, Get):
        return f"get({inp.key!r})"
    if isinstance(inp, Put):
        return f"put({inp.key!r}, {inp.value!r})"
    if isinstance(inp, Delete):
        return f"delete({inp.key!r})"
    if isinstance(inp, Cas):
        return f"cas({inp.key!r}, {inp.expected!r} -> {inp.new!r})"
    cmp = " and ".join(f"{k!r}=={v!r}" for k, v in inp.compares) or "true"
    succ = ", ".join(_describe_input(o) for o in inp.success)
    fail = ", ".join(_describe_input(o) for o in inp.failure)
    return f"txn(if {cmp} then [{succ}] else [{fail}])"


# --------------------------------------------------------------------------- #
# Model: state is a tuple of values, one per key of the partition.

_ILLEGAL = object()
StepFn = Callable[[tuple], Any]  # state -> new state or _ILLEGAL


def _compile(op: Op, index: dict[str, int],
             canon: Callable[[Value], Value] = lambda v: v) -> StepFn:
    """Turn an operation and its observed output into a state transition.

    ``canon`` maps written values to their canonical form (see _observed).
    """
    inp, known, out = op.input, not op.unknown, op.output
    if isinstance(inp, Get):
        i = index[inp.key]
        return lambda s: s if s[i] == out else _ILLEGAL
    if isinstance(inp, Put):
        i, v = index[inp.key], canon(inp.value)
        return lambda s: s[:i] + (v,) + s[i + 1:]
    if isinstance(inp, Delete):
        i = index[inp.key]
        check = known and out is not None

        def delete(s: tuple) -> Any:
            if check and int(s[i] is not None) != out:
                return _ILLEGAL
            return s[:i] + (None,) + s[i + 1:]
        return delete
    if isinstance(inp, Cas):
        i, exp, new = index[inp.key], inp.expected, canon(inp.new)

        def cas(s: tuple) -> Any:
            swapped = s[i] == exp
            if known and swapped != bool(out):
                return _ILLEGAL
            return s[:i] + (new,) + s[i + 1:] if swapped else s
        return cas
    if isinstance(inp, Txn):
        compares = [(index[k], v) for k, v in inp.compares]

        def txn(s: tuple) -> Any:
            ok = all(s[i] == v for i, v in compares)
            if known and ok != bool(out[0]):
                return _ILLEGAL
            results = out[1] if known else None
            state = list(s)
            for n, sub in enumerate(inp.success if ok else inp.failure):
                i = index[sub.key]
                res = results[n] if results is not None and n < len(results) else None
                if isinstance(sub, Get):
                    if known and res != state[i]:
                        return _ILLEGAL
                elif isinstance(sub, Put):
                    state[i] = canon(sub.value)
                else:
                    if known and res is not None and int(state[i] is not None) != res:
                        return _ILLEGAL
                    state[i] = None
            return tuple(state)
        return txn
    raise TypeError(f"unsupported input {inp!r}")


class _Unobserved:
    """The one value that stands for every value no operation ever observes."""

    def __repr__(self) -> str:
        return "<unobserved>"


UNOBSERVED = _Unobserved()


def _observed(ops: Iterable[Op]) -> set[Value]:
    """Values that some operation can tell apart from others.

    A value that is never read back, compared against or expected by a CAS
    behaves exactly like any other such value, so all of them are replaced by
    UNOBSERVED: states that differ only in them merge in the memo.
    """
    seen: set[Value] = set()
    for op in ops:
        inp, out = op.input, op.output
        if isinstance(inp, Get) and not op.unknown:
            seen.add(out)
        elif isinstance(inp, Cas):
            seen.add(inp.expected)
        elif isinstance(inp, Txn):
            seen.update(v for _, v in inp.compares)
            if not op.unknown:
                seen.update(r for r, sub in zip(out[1], inp.success if out[0] else inp.failure)
                            if isinstance(sub, Get))
    return seen


def _effect_class(op: Op, j: int, canon: Callable[[Value], Value]) -> Hashable:
    """Unknown ops of one class have the same step function (interchangeable)."""
    inp = op.input
    if isinstance(inp, Put):
        return ("put", inp.key, canon(inp.value))
    if isinstance(inp, Delete):
        return ("delete", inp.key)
    if isinstance(inp, Cas):
        return ("cas", inp.key, inp.expected, canon(inp.new))
    return ("unique", j)


# --------------------------------------------------------------------------- #
# Results


@dataclass
class CheckResult:
    """Outcome of a check.

    ``status`` is "ok" (linearizable), "illegal" (not linearizable) or
    "unknown" (the search timed out).  On "illegal", ``keys`` is the partition
    that failed, ``prefix`` the longest linearization the search found and
    ``failed_op`` the operation that could not be placed after it.
    """

    status: str
    keys: tuple[str, ...] = ()
    prefix: list[Op] = field(default_factory=list)
    failed_op: Op | None = None
    partitions: int = 0
    operations: int = 0
    elapsed: float = 0.0
    unknown_keys: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def explain(self, last: int = 10) -> str:
        """A short human-readable explanation."""
        head = (f"{self.status}: {self.operations} ops in {self.partitions} "
                f"partitions checked in {self.elapsed:.2f}s")
        if self.status == "unknown":
            return head + f"; search timed out on keys {self.unknown_keys}"
        if self.status != "illegal":
            return head
        lines = [head, f"keys {list(self.keys)}: longest linearizable prefix has "
                 f"{len(self.prefix)} ops; last {min(last, len(self.prefix))}:"]
        lines += ["    " + o.describe() for o in self.prefix[-last:]]
        if self.failed_op is not None:
            lines.append("  could not linearize: " + self.failed_op.describe())
        return "\n".join(lines)


# --------------------------------------------------------------------------- #
# Partitioning


def partition(history: Iterable[Op]) -> list[tuple[tuple[str, ...], list[Op]]]:
    """Split a history into independent sub-histories (connected key sets).

    Reads with unknown outcome are dropped: they cannot affect anything.
    """
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    ops = [op for op in history if not (op.unknown and is_read_only(op.input))]
    for op in ops:
        keys = input_keys(op.input)
        root = find(keys[0])
        for k in keys[1:]:
            parent[find(k)] = root
    groups: dict[str, list[Op]] = {}
    members: dict[str, list[str]] = {}
    for k in list(parent):
        members.setdefault(find(k), []).append(k)
    for op in ops:
        groups.setdefault(find(input_keys(op.input)[0]), []).append(op)
    return [(tuple(sorted(members[r])), groups[r]) for r in sorted(groups)]


# --------------------------------------------------------------------------- #
# The search


class _Timeout(Exception):
    pass


def check_partition(keys: Sequence[str], ops: Sequence[Op],
                    initial: dict[str, Value] | None = None,
                    deadline: float | None = None) -> CheckResult:
    """Check one partition (ops touching only ``keys``) with the WGL search.

    Completed ops live in Lowe's linked list of call/return entries.  Ops with
    unknown outcome have no return entry; they sit in a list sorted by
    invocation and are candidates whenever their invocation is not after the
    first pending return.  They are tried after the completed candidates, and
    the memo of failed nodes (completed set, state) -> sets of still-available
    unknown ops is checked by subsumption: a node whose available unknown ops
    are a subset of those of a node that already failed must fail too.  This
    keeps many timed-out writes from blowing up the search.
    """
    index = {k: i for i, k in enumerate(keys)}
    observed = _observed(ops)

    def canon(v: Value) -> Value:
        return v if v is None or v in observed else UNOBSERVED

    init = tuple(canon((initial or {}).get(k)) for k in keys)
    fin = [op for op in ops if not op.unknown]
    unk = sorted((op for op in ops if op.unknown), key=lambda o: o.invoke)
    fin_steps = [_compile(op, index, canon) for op in fin]
    unk_steps = [_compile(op, index, canon) for op in unk]
    unk_invoke = [op.invoke for op in unk]
    unk_class = [_effect_class(op, j, canon) for j, op in enumerate(unk)]

    # Entries 1..2m of completed ops: (time, 0=call/1=return, op); 0 is the head.
    raw = [(op.invoke, 0, i) for i, op in enumerate(fin)]
    raw += [(float(op.complete), 1, i) for i, op in enumerate(fin)]  # type: ignore[arg-type]
    raw.sort(key=lambda e: (e[0], e[1]))
    size = len(raw) + 1
    is_call = [False] * size
    op_of = [-1] * size
    when = [0.0] * size
    match = [0] * size
    pos_of: dict[tuple[int, int], int] = {}
    for pos, (t, kind, i) in enumerate(raw, start=1):
        is_call[pos], op_of[pos], when[pos] = kind == 0, i, t
        pos_of[(kind, i)] = pos
    for i in range(len(fin)):
        match[pos_of[(0, i)]] = pos_of[(1, i)]
    nxt = list(range(1, size + 1))
    nxt[-1] = 0  # 0 ends the list
    prv = list(range(-1, size - 1))

    def lift(pos: int) -> None:
        for p in (pos, match[pos]):
            nxt[prv[p]] = nxt[p]
            if nxt[p]:
                prv[nxt[p]] = prv[p]

    def unlift(pos: int) -> None:
        for p in (match[pos], pos):
            nxt[prv[p]] = p
            if nxt[p]:
                prv[nxt[p]] = p

    failed: dict[tuple[int, Any], list[int]] = {}

    def seen(done: int, st: Any, avail: int) -> bool:
        return any(avail | r == r for r in failed.get((done, st), ()))

    remaining = len(fin)
    state: Any = init
    done = 0                            # bitmask of linearized completed ops
    avail = (1 << len(unk)) - 1         # bitmask of unknown ops not yet placed
    # frame: (is_unknown, entry or unknown index, previous state, limit, blocker)
    stack: list[tuple[bool, int, Any, float, int]] = []
    best: tuple[tuple[int, int], list[tuple[bool, int]], int] | None = None
    phase_unknown, cursor, limit, blocker = False, nxt[0], 0.0, 0
    iterations = 0
    while remaining:
        iterations += 1
        if deadline is not None and iterations % 4096 == 0 and time.monotonic() > deadline:
            raise _Timeout
        if not phase_unknown:
            entry = cursor
            if is_call[entry]:
                i = op_of[entry]
                new_state = fin_steps[i](state)
                bits = done | (1 << i)
                if new_state is not _ILLEGAL and not seen(bits, new_state, avail):
                    stack.append((False, entry, state, 0.0, 0))
                    state, done = new_state, bits
                    remaining -= 1
                    lift(entry)
                    cursor = nxt[0]
                else:
                    cursor = nxt[entry]
                continue
            # First pending return: completed candidates exhausted; try unknown ops.
            phase_unknown, cursor, limit, blocker = True, 0, when[entry], entry
        # Try each class of interchangeable unknown ops once (its earliest
        # available member), and skip placements that change nothing: not
        # placing the op keeps strictly more options open.
        eligible = avail & ((1 << bisect.bisect_right(unk_invoke, limit)) - 1)
        classes: set[Hashable] = set()
        j = -1
        while eligible:
            low = eligible & -eligible
            eligible ^= low
            k = low.bit_length() - 1
            cls = unk_class[k]
            if cls in classes:
                continue
            classes.add(cls)
            if k >= cursor:
                new_state = unk_steps[k](state)
                if (new_state is not _ILLEGAL and new_state != state
                        and not seen(done, new_state, avail & ~low)):
                    j = k
                    break
        if j >= 0:
            stack.append((True, j, state, limit, blocker))
            state, avail = new_state, avail & ~(1 << j)
            phase_unknown, cursor = False, nxt[0]
            continue
        # Dead end: remember it, then backtrack.
        score = (len(fin) - remaining, remaining - len(fin) + len(stack))
        if best is None or score[0] > best[0][0] or (score[0] == best[0][0] and score[1] < best[0][1]):
            best = (score, [(f[0], f[1]) for f in stack], blocker)
        lst = failed.setdefault((done, state), [])
        lst[:] = [r for r in lst if r | avail != avail]  # keep only maximal sets
        lst.append(avail)
        if not stack:
            _, frames, block = best
            while frames and frames[-1][0]:
                frames.pop()  # unknown ops placed last explain nothing
            prefix = [unk[x] if u else fin[op_of[x]] for u, x in frames]
            return CheckResult("illegal", tuple(keys), prefix, fin[op_of[block]],
                               operations=len(ops))
        was_unknown, x, state, limit, blocker = stack.pop()
        if was_unknown:
            avail |= 1 << x
            phase_unknown, cursor = True, x + 1
        else:
            done &= ~(1 << op_of[x])
            remaining += 1
            unlift(x)
            phase_unknown, cursor = False, nxt[x]
    return CheckResult("ok", tuple(keys), operations=len(ops))


def check(history: Iterable[Op], initial: dict[str, Value] | None = None,
          timeout: float | None = None) -> CheckResult:
    """Check a whole history, partition by partition.

    ``initial`` gives values present before the history (default: all missing).
    ``timeout`` (seconds, total) turns an unfinished search into status "unknown".
    """
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    parts = partition(history)
    total = sum(len(ops) for _, ops in parts)
    unknown: list[tuple[str, ...]] = []
    for keys, ops in sorted(parts, key=lambda p: len(p[1])):
        try:
            res = check_partition(keys, ops, initial, deadline)
        except _Timeout:
            unknown.append(keys)
            continue
        if res.status == "illegal":
            res.partitions, res.operations = len(parts), total
            res.elapsed = time.monotonic() - start
            return res
    return CheckResult("unknown" if unknown else "ok", partitions=len(parts),
                       operations=total, elapsed=time.monotonic() - start,
                       unknown_keys=unknown)
