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


# --------------------------------------------------------------- scale scenarios, value sizes


def test_scale_names_and_counts() -> None:
    from bench import scale

    assert scale.parse_count("100k") == 100_000
    assert scale.parse_count("1m") == 1_000_000
    assert scale.parse_count("1.5m") == 1_500_000
    assert scale.parse_count("2500") == 2500
    for bad in ("", "k", "-1", "0.5", "10x"):
        try:
            scale.parse_count(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{bad!r} accepted")
    for n in (2500, 100_000, 300_000, 1_000_000, 1_500_000):
        assert scale.parse_count(scale.count_label(n)) == n
    assert scale.count_label(1_000_000) == "1m" and scale.count_label(300_000) == "300k"
    sc = scale.parse_scenario("restart-1m")
    assert sc == scale.Scenario("restart", 1_000_000) and sc.name == "restart-1m"
    assert scale.parse_scenario("put-64") is None
    assert scale.parse_scenario("mem-") is None
    assert scale.key_of(42) == b"bench/scale/000000042"


def test_scale_run_order() -> None:
    from bench import scale

    got = scale.order_scenarios(
        [
            scale.Scenario("snapshot", 100_000),
            scale.Scenario("restart", 1_000_000),
            scale.Scenario("mem", 1_000_000),
            scale.Scenario("mem", 100_000),
            scale.Scenario("mem", 100_000),
        ]
    )
    assert [s.name for s in got] == ["mem-100k", "mem-1m", "restart-1m", "snapshot-100k"]


def test_selection_with_scenarios_and_aliases() -> None:
    from bench.cli import expand_names, select_scenarios

    assert [w.name for w in select_workloads("valsize")] == [
        "put-val-100",
        "put-val-1k",
        "put-val-10k",
        "put-val-100k",
    ]
    assert select_scenarios("default") == [] and select_scenarios("all") == []
    mixed = "put-64,restart-1m,mem-100k"
    assert [w.name for w in select_workloads(mixed)] == ["put-64"]
    assert [s.name for s in select_scenarios(mixed)] == ["mem-100k", "restart-1m"]
    assert "snapshot-100k" in expand_names("scale")
    try:
        expand_names("put-64,nope-1")
    except SystemExit as exc:
        assert "nope-1" in str(exc)
    else:
        raise AssertionError("unknown name accepted")
    # The default set is untouched by the opt-in additions.
    assert not any(n.startswith("put-val") for n in DEFAULT_WORKLOADS)


def test_value_size_workloads() -> None:
    sizes = {"put-val-100": 100, "put-val-1k": 1024, "put-val-10k": 10240, "put-val-100k": 102400}
    for name, size in sizes.items():
        w = WORKLOADS[name]
        args = w.go_args(1000)
        assert args[args.index("--val-size") + 1] == str(size)
        assert w.value_size == size
        # at most ~200 MB written per default run (2 GiB quotas, no compaction)
        assert w.go_total * size <= 210_000_000


def test_proc_status_and_exit_reason() -> None:
    from bench import scale
    from bench.cluster import parse_proc_status

    text = (
        "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
        "RssAnon:\t   700 kB\nRssFile:\t   300 kB\nRssShmem:\t  24 kB\nThreads:\t4\n"
    )
    assert parse_proc_status(text) == {
        "VmHWM": 2048,
        "VmRSS": 1024,
        "RssAnon": 700,
        "RssFile": 300,
        "RssShmem": 24,
    }
    assert scale.exit_reason(-11) == "killed by SIGSEGV"
    assert scale.exit_reason(1) == "exited with code 1"
    assert scale.exit_reason(None) == "running"


def _scale_results() -> list[report.Result]:
    return [
        report.Result(
            "mem-1m",
            "etcd",
            "-",
            unit="",
            extra={"kind": "mem"},
            metrics={"rss_max_mib": 500.0, "load_keys_per_sec": 20000.0},
            note="RSS MiB per member: 500 / 490 / 480",
        ),
        report.Result(
            "mem-1m",
            "kvstore",
            "-",
            unit="",
            extra={"kind": "mem"},
            metrics={"rss_max_mib": 750.0, "load_keys_per_sec": 10000.0},
        ),
        report.Result(
            "restart-1m", "etcd", "-", unit="", extra={"kind": "restart"}, metrics={"term_read_s": 2.0}
        ),
        report.Result(
            "restart-1m",
            "kvstore",
            "-",
            status="failed",
            unit="",
            extra={"kind": "restart"},
            note="n1 killed by SIGSEGV",
        ),
        report.Result("put-val-1k", "etcd", "go", ops_per_s=2000.0, p50_ms=5.0, p99_ms=20.0),
    ]


def test_scale_table_and_json() -> None:
    results = _scale_results()
    rows = report.scale_rows(results)
    rss = next(r for r in rows if r[0] == "mem-1m" and r[1].startswith("RSS per member, max"))
    assert rss[2:] == ["500", "750", "1.50x"]
    rate = next(r for r in rows if r[0] == "mem-1m" and r[1].startswith("load rate"))
    assert rate[2:] == ["20,000", "10,000", "0.50x"]
    term = next(r for r in rows if r[0] == "restart-1m" and "linearizable" in r[1] and "SIGTERM" in r[1])
    assert term[2:] == ["2.00", "failed", "-"]
    assert any(r[1] == "note (kvstore)" and "SIGSEGV" in r[2] for r in rows)
    text = report.format_scale_table(results)
    assert text.splitlines()[0].split() == ["scenario", "figure", "etcd", "kvstore", "kvstore/etcd"]
    assert "note (etcd): RSS MiB per member" in text
    md = report.format_scale_table(results, markdown=True)
    assert md.startswith("| scenario | figure |") and "| 1.50x |" in md
    assert report.format_scale_table(results[-1:]) == ""
    # the throughput table leaves the scale rows out
    table = report.format_table(results)
    assert "mem-1m" not in table and "put-val-1k" in table
    doc = json.loads(report.to_json(results, {"nodes": 3}))
    assert doc["ratios_kvstore_over_etcd"]["mem-1m"]["rss_max_mib"] == 1.5
    assert "restart-1m" not in doc["ratios_kvstore_over_etcd"]
    again = [report.Result(**r) for r in doc["results"]]  # --report reads this back
    assert report.scale_rows(again) == rows
