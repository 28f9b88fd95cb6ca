"""One fault-injection run: cluster + workload + nemesis, then every check.

    python -m tests.faults --system etcd|kvstore --time 60 --nodes 3 --nemesis all

Prints what it did and what it found; exits 0 if every check passed, 1 if one
failed, 2 if the run could not be made here (no root/netns, system missing).
A failing run keeps its directory (history.jsonl, events.log, node logs, data).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from tests.faults.cluster import SYSTEMS, Cluster, default_system, netns_unavailable


@dataclass
class RunResult:
    """Summary of a run; ``ok`` means every check passed."""

    ok: bool
    run_dir: str
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    linearizability: str = ""
    summary: str = ""
    injected: int = 0       # faults injected
    lost_writes: int = 0    # acknowledged writes missing from the final history
    elapsed: float = 0.0


def unavailable(system: str) -> str | None:
    """Why a run of ``system`` cannot be made here, or None."""
    if system not in SYSTEMS:
        return f"unknown system {system!r}"
    return SYSTEMS[system].available() or netns_unavailable()


def run(system: str | None = None, duration: float = 60, nodes: int = 3, nemesis: str = "all",
        clients: int = 6, seed: int | None = None, keep: bool = False, check_timeout: float = 300,
        stale_reads: bool = False, log: Callable[[str], None] = print,
        summary_file: str | None = None) -> RunResult:
    """Run one test and return its result (the cluster is always torn down)."""
    from tests.faults import workload as wl
    from tests.faults.nemesis import Nemesis, parse_nemeses

    system = system or default_system()
    seed = random.randrange(1 << 31) if seed is None else seed
    faults = parse_nemeses(nemesis, failpoints=SYSTEMS[system].failpoints_env is not None)
    rng = random.Random(seed)
    log(f"fault run: system={system} nodes={nodes} time={duration}s nemesis={','.join(faults) or 'none'} "
        f"clients={clients} seed={seed}{' STALE READS' if stale_reads else ''}")
    cluster = Cluster(system, nodes, log=lambda m: None)
    result = RunResult(False, cluster.run_dir)
    try:
        cluster.start()
        log(f"cluster up: {cluster.describe()}; run dir {cluster.run_dir}")

        def endpoints() -> list[tuple[str, str]]:
            return [(n.name, n.endpoint) for n in cluster.nodes if n.member]

        start_rev = wl.current_revision(cluster.nodes[0].endpoint) + 1
        load = wl.Workload(endpoints, wl.WorkloadConfig(clients=clients, seed=seed, serializable_reads=stale_reads))
        watchers = [wl.Watcher(i, endpoints, start_rev) for i in range(2)]
        nem = Nemesis(cluster, faults, rng, log=log)
        t0 = time.monotonic()
        for w in watchers:
            w.start()
        load.start()
        nem.start()
        time.sleep(duration)
        nem.stop()
        nem.recover()  # heal everything and wait for health before the final checks
        time.sleep(1.0)  # a little fault-free load at the end
        load.stop()
        elapsed = time.monotonic() - t0
        result.faults = [w for _, w in nem.done]

        # Final state, from the leader (a linearizable read there sees everything).
        lead = cluster.leader(timeout=30) or next(n for n in cluster.nodes if n.member and n.alive)
        end_rev = wl.current_revision(lead.endpoint)
        final = wl.final_values(lead.endpoint)
        reference = wl.read_all_events(lead.endpoint, start_rev, end_rev) if end_rev >= start_rev else []
        for w in watchers:
            if not w.wait_for(end_rev, 30):
                result.problems.append(f"watcher {w.ident} stuck at revision {w.last_revision} < {end_rev}; "
                                       f"its streams: {'; '.join(w.trail[-6:])}")
            w.stop()
        records = load.records
        wl.dump_history(records, os.path.join(cluster.run_dir, "history.jsonl"))

        # Checks.
        lin = wl.check_linearizable(records, check_timeout)
        result.linearizability = lin.status
        if not lin.ok:
            result.problems.append("linearizability: " + lin.explain())
        result.problems += wl.check_durability(records, reference, start_rev, end_rev, final)
        result.problems += load.revisions_backwards
        result.problems += wl.check_watchers(watchers, reference, end_rev)
        result.problems += [f"nemesis: {e}" for e in nem.errors]

        counts = Counter(r.status for r in records)
        per_kind = Counter(f"{r.kind}:{r.status}" for r in records)
        result.counts = dict(counts)
        result.injected = len(nem.injected)
        result.lost_writes = sum("acknowledged write lost" in p for p in result.problems)
        result.elapsed = elapsed
        ok_ops = counts.get("ok", 0)
        lines = [
            f"did: {len(records)} ops in {elapsed:.0f}s by {clients} clients "
            f"(ok {ok_ops}, fail {counts.get('fail', 0)}, unknown {counts.get('unknown', 0)}; "
            f"availability {ok_ops / max(1, len(records)):.1%})",
            "    by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(per_kind.items())),
            f"    faults: {len(nem.injected)} injected: "
            + "; ".join(f for f in result.faults if f != "healthy"),
            f"    revisions {start_rev}..{end_rev}, {len(reference)} events; watchers: "
            + ", ".join(f"#{w.ident} {len(w.events)} events/{w.reconnects} reconnects" for w in watchers),
            f"found: linearizability {lin.explain().splitlines()[0]}",
            f"    acknowledged writes lost: {result.lost_writes}; "
            f"problems: {len(result.problems)}",
        ]
        lines.extend("    - " + p for p in result.problems[:15])
        if len(result.problems) > 15:
            lines.append(f"    ... {len(result.problems) - 15} more in result.json")
        result.ok = not result.problems
        lines.append(f"RESULT: {'PASS' if result.ok else 'FAIL'} ({system}, {nodes} nodes, seed {seed})")
        result.summary = "\n".join(lines)
        with open(os.path.join(cluster.run_dir, "result.json"), "w") as f:
            json.dump(_record(result, seed, system, nodes, faults), f, indent=1)
        log(result.summary)
        if summary_file:
            with open(summary_file, "a") as f:
                f.write(json.dumps(_record(result, seed, system, nodes, faults)) + "\n")
    except Exception as e:
        result.problems.append(f"run error: {e!r}")
        log(f"RESULT: ERROR {e!r}")
        raise
    finally:
        keep_dir = keep or not result.ok
        cluster.close(keep=keep_dir)
        if keep_dir:
            log(f"run dir kept: {cluster.run_dir}")
    return result


def _record(result: RunResult, seed: int, system: str, nodes: int, nemeses: list[str]) -> dict:
    """The run's result.json (and --summary-file line)."""
    ops = sum(result.counts.values())
    return {"ok": result.ok, "system": system, "nodes": nodes, "seed": seed, "nemeses": nemeses,
            "elapsed": round(result.elapsed, 1), "ops": ops, "counts": result.counts,
            "availability": round(result.counts.get("ok", 0) / max(1, ops), 4),
            "injected": result.injected, "linearizability": result.linearizability,
            "lost_writes": result.lost_writes, "problems": result.problems, "faults": result.faults,
            "run_dir": result.run_dir, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", default=default_system(), choices=sorted(SYSTEMS))
    p.add_argument("--time", type=float, default=60, help="seconds of load and faults")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--nemesis", default="all", help="all, none, or a comma-separated list")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--runs", type=int, default=1, help="repeat the run (new seed each time)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the run dir even if it passes")
    p.add_argument("--check-timeout", type=float, default=300, help="linearizability search budget (s)")
    p.add_argument("--summary-file", default=None,
                   help="append one JSON line per run (counts, availability, checks) to this file")
    p.add_argument("--stale-reads", action="store_true",
                   help="use serializable reads: a deliberately wrong client, to see the checks fail")
    args = p.parse_args(argv)
    reason = unavailable(args.system)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    # SIGTERM -> SystemExit, so the cluster is torn down by the finally/finalizers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = 0
    for i in range(args.runs):
        seed = args.seed + i if args.seed is not None else None
        res = run(args.system, args.time, args.nodes, args.nemesis, args.clients, seed,
                  args.keep, args.check_timeout, args.stale_reads, summary_file=args.summary_file)
        failed += not res.ok
    if args.runs > 1:
        print(f"{args.runs - failed} passed, {failed} failed")
    return 1 if failed else 0
