"""Output helpers for kvctl: aligned tables, JSON, a tiny progress bar."""
from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Sequence
from typing import IO, Any


def text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def jbytes(b: bytes) -> str:
    """Bytes for JSON: the UTF-8 text, or "base64:<...>" when not UTF-8."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(b).decode()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: IO[str] | None = None) -> None:
    """etcdctl-style boxed table with aligned columns."""
    out = out or sys.stdout
    cells = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out.write(sep + "\n")
    out.write("|" + "|".join(f" {h.upper():^{w}} " for h, w in zip(headers, widths)) + "|\n")
    out.write(sep + "\n")
    for r in cells:
        out.write("|" + "|".join(f" {c:>{w}} " if _numeric(c) else f" {c:<{w}} " for c, w in zip(r, widths)) + "|\n")
    out.write(sep + "\n")


def _numeric(s: str) -> bool:
    return s.isdigit()


def dump_json(obj: Any, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(obj, sort_keys=False) + "\n")
    out.flush()


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


class Progress:
    """A one-line progress bar on a terminal (stderr); silent otherwise.

    ``update(done, total)`` (total 0 = unknown: a moving marker), ``finish()``.
    Redraws at most 10 times a second."""

    WIDTH = 30

    def __init__(self, label: str, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._tick = 0
        self._drawn = False
        self.start = time.monotonic()

    def render(self, done: int, total: int) -> str:
        if total > 0:
            frac = min(1.0, done / total)
            fill = int(frac * self.WIDTH)
            bar = "#" * fill + "." * (self.WIDTH - fill)
            return f"{self.label} [{bar}] {frac * 100:5.1f}% {human_size(done)}/{human_size(total)}"
        pos = self._tick % self.WIDTH
        bar = "." * pos + "#" + "." * (self.WIDTH - pos - 1)
        tail = f" {human_size(done)}" if done else ""
        return f"{self.label} [{bar}] {time.monotonic() - self.start:4.1f}s{tail}"

    def update(self, done: int, total: int = 0, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._tick += 1
        self.stream.write("\r" + self.render(done, total) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self, done: int = 0, total: int = 0) -> None:
        if not self.enabled:
            return
        if total:
            self.update(done, total, force=True)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
