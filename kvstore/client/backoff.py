"""Exponential back-off with jitter, and deadlines (pure, clock injectable)."""
from __future__ import annotations

import random
import re
import time
from collections.abc import Callable


class Backoff:
    """Delays ``base * factor**n`` capped at ``cap``, with "equal jitter": the
    delay is uniform in [d/2, d], so a crowd of clients restarting together
    spreads out while each still waits at least half the nominal delay.

    >>> b = Backoff(base=0.1, cap=1.0, rng=random.Random(1))
    >>> [round(b.next(), 3) for _ in range(3)]  # doctest: +SKIP
    """

    def __init__(
        self,
        base: float = 0.05,
        cap: float = 2.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("back-off needs 0 < base <= cap and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    def nominal(self, attempt: int) -> float:
        """The un-jittered delay before retry number ``attempt`` (0-based)."""
        # Avoid float overflow for large attempt counts.
        if attempt > 64:
            return self.cap
        return min(self.cap, self.base * self.factor**attempt)

    def next(self) -> float:
        d = self.nominal(self.attempt)
        self.attempt += 1
        return d / 2 + self._rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0


class Deadline:
    """A point in monotonic time; ``None`` seconds means no deadline."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.at = None if seconds is None else clock() + max(0.0, seconds)

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        return max(0.0, self.at - self._clock())

    def expired(self) -> bool:
        r = self.remaining()
        return r is not None and r <= 0

    def cap(self, seconds: float | None) -> float | None:
        """``seconds`` limited to what is left (either may be None = unlimited)."""
        r = self.remaining()
        if r is None:
            return seconds
        if seconds is None:
            return r
        return min(r, seconds)


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Go's duration syntax ('1.5s', '200ms', '1h30m') or a bare number of
    seconds → seconds."""
    t = text.strip().lower()
    try:
        v = float(t)
    except ValueError:
        pos, v = 0, 0.0
        for m in _PART.finditer(t):
            if m.start() != pos:
                break
            v += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 2s, 1m, 1h30m)") from None
    if v < 0 or v != v or v == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be a finite, non-negative number")
    return v
