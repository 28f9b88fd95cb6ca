"""Unit and property tests of the linearizability checker."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings, strategies as st

from tests.faults.linearizability import (
    Cas, Delete, Get, Input, Op, Put, Txn, check, partition,
)

U = None  # unknown completion


def op(client: int, start: float, end: float | None, inp, out=None) -> Op:
    return Op(client, start, end, inp, out)


# ----------------------------------------------------------------- hand-made


def test_empty_history_is_linearizable() -> None:
    assert check([]).ok


def test_sequential_put_get() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(0, 2, 3, Get("x"), 1),
         op(1, 4, 5, Get("y"), None)]
    res = check(h)
    assert res.ok and res.partitions == 2


def test_stale_read_is_rejected() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(0, 2, 3, Put("x", 2)),
         op(1, 4, 5, Get("x"), 1)]
    res = check(h)
    assert not res.ok and res.status == "illegal"
    assert res.keys == ("x",)
    assert res.failed_op is not None and res.failed_op.input == Get("x")
    assert [o.input for o in res.prefix] == [Put("x", 1), Put("x", 2)]
    assert "could not linearize" in res.explain()


def test_lost_write_is_rejected() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(1, 2, 3, Get("x"), None)]
    assert not check(h).ok


def test_read_of_initial_value() -> None:
    h = [op(0, 0, 1, Get("x"), "init")]
    assert not check(h).ok
    assert check(h, initial={"x": "init"}).ok


def test_concurrent_read_may_see_old_or_new() -> None:
    h = [op(0, 0, 10, Put("x", 1)),
         op(1, 1, 2, Get("x"), None),
         op(2, 3, 4, Get("x"), 1),
         op(1, 5, 6, Get("x"), 1)]
    assert check(h).ok


def test_new_then_old_read_is_rejected() -> None:
    # Both reads overlap the write, but once a read saw 1 a later one can't see None.
    h = [op(0, 0, 10, Put("x", 1)),
         op(1, 1, 2, Get("x"), 1),
         op(2, 3, 4, Get("x"), None)]
    assert not check(h).ok


def test_overlapping_writes_either_order() -> None:
    h = [op(0, 0, 5, Put("x", 1)), op(1, 1, 6, Put("x", 2)),
         op(2, 7, 8, Get("x"), 1)]
    assert check(h).ok
    h2 = h + [op(2, 9, 10, Get("x"), 2)]
    assert not check(h2).ok


def test_equal_timestamps_count_as_concurrent() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(1, 1, 2, Get("x"), None)]
    assert check(h).ok


def test_unknown_write_that_happened() -> None:
    h = [op(0, 0, U, Put("x", 1)), op(1, 5, 6, Get("x"), 1)]
    assert check(h).ok


def test_unknown_write_that_never_happened() -> None:
    h = [op(0, 0, U, Put("x", 1)), op(1, 5, 6, Get("x"), None),
         op(1, 7, 8, Get("x"), None)]
    assert check(h).ok


def test_unknown_write_may_take_effect_late() -> None:
    h = [op(0, 0, U, Put("x", 1)), op(1, 5, 6, Get("x"), None),
         op(1, 7, 8, Get("x"), 1)]
    assert check(h).ok
    assert check([o if o.complete is not None else
                  Op(0, 0, math.inf, Put("x", 1)) for o in h]).ok


def test_unknown_write_cannot_be_undone() -> None:
    h = [op(0, 0, U, Put("x", 1)), op(1, 5, 6, Get("x"), 1),
         op(1, 7, 8, Get("x"), None)]
    assert not check(h).ok


def test_unknown_write_cannot_precede_its_invocation() -> None:
    h = [op(1, 0, 1, Get("x"), 1), op(0, 2, U, Put("x", 1))]
    assert not check(h).ok


def test_unknown_reads_are_ignored() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(1, 2, U, Get("x"), "garbage")]
    assert check(h).ok and check(h).operations == 1


def test_cas_sequence() -> None:
    h = [op(0, 0, 1, Put("x", 0)),
         op(0, 2, 3, Cas("x", 0, 1), True),
         op(1, 4, 5, Cas("x", 0, 2), False),
         op(1, 6, 7, Get("x"), 1)]
    assert check(h).ok


def test_two_concurrent_cas_cannot_both_win() -> None:
    h = [op(0, 0, 1, Put("x", 0)),
         op(1, 2, 5, Cas("x", 0, 1), True),
         op(2, 2, 5, Cas("x", 0, 2), True)]
    assert not check(h).ok


def test_cas_failure_must_be_justified() -> None:
    h = [op(0, 0, 1, Put("x", 0)), op(1, 2, 3, Cas("x", 0, 1), False)]
    assert not check(h).ok


def test_cas_on_missing_key() -> None:
    h = [op(0, 0, 1, Cas("x", None, 1), True), op(1, 2, 3, Cas("x", None, 2), False),
         op(1, 4, 5, Get("x"), 1)]
    assert check(h).ok


def test_unknown_cas_forks() -> None:
    base = [op(0, 0, 1, Put("x", 0)), op(1, 2, U, Cas("x", 0, 1))]
    assert check(base + [op(2, 3, 4, Get("x"), 1)]).ok
    assert check(base + [op(2, 3, 4, Get("x"), 0)]).ok
    assert not check(base + [op(2, 3, 4, Get("x"), 2)]).ok


def test_delete() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(0, 2, 3, Delete("x"), 1),
         op(1, 4, 5, Get("x"), None), op(1, 6, 7, Delete("x"), 0)]
    assert check(h).ok
    assert not check(h[:1] + [op(0, 2, 3, Delete("x"), 0)]).ok
    assert not check([op(0, 0, 1, Delete("x"), 1)]).ok


def test_multi_key_txn_partition_joins_keys() -> None:
    h = [op(0, 0, 1, Put("x", 1)), op(1, 0, 1, Put("y", 1)),
         op(2, 0, 1, Put("z", 1)),
         op(3, 2, 3, Txn((), (Get("x"), Get("y"))), (True, (1, 1)))]
    parts = partition(h)
    assert [keys for keys, _ in parts] == [("x", "y"), ("z",)]
    assert check(h).ok


def test_multi_key_txn_atomic_snapshot() -> None:
    # x is written before y; a snapshot with y's new value but x's old is impossible.
    h = [op(0, 0, 1, Put("x", 1)), op(0, 2, 3, Put("y", 1)),
         op(1, 0, 10, Txn((), (Get("x"), Get("y"))), (True, (None, 1)))]
    res = check(h)
    assert not res.ok and res.keys == ("x", "y")
    ok = h[:2] + [op(1, 0, 10, Txn((), (Get("x"), Get("y"))), (True, (1, None)))]
    assert check(ok).ok


def test_multi_key_txn_compare_and_writes() -> None:
    t = Txn((("x", 1), ("y", None)), (Put("y", 2), Delete("x")), (Get("x"), Get("y")))
    h = [op(0, 0, 1, Put("x", 1)), op(1, 2, 3, t, (True, (None, 1))),
         op(0, 4, 5, Get("x"), None), op(0, 6, 7, Get("y"), 2),
         op(1, 8, 9, t, (False, (None, 2)))]
    assert check(h).ok
    bad = h[:1] + [op(1, 2, 3, t, (False, (1, None)))]
    assert not check(bad).ok


def test_unknown_txn_forks() -> None:
    t = Txn((("x", None),), (Put("x", 1), Put("y", 1)))
    h = [op(0, 0, U, t), op(1, 1, 2, Get("y"), 1), op(1, 3, 4, Get("x"), 1)]
    assert check(h).ok
    h2 = [op(0, 0, U, t), op(1, 1, 2, Get("y"), 1), op(1, 3, 4, Get("x"), None)]
    assert not check(h2).ok


def test_timeout_gives_unknown() -> None:
    # Many concurrent unknown writes and an impossible read: exponential search.
    h = [op(i, 0, U, Put("x", i)) for i in range(40)]
    h += [op(i, 1, 100, Put("x", 100 + i)) for i in range(12)]
    h += [op(99, 101, 102, Get("x"), "never written")]
    res = check(h, timeout=0.3)
    assert not res.ok
    assert res.status in ("unknown", "illegal")


# ----------------------------------------------------------------- properties

KEYS = ("a", "b", "c")

step_strategy = st.tuples(
    st.sampled_from(["get", "put", "cas", "delete", "txn"]),
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),
    st.booleans(),                                   # cas: expect the current value?
    st.floats(min_value=0, max_value=3),             # how early it is invoked
    st.floats(min_value=0, max_value=3),             # how late it completes
    st.sampled_from(["ok", "ok", "ok", "lost", "applied"]),  # outcome known?
)


def simulate(steps: list[tuple]) -> list[Op]:
    """Run ops one at a time against a dict; give each op an interval around
    its linearization point (point i), so they overlap at random."""
    state: dict[str, object] = {}
    history: list[Op] = []
    values = itertools.count(1)
    for i, (kind, key, key2, expect_current, early, late, outcome) in enumerate(steps):
        point = float(i)
        inp: Input
        out: object
        if kind == "get":
            inp, out = Get(key), state.get(key)
            outcome = "ok"
        elif kind == "put":
            inp, out = Put(key, next(values)), None
        elif kind == "cas":
            expected = state.get(key) if expect_current else -1
            inp = Cas(key, expected, next(values))
            out = state.get(key) == expected
        elif kind == "delete":
            inp, out = Delete(key), int(key in state)
        else:
            inp = Txn(((key, state.get(key)),), (Get(key2), Put(key, next(values))),
                      (Get(key2),))
            out = (True, (state.get(key2), None))
        applies = outcome != "lost"
        if applies:
            if isinstance(inp, Put):
                state[key] = inp.value
            elif isinstance(inp, Cas) and out:
                state[key] = inp.new
            elif isinstance(inp, Delete):
                state.pop(key, None)
            elif isinstance(inp, Txn):
                state[key] = inp.success[1].value  # type: ignore[union-attr]
        complete = point + late if outcome == "ok" else None
        if outcome == "lost" and kind == "cas":
            complete = None
        history.append(Op(i % 4, point - early, complete, inp, out))
    return history


@settings(max_examples=150, deadline=None)
@given(st.lists(step_strategy, max_size=40))
def test_sequential_simulation_is_accepted(steps: list[tuple]) -> None:
    res = check(simulate(steps))
    assert res.ok, res.explain()


@settings(max_examples=150, deadline=None)
@given(st.lists(step_strategy, min_size=1, max_size=30), st.data())
def test_impossible_read_is_rejected(steps: list[tuple], data: st.DataObject) -> None:
    history = simulate(steps)
    end = max((o.complete or o.invoke) for o in history) + 10
    key = data.draw(st.sampled_from(KEYS))
    if data.draw(st.booleans()):
        # A read of a value that was never written.
        read = Op(7, end, end + 1, Get(key), "never written")
        history.append(read)
    else:
        # A read that returns the value of a write invoked after the read completed.
        reads = [i for i, o in enumerate(history)
                 if isinstance(o.input, Get) and not o.unknown]
        if reads:
            i = data.draw(st.sampled_from(reads))
            r = history[i]
        else:
            r = Op(7, end, end + 1, Get(key), None)
            history.append(r)
            i = len(history) - 1
        assert r.complete is not None and isinstance(r.input, Get)
        w = Op(8, r.complete + 100, r.complete + 101, Put(r.input.key, "from the future"))
        history[i] = Op(r.client, r.invoke, r.complete, r.input, "from the future")
        history.append(w)
    res = check(history)
    assert res.status == "illegal"
    assert res.failed_op is not None


# ----------------------------------------------------------------- brute force


def _apply(state: dict, inp, out, known: bool):  # type: ignore[no-untyped-def]
    """Reference semantics: new state, or None if the output is impossible."""
    s = dict(state)
    if isinstance(inp, Get):
        return s if s.get(inp.key) == out else None
    if isinstance(inp, Put):
        s[inp.key] = inp.value
        return s
    if isinstance(inp, Delete):
        if known and out is not None and out != int(s.get(inp.key) is not None):
            return None
        s.pop(inp.key, None)
        return s
    if isinstance(inp, Cas):
        swapped = s.get(inp.key) == inp.expected
        if known and swapped != out:
            return None
        if swapped:
            s[inp.key] = inp.new
        return s
    ok = all(s.get(k) == v for k, v in inp.compares)
    if known and ok != out[0]:
        return None
    for n, sub in enumerate(inp.success if ok else inp.failure):
        if isinstance(sub, Get):
            if known and out[1][n] != s.get(sub.key):
                return None
        elif isinstance(sub, Put):
            s[sub.key] = sub.value
        else:
            s.pop(sub.key, None)
    return s


def brute_force(history: list[Op]) -> bool:
    """Try every subset of unknown ops and every real-time-respecting order."""
    fin = [o for o in history if not o.unknown]
    unk = [o for o in history if o.unknown and not isinstance(o.input, Get)]

    def search(remaining: list[Op], state: dict) -> bool:
        if not any(not o.unknown for o in remaining):
            return True
        for o in remaining:
            # o may go next only if no other remaining op completed before o was invoked
            if any(p is not o and not p.unknown and p.complete < o.invoke for p in remaining):  # type: ignore[operator]
                continue
            nxt = _apply(state, o.input, o.output, not o.unknown)
            if nxt is not None and search([p for p in remaining if p is not o], nxt):
                return True
        return False

    for r in range(len(unk) + 1):
        for chosen in itertools.combinations(unk, r):
            if search(fin + list(chosen), {}):
                return True
    return False


small_value = st.sampled_from([None, 1, 2, 3])
small_key = st.sampled_from(["x", "y"])
small_input = st.one_of(
    st.builds(Get, small_key),
    st.builds(Put, small_key, st.sampled_from([1, 2, 3])),
    st.builds(Delete, small_key),
    st.builds(Cas, small_key, small_value, st.sampled_from([1, 2, 3])),
    st.builds(lambda a, b, v: Txn(((a, v),), (Get(b), Put(a, 3)), (Get(a),)), small_key, small_key, small_value),
)


def _output(inp, draw_value, draw_bool, draw_count):  # type: ignore[no-untyped-def]
    if isinstance(inp, Get):
        return draw_value
    if isinstance(inp, Delete):
        return draw_count
    if isinstance(inp, Cas):
        return draw_bool
    if isinstance(inp, Txn):
        return (draw_bool, (draw_value, None) if draw_bool else (draw_value,))
    return None


small_op = st.builds(
    lambda client, start, length, unknown, inp, v, b, c: Op(
        client, start, None if unknown else start + length, inp, _output(inp, v, b, c)),
    st.integers(0, 3), st.integers(0, 6), st.integers(0, 4),
    st.sampled_from([False, False, False, True]), small_input,
    small_value, st.booleans(), st.integers(0, 1),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(small_op, max_size=7))
def test_agrees_with_brute_force(history: list[Op]) -> None:
    assert check(history).ok == brute_force(history)
