"""`python -m bench`: run the workloads against local etcd and kvstore clusters, side by side."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import gotool, pyload, scale
from bench.cluster import REPO_ROOT, Cluster, ClusterError, loadavg
from bench.report import (
    Result,
    format_scale_table,
    format_table,
    percentile,
    to_json,
    write_chart,
)
from bench.workloads import (
    ALIASES,
    DEFAULT_WORKLOADS,
    RANGE_KEY,
    VAL_SIZE,
    WORKLOADS,
    Workload,
)

SYSTEMS = ("etcd", "kvstore")


def log(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark kvstore against etcd: same workloads, same load generator, "
        "one run, alternating systems; prints ops/s, p50/p99 and kvstore/etcd ratios.",
    )
    p.add_argument(
        "--systems", default="etcd,kvstore", help="comma-separated: etcd,kvstore (default both)"
    )
    p.add_argument("--nodes", type=int, choices=(1, 3), default=3, help="cluster size (default 3)")
    p.add_argument(
        "--workloads",
        default="default",
        help="comma-separated workload names, 'default' or 'all' (see --list); the scale "
        "scenarios (mem-N, restart-N, snapshot-N, e.g. mem-100k, restart-1m) and the "
        "aliases 'valsize' and 'scale' are opt-in",
    )
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="measured seconds per Python-generator workload (default 3)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="unmeasured seconds before each Python-generator window (default 0.5)",
    )
    p.add_argument(
        "--total",
        type=int,
        default=None,
        help="request count for every Go-tool workload (default: per workload)",
    )
    p.add_argument(
        "--go-target",
        type=float,
        default=4.0,
        help="size each Go-tool run to about this many seconds after a short sizing run; "
        "0 = always the default counts (default 4)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the default Go-tool request counts (default 1.0)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each workload N times (alternating systems); report medians. restart-N and "
        "snapshot-N repeat their measurement N times on the same loaded cluster; mem-N runs once",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "go", "python"),
        default="auto",
        help="auto: the Go tool where it has the workload, else Python (default)",
    )
    p.add_argument(
        "--procs",
        type=int,
        default=None,
        help="processes per Python generator group (default: per workload, 2)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds before one Go-tool run is killed (default 90)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--chart", metavar="FILE.png", help="write a PNG chart (needs matplotlib)")
    p.add_argument(
        "--report",
        metavar="FILE.json",
        help="run nothing: print the table (and --chart) of a saved --json file",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument(
        "--kvstore-cmd",
        default=f"{shlex.quote(sys.executable)} -m kvstore",
        help="command that starts one kvstore member (etcd flags are appended)",
    )
    p.add_argument(
        "--etcd-cmd", default="/usr/bin/etcd", help="command that starts one etcd member"
    )
    p.add_argument(
        "--pb",
        default="kvstore.pb",
        help="Python package with the etcd-compatible rpc_pb2/rpc_pb2_grpc modules",
    )
    g = p.add_argument_group("scale scenarios (mem-N, restart-N, snapshot-N)")
    g.add_argument(
        "--load-batch",
        type=int,
        default=128,
        help="puts per txn when loading keys (default 128, etcd's --max-txn-ops)",
    )
    g.add_argument(
        "--load-clients", type=int, default=16, help="txns in flight while loading (default 16)"
    )
    g.add_argument(
        "--load-value-size", type=int, default=100, help="value size of the loaded keys (default 100)"
    )
    g.add_argument(
        "--snapshot-count",
        type=int,
        default=scale.SNAPSHOT_COUNT,
        help=f"--snapshot-count of the snapshot-N clusters (default {scale.SNAPSHOT_COUNT})",
    )
    g.add_argument(
        "--scale-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for a restarted or added member (default 600)",
    )
    p.add_argument(
        "--benchmark-bin",
        default=None,
        help="etcd's Go benchmark binary (default bench/.build/bin/benchmark)",
    )
    return p.parse_args(argv)


def expand_names(spec: str) -> list[str]:
    """Workload and scenario names in ``spec``: "default", "all" (every throughput
    workload), or a comma-separated list of names and aliases (``valsize``, ``scale``)."""
    if spec == "default":
        return list(DEFAULT_WORKLOADS)
    if spec == "all":
        return list(WORKLOADS)
    names: list[str] = []
    for n in (n.strip() for n in spec.split(",")):
        for x in ALIASES.get(n, [n] if n else []):
            if x not in names:
                names.append(x)
    unknown = [n for n in names if n not in WORKLOADS and scale.parse_scenario(n) is None]
    if unknown:
        raise SystemExit(
            f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}, "
            f"mem-N, restart-N, snapshot-N (N like 100k, 1m), {', '.join(ALIASES)}"
        )
    return names


def select_workloads(spec: str) -> list[Workload]:
    """The throughput workloads named in ``spec`` (see expand_names)."""
    return [WORKLOADS[n] for n in expand_names(spec) if n in WORKLOADS]


def select_scenarios(spec: str) -> list[scale.Scenario]:
    """The scale scenarios named in ``spec``, in run order (see scale.order_scenarios)."""
    found = [scale.parse_scenario(n) for n in expand_names(spec) if n not in WORKLOADS]
    return scale.order_scenarios([s for s in found if s is not None])


def machine_meta(args: argparse.Namespace, gobin: Path | None) -> dict[str, Any]:
    """Date, machine and versions, for the JSON and the README."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    etcd_version = ""
    try:
        out = subprocess.run(
            [shlex.split(args.etcd_cmd)[0], "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        etcd_version = out.splitlines()[0] if out else ""
    except (OSError, subprocess.SubprocessError):
        pass
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": etcd_version,
        "go_benchmark": str(gobin) if gobin else None,
        "nodes": args.nodes,
        "duration_s": args.duration,
        "go_target_s": args.go_target,
        "repeat": args.repeat,
        "commit": commit,
    }


def seed_range_key(cluster: Cluster, pb: str) -> None:
    """Write RANGE_KEY (VAL_SIZE bytes) so the range workloads read a real value."""
    value = b"v" * VAL_SIZE
    try:
        import importlib

        import grpc

        rpc = importlib.import_module(f"{pb}.rpc_pb2")
        rpcg = importlib.import_module(f"{pb}.rpc_pb2_grpc")
        with grpc.insecure_channel(cluster.endpoints[0]) as ch:
            rpcg.KVStub(ch).Put(rpc.PutRequest(key=RANGE_KEY.encode(), value=value), timeout=10)
        return
    except ImportError:
        pass
    subprocess.run(
        ["etcdctl", "--endpoints", ",".join(cluster.endpoints), "put", RANGE_KEY, value.decode()],
        env={**os.environ, "ETCDCTL_API": "3"},
        check=True,
        capture_output=True,
        timeout=20,
    )


def _stderr_tail(text: str, lines: int = 8) -> str:
    keep = [
        ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("INFO:", "WARNING:"))
    ]
    return " | ".join(keep[-lines:])


