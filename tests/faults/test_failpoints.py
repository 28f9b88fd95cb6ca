"""raft/failpoints.py: parsing, actions, and the sites in a real kvstore process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import grpc
import pytest

from raft import failpoints as fp
from tests.procs import REPO, Cluster


@pytest.fixture(autouse=True)
def _disarm():
    yield
    fp.configure(None)


def test_parse_terms() -> None:
    t = fp.parse("raftBeforeSave=sleep(200); raftAfterSave=5%panic;beforeApply=2*error;"
                 "raftBeforeLeaderSend=0.5%drop;afterApply=off")
    assert (t["raftBeforeSave"].action, t["raftBeforeSave"].arg) == ("sleep", 200)
    assert (t["raftAfterSave"].action, t["raftAfterSave"].probability) == ("panic", 0.05)
    assert (t["beforeApply"].action, t["beforeApply"].remaining) == ("error", 2)
    assert t["raftBeforeLeaderSend"].probability == pytest.approx(0.005)
    assert t["afterApply"].action == "off"


@pytest.mark.parametrize("bad", [
    "raftBeforeSave", "nosuchsite=panic", "raftBeforeSave=explode", "raftBeforeSave=sleep",
    "raftBeforeSave=sleep(x)", "raftBeforeSave=panic(3)", "raftBeforeSave=150%panic", "=panic",
])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        fp.parse(bad)


def test_disabled_by_default_and_off_disarms() -> None:
    fp.configure(None)
    assert fp.ENABLED is False
    assert fp.inject("raftFsync") is False
    fp.configure("raftFsync=off")
    assert fp.ENABLED is False


def test_actions_probability_and_count() -> None:
    fp.configure("raftBeforeFollowerSend=drop;beforeApply=2*error;raftFsync=sleep(1)", seed=1)
    assert fp.ENABLED
    assert fp.inject("raftBeforeFollowerSend") is True
    assert fp.inject("raftBeforeLeaderSend") is False  # not armed
    for _ in range(2):
        with pytest.raises(fp.FailpointError):
            fp.inject("beforeApply")
    assert fp.inject("beforeApply") is False  # 2* used up
    assert fp.inject("raftFsync") is False
    assert asyncio.run(fp.ainject("raftBeforeFollowerSend")) is True

    fp.configure("raftBeforeLeaderSend=25%drop", seed=7)
    drops = sum(fp.inject("raftBeforeLeaderSend") for _ in range(4000))
    assert 700 < drops < 1300
    assert fp.fired["raftBeforeLeaderSend"] == drops


def _run_with(spec: str, seconds: float = 0.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO, KVSTORE_FAILPOINTS=spec)
    code = "import raft.failpoints as f; import time; f.inject('afterApply'); print('survived')"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_env_panic_exits_with_distinctive_code_and_bad_spec_fails_start() -> None:
    res = _run_with("afterApply=panic")
    assert res.returncode == fp.PANIC_EXIT_CODE
    assert "failpoint afterApply: panic" in res.stderr
    assert "survived" not in res.stdout
    res = _run_with("afterApply=bogus")
    assert res.returncode == 2
    assert "KVSTORE_FAILPOINTS" in res.stderr and "Traceback" not in res.stderr
    res = _run_with("")
    assert res.returncode == 0 and "survived" in res.stdout


def _put(endpoint: str, i: int, timeout: float = 5.0) -> None:
    from kvstore.pb import rpc_pb2, rpc_pb2_grpc
    with grpc.insecure_channel(endpoint) as ch:
        rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"fp", value=b"%d" % i), timeout=timeout)


def _wait_exit(node, timeout: float = 30.0) -> int | None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while node.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return node.proc.poll()


@pytest.mark.slow
def test_sites_in_a_real_member(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow save still serves; a crash after the save exits 86 and the
    member restarts with the acknowledged write; a failed fsync is fatal
    (exit 70, one CRITICAL line) instead of leaving a healthy-looking zombie."""
    # sleep: slow, still correct.
    monkeypatch.setenv("KVSTORE_FAILPOINTS", "raftBeforeSave=sleep(50);raftFsync=sleep(20);beforeApply=sleep(5)")
    with Cluster(1) as c:
        c.start(timeout=60)
        n = c.nodes[0]
        for i in range(3):
            _put(n.endpoint, i)
        assert n.alive
        # raftAfterSave=panic on the next start: the first save after the
        # restart crashes the member with the failpoint's exit code.
        n.terminate()
        monkeypatch.setenv("KVSTORE_FAILPOINTS", "raftAfterSave=panic")
        n.restart()
        assert _wait_exit(n) == fp.PANIC_EXIT_CODE
        assert "failpoint raftAfterSave: panic" in n.log_tail(20)
        # Clean restart: the writes acknowledged before are there.
        monkeypatch.delenv("KVSTORE_FAILPOINTS")
        n.restart()
        c.wait_healthy(60)
        from kvstore.pb import rpc_pb2, rpc_pb2_grpc
        with grpc.insecure_channel(n.endpoint) as ch:
            r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"fp"), timeout=10)
        assert r.kvs[0].value == b"2"
        # A failed fsync after start: the member exits (FATAL_EXIT_CODE).
        n.terminate()
        monkeypatch.setenv("KVSTORE_FAILPOINTS", "raftFsync=error")
        n.restart()
        code = _wait_exit(n)
        assert code == 70, n.log_tail()
        assert "raft loop stopped, this member cannot go on" in n.log_tail(20)


