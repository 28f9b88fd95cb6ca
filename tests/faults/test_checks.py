"""The end-of-run checks catch what they claim to (synthetic histories, no cluster)."""

from __future__ import annotations

import time
from concurrent import futures

import grpc

from tests.faults.workload import (
    Conn, Record, WatchEvent, Watcher, check_durability, check_linearizable, check_watchers,
)


def rec(kind: str, inp: dict, out=None, rev: int | None = None, t: float = 0.0,  # type: ignore[no-untyped-def]
        status: str = "ok", mod: int | None = None) -> Record:
    return Record(0, 0, "n1", kind, inp, t, t + 0.5, status, out, rev, mod)


RECORDS = [
    rec("put", {"key": "a", "value": "v1"}, rev=2, t=0),
    rec("cas", {"key": "a", "expected": "v1", "new": "v2"}, True, rev=3, t=1),
    rec("txn", {"reads": ["m0", "m1"], "writes": [("m0", "v3"), ("m1", "v4")]}, [None, None], rev=4, t=2),
    rec("delete", {"key": "a"}, 1, rev=5, t=3),
    rec("get", {"key": "m0"}, "v3", rev=5, t=4, mod=4),
]
EVENTS = [WatchEvent(2, "a", "PUT", "v1"), WatchEvent(3, "a", "PUT", "v2"),
          WatchEvent(4, "m0", "PUT", "v3"), WatchEvent(4, "m1", "PUT", "v4"),
          WatchEvent(5, "a", "DELETE", None)]
FINAL = {"m0": "v3", "m1": "v4"}


def test_consistent_history_passes() -> None:
    assert check_durability(RECORDS, EVENTS, 2, 5, FINAL) == []
    assert check_linearizable(RECORDS, 10).ok


def test_lost_acknowledged_write() -> None:
    events = [e for e in EVENTS if e.revision != 3]
    problems = check_durability(RECORDS, events, 2, 5, FINAL)
    assert any("acknowledged write lost: revision 3" in p for p in problems)
    assert any("no event" in p for p in problems)


def test_read_of_unknown_write_and_wrong_final_state() -> None:
    records = RECORDS + [rec("get", {"key": "m1"}, "ghost", rev=5, t=5, mod=4)]
    problems = check_durability(records, EVENTS, 2, 5, {"m0": "v3"})
    assert any("matches no write" in p for p in problems)
    assert any("final values" in p for p in problems)


def test_watchers_must_match_reference() -> None:
    def watcher(events: list[WatchEvent]) -> Watcher:
        w = Watcher(1, lambda: [], 2)
        w.events = events
        return w

    assert check_watchers([watcher(list(EVENTS))], EVENTS, 5) == []
    dup = EVENTS[:3] + EVENTS[2:]
    assert check_watchers([watcher(dup)], EVENTS, 5)
    swapped = [EVENTS[1], EVENTS[0]] + EVENTS[2:]
    assert check_watchers([watcher(swapped)], EVENTS, 5)
    assert check_watchers([watcher(EVENTS[:-1])], EVENTS, 5)


def test_unknown_ops_may_or_may_not_count() -> None:
    records = RECORDS + [rec("put", {"key": "a", "value": "v9"}, status="unknown", t=6)]
    assert check_linearizable(records, 10).ok
    # An acknowledged read of a value nobody wrote is not linearizable.
    records.append(rec("get", {"key": "a"}, "nobody", rev=6, t=9))
    assert check_linearizable(records, 10).status == "illegal"


def test_connection_is_used_again_after_its_server_restarts() -> None:
    """A member restarted at the same address is reachable again: a channel
    whose server went away turns IDLE, and the watchers and clients only use
    ready connections (a watcher once waited on three IDLE channels forever)."""
    def serve(port: int) -> tuple[grpc.Server, int]:
        s = grpc.server(futures.ThreadPoolExecutor(1))
        bound = s.add_insecure_port(f"127.0.0.1:{port}")
        s.start()
        return s, bound

    server, port = serve(0)
    conn = Conn(f"127.0.0.1:{port}")
    try:
        assert conn.ready(5)
        server.stop(0).wait()
        deadline = time.monotonic() + 10
        while conn._ready.is_set() and time.monotonic() < deadline:  # the loss is reported asynchronously
            time.sleep(0.05)
        assert not conn._ready.is_set()  # noticed: the channel is no longer READY (it turns IDLE)
        server, _ = serve(port)
        assert conn.ready(5)
    finally:
        server.stop(0)
        conn.close()
