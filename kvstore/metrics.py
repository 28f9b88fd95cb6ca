"""Prometheus metrics under etcd's names, so etcd dashboards and alerts work.

Gauges and totals are read from the server when scraped (a custom collector:
no timers, no double bookkeeping); histograms and per-RPC counters are fed
where the event happens.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__

if TYPE_CHECKING:
    from .server import KvServer

# etcd's buckets: 1 ms .. 8 s (wal fsync), 1 ms .. 8 s (backend commit).
_DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))

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
        self.grpc_started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=self.registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], object] = {}

    def rpc_started(self, service: str, method: str, kind: str = "unary") -> None:
        key = ("s", kind, service, method)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.grpc_started.labels(kind, service, method)
        child.inc()  # type: ignore[attr-defined]

    def rpc_handled(self, service: str, method: str, code: str, kind: str = "unary") -> None:
        key = ("h", kind, service, method, code)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.grpc_handled.labels(kind, service, method, code)
        child.inc()  # type: ignore[attr-defined]

    def bind(self, server: "KvServer") -> None:
        self.registry.register(_ServerCollector(server))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
