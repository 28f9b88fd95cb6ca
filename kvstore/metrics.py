"""Prometheus metrics under etcd's names, so etcd dashboards and alerts work.

Gauges and totals are read from the server when scraped (a custom collector:
no timers, no double bookkeeping); histograms are fed where the event
happens. Per-RPC counters are plain ints bumped on every call (``RpcCounts``)
and turned into the go-grpc-prometheus families at scrape time: a
prometheus_client Counter takes a lock per increment.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__

if TYPE_CHECKING:
    from .server import KvServer

# etcd's buckets: 1 ms .. 8 s (wal fsync), 1 ms .. 8 s (backend commit).
_DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))
_RTT_BUCKETS = tuple(0.0001 * 2**i for i in range(16))  # etcd's: 0.1 ms .. 3.3 s

disable_created_metrics()  # etcd exposes no *_created series


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by the Raft log.",
            buckets=_DISK_BUCKETS,
            registry=self.registry,
        )
        self.backend_commit = Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by the MVCC backend.",
            buckets=_DISK_BUCKETS,
            registry=self.registry,
        )
        self.peer_rtt = Histogram(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            ["To"],
            buckets=_RTT_BUCKETS,
            registry=self.registry,
        )
        self._rpcs: dict[tuple[str, str, str], RpcCounts] = {}
        self.registry.register(_RpcCollector(self._rpcs))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes etc., as etcd's Go client has
        self.client_traffic: Any = None  # what counts gRPC client bytes (kvstore.rpc.RpcServer)

    def observe_peer_rtt(self, peer_id: int, seconds: float) -> None:
        self.peer_rtt.labels(f"{peer_id:x}").observe(seconds)

    def rpc_counts(self, service: str, method: str, kind: str = "unary") -> "RpcCounts":
        """The counters of one method; callers keep it and bump its fields."""
        key = (kind, service, method)
        counts = self._rpcs.get(key)
        if counts is None:
            counts = self._rpcs[key] = RpcCounts()
        return counts

    def rpc_started(self, service: str, method: str, kind: str = "unary") -> None:
        self.rpc_counts(service, method, kind).started += 1

    def rpc_handled(self, service: str, method: str, code: str, kind: str = "unary") -> None:
        self.rpc_counts(service, method, kind).handled_code(code)

    def bind(self, server: "KvServer") -> None:
        self.registry.register(_ServerCollector(server))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RpcCounts:
    """grpc_server_started / grpc_server_handled of one method (by grpc-go code name)."""

    __slots__ = ("started", "ok", "codes")

    def __init__(self) -> None:
        self.started = 0
        self.ok = 0  # the common case, without a dict update
        self.codes: dict[str, int] = {}

    def handled_code(self, code: str) -> None:
        if code == "OK":
            self.ok += 1
        else:
            self.codes[code] = self.codes.get(code, 0) + 1


class _RpcCollector:
    """The per-RPC counters as go-grpc-prometheus names and labels them."""

    def __init__(self, rpcs: dict[tuple[str, str, str], RpcCounts]) -> None:
        self.rpcs = rpcs

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.",
            labels=["grpc_type", "grpc_service", "grpc_method"],
        )
        handled = CounterMetricFamily(
            "grpc_server_handled", "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        for (kind, service, method), c in list(self.rpcs.items()):
            if c.started:
                started.add_metric([kind, service, method], c.started)
            if c.ok:
                handled.add_metric([kind, service, method, "OK"], c.ok)
            for code, n in list(c.codes.items()):
                handled.add_metric([kind, service, method, code], n)
        yield started
        yield handled


class _ServerCollector:
    """Reads the live server state at scrape time."""

    def __init__(self, server: "KvServer") -> None:
        self.s = server

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.s
        node = getattr(s, "node", None)
        if node is None:
            return
        stats = node.stats

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                    1 if s.has_leader() else 0)
        yield gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                    1 if node.is_leader else 0)
        yield gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                    1 if s.is_learner() else 0)
        yield counter("etcd_server_leader_changes_seen", "The number of leader changes seen.", stats.leader_changes)
        yield gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                    node.raft.log.committed)
        yield gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                    node.applied)
        yield gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                    s.pending_proposals())
        yield counter("etcd_server_proposals_failed", "The total number of failed proposals seen.",
                      stats.proposals_failed)
        sid = GaugeMetricFamily("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                                labels=["server_id"])
        sid.add_metric([f"{s.member_id:x}"], 1)
        yield sid
        info = GaugeMetricFamily("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.",
                                 labels=["server_version"])
        info.add_metric(["3.4.0"], 1)
        yield info
        build = GaugeMetricFamily("kvstore_build_info", "kvstore version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        store = s.store
        yield gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.",
                    store.db_size())
        yield gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.",
                    store.db_size_in_use())
        yield gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                    s.cfg.quota_backend_bytes)
        yield gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", store.key_count())
        yield gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", store.current_revision)
        yield gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.",
                    max(0, store.compact_revision))
        hub = getattr(s, "watch_hub", None)
        watchers = sum(len(st.watchers) for st in hub.streams) if hub is not None else 0
        streams = len(hub.streams) if hub is not None else 0
        yield gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", watchers)
        yield gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", streams)
        yield gauge("etcd_mvcc_watcher_total", "Total number of watchers (kvstore alias).", watchers)
        alarms = GaugeMetricFamily("etcd_server_alarms", "Active alarms on the cluster.", labels=["member", "alarm"])
        for a in s.applier.alarms.alarms:
            alarms.add_metric([f"{a.memberID:x}", str(a.alarm)], 1)
        yield alarms
        yield from _network(s)


def _network(s: "KvServer") -> Iterator[Metric]:
    """etcd's etcd_network_* families: gRPC client bytes, and per peer the
    transport's counters (labels are member ids in hex, as etcd's)."""
    traffic = s.metrics.client_traffic
    if traffic is not None:
        yield CounterMetricFamily("etcd_network_client_grpc_sent_bytes_total",
                                  "The total number of bytes sent to grpc clients.", value=traffic.sent_bytes)
        yield CounterMetricFamily("etcd_network_client_grpc_received_bytes_total",
                                  "The total number of bytes received from grpc clients.", value=traffic.received_bytes)
    local = f"{s.member_id:x}"
    peers = sorted(s.transport.stats.items())
    families = [
        (CounterMetricFamily("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.",
                             labels=["To"]), "sent_bytes"),
        (CounterMetricFamily("etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.",
                             labels=["From"]), "received_bytes"),
        (CounterMetricFamily("etcd_network_peer_sent_failures_total", "The total number of send failures from peers.",
                             labels=["To"]), "sent_failures"),
        (CounterMetricFamily("etcd_network_peer_received_failures_total",
                             "The total number of receive failures from peers.", labels=["From"]), "received_failures"),
    ]
    for family, field in families:
        for pid, st in peers:
            family.add_metric([f"{pid:x}"], getattr(st, field))
        yield family
    active = GaugeMetricFamily("etcd_network_active_peers", "The current number of active peer connections.",
                               labels=["Local", "Remote"])
    gone = CounterMetricFamily("etcd_network_disconnected_peers_total", "The total number of disconnected peers.",
                               labels=["Local", "Remote"])
    for pid, st in peers:
        active.add_metric([local, f"{pid:x}"], 1 if st.active else 0)
        gone.add_metric([local, f"{pid:x}"], st.disconnects)
    yield active
    yield gone
