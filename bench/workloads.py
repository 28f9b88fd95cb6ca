"""The workloads of issue 7, each with its Go-tool form and/or its Python-generator form."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.pyload import Group

RANGE_KEY = "bench/range-key"
VAL_SIZE = 256


@dataclass(frozen=True)
class Workload:
    """One workload.

    ``go`` is the Go tool's argument list with ``{total}`` where the request count goes
    (global flags such as --clients first), ``go_total`` its default (and largest) count,
    ``go_min_total`` the smallest count adaptive sizing may pick (about 10 per client),
    ``go_events_per_request`` how many ops one counted request yields (watch: one put
    gives an event to each of 1,000 watchers), and
    ``go_summary`` the title of the summary block to read ("" = the last one).
    ``py`` are the Python generator's groups (the measured ones give ops/s and latency).
    ``go_latency`` False: the Go tool's latency figures here are not request latencies.
    """

    name: str
    description: str
    go: tuple[str, ...] | None = None
    go_total: int = 0
    go_min_total: int = 100
    go_events_per_request: int = 1
    go_summary: str = ""
    py: tuple[Group, ...] = field(default_factory=tuple)
    go_latency: bool = True
    unit: str = "ops/s"
    needs_range_key: bool = False
    value_size: int | None = None  # put-val-*: the value size (MB/s is shown from it)

    def go_args(self, total: int) -> list[str]:
        assert self.go is not None
        return [a.replace("{total}", str(total)) for a in self.go]


def _put(clients: int, conns: int, total: int) -> Workload:
    return Workload(
        name=f"put-{clients}",
        description=f"put, {clients} client(s) over {conns} connection(s), {VAL_SIZE} B values",
        go=(
            "--clients",
            str(clients),
            "--conns",
            str(conns),
            "--precise",
            "put",
            "--total",
            "{total}",
            "--key-size",
            "8",
            "--key-space-size",
            "100000",
            "--val-size",
            str(VAL_SIZE),
        ),
        go_total=total,
        go_min_total=max(200, clients * 10),
        py=(
            Group(
                "put",
                procs=2,
                clients=clients,
                conns=conns,
                params={"val_size": VAL_SIZE, "key_space": 100000, "prefix": "bench/put/"},
            ),
        ),
    )


VALUE_SIZES: dict[str, int] = {"100": 100, "1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}


def _put_val(label: str, total: int) -> Workload:
    """Value-size sweep: put-64's shape (64 clients over 8 connections) with ``label`` values.
    The default counts shrink with the value so one run writes at most ~200 MB (both
    systems' default quota is 2 GiB and nothing compacts between workloads)."""
    size = VALUE_SIZES[label]
    return Workload(
        name=f"put-val-{label}",
        description=f"put, 64 clients over 8 connections, {size:,} B values (value-size sweep)",
        go=(
            "--clients",
            "64",
            "--conns",
            "8",
            "--precise",
            "put",
            "--total",
            "{total}",
            "--key-size",
            "8",
            "--key-space-size",
            "100000",
            "--val-size",
            str(size),
        ),
        go_total=total,
        go_min_total=640,
        py=(
            Group(
                "put",
                procs=2,
                clients=64,
                conns=8,
                params={"val_size": size, "key_space": 100000, "prefix": "bench/val/"},
            ),
        ),
        value_size=size,
    )


def _range(consistency: str, total: int) -> Workload:
    lin = consistency == "l"
    return Workload(
        name="range-lin-64" if lin else "range-ser-64",
        description=("linearizable" if lin else "serializable")
        + " range of one key, 64 clients over 8 connections",
        go=(
            "--clients",
            "64",
            "--conns",
            "8",
            "--precise",
            "range",
            RANGE_KEY,
            "--consistency",
            consistency,
            "--total",
            "{total}",
        ),
        go_total=total,
        go_min_total=640,
        py=(
            Group(
                "range",
                procs=2,
                clients=64,
                conns=8,
                params={"key": RANGE_KEY, "serializable": not lin},
            ),
        ),
        needs_range_key=True,
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        _put(1, 1, 2000),
        _put(16, 4, 8000),
        _put(64, 8, 15000),
        _put(256, 16, 25000),
        _put_val("100", 15000),
        _put_val("1k", 15000),
        _put_val("10k", 10000),
        _put_val("100k", 2000),
        _range("l", 20000),
        _range("s", 30000),
        Workload(
            name="txn-cas-16",
            description="txn compare-and-set (If mod_revision==last Then put Else get), "
            "16 clients over 4 connections, one key each",
            py=(
                Group(
                    "cas",
                    procs=2,
                    clients=16,
                    conns=4,
                    params={"val_size": VAL_SIZE, "prefix": "bench/cas/"},
                ),
            ),
        ),
        Workload(
            name="txn-put-64",
            description="txn with one put (no compare: the Go tool's txn-put), 64 clients",
            go=(
                "--clients",
                "64",
                "--conns",
                "8",
                "--precise",
                "txn-put",
                "--total",
                "{total}",
                "--key-size",
                "8",
                "--key-space-size",
                "100000",
                "--val-size",
                str(VAL_SIZE),
            ),
            go_total=15000,
            go_min_total=640,
        ),
        Workload(
            name="watch-fanout-1000",
            description="watch fan-out delivery rate: 1,000 watchers (10 streams x 100) on one "
            "key, 10 clients putting as fast as they can; ops/s = events received/s",
            go=(
                "--clients",
                "10",
                "--conns",
                "10",
                "--precise",
                "watch",
                "--streams",
                "10",
                "--watch-per-stream",
                "100",
                "--put-total",
                "{total}",
                "--put-rate",
                "100000",
            ),
            go_total=500,
            go_min_total=20,
            go_events_per_request=1000,
            go_summary="Watch events received summary",
            py=(
                Group(
                    "watch",
                    procs=2,
                    conns=4,
                    params={"watchers": 1000, "streams": 10, "prefix": "bench/wf/"},
                ),
                Group(
                    "put",
                    procs=1,
                    clients=4,
                    conns=1,
                    measured=False,
                    params={"val_size": 32, "key_space": 1, "prefix": "bench/wf/"},
                ),
            ),
            go_latency=False,
            unit="events/s",
        ),
        Workload(
            name="watch-latency-1000",
            description="1,000 watchers on a prefix (2 processes, 10 streams), 20 puts/s: "
            "ops/s = events received/s, p50/p99 = put-to-event latency",
            py=(
                Group(
                    "watch",
                    procs=2,
                    conns=4,
                    params={"watchers": 1000, "streams": 10, "prefix": "bench/wl/"},
                ),
                Group(
                    "put",
                    procs=1,
                    clients=1,
                    conns=1,
                    measured=False,
                    params={"rate": 20, "val_size": 32, "key_space": 100, "prefix": "bench/wl/"},
                ),
            ),
            unit="events/s",
        ),
        Workload(
            name="lease-grant-16",
            description="lease grant (TTL 60 s, revoked after the run), 16 clients over 4 conns",
            py=(Group("lease-grant", procs=2, clients=16, conns=4, params={"ttl": 60}),),
        ),
        Workload(
            name="lease-keepalive-16",
            description="lease keep-alive, 16 clients over 4 connections",
            go=(
                "--clients",
                "16",
                "--conns",
                "4",
                "--precise",
                "lease-keepalive",
                "--total",
                "{total}",
            ),
            go_total=20000,
            go_min_total=320,
            py=(Group("lease-keepalive", procs=2, clients=16, conns=4),),
        ),
        Workload(
            name="mixed-95r",
            description="config-store mix: 32 clients, 95% linearizable gets / 5% puts on "
            "1,000 keys in 10 sub-prefixes, 100 watchers (10 per sub-prefix)",
            py=(
                Group(
                    "mixed",
                    procs=2,
                    clients=32,
                    conns=4,
                    params={
                        "read_pct": 95,
                        "key_space": 1000,
                        "val_size": VAL_SIZE,
                        "prefix": "bench/mixed/",
                        "shards": 10,
                    },
                ),
                Group(
                    "watch",
                    procs=1,
                    conns=1,
                    measured=False,
                    params={"watchers": 100, "streams": 1, "prefix": "bench/mixed/", "shards": 10},
                ),
            ),
        ),
    ]
}

DEFAULT_WORKLOADS: list[str] = [
    "put-1",
    "put-16",
    "put-64",
    "put-256",
    "range-lin-64",
    "range-ser-64",
    "txn-cas-16",
    "watch-fanout-1000",
    "watch-latency-1000",
    "lease-grant-16",
    "lease-keepalive-16",
    "mixed-95r",
]

# Names that stand for several workloads/scenarios in --workloads.
ALIASES: dict[str, list[str]] = {
    "valsize": ["put-val-100", "put-val-1k", "put-val-10k", "put-val-100k"],
    "scale": ["mem-100k", "mem-1m", "restart-1m", "snapshot-100k"],
}
