"""/metrics in Prometheus format with etcd's metric names."""
from __future__ import annotations

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