def run_go(w: Workload, cluster: Cluster, binary: Path, total: int, timeout: float) -> Result:
    """One workload with etcd's Go tool."""
    res = Result(workload=w.name, system=cluster.system, tool="go", unit=w.unit)
    cpu0 = cluster.cpu_seconds()
    run = gotool.run(binary, cluster.endpoints, w.go_args(total), timeout)
    cpu1 = cluster.cpu_seconds()
    res.elapsed_s = run.elapsed
    if run.timed_out:
        res.status, res.note = "timeout", f"killed after {timeout:.0f}s ({total} requests)"
        return res
    summaries = run.summaries
    if w.go_summary:
        summaries = [s for s in summaries if s.title == w.go_summary]
    if run.returncode != 0 or not summaries or summaries[-1].rps is None:
        res.status = "failed"
        res.note = f"rc={run.returncode}: {_stderr_tail(run.stderr) or _stderr_tail(run.stdout)}"
        return res
    s = summaries[-1]
    res.ops = s.count
    res.ops_per_s = s.rps
    res.errors = sum(s.errors.values())
    if w.go_latency:
        p50, p99 = s.percentiles.get(50.0), s.percentiles.get(99.0)
        res.p50_ms = p50 * 1000 if p50 is not None else None
        res.p99_ms = p99 * 1000 if p99 is not None else None
    if res.ops:
        res.loadgen_cpu_us_per_op = run.cpu_seconds / res.ops * 1e6
        res.server_cpu_us_per_op = (cpu1 - cpu0) / res.ops * 1e6
    if s.errors:
        res.extra["error_kinds"] = s.errors
    return res