@pytest.mark.slow
def test_request_ids_are_unique_across_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """n2 forwards puts that the others commit, and is killed before it
    applies them (its log saves are slow); restarted with the same slow
    saves, it gets new puts while those old entries are still to be applied.
    Every acknowledged new put must carry its own revision."""
    from concurrent.futures import ThreadPoolExecutor

    from kvstore.pb import rpc_pb2, rpc_pb2_grpc

    slow = "raftBeforeSave=sleep(1500)"
    with Cluster(3) as c:
        n1, n2, n3 = c.nodes
        for n in (n1, n3):
            n.start(c.initial_cluster)
        c.wait_healthy(60, [n1, n3])
        monkeypatch.setenv("KVSTORE_FAILPOINTS", slow)
        n2.start(c.initial_cluster)
        monkeypatch.delenv("KVSTORE_FAILPOINTS")
        c.wait_healthy(60, [n2])

        def put_via(node, key: bytes, attempts: int = 100):  # type: ignore[no-untyped-def]
            with grpc.insecure_channel(node.endpoint) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                for _ in range(attempts):
                    try:
                        return kv.Put(rpc_pb2.PutRequest(key=key, value=key), timeout=20).header.revision
                    except grpc.RpcError as e:
                        if e.code() != grpc.StatusCode.UNAVAILABLE:  # no leader yet: retry
                            return e.details()
                        time.sleep(0.05)
            return None

        pool = ThreadPoolExecutor(40)
        # Old incarnation: 30 puts through n2, committed by n1+n3; n2 dies
        # while its save of them sleeps.
        old = [pool.submit(put_via, n2, b"/rid/old/%d" % i, 1) for i in range(30)]
        with grpc.insecure_channel(n1.endpoint) as ch:  # kill n2 as soon as they are committed
            kv1 = rpc_pb2_grpc.KVStub(ch)
            old_range = rpc_pb2.RangeRequest(key=b"/rid/old/", range_end=b"/rid/old0", serializable=True,
                                             count_only=True)
            deadline = time.monotonic() + 30
            while not kv1.Range(old_range, timeout=10).count and time.monotonic() < deadline:
                time.sleep(0.01)
        n2.kill()
        for f in old:
            f.result()
        # New incarnation: 40 puts while the old entries wait to be applied.
        monkeypatch.setenv("KVSTORE_FAILPOINTS", slow)
        n2.restart()
        monkeypatch.delenv("KVSTORE_FAILPOINTS")
        new = {i: pool.submit(put_via, n2, b"/rid/new/%d" % i) for i in range(40)}
        acked = {i: f.result() for i, f in new.items()}
        pool.shutdown()
        with grpc.insecure_channel(n1.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            r = kv.Range(rpc_pb2.RangeRequest(key=b"/rid/new/", range_end=b"/rid/new0"), timeout=20)
        stored = {int(kv_.key.rsplit(b"/", 1)[1]): kv_.mod_revision for kv_ in r.kvs}
        wrong = {i: (rev, stored.get(i)) for i, rev in acked.items() if rev is not None and rev != stored.get(i)}
        assert any(isinstance(rev, int) for rev in acked.values())
        assert not wrong, f"acknowledged revision != the put's own revision (ack, stored): {wrong}"
