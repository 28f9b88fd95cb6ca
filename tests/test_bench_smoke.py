"""Smoke test of the benchmark harness's pure parts: parsing the Go tool's output,
merging generator results, ratios and the table. No clusters, no timing."""

from __future__ import annotations

import json

from bench import gotool, pyload, report
from bench.cli import parse_args, select_workloads
from bench.workloads import DEFAULT_WORKLOADS, WORKLOADS

# Captured from `benchmark put --total 2000` against etcd 3.4.23 (progress bar included).
PUT_OUTPUT = (
    "\r 0 / 2000    0.00%\r 350 / 2000   17.50%\r 2000 / 2000  100.00% 0s\n\nSummary:\n"
    "  Total:\t0.8687 secs.\n  Slowest:\t0.0053 secs.\n  Fastest:\t0.0002 secs.\n"
    "  Average:\t0.0004 secs.\n  Stddev:\t0.0003 secs.\n  Requests/sec:\t2302.3717\n\n"
    "Response time histogram:\n  0.0002 [1]\t|\n  0.0007 [1893]\t|\u220e\u220e\u220e\u220e\n"
    "  0.0053 [2]\t|\n\nLatency distribution:\n  10% in 0.0003 secs.\n  25% in 0.0003 secs.\n"
    "  50% in 0.0004 secs.\n  75% in 0.0005 secs.\n  90% in 0.0006 secs.\n"
    "  95% in 0.0007 secs.\n  99% in 0.0013 secs.\n  99.9% in 0.0051 secs.\n"
)

# `benchmark watch` prints two titled summaries; with --precise numbers use %g.
WATCH_OUTPUT = (
    " 1000 / 1000  100.00% 0s\nWatch creation summary:\n\nSummary:\n  Total:\t0.0846 secs.\n"
    "  Requests/sec:\t11821.1921\n\nLatency distribution:\n  50% in 0.0005 secs.\n"
    "  99% in 0.0045 secs.\n\r 200000 / 200000  100.00% 0s\nWatch events received summary:\n"
    "\nSummary:\n  Total:\t0.207712345 secs.\n  Slowest:\t0.0315 secs.\n"
    "  Requests/sec:\t962858.8095\n\nLatency distribution:\n  50% in 4.2e-06 secs.\n"
    "  99% in 0.0207 secs.\n"
)

ERROR_OUTPUT = (
    "\nSummary:\n  Total:\t1.0000 secs.\n  Requests/sec:\t90.0000\n\nLatency distribution:\n"
    "  50% in 0.0100 secs.\n\nError distribution:\n"
    "  [10]\trpc error: code = Unavailable desc = transport is closing\n"
)


def test_parse_put_summary() -> None:
    [s] = gotool.parse_output(PUT_OUTPUT)
    assert s.rps == 2302.3717
    assert s.total == 0.8687
    assert s.percentiles[50.0] == 0.0004
    assert s.percentiles[99.0] == 0.0013
    assert s.percentiles[99.9] == 0.0051
    assert s.count == 2000
    assert s.errors == {}
    assert s.title == ""


def test_parse_titled_summaries_and_precise_numbers() -> None:
    create, events = gotool.parse_output(WATCH_OUTPUT)
    assert create.title == "Watch creation summary"
    assert events.title == "Watch events received summary"
    assert events.rps == 962858.8095
    assert events.total == 0.207712345
    assert events.percentiles[50.0] == 4.2e-06


def test_parse_errors_and_empty() -> None:
    [s] = gotool.parse_output(ERROR_OUTPUT)
    assert s.errors == {"rpc error: code = Unavailable desc = transport is closing": 10}
    assert gotool.parse_output("panic: something\n") == []


def test_percentile_and_ratio() -> None:
    vals = list(range(1, 101))
    assert report.percentile(vals, 50) == 50
    assert report.percentile(vals, 99) == 99
    assert report.percentile([], 50) is None
    assert report.ratio(50.0, 100.0) == 0.5
    assert report.ratio(None, 100.0) is None
    assert report.ratio(1.0, 0.0) is None


def _results() -> list[report.Result]:
    return [
        report.Result("put-64", "etcd", "go", ops=15000, ops_per_s=4000.0, p50_ms=7.5, p99_ms=40.0),
        report.Result(
            "put-64", "kvstore", "go", ops=15000, ops_per_s=2000.0, p50_ms=15.0, p99_ms=100.0
        ),
        report.Result("range-lin-64", "etcd", "go", ops_per_s=8000.0, p50_ms=5.0, p99_ms=30.0),
        report.Result("range-lin-64", "kvstore", "go", status="timeout", note="killed after 90s"),
    ]


