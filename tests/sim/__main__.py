"""Command line for the Raft cluster simulator.

    python -m tests.sim --seeds 5000            # long run, all scenarios
    python -m tests.sim --seeds 500 --scenario chaos
    python -m tests.sim --seed 1234 --scenario crash -v   # replay one run
    python -m tests.sim --seed 1234 --scenario crash -vv  # ... with every message

A run's scenario defaults to SCENARIOS[seed % len]. Exits 1 on the first
invariant violation (or on all of them with --keep-going) and prints the seed,
the scenario and the replay command.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections import Counter

from .cluster import run_one
from .scenarios import DEMOS, ORDER, SCENARIOS, scenario_for_seed

_ALL = {**SCENARIOS, **DEMOS}


def _job(args: tuple[int, str | None]) -> tuple[int, str, bool, str, dict]:
    seed, name = args
    sc = _ALL[name] if name else scenario_for_seed(seed)
    ok, msg, stats = run_one(seed, sc)
    return seed, sc.name, ok, msg, stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, help="replay one seed")
    p.add_argument("--seeds", type=int, default=0, help="run this many seeds")
    p.add_argument("--start", type=int, default=0, help="first seed of --seeds")
    p.add_argument(
        "--scenario", choices=ORDER + list(DEMOS), help="default: cycle through all scenarios (not the lease-* demos)"
    )
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1)
    p.add_argument("--keep-going", action="store_true", help="report every failing seed")
    p.add_argument("-v", "--verbose", action="count", default=0)
    a = p.parse_args(argv)

    if a.seed is not None:
        sc = _ALL[a.scenario] if a.scenario else scenario_for_seed(a.seed)
        t0 = time.perf_counter()
        ok, msg, stats = run_one(a.seed, sc, verbose=a.verbose)
        dt = time.perf_counter() - t0
        if ok:
            print(f"seed {a.seed} scenario {sc.name}: ok in {dt:.2f}s {stats}")
            return 0
        print(f"FAIL seed {a.seed} scenario {sc.name}: {msg}")
        return 1

    n = a.seeds or 100
    jobs = [(s, a.scenario) for s in range(a.start, a.start + n)]
    t0 = time.perf_counter()
    mix: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    failures: list[tuple[int, str, str]] = []
    done = 0
    last = t0

    def report_failure(seed: int, name: str, msg: str) -> None:
        print(f"\nFAIL seed {seed} scenario {name}: {msg}", flush=True)
        print(f"  replay: python -m tests.sim --seed {seed} --scenario {name} -v", flush=True)

    if a.jobs > 1:
        pool = mp.Pool(a.jobs)
        it = pool.imap_unordered(_job, jobs, chunksize=4)
    else:
        pool = None
        it = map(_job, jobs)
    try:
        for seed, name, ok, msg, stats in it:
            done += 1
            mix[name] += 1
            if ok:
                totals.update(stats)
            else:
                failures.append((seed, name, msg))
                report_failure(seed, name, msg)
                if not a.keep_going:
                    break
            now = time.perf_counter()
            if now - last >= 10:
                last = now
                print(f"  {done}/{n} seeds, {done / (now - t0):.1f} seeds/s", flush=True)
    finally:
        if pool is not None:
            pool.terminate()
    dt = time.perf_counter() - t0
    print(f"\n{done} seeds in {dt:.1f}s ({done / dt:.1f} seeds/s, {a.jobs} jobs)")
    print("scenario mix: " + ", ".join(f"{k}={mix[k]}" for k in _ALL if mix[k]))
    keys = (
        "ticks", "elections", "committed", "acked", "reads", "lease_reads", "crashes", "power_failures", "partitions",
        "lost_writes", "snap_msgs", "transfers", "conf_changes", "members_added", "members_removed",
        "msgs", "delivered", "readies",
    )
    print("totals: " + ", ".join(f"{k}={totals[k]}" for k in keys))
    if failures:
        print(f"{len(failures)} FAILED: " + ", ".join(f"{s}/{nm}" for s, nm, _ in failures))
        return 1
    print("no invariant violated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
