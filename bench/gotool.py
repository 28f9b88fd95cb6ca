"""Run etcd's Go `benchmark` tool and parse its summary text."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_BINARY = BENCH_DIR / ".build" / "bin" / "benchmark"


def find_binary() -> Path | None:
    """The built tool (bench/.build/bin/benchmark, or $ETCD_BENCHMARK), if present."""
    env = os.environ.get("ETCD_BENCHMARK")
    for cand in ([Path(env)] if env else []) + [DEFAULT_BINARY]:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@dataclass
class Summary:
    """One "Summary:" block of the tool's output. Times are in seconds."""

    total: float | None = None
    slowest: float | None = None
    fastest: float | None = None
    average: float | None = None
    stddev: float | None = None
    rps: float | None = None
    percentiles: dict[float, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    title: str = ""

    @property
    def count(self) -> int | None:
        """Successful requests, from Requests/sec × Total."""
        if self.rps is None or self.total is None:
            return None
        return round(self.rps * self.total)


_FIELD_RE = re.compile(r"^\s*(Total|Slowest|Fastest|Average|Stddev):\s*([0-9.eE+-]+)\s*secs", re.M)
_RPS_RE = re.compile(r"^\s*Requests/sec:\s*([0-9.eE+-]+|NaN|\+Inf)", re.M)
_PCT_RE = re.compile(r"^\s*([0-9.]+)% in ([0-9.eE+-]+) secs", re.M)
_ERR_RE = re.compile(r"^\s*\[(\d+)\]\s*(.*)$")


def _clean(text: str) -> str:
    """Drop progress-bar redraws (carriage returns) and ANSI escapes."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = []
    for line in text.split("\n"):
        lines.append(line.split("\r")[-1])
    return "\n".join(lines)


def parse_output(text: str) -> list[Summary]:
    """Parse every summary block in the tool's stdout (``watch`` prints two, titled)."""
    text = _clean(text)
    parts = re.split(r"^\s*Summary:\s*$", text, flags=re.M)
    out: list[Summary] = []
    for i in range(1, len(parts)):
        block = parts[i]
        before = parts[i - 1].strip().splitlines()
        title = (
            before[-1].strip().rstrip(":") if before and before[-1].strip().endswith(":") else ""
        )
        s = Summary(title=title)
        for name, val in _FIELD_RE.findall(block):
            setattr(s, name.lower(), float(val))
        m = _RPS_RE.search(block)
        if m:
            try:
                s.rps = float(m.group(1))
            except ValueError:
                s.rps = None
        for pct, val in _PCT_RE.findall(block):
            s.percentiles[float(pct)] = float(val)
        if "Error distribution:" in block:
            for line in block.split("Error distribution:", 1)[1].splitlines():
                em = _ERR_RE.match(line)
                if em:
                    s.errors[em.group(2).strip()] = int(em.group(1))
        out.append(s)
    if not out and "Error distribution:" in text:
        s = Summary()
        for line in text.split("Error distribution:", 1)[1].splitlines():
            em = _ERR_RE.match(line)
            if em:
                s.errors[em.group(2).strip()] = int(em.group(1))
        out.append(s)
    return out


@dataclass
class GoRun:
    """Result of one tool invocation."""

    argv: list[str]
    returncode: int | None
    elapsed: float
    cpu_seconds: float
    stdout: str
    stderr: str
    summaries: list[Summary]
    timed_out: bool = False


def run(binary: Path, endpoints: list[str], args: list[str], timeout: float) -> GoRun:
    """Run ``benchmark --endpoints ... <args>``; measure its wall and CPU time."""
    argv = [str(binary), "--endpoints", ",".join(endpoints), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, err = proc.communicate()
    elapsed = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stdout = out.decode(errors="replace")
    return GoRun(
        argv=argv,
        returncode=proc.returncode,
        elapsed=elapsed,
        cpu_seconds=cpu,
        stdout=stdout,
        stderr=err.decode(errors="replace"),
        summaries=parse_output(stdout),
        timed_out=timed_out,
    )
