"""Shared fixtures of the compatibility suite.

Each test module gets its own kvstore cluster (``kv_cluster``, module scope);
tests inside a module stay independent by using distinct key prefixes.

``KVSTORE_COMPAT_TARGET=etcd`` runs the client tests against real etcd
processes instead (same interface), to check that their expectations are
etcd's own behaviour; the default target is kvstore.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Iterator

import pytest

from tests.procs import Cluster

from .etcd_procs import ETCD, EtcdCluster

ETCDCTL = shutil.which("etcdctl")
TARGET = os.environ.get("KVSTORE_COMPAT_TARGET", "kvstore")
ON_KVSTORE = TARGET == "kvstore"


def new_cluster(size: int, extra_args: list[str] | None = None) -> Cluster | EtcdCluster:
    if ON_KVSTORE:
        return Cluster(size, extra_args)
    if ETCD is None:
        pytest.skip("KVSTORE_COMPAT_TARGET=etcd but etcd is not installed")
    return EtcdCluster(size, extra_args)


@pytest.fixture(scope="module")
def kv_cluster() -> Iterator[Cluster]:
    c = new_cluster(3)
    try:
        c.start(timeout=60)
        wait_published(c)
        yield c
    finally:
        c.close()


class Etcdctl:
    """``ETCDCTL_API=3 etcdctl --endpoints ...`` as a subprocess."""

    def __init__(self, endpoints: list[str]) -> None:
        if ETCDCTL is None:
            pytest.skip("etcdctl not installed (Debian package etcd-client)")
        self.endpoints = list(endpoints)

    def argv(self, *args: str, endpoints: list[str] | None = None) -> list[str]:
        eps = ",".join(endpoints or self.endpoints)
        return [ETCDCTL, "--endpoints", eps, "--command-timeout", "15s", "--dial-timeout", "5s", *args]

    @staticmethod
    def env() -> dict[str, str]:
        return dict(os.environ, ETCDCTL_API="3")

    def run(
        self, *args: str, input: str | None = None, endpoints: list[str] | None = None,
        timeout: float = 30.0, check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            self.argv(*args, endpoints=endpoints), input=input, capture_output=True, text=True,
            env=self.env(), timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def fail(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        p = self.run(*args, check=False, **kw)
        assert p.returncode != 0, f"etcdctl {' '.join(args)} should fail:\n{p.stdout}\n{p.stderr}"
        return p

    def popen(self, *args: str, endpoints: list[str] | None = None, **kw) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args, endpoints=endpoints), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=self.env(), **kw,
        )


def wait_published(c: Cluster | EtcdCluster, timeout: float = 30.0) -> None:
    """Until every member's name and client URLs are in the member list.

    etcd serves no client request before its member has published these
    attributes through Raft; kvstore answers /health (and clients) as soon as
    there is a leader, so a client connecting right after start may briefly
    see members without a name (reported as a difference, not hidden)."""
    import grpc

    from kvstore.pb import rpc_pb2, rpc_pb2_grpc

    want = {n.name: f"http://{n.endpoint}" for n in c.nodes if n.alive}

    def published() -> bool:
        with grpc.insecure_channel(c.nodes[0].endpoint) as ch:
            try:
                ml = rpc_pb2_grpc.ClusterStub(ch).MemberList(rpc_pb2.MemberListRequest(), timeout=5)
            except grpc.RpcError:
                return False
        have = {m.name: list(m.clientURLs) for m in ml.members}
        return all(have.get(name) == [url] for name, url in want.items())

    wait_for(published, timeout=timeout, interval=0.1, what="members to publish their client URLs")


def wait_for(pred, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
