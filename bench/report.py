"""Results, kvstore/etcd ratios, the text table, JSON and the optional PNG chart."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

BASELINE = "etcd"
CANDIDATE = "kvstore"


@dataclass
class Result:
    """One workload measured on one system."""

    workload: str
    system: str
    tool: str  # "go" or "python"
    status: str = "ok"  # ok | failed | timeout | skipped
    ops: int | None = None
    ops_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    elapsed_s: float | None = None
    loadgen_cpu_us_per_op: float | None = None
    server_cpu_us_per_op: float | None = None
    unit: str = "ops/s"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Scale scenarios (bench/scale.py) put their figures here instead of ops/s and latency.
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def is_scale(self) -> bool:
        return bool(self.metrics) or "kind" in self.extra


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def ratio(candidate: float | None, baseline: float | None) -> float | None:
    """candidate / baseline, or None when either is missing or the baseline is zero."""
    if candidate is None or baseline is None or baseline <= 0:
        return None
    return candidate / baseline


def _fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:.0f}"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


HEADERS = [
    "workload",
    "system",
    "tool",
    "ops/s",
    "p50 ms",
    "p99 ms",
    "ratio",
    "p99 ratio",
    "gen CPU us/op",
    "srv CPU us/op",
    "note",
]


def table_rows(results: Iterable[Result], pending: Iterable[str] = ()) -> list[list[str]]:
    """Rows of the table; the candidate's rows carry the candidate/baseline ratios.

    ``pending`` lists systems to show as "pending" rows where they have no result.
    """
    results = [r for r in results if not r.is_scale]
    by_key = {(r.workload, r.system): r for r in results}
    order: list[str] = []
    for r in results:
        if r.workload not in order:
            order.append(r.workload)
    systems: list[str] = []
    for r in results:
        if r.system not in systems:
            systems.append(r.system)
    for s in pending:
        if s not in systems:
            systems.append(s)
    systems.sort(key=lambda s: (s != BASELINE, s))
    rows: list[list[str]] = []
    for w in order:
        base = by_key.get((w, BASELINE))
        for s in systems:
            r = by_key.get((w, s))
            if r is None:
                if s in pending:
                    rows.append([w, s, "-", "pending", "-", "-", "-", "-", "-", "-", ""])
                continue
            ok = r.status == "ok"
            rat = p99r = None
            if s != BASELINE and base is not None and base.status == "ok" and ok:
                rat = ratio(r.ops_per_s, base.ops_per_s)
                p99r = ratio(r.p99_ms, base.p99_ms)
            note = r.note if ok else (r.status + (": " + r.note if r.note else ""))
            if r.errors:
                note = (note + "; " if note else "") + f"{r.errors} errors"
            rows.append(
                [
                    w,
                    s,
                    r.tool,
                    _fmt_num(r.ops_per_s) if ok else r.status,
                    _fmt_ms(r.p50_ms) if ok else "-",
                    _fmt_ms(r.p99_ms) if ok else "-",
                    _fmt_ratio(rat) if s != BASELINE else "",
                    _fmt_ratio(p99r) if s != BASELINE else "",
                    _fmt_num(r.loadgen_cpu_us_per_op),
                    _fmt_num(r.server_cpu_us_per_op),
                    note,
                ]
            )
    return rows


def format_table(
    results: Iterable[Result], pending: Iterable[str] = (), markdown: bool = False
) -> str:
    """The results as an aligned text table (or a Markdown table)."""
    rows = table_rows(results, pending)
    if markdown:
        lines = [
            "| " + " | ".join(HEADERS) + " |",
            "|"
            + "|".join("---" if i < 3 or i == 10 else "---:" for i in range(len(HEADERS)))
            + "|",
        ]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS)
    ]
    right = {3, 4, 5, 6, 7, 8, 9}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line(HEADERS), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


# Scale scenarios: the figures shown per kind (metric key, label); all "lower is better"
# except the load rate. Every metric is in the JSON.
SCALE_METRICS: dict[str, list[tuple[str, str]]] = {
    "mem": [
        ("rss_max_mib", "RSS per member, max (MiB)"),
        ("rss_mean_mib", "RSS per member, mean (MiB)"),
        ("rss_anon_max_mib", "of which anonymous, max (MiB)"),
        ("rss_empty_mib", "RSS before loading (MiB)"),
        ("data_dir_mib", "data dir per member (MiB)"),
        ("load_keys_per_sec", "load rate (keys/s, batched txns)"),
        ("loader_cpu_us_per_key", "loader CPU per key (us, Python)"),
    ],
    "restart": [
        ("term_stop_s", "SIGTERM: exit (s)"),
        ("term_health_s", "SIGTERM: start to /health (s)"),
        ("term_read_s", "SIGTERM: start to linearizable read (s)"),
        ("kill_stop_s", "SIGKILL: exit (s)"),
        ("kill_health_s", "SIGKILL: start to /health (s)"),
        ("kill_read_s", "SIGKILL: start to linearizable read (s)"),
        ("rss_after_mib", "RSS after restart (MiB)"),
    ],
    "snapshot": [
        ("add_health_s", "new member: start to /health (s)"),
        ("add_data_s", "new member: start to serving the last key (s)"),
        ("db_mib", "DB size, Status.dbSize (MiB)"),
        ("new_member_data_dir_mib", "new member's data dir (MiB)"),
        ("new_member_rss_mib", "new member's RSS (MiB)"),
    ],
}


def _fmt_metric(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key.endswith("_s"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def scale_rows(results: Iterable[Result]) -> list[list[str]]:
    """Rows of the scale table: workload, figure, etcd, kvstore, kvstore/etcd."""
    results = [r for r in results if r.is_scale]
    by_key = {(r.workload, r.system): r for r in results}
    order: list[str] = []
    for r in results:
        if r.workload not in order:
            order.append(r.workload)
    rows: list[list[str]] = []
    for w in order:
        base, cand = by_key.get((w, BASELINE)), by_key.get((w, CANDIDATE))
        any_r = base or cand
        assert any_r is not None
        kind = any_r.extra.get("kind") or w.split("-", 1)[0]
        keys = [k for k, _ in SCALE_METRICS.get(kind, [])]
        for r in (base, cand):
            if r is not None:
                keys += [k for k in r.metrics if k not in keys]
        labels = dict(SCALE_METRICS.get(kind, []))
        for k in keys:
            cells = []
            for r in (base, cand):
                if r is None:
                    cells.append("")
                elif r.status != "ok":
                    cells.append(r.status)
                else:
                    cells.append(_fmt_metric(k, r.metrics.get(k)))
            rat = None
            if base and cand and base.status == cand.status == "ok":
                rat = ratio(cand.metrics.get(k), base.metrics.get(k))
            rows.append([w, labels.get(k, k), cells[0], cells[1], _fmt_ratio(rat)])
        for r in (base, cand):
            if r is not None and r.note:
                rows.append([w, f"note ({r.system})", r.note, "", ""])
    return rows


def format_scale_table(results: Iterable[Result], markdown: bool = False) -> str:
    """The scale scenarios as a table ("" when there are none)."""
    rows = scale_rows(results)
    if not rows:
        return ""
    headers = ["scenario", "figure", BASELINE, CANDIDATE, f"{CANDIDATE}/{BASELINE}"]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|---|---:|---:|---:|"]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows if not r[1].startswith("note"))) for i, h in enumerate(headers)]
    out = []
    for cells in [headers, ["-" * w for w in widths], *rows]:
        if cells[1].startswith("note"):
            out.append(f"{cells[0].ljust(widths[0])}  {cells[1]}: {cells[2]}")
            continue
        out.append(
            "  ".join(
                c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i]) for i, c in enumerate(cells)
            ).rstrip()
        )
    return "\n".join(out)


def to_json(results: Iterable[Result], meta: dict[str, Any]) -> str:
    """JSON document: run metadata, results, and kvstore/etcd ratios per workload."""
    results = list(results)
    by_key = {(r.workload, r.system): r for r in results}
    ratios = {}
    for (w, s), r in by_key.items():
        base = by_key.get((w, BASELINE))
        if s == CANDIDATE and base is not None and r.status == base.status == "ok" and r.is_scale:
            ratios[w] = {k: ratio(v, base.metrics.get(k)) for k, v in r.metrics.items()}
        elif s == CANDIDATE and base is not None and r.status == base.status == "ok":
            ratios[w] = {
                "ops_per_s": ratio(r.ops_per_s, base.ops_per_s),
                "p50": ratio(r.p50_ms, base.p50_ms),
                "p99": ratio(r.p99_ms, base.p99_ms),
            }
    return json.dumps(
        {"meta": meta, "results": [asdict(r) for r in results], "ratios_kvstore_over_etcd": ratios},
        indent=2,
    )


def write_chart(results: list[Result], path: str, title: str) -> None:
    """PNG: ops/s per workload and system (log scale), p99 per workload, and the
    put throughput-vs-p99 curve over client counts. Needs matplotlib (bench/requirements.txt)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker

    ok = [r for r in results if r.status == "ok" and r.ops_per_s]
    workloads: list[str] = []
    for r in ok:
        if r.workload not in workloads:
            workloads.append(r.workload)
    systems = sorted({r.system for r in ok}, key=lambda s: (s != BASELINE, s))
    by_key = {(r.workload, r.system): r for r in ok}
    fig, axes = plt.subplots(1, 3, figsize=(18, 6), gridspec_kw={"width_ratios": [3, 3, 2]})
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        xs = [i + j * width for i in range(len(workloads))]
        axes[0].bar(
            xs,
            [by_key[(w, s)].ops_per_s if (w, s) in by_key else 0 for w in workloads],
            width,
            label=s,
        )
        axes[1].bar(
            xs,
            [(by_key[(w, s)].p99_ms or 0) if (w, s) in by_key else 0 for w in workloads],
            width,
            label=s,
        )
        curve = sorted(
            (
                (int(w.split("-")[1]), by_key[(w, s)])
                for w in workloads
                if w.startswith("put-") and (w, s) in by_key and w.split("-")[1].isdigit()
            ),
        )
        if curve:
            axes[2].plot(
                [r.ops_per_s for _, r in curve],
                [r.p99_ms or 0 for _, r in curve],
                marker="o",
                label=s,
            )
            for n, r in curve:
                axes[2].annotate(
                    f"{n}c",
                    (r.ops_per_s, r.p99_ms or 0),
                    fontsize=8,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
    for ax, ylabel in ((axes[0], "ops/s (events/s for watch)"), (axes[1], "p99 latency (ms)")):
        ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(workloads))])
        ax.set_xticklabels(workloads, rotation=45, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.legend()
    axes[0].set_title("throughput")
    axes[1].set_title("p99 latency")
    axes[2].set_title("put: throughput vs p99 (1..256 clients)")
    axes[2].set_xlabel("ops/s")
    axes[2].set_ylabel("p99 ms")
    axes[2].legend()
    axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