def go_total_for(w: Workload, ops_per_s: float, target_s: float, default: int) -> int:
    """Request count for a Go-tool run of about ``target_s`` seconds at ``ops_per_s``,
    between the workload's minimum and ``default``."""
    est = int(ops_per_s / w.go_events_per_request * target_s)
    return max(min(w.go_min_total, default), min(default, est))


def run_go_sized(w: Workload, c: Cluster, args: argparse.Namespace, gobin: Path) -> Result:
    """A Go-tool run whose request count fits the system's speed.

    The tool only knows request counts, so a fixed count that takes 3 s on etcd could take
    minutes on a slower system. Unless --total is given, a short sizing run (1/20 of the
    count, also a warm-up) measures the rate first, and the measured run gets about
    --go-target seconds of requests (never more than the workload's default count).
    """
    default = max(1, int(w.go_total * args.scale))
    if args.total:
        log(f"{w.name} on {c.system}: Go tool, {args.total} requests")
        return run_go(w, c, gobin, args.total, args.timeout)
    sizing_rate = None
    total = default
    if args.go_target > 0:
        probe_total = max(min(w.go_min_total, default), default // 20)
        probe = run_go(w, c, gobin, probe_total, args.timeout)
        if probe.status != "ok" or not probe.ops_per_s:
            probe.note = "sizing run: " + probe.note
            return probe
        sizing_rate = probe.ops_per_s
        total = go_total_for(w, sizing_rate, args.go_target, default)
    log(f"{w.name} on {c.system}: Go tool, {total} requests")
    res = run_go(w, c, gobin, total, args.timeout)
    res.extra["total"] = total
    if sizing_rate is not None:
        res.extra["sizing_ops_per_s"] = sizing_rate
    return res


def run_py(w: Workload, cluster: Cluster, args: argparse.Namespace) -> Result:
    """One workload with the Python generator."""
    res = Result(workload=w.name, system=cluster.system, tool="python", unit=w.unit)
    groups = []
    for g in w.py:
        if args.procs is not None and g.procs > 1:
            g = pyload.Group(g.mode, args.procs, g.clients, g.conns, g.measured, dict(g.params))
        groups.append(g)
    window: dict[str, float] = {}

    def mark() -> None:
        window["cpu0"] = cluster.cpu_seconds()

    def stop() -> None:
        window["cpu1"] = cluster.cpu_seconds()

    t0 = time.monotonic()
    try:
        merged = pyload.run_groups(
            cluster.endpoints,
            groups,
            args.duration,
            args.warmup,
            pb=args.pb,
            on_mark=mark,
            on_stop=stop,
        )
    except pyload.PyLoadError as exc:
        res.status, res.note = "failed", str(exc).strip().splitlines()[0][:200]
        log(f"  {w.name}/{cluster.system}: {exc}")
        return res
    res.elapsed_s = time.monotonic() - t0
    main = next(g for g in groups if g.measured)
    m = merged[main.mode]
    res.ops, res.ops_per_s, res.errors = m.ops, m.ops_per_s, m.errors
    res.p50_ms = _ms(percentile(m.lat_us, 50))
    res.p99_ms = _ms(percentile(m.lat_us, 99))
    if m.ops:
        res.loadgen_cpu_us_per_op = m.cpu_s / m.ops * 1e6
        if "cpu0" in window and "cpu1" in window:
            res.server_cpu_us_per_op = (window["cpu1"] - window["cpu0"]) / m.ops * 1e6
    res.extra.update({"procs": m.procs, **m.counts})
    if m.error_kinds:
        res.extra["error_kinds"] = m.error_kinds
    if m.extra.get("task_errors"):
        res.extra["task_errors"] = m.extra["task_errors"][:5]
    notes = []
    if "swapped" in m.counts or "conflict" in m.counts:
        notes.append(f"{m.counts.get('conflict', 0)} conflicts")
    for g in groups:
        if g.measured or g.mode not in merged:
            continue
        other = merged[g.mode]
        if g.mode == "watch" and other.elapsed > 0:
            res.extra["watch_events_per_s"] = other.ops_per_s
            res.extra["watch_p50_ms"] = _ms(percentile(other.lat_us, 50))
            res.extra["watch_p99_ms"] = _ms(percentile(other.lat_us, 99))
            notes.append(
                f"watch {other.ops_per_s:,.0f} ev/s p99 {res.extra['watch_p99_ms'] or 0:.0f} ms"
            )
        elif g.mode == "put":
            res.extra["puts_per_s"] = other.ops_per_s
            notes.append(f"{other.ops_per_s:,.0f} puts/s")
    res.note = "; ".join(notes)
    return res


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for w in WORKLOADS.values():
            tools = "+".join(t for t, ok in (("go", w.go), ("python", w.py)) if ok)
            star = "*" if w.name in DEFAULT_WORKLOADS else " "
            print(f"{star} {w.name:20s} [{tools}] {w.description}")
        print("(* = in the default set)")
        print("\nscale scenarios (opt-in, minutes each; N = key count such as 100k, 300k, 1m):")
        for sc in (
            scale.Scenario("mem", 100_000),
            scale.Scenario("mem", 1_000_000),
            scale.Scenario("restart", 1_000_000),
            scale.Scenario("snapshot", 100_000),
        ):
            print(f"  {sc.name:20s} {sc.description}")
        print("\naliases:")
        for a, names in ALIASES.items():
            print(f"  {a:20s} {','.join(names)}")
        return 0
    if args.report:
        doc = json.loads(Path(args.report).read_text())
        results = [Result(**r) for r in doc["results"]]
        meta = doc["meta"]
        args.json = None if args.json == args.report else args.json
        return output(results, meta, list(meta.get("failed_to_start", {})), args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        raise SystemExit(f"--systems takes etcd and/or kvstore, got {args.systems!r}")
    workloads = select_workloads(args.workloads)
    scenarios = select_scenarios(args.workloads)
    gobin = Path(args.benchmark_bin) if args.benchmark_bin else gotool.find_binary()
    if args.loadgen != "python" and gobin is None and any(w.go for w in workloads):
        log(
            "etcd's Go benchmark tool is not built (bash bench/build_etcd_benchmark.sh): "
            "using the Python generator instead"
        )

    # SIGTERM/SIGHUP unwind through the finally below, so clusters are always stopped.
    def _exit(signum: int, _frame: Any) -> None:
        scale.STOP.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)

    meta = machine_meta(args, gobin)
    meta["loadavg_start"] = loadavg()
    commands = {"etcd": shlex.split(args.etcd_cmd), "kvstore": shlex.split(args.kvstore_cmd)}
    results: list[Result] = []
    failed_start: dict[str, str] = {}
    if workloads:
        rc = run_workloads(workloads, systems, commands, args, gobin, meta, results, failed_start)
        if rc:
            return rc
    if scenarios:
        meta.setdefault("systems", systems)
        results += run_scenarios(scenarios, systems, commands, args)
        meta["scale"] = {
            "load_batch": args.load_batch,
            "load_clients": args.load_clients,
            "load_value_size": args.load_value_size,
            "snapshot_count": args.snapshot_count,
            "repeat": args.repeat,
        }
    meta["loadavg_end"] = loadavg()
    meta["failed_to_start"] = failed_start
    pending = [s for s in systems if s in failed_start]
    return output(results, meta, pending, args)


def run_workloads(
    workloads: list[Workload],
    systems: list[str],
    commands: dict[str, list[str]],
    args: argparse.Namespace,
    gobin: Path | None,
    meta: dict[str, Any],
    results: list[Result],
    failed_start: dict[str, str],
) -> int:
    """The throughput workloads, on clusters shared by all of them; appends to ``results``."""
    clusters: dict[str, Cluster] = {}
    try:
        for s in systems:
            log(f"starting {args.nodes}-node {s} cluster: {' '.join(commands[s])}")
            c = Cluster(s, args.nodes, commands[s])
            try:
                t0 = time.monotonic()
                c.start()
                log(f"  {s} healthy in {time.monotonic() - t0:.1f}s: {', '.join(c.endpoints)}")
            except (ClusterError, OSError) as exc:
                failed_start[s] = str(exc)
                log(f"!! {s} FAILED TO START; continuing without it:\n{exc}")
                continue
            clusters[s] = c
            if any(w.needs_range_key for w in workloads):
                try:
                    seed_range_key(c, args.pb)
                except Exception as exc:  # noqa: BLE001 - ranges then read a missing key
                    log(f"  could not seed {RANGE_KEY} on {s}: {exc}")
        if not clusters:
            log("no cluster started; nothing to measure")
            return 1
        meta["systems"] = list(clusters)
        meta["failed_to_start"] = failed_start
        active = [s for s in systems if s in clusters]
        step = 0
        for w in workloads:
            runs: dict[str, list[Result]] = {s: [] for s in active}
            for _ in range(args.repeat):
                order = active if step % 2 == 0 else list(reversed(active))
                step += 1
                for s in order:
                    la = loadavg()
                    r = run_one(w, clusters[s], args, gobin)
                    r.extra["loadavg_1m"] = la[0] if la else None
                    if w.value_size and r.status == "ok" and r.ops_per_s:
                        r.extra["mb_per_s"] = r.ops_per_s * w.value_size / 1e6
                        r.note = (r.note + "; " if r.note else "") + (
                            f"{r.extra['mb_per_s']:.1f} MB/s"
                        )
                    runs[s].append(r)
                    log(
                        f"{w.name:20s} {s:8s} {r.tool:6s} {r.status:7s} "
                        f"{(r.ops_per_s or 0):10,.0f} {r.unit}  p50 {r.p50_ms or 0:.2f} ms  "
                        f"p99 {r.p99_ms or 0:.2f} ms  {r.note}"
                    )
            results += [median_result(runs[s]) for s in active]
        meta["rss_mib_end"] = {
            s: [round(b / 2**20) for b in c.rss_bytes()] for s, c in clusters.items()
        }
    finally:
        for s, c in clusters.items():
            log(f"stopping {s}")
            c.stop()
    return 0


def run_scenarios(
    scenarios: list[scale.Scenario],
    systems: list[str],
    commands: dict[str, list[str]],
    args: argparse.Namespace,
) -> list[Result]:
    """The scale scenarios: every scenario on one system (its clusters kept and loaded
    incrementally between scenarios), then on the next; each system's clusters are
    stopped before the next system starts."""
    out: list[Result] = []
    for s in systems:
        runner = scale.ScaleRunner(
            s,
            commands[s],
            args.nodes,
            args.pb,
            value_size=args.load_value_size,
            batch=args.load_batch,
            clients=args.load_clients,
            snapshot_count=args.snapshot_count,
            timeout=args.scale_timeout,
            repeat=args.repeat,
            log=log,
        )
        try:
            for sc in scenarios:
                log(f"{sc.name} on {s}: {sc.description}")
                r = runner.run(sc)
                log(
                    f"{sc.name:20s} {s:8s} {r.status:7s} {r.elapsed_s or 0:.0f}s  "
                    + "  ".join(f"{k}={v:.2f}" for k, v in r.metrics.items() if v is not None)
                    + (f"  {r.note}" if r.note else "")
                )
                out.append(r)
        except ClusterError as exc:
            log(f"!! {s}: a scale cluster did not start: {exc}")
            done = {r.workload for r in out if r.system == s}
            out += [
                Result(
                    workload=sc.name,
                    system=s,
                    tool="-",
                    status="failed",
                    note=str(exc).splitlines()[0][:300],
                    unit="",
                    extra={"kind": sc.kind, "keys": sc.keys},
                )
                for sc in scenarios
                if sc.name not in done
            ]
        finally:
            log(f"stopping {s}'s scale clusters")
            runner.close()
    return out


def output(
    results: list[Result], meta: dict[str, Any], pending: list[str], args: argparse.Namespace
) -> int:
    """Print the table; write the JSON and the chart if asked."""
    print()
    print(f"{meta['nodes']}-node clusters, {meta['cores']} cores, {meta['date']}, {meta['etcd']}")
    if any(not r.is_scale for r in results) or not results:
        print(format_table(results, pending=pending, markdown=args.markdown))
    scale_table = format_scale_table(results, markdown=args.markdown)
    if scale_table:
        print()
        print(scale_table)
    if meta.get("loadavg_start") or meta.get("loadavg_end"):
        print(
            f"\nload average (1/5/15 min): start {meta.get('loadavg_start')}, "
            f"end {meta.get('loadavg_end')}"
        )
    for s, err in meta.get("failed_to_start", {}).items():
        lines = err.strip().splitlines()
        print(
            f"\n{s} did not start (its rows are pending): "
            + " / ".join(ln.strip() for ln in lines[:1] + lines[-2:])
        )
    if args.json:
        Path(args.json).write_text(to_json(results, meta))
        log(f"wrote {args.json}")
    if args.chart:
        try:
            write_chart(
                results, args.chart, f"kvstore vs etcd, {meta['nodes']} node(s), {meta['date']}"
            )
            log(f"wrote {args.chart}")
        except ImportError:
            log("--chart needs matplotlib: pip install -r bench/requirements.txt")
    return 0


def median_result(runs: list[Result]) -> Result:
    """The median of repeated runs of one workload on one system (figure by figure);
    every run's ops/s is kept in extra["runs_ops_per_s"]."""
    if len(runs) == 1:
        return runs[0]
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return runs[-1]
    by_rate = sorted(ok, key=lambda r: r.ops_per_s or 0)
    out = replace(
        by_rate[(len(by_rate) - 1) // 2], extra=dict(by_rate[(len(by_rate) - 1) // 2].extra)
    )
    for name in ("ops_per_s", "p50_ms", "p99_ms", "loadgen_cpu_us_per_op", "server_cpu_us_per_op"):
        vals = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        setattr(out, name, statistics.median(vals) if vals else None)
    out.errors = sum(r.errors for r in runs)
    out.extra["runs_ops_per_s"] = [r.ops_per_s for r in runs]
    if len(ok) < len(runs):
        out.note = (
            out.note + "; " if out.note else ""
        ) + f"{len(runs) - len(ok)} of {len(runs)} runs failed"
    return out


def run_one(w: Workload, c: Cluster, args: argparse.Namespace, gobin: Path | None) -> Result:
    """Run one workload on one cluster with the chosen load generator."""
    if not c.alive():
        dead = [m.name for m in c.members if m.proc is None or m.proc.poll() is not None]
        return Result(
            workload=w.name,
            system=c.system,
            tool="-",
            status="failed",
            note=f"members {dead} not running",
            unit=w.unit,
        )
    use_go = w.go is not None and gobin is not None and args.loadgen != "python"
    if args.loadgen == "go" and not use_go and w.go is not None:
        return Result(
            workload=w.name,
            system=c.system,
            tool="go",
            status="skipped",
            note="Go tool not built",
            unit=w.unit,
        )
    if use_go:
        assert gobin is not None
        return run_go_sized(w, c, args, gobin)
    if w.py:
        log(f"{w.name} on {c.system}: Python generator, {args.duration:g}s")
        return run_py(w, c, args)
    return Result(
        workload=w.name,
        system=c.system,
        tool="-",
        status="skipped",
        note="needs the Go tool",
        unit=w.unit,
    )
