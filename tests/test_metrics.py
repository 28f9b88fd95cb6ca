"""/metrics in Prometheus format with etcd's metric names."""
from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvstore.pb import rpc_pb2, rpc_pb2_grpc
from tests.procs import Cluster


def scrape(url: str) -> dict[str, list]:
    """Samples by sample name (a histogram's _count and _sum included)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend(fam.samples)
        for smp in fam.samples:
            out.setdefault(smp.name, []).append(smp)
    return out


def value(m: dict, name: str, **labels: str) -> float:
    for s in m[name]:
        if s.name.endswith(("_bucket", "_created")):
            continue
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((name, labels))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    yield c
    c.close()


def test_metrics_use_etcd_names_and_track_state(cluster: Cluster) -> None:
    n = cluster.nodes[0]
    kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(n.endpoint))
    for i in range(5):
        kv.Put(rpc_pb2.PutRequest(key=b"metrics/%d" % i, value=b"v"), timeout=10)
    kv.Range(rpc_pb2.RangeRequest(key=b"metrics/0"), timeout=10)
    try:
        kv.Range(rpc_pb2.RangeRequest(key=b""), timeout=10)
    except grpc.RpcError:
        pass
    scraped = [scrape(x.http_url) for x in cluster.nodes]
    m = scraped[0]
    assert value(m, "etcd_server_has_leader") == 1
    assert sum(value(s, "etcd_server_is_leader") for s in scraped) == 1
    assert value(m, "etcd_debugging_mvcc_keys_total") >= 5
    assert value(m, "etcd_server_proposals_applied_total") >= 5
    assert value(m, "etcd_mvcc_db_total_size_in_bytes") > 0
    assert value(m, "etcd_disk_wal_fsync_duration_seconds_count") > 0
    assert value(m, "etcd_disk_backend_commit_duration_seconds_count") > 0
    assert value(m, "grpc_server_handled", grpc_method="Put", grpc_code="OK", grpc_service="etcdserverpb.KV") >= 5
    assert value(m, "grpc_server_handled", grpc_method="Range", grpc_code="InvalidArgument") >= 1
    assert value(m, "etcd_server_leader_changes_seen") >= 1
    ids = {s["etcd_server_id"][0].labels["server_id"] for s in scraped}
    assert len(ids) == 3


def test_network_and_process_metrics(cluster: Cluster) -> None:
    """The families etcd's dashboards chart: client and peer traffic, peer
    connections and round trips, process memory."""
    n = cluster.nodes[0]
    kv = rpc_pb2_grpc.KVStub(grpc.insecure_channel(n.endpoint))
    kv.Put(rpc_pb2.PutRequest(key=b"net", value=b"x" * 1000), timeout=10)
    m = scrape(n.http_url)
    assert value(m, "etcd_network_client_grpc_received_bytes_total") > 1000
    assert value(m, "etcd_network_client_grpc_sent_bytes_total") > 0
    assert value(m, "process_resident_memory_bytes") > 10 << 20
    scraped = {x.http_url: scrape(x.http_url) for x in cluster.nodes}
    ids = {url: sm["etcd_server_id"][0].labels["server_id"] for url, sm in scraped.items()}
    leader = next(url for url, sm in scraped.items() if value(sm, "etcd_server_is_leader") == 1)
    lid, followers = ids[leader], set(ids.values()) - {ids[leader]}
    lm = scraped[leader]
    for f in followers:  # the leader sent each follower the Put's entry
        assert value(lm, "etcd_network_peer_sent_bytes_total", To=f) > 1000
        assert value(lm, "etcd_network_peer_received_bytes_total", From=f) > 0
        assert value(lm, "etcd_network_active_peers", Local=lid, Remote=f) == 1
        value(lm, "etcd_network_peer_sent_failures_total", To=f)  # exported (KeyError if not)
    # The first probe goes out when a connection opens; its answer may still be on its way.
    deadline = time.monotonic() + 30
    while not all(_rtt_count(lm, f) for f in followers) and time.monotonic() < deadline:
        time.sleep(0.2)
        lm = scrape(leader)
    assert all(_rtt_count(lm, f) >= 1 for f in followers)


def _rtt_count(m: dict, to: str) -> float:
    return sum(s.value for s in m.get("etcd_network_peer_round_trip_time_seconds_count", ()) if s.labels.get("To") == to)