def test_table_ratios_and_pending() -> None:
    table = report.format_table(_results())
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["workload", "system", "tool"]
    kv_put = next(ln for ln in lines if ln.startswith("put-64") and "kvstore" in ln)
    assert "0.50x" in kv_put and "2.50x" in kv_put and "2,000" in kv_put
    kv_range = next(ln for ln in lines if ln.startswith("range-lin-64") and "kvstore" in ln)
    assert "timeout" in kv_range
    pending = report.format_table(_results()[:1] + _results()[2:3], pending=["kvstore"])
    assert pending.count("pending") == 2
    md = report.format_table(_results(), markdown=True)
    assert md.startswith("| workload | system |") and "| 0.50x |" in md


def test_json_ratios() -> None:
    doc = json.loads(report.to_json(_results(), {"nodes": 3}))
    assert doc["ratios_kvstore_over_etcd"]["put-64"]["ops_per_s"] == 0.5
    assert "range-lin-64" not in doc["ratios_kvstore_over_etcd"]
    assert len(doc["results"]) == 4


def test_merge_worker_results() -> None:
    a = {
        "ops": 100,
        "errors": 1,
        "elapsed": 2.0,
        "cpu": 0.02,
        "lat_us": [3, 1],
        "counts": {"reads": 95},
        "error_kinds": {"UNAVAILABLE": 1},
        "extra": {"watchers": 500},
    }
    b = {
        "ops": 300,
        "errors": 0,
        "elapsed": 3.0,
        "cpu": 0.03,
        "lat_us": [2],
        "counts": {"reads": 280, "writes": 20},
        "error_kinds": {},
        "extra": {"watchers": 500},
    }
    m = pyload.merge([a, b])
    assert m.ops == 400 and m.errors == 1
    assert m.ops_per_s == 150.0
    assert m.lat_us == [1, 2, 3]
    assert m.counts == {"reads": 375, "writes": 20}
    assert m.extra["watchers"] == 1000


def test_group_split_and_prefix_end() -> None:
    specs = pyload.Group("put", procs=2, clients=5, conns=3).specs(["a:1", "b:2"], "kvstore.pb")
    assert [s["clients"] for s in specs] == [3, 2]
    assert [s["conns"] for s in specs] == [2, 1]
    w = pyload.Group("watch", procs=2, conns=4, params={"watchers": 1000, "streams": 10})
    assert [s["watchers"] for s in w.specs(["a:1"], "p")] == [500, 500]
    assert pyload._prefix_end(b"bench/") == b"bench0"
    assert pyload._prefix_end(b"a\xff") == b"b"


def test_cli_defaults_and_workloads() -> None:
    args = parse_args([])
    assert args.systems == "etcd,kvstore" and args.nodes == 3
    assert [w.name for w in select_workloads("default")] == DEFAULT_WORKLOADS
    assert all(w.go or w.py for w in WORKLOADS.values())
    put = WORKLOADS["put-64"]
    assert "--total" in put.go_args(123) and "123" in put.go_args(123)


def test_median_of_repeats() -> None:
    from bench.cli import median_result

    runs = [
        report.Result("put-1", "etcd", "go", ops_per_s=v, p50_ms=v / 100, p99_ms=1.0)
        for v in (300.0, 100.0, 200.0)
    ]
    m = median_result(runs)
    assert m.ops_per_s == 200.0 and m.p50_ms == 2.0
    assert m.extra["runs_ops_per_s"] == [300.0, 100.0, 200.0]


def test_go_run_sizing() -> None:
    from bench.cli import go_total_for

    put = WORKLOADS["put-64"]  # default 15000, minimum 640
    assert go_total_for(put, 10_000.0, 4.0, 15000) == 15000  # fast: capped at the default
    assert go_total_for(put, 500.0, 4.0, 15000) == 2000
    assert go_total_for(put, 10.0, 4.0, 15000) == 640  # slow: the minimum
    watch = WORKLOADS["watch-fanout-1000"]  # 1,000 events per put
    assert go_total_for(watch, 50_000.0, 4.0, 500) == 200
