"""Failpoints for fault-injection tests, in the spirit of etcd's gofail.

Enabled only through the environment, read once when this module is first
imported::

    KVSTORE_FAILPOINTS='raftBeforeSave=sleep(200);raftAfterSave=5%panic'

Each ``name=term`` (separated by ``;``) arms one site. A term is
``[P%][N*]action[(arg)]``:

* ``sleep(ms)``  wait that long (``asyncio.sleep`` at sites on the event loop,
                 ``time.sleep`` elsewhere: a slow disk or a slow apply)
* ``panic``      crash: one line on stderr, then ``os._exit(PANIC_EXIT_CODE)``
                 (no cleanup, no flush: like a SIGKILL at that exact point)
* ``error``      raise ``FailpointError`` (the site decides what that means)
* ``drop``       the caller drops what it was about to do (peer messages)
* ``off``        nothing
* ``P%``         fire with probability P (e.g. ``10%panic``, ``0.5%drop``)
* ``N*``         fire at most N times (e.g. ``1*panic``)

``KVSTORE_FAILPOINTS_SEED`` seeds the coin flips (default: random).

Sites (``SITES``): raftBeforeSave / raftAfterSave (around the Raft log save
in raft/node.py), raftBeforeLeaderSend / raftBeforeFollowerSend (before the
messages of one Ready leave a leader / a non-leader; ``drop`` drops them),
raftFsync (inside LmdbStorage's fsync: ``sleep`` is a slow disk, ``error``
a failed fsync), beforeApply / afterApply (around one state-machine apply
batch in kvstore/apply.py).

When the variable is unset, ``ENABLED`` is False and every site costs one
check of that module-level boolean::

    if failpoints.ENABLED:
        failpoints.inject("raftFsync")
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import threading
import time
from dataclasses import dataclass

__all__ = ["ENABLED", "PANIC_EXIT_CODE", "SITES", "FailpointError", "configure", "inject", "ainject", "parse"]

ENV = "KVSTORE_FAILPOINTS"
SEED_ENV = "KVSTORE_FAILPOINTS_SEED"
# A distinctive exit code, so a harness can tell a failpoint crash from a real one.
PANIC_EXIT_CODE = 86
SITES = frozenset({
    "raftBeforeSave", "raftAfterSave",
    "raftBeforeLeaderSend", "raftBeforeFollowerSend",
    "raftFsync",
    "beforeApply", "afterApply",
})
ACTIONS = frozenset({"sleep", "panic", "error", "drop", "off"})

ENABLED = False


class FailpointError(Exception):
    """Raised by a site armed with ``error``."""


@dataclass
class Term:
    action: str
    arg: float = 0.0          # sleep: milliseconds
    probability: float = 1.0  # 0..1
    remaining: int | None = None  # N*: fire at most N more times

    def describe(self) -> str:
        s = f"{self.probability * 100:g}%" if self.probability < 1 else ""
        s += f"{self.remaining}*" if self.remaining is not None else ""
        return s + (f"sleep({self.arg:g})" if self.action == "sleep" else self.action)


_TERM = re.compile(r"^(?:(?P<p>\d+(?:\.\d+)?)%)?(?:(?P<n>\d+)\*)?(?P<action>[a-z]+)(?:\((?P<arg>[^)]*)\))?$")

_active: dict[str, Term] = {}
_rng = random.Random()
_lock = threading.Lock()
fired: dict[str, int] = {}  # site -> times it fired (for tests)


def parse(spec: str) -> dict[str, Term]:
    """``'a=sleep(10);b=5%panic'`` -> {site: Term}. Raises ValueError."""
    out: dict[str, Term] = {}
    for part in spec.replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, term = part.partition("=")
        name, term = name.strip(), term.strip().replace(" ", "")
        if not sep or not name:
            raise ValueError(f"{part!r}: expected name=action")
        if name not in SITES:
            raise ValueError(f"{name!r}: unknown failpoint (known: {', '.join(sorted(SITES))})")
        m = _TERM.match(term)
        if m is None or m.group("action") not in ACTIONS:
            raise ValueError(f"{part!r}: expected [P%][N*]sleep(ms)|panic|error|drop|off")
        action, arg = m.group("action"), m.group("arg")
        t = Term(action)
        if action == "sleep":
            try:
                t.arg = float(arg or "")
            except ValueError:
                raise ValueError(f"{part!r}: sleep needs milliseconds, e.g. sleep(100)") from None
            if t.arg < 0:
                raise ValueError(f"{part!r}: negative sleep")
        elif arg not in (None, ""):
            raise ValueError(f"{part!r}: {action} takes no argument")
        if m.group("p") is not None:
            t.probability = float(m.group("p")) / 100.0
            if not 0.0 <= t.probability <= 1.0:
                raise ValueError(f"{part!r}: probability must be 0..100%")
        if m.group("n") is not None:
            t.remaining = int(m.group("n"))
        out[name] = t
    return out


def configure(spec: str | None, seed: int | None = None) -> None:
    """Arm the failpoints of ``spec`` (None or "" disarms all). Raises ValueError."""
    global ENABLED
    terms = parse(spec) if spec else {}
    with _lock:
        _active.clear()
        _active.update({k: v for k, v in terms.items() if v.action != "off"})
        fired.clear()
        _rng.seed(seed)
        ENABLED = bool(_active)


def _fire(name: str) -> Term | None:
    """The term to execute now at ``name``, or None."""
    t = _active.get(name)
    if t is None:
        return None
    with _lock:
        if t.remaining is not None:
            if t.remaining <= 0:
                return None
        if t.probability < 1.0 and _rng.random() >= t.probability:
            return None
        if t.remaining is not None:
            t.remaining -= 1
        fired[name] = fired.get(name, 0) + 1
    if t.action == "panic":
        _panic(name)
    if t.action == "error":
        raise FailpointError(f"failpoint {name}: injected error")
    return t


def _panic(name: str) -> None:
    try:
        os.write(2, f"failpoint {name}: panic (exit {PANIC_EXIT_CODE})\n".encode())
    finally:
        os._exit(PANIC_EXIT_CODE)


def inject(name: str) -> bool:
    """Run the failpoint ``name`` from synchronous code. Returns True when the
    caller should drop what it was about to do."""
    t = _fire(name)
    if t is None:
        return False
    if t.action == "sleep":
        time.sleep(t.arg / 1000.0)
    return t.action == "drop"


async def ainject(name: str) -> bool:
    """``inject`` for sites on the event loop: sleeping blocks only the caller."""
    t = _fire(name)
    if t is None:
        return False
    if t.action == "sleep":
        await asyncio.sleep(t.arg / 1000.0)
    return t.action == "drop"


def describe() -> str:
    return ";".join(f"{k}={v.describe()}" for k, v in sorted(_active.items()))


def _load_from_env() -> None:
    spec = os.environ.get(ENV, "")
    if not spec.strip():
        return
    seed_s = os.environ.get(SEED_ENV)
    try:
        configure(spec, int(seed_s) if seed_s else None)
    except ValueError as e:
        sys.stderr.write(f"kvstore: error: {ENV}: {e}\n")
        raise SystemExit(2) from None
    if ENABLED:
        sys.stderr.write(f"failpoints armed ({ENV}): {describe()}\n")
        sys.stderr.flush()


_load_from_env()
