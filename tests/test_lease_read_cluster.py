"""--experimental-lease-read on real processes: linearizable reads through
every member see the latest write, also after the leader is killed."""
from __future__ import annotations

from kvstore.pb import rpc_pb2
from tests.procs import Cluster
from tests.test_cluster_procs import get, kv, leader_of, retry


def test_lease_reads_see_latest_write_across_a_leader_kill() -> None:
    with Cluster(3, extra_args=["--experimental-lease-read"]).start() as c:
        for round_ in range(2):
            for i, n in enumerate(c.nodes):
                if not n.alive:
                    continue
                key, val = b"lease/%d" % i, b"v%d.%d" % (i, round_)
                retry(lambda: kv(n).Put(rpc_pb2.PutRequest(key=key, value=val), timeout=5))
                for m in c.nodes:
                    if m.alive:
                        assert retry(lambda: get(m, key)) == val
            if round_ == 0:
                leader_of(c).kill()
