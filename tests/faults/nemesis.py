"""Nemeses: faults injected into a running Cluster, each undone before the next."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tests.faults.cluster import Cluster, Node

# name -> (inject, undo).  inject returns a description and an undo callable.
Fault = Callable[[Cluster, random.Random], tuple[str, Callable[[], None]]]


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


FAULTS: dict[str, Fault] = {
    "kill-leader": kill_leader,
    "kill-random": kill_random,
    "pause": pause_node,
    "partition-minority": partition_minority,
    "isolate-leader": isolate_leader,
    "split": split_majority_minority,
    "member-change": member_change,
}


def parse_nemeses(spec: str) -> list[str]:
    """'all', 'none' or a comma-separated list of FAULTS names."""
    if spec == "all":
        return list(FAULTS)
    if spec in ("", "none"):
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in FAULTS]
    if bad:
        raise ValueError(f"unknown nemesis {bad}; choose from {sorted(FAULTS)}")
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
            undo: Callable[[], None] | None = None
            try:
                what, undo = FAULTS[name](self.cluster, self.rng)
                self._note(what)
                self._stop.wait(self.rng.uniform(*self.hold))
            except Exception as e:  # a fault that cannot be applied now is skipped
                self.errors.append(f"{name}: {e!r}")
                self._note(f"{name} failed: {e!r}")
            finally:
                self.recover(undo)
            self._stop.wait(self.rng.uniform(*self.quiet))

    def recover(self, undo: Callable[[], None] | None = None) -> None:
        """Undo a fault, then heal everything and wait until members are healthy."""
        c = self.cluster
        try:
            if undo is not None:
                undo()
        except Exception as e:
            self.errors.append(f"undo: {e!r}")
        try:
            c.heal()
            for n in c.nodes:
                if n.paused:
                    c.resume(n)
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
