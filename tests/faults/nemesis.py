"""Nemeses: faults injected into a running Cluster, each undone before the next.

The failpoint nemeses (``FAILPOINT_FAULTS``) restart a node with server
failpoints armed (raft/failpoints.py, $KVSTORE_FAILPOINTS) for what signals
cannot reach: a slow disk, a crash right before or after persisting or
applying, lost peer messages. Undoing them restarts the node without.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from raft.failpoints import PANIC_EXIT_CODE
from tests.faults.cluster import Cluster, Node

# name -> (inject, undo).  inject returns a description and an undo callable;
# undo may return a note (str) for the log, and raises if it found a problem.
Fault = Callable[[Cluster, random.Random], tuple[str, Callable[[], object]]]


def _leader_or_random(c: Cluster, rng: random.Random) -> Node:
    return c.leader(timeout=5) or rng.choice([n for n in c.nodes if n.member])


def kill_leader(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    n = _leader_or_random(c, rng)
    c.kill(n)
    return f"kill leader {n.name}", lambda: c.restart(n)


def kill_random(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    n = rng.choice([n for n in c.nodes if n.member])
    c.kill(n)
    return f"kill {n.name}", lambda: c.restart(n)


def pause_node(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    members = [n for n in c.nodes if n.member]
    n = _leader_or_random(c, rng) if rng.random() < 0.5 else rng.choice(members)
    c.pause(n)
    return f"pause {n.name}", lambda: c.resume(n)


def _minority(c: Cluster) -> int:
    return (len([n for n in c.nodes if n.member]) - 1) // 2


def partition_minority(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    """Cut a random minority of followers off from the rest."""
    lead = c.leader(timeout=5)
    followers = [n for n in c.nodes if n.member and n is not lead]
    group = rng.sample(followers, _minority(c))
    c.partition(group)
    return f"partition minority {[n.name for n in group]}", c.heal


def isolate_leader(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    n = _leader_or_random(c, rng)
    c.isolate(n)
    return f"isolate leader {n.name}", c.heal


def split_majority_minority(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    """Majority/minority split with the current leader on the minority side."""
    lead = _leader_or_random(c, rng)
    others = [n for n in c.nodes if n.member and n is not lead]
    minority = [lead] + rng.sample(others, _minority(c) - 1)
    majority = [n for n in c.nodes if n.member and n not in minority]
    c.partition(minority, majority)
    return f"split {[n.name for n in minority]} | {[n.name for n in majority]}", c.heal


def member_change(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], None]]:
    """Remove a follower from the membership; undo adds it back with an empty data dir."""
    lead = c.leader(timeout=5)
    n = rng.choice([x for x in c.nodes if x.member and x is not lead])
    c.member_remove(n)
    return f"remove member {n.name} (then add it back)", lambda: c.member_add(n)


# ---- failpoint nemeses -------------------------------------------------------

CRASH_SITES = ("raftBeforeSave", "raftAfterSave", "beforeApply", "afterApply")


def _restart_with(c: Cluster, n: Node, failpoints: str) -> None:
    c.kill(n)
    c.restart(n, failpoints=failpoints)


def _restart_clean(c: Cluster, n: Node) -> None:
    """Restart without failpoints (SIGTERM first: the graceful path too)."""
    c.stop(n, timeout=5)
    c.restart(n, failpoints="")


def _settle_as_leader(c: Cluster, n: Node, want_leader: bool) -> str:
    """Wait (best effort) until ``n`` is healthy again, then hand it leadership."""
    try:
        c.wait_healthy([n], timeout=30)
    except Exception:
        return ", not healthy yet"
    if want_leader and not c.move_leader(n):
        return ", leadership not moved to it"
    return ", now leader" if want_leader else ""


def slow_disk(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], object]]:
    """Restart the leader with a slow log save and fsync, and make it leader again."""
    n = _leader_or_random(c, rng)
    ms = rng.choice([50, 100, 200, 400])
    spec = f"raftBeforeSave=sleep({ms});raftFsync=sleep({ms // 4})"
    _restart_with(c, n, spec)
    how = _settle_as_leader(c, n, True)
    return f"slow disk on leader {n.name} ({spec}{how})", lambda: _restart_clean(c, n)


def drop_messages(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], object]]:
    """Restart a node (the leader half the time) that loses a share of its outgoing peer messages."""
    lead = rng.random() < 0.5
    n = _leader_or_random(c, rng) if lead else rng.choice([x for x in c.nodes if x.member])
    pct = rng.choice([10, 30, 60])
    spec = f"raftBeforeLeaderSend={pct}%drop;raftBeforeFollowerSend={pct}%drop"
    _restart_with(c, n, spec)
    how = _settle_as_leader(c, n, lead)
    return f"{n.name} drops {pct}% of its peer messages ({spec}{how})", lambda: _restart_clean(c, n)


class _CrashRestarter(threading.Thread):
    """Restarts a node (failpoints still armed) each time it exits; counts the
    failpoint crashes and remembers any other exit status (a real crash)."""

    def __init__(self, c: Cluster, n: Node) -> None:
        super().__init__(daemon=True, name=f"crash-restarter-{n.name}")
        self.c, self.n = c, n
        self.crashes = 0
        self.bad_exits: list[int] = []
        self._stop_ev = threading.Event()
        self._crashed = threading.Event()

    def run(self) -> None:
        while not self._stop_ev.wait(0.1):
            code = self.c.exit_code(self.n)
            if code is None or self.n.alive:
                continue
            if code == PANIC_EXIT_CODE:
                self.crashes += 1
                self._crashed.set()
            else:
                self.bad_exits.append(code)
            try:
                self.c.restart(self.n)
            except Exception as e:
                self.bad_exits.append(-1)
                self.c.log(f"restart of {self.n.name} failed: {e!r}")

    def wait_crash(self, timeout: float) -> bool:
        return self._crashed.wait(timeout)

    def finish(self) -> None:
        self._stop_ev.set()
        self.join(30)


def crash_persist(c: Cluster, rng: random.Random) -> tuple[str, Callable[[], object]]:
    """Restart a node (the leader half the time) that crashes with some
    probability right before/after it persists or applies a batch, and keep
    restarting it while the load goes on."""
    members = [x for x in c.nodes if x.member]
    n = _leader_or_random(c, rng) if rng.random() < 0.5 else rng.choice(members)
    site = rng.choice(CRASH_SITES)
    spec = f"{site}={rng.choice([2, 5, 10])}%panic"
    _restart_with(c, n, spec)
    keeper = _CrashRestarter(c, n)
    keeper.start()
    keeper.wait_crash(20)  # start-up is slow on a busy machine: hold until the first crash

    def undo() -> str:
        keeper.finish()
        c.kill(n)
        c.restart(n, failpoints="")
        if keeper.bad_exits:
            raise RuntimeError(f"{n.name} exited with status {keeper.bad_exits} (not a failpoint crash); "
                               f"see logs/{n.name}.log")
        return f"{n.name} crashed {keeper.crashes} time(s) at {site}"

    return f"crash loop on {n.name} ({spec})", undo


FAILPOINT_FAULTS = ("slow-disk", "crash-persist", "drop-messages")

FAULTS: dict[str, Fault] = {
    "kill-leader": kill_leader,
    "kill-random": kill_random,
    "pause": pause_node,
    "partition-minority": partition_minority,
    "isolate-leader": isolate_leader,
    "split": split_majority_minority,
    "member-change": member_change,
    "slow-disk": slow_disk,
    "crash-persist": crash_persist,
    "drop-messages": drop_messages,
}


def parse_nemeses(spec: str, failpoints: bool = True) -> list[str]:
    """'all', 'none' or a comma-separated list of FAULTS names. Without
    ``failpoints`` (a system that has none), 'all' leaves FAILPOINT_FAULTS out
    and naming one is an error."""
    if spec == "all":
        return [f for f in FAULTS if failpoints or f not in FAILPOINT_FAULTS]
    if spec in ("", "none"):
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in FAULTS]
    if bad:
        raise ValueError(f"unknown nemesis {bad}; choose from {sorted(FAULTS)}")
    if not failpoints and any(n in FAILPOINT_FAULTS for n in names):
        raise ValueError(f"{[n for n in names if n in FAILPOINT_FAULTS]} need server failpoints, "
                         "which this system does not have")
    return names


@dataclass
class Nemesis:
    """Runs faults in a thread: inject, hold, undo, let the cluster recover, repeat."""

    cluster: Cluster
    faults: list[str]
    rng: random.Random
    hold: tuple[float, float] = (2.0, 5.0)
    quiet: tuple[float, float] = (1.0, 3.0)
    log: Callable[[str], None] = print
    done: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)  # descriptions of the faults injected

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="nemesis")
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._t0 = time.monotonic()
        if self.faults:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(120)

    def _run(self) -> None:
        order: list[str] = []
        while not self._stop.is_set():
            if not order:  # every fault once per round, in random order
                order = self.faults[:]
                self.rng.shuffle(order)
            name = order.pop()
            undo: Callable[[], object] | None = None
            try:
                what, undo = FAULTS[name](self.cluster, self.rng)
                self.injected.append(what)
                self._note(what)
                self._stop.wait(self.rng.uniform(*self.hold))
            except Exception as e:  # a fault that cannot be applied now is skipped
                self.errors.append(f"{name}: {e!r}")
                self._note(f"{name} failed: {e!r}")
            finally:
                self.recover(undo)
            self._stop.wait(self.rng.uniform(*self.quiet))

    def recover(self, undo: Callable[[], object] | None = None) -> None:
        """Undo a fault, then heal everything and wait until members are healthy."""
        c = self.cluster
        try:
            if undo is not None:
                note = undo()
                if isinstance(note, str):
                    self._note(note)
        except Exception as e:
            self.errors.append(f"undo: {e!r}")
            self._note(f"undo failed: {e!r}")
        try:
            c.heal()
            for n in c.nodes:
                if n.paused:
                    c.resume(n)
                if n.failpoints:  # an inject that failed half-way: disarm
                    if n.alive:
                        c.stop(n, timeout=5)
                    n.failpoints = ""
                if n.member and not n.alive:
                    c.restart(n)
            c.wait_healthy(timeout=60)
            self._note("healthy")
        except Exception as e:
            self.errors.append(f"recover: {e!r}")
            self._note(f"recover failed: {e!r}")

    def _note(self, what: str) -> None:
        t = time.monotonic() - self._t0
        self.done.append((t, what))
        self.log(f"[{t:6.1f}s] nemesis: {what}")
