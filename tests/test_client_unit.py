"""Pure parts of kvstore.client and kvctl: back-off, endpoints, error
classification and retry decisions (with a fake stub), the transaction
builder, watch resumption, env mapping, templates, txn syntax, snapshots."""
from __future__ import annotations

import asyncio
import hashlib
import io
import random

import grpc
import pytest

from kvstore.cli.envmap import build_env, env_name
from kvstore.cli.output import Progress, table
from kvstore.cli.template import TemplateError, render
from kvstore.cli.txnparse import (
    TxnSyntaxError,
    parse_compare,
    parse_request,
    parse_sections,
)
from kvstore.client import (
    AsyncClient,
    Backoff,
    Client,
    OutcomeUnknown,
    Timeout,
    WatchCompacted,
    WatchError,
    compare,
    core,
    create_revision,
    delete,
    get,
    lease,
    mod_revision,
    parse_duration,
    prefix_end,
    put,
    txn_op,
    value,
    version,
)
from kvstore.client.core import AMBIGUOUS, FATAL, NOT_SENT, REAUTH, Endpoint, classify
from kvstore.client.errors import (
    Compacted,
    LeaseNotFound,
    NoSpace,
    PermissionDenied,
    ServerError,
    server_error,
)
from kvstore.client.model import txn_is_safe
from kvstore.client.sync import SnapshotAccumulator
from kvstore.client.txn import TxnBuilder
from kvstore.client.watchstate import WatchResume
from kvstore.pb import kv_pb2, rpc_pb2

# -- back-off and durations --------------------------------------------------------------


def test_backoff_grows_caps_and_jitters_within_bounds():
    b = Backoff(base=0.1, cap=1.0, rng=random.Random(7))
    delays = [b.next() for _ in range(10)]
    for i, d in enumerate(delays):
        nominal = min(1.0, 0.1 * 2**i)
        assert nominal / 2 <= d <= nominal
    assert max(delays) <= 1.0
    b.reset()
    assert b.next() <= 0.1
    # jitter: two clients with different seeds do not wait the same
    a, c = Backoff(0.1, 1.0, rng=random.Random(1)), Backoff(0.1, 1.0, rng=random.Random(2))
    assert [a.next() for _ in range(5)] != [c.next() for _ in range(5)]
    assert Backoff(0.1, 1.0).nominal(10_000) == 1.0
    with pytest.raises(ValueError):
        Backoff(base=0, cap=1)


def test_parse_duration():
    assert parse_duration("1s") == 1.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120.0
    assert parse_duration("1.5") == 1.5
    assert parse_duration("1h") == 3600.0
    assert parse_duration("1h30m") == 5400.0  # Go's syntax, as etcd's duration flags
    assert parse_duration("1.5s250ms") == 1.75
    for bad in ("x", "-1s", "1d", "", "nan", "inf", "1h x", "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_endpoints():
    assert Endpoint.parse("127.0.0.1:2379") == Endpoint("127.0.0.1:2379", None)
    assert Endpoint.parse("http://10.0.0.1:2379") == Endpoint("10.0.0.1:2379", False)
    assert Endpoint.parse("https://h:1") == Endpoint("h:1", True)
    assert Endpoint.parse("http://[::1]:2379").target == "[::1]:2379"
    for bad in ("", "nohost", "ftp://h:1", "http://h"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)
    assert [e.target for e in core.parse_endpoints("a:1, b:2,")] == ["a:1", "b:2"]
    o = core.make_options("a:1", user="root:pw")
    assert (o.user, o.password) == ("root", "pw")
    with pytest.raises(ValueError):
        core.make_options("a:1", cert="c.pem")  # no key
    assert core.make_options("a:1", ca_cert=b"x").use_tls(Endpoint("a:1", None))
    assert not core.make_options("a:1").use_tls(Endpoint("a:1", None))


# -- error classification --------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,details,want",
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused", NOT_SENT),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", NOT_SENT),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner", NOT_SENT),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", AMBIGUOUS),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", AMBIGUOUS),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped", AMBIGUOUS),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", AMBIGUOUS),
        (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", REAUTH),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", FATAL),
        (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", FATAL),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests", NOT_SENT),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", FATAL),
    ],
)
def test_classify(code, details, want):
    assert classify(code, details) == want


def test_server_errors_map_to_classes():
    assert isinstance(server_error(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"), Compacted)
    assert isinstance(server_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"), LeaseNotFound)
    assert isinstance(server_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"), NoSpace)
    assert isinstance(server_error(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"), PermissionDenied)
    e = server_error(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: something")
    assert type(e) is ServerError and e.code == "FAILED_PRECONDITION"


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FakeKV:
    """Answers each call from a script: an exception to raise or a response."""

    def __init__(self, script):
        self.script = list(script)
        self.calls: list[str] = []

    def _next(self, name, req):
        self.calls.append(name)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def Put(self, req, timeout=None, metadata=None):
        return self._next("Put", req)

    def Range(self, req, timeout=None, metadata=None):
        return self._next("Range", req)

    def Txn(self, req, timeout=None, metadata=None):
        return self._next("Txn", req)

    def DeleteRange(self, req, timeout=None, metadata=None):
        return self._next("DeleteRange", req)


def fake_client(script, endpoints="a:1,b:2,c:3", **kw):
    c = Client(endpoints, timeout=kw.pop("timeout", 5.0), backoff_base=0.001, backoff_cap=0.002, **kw)
    kv = FakeKV(script)
    used: list[str] = []

    def stub(ep, service):
        used.append(ep.target)
        return kv

    c._ready = lambda ep, timeout: True  # type: ignore[method-assign]
    c._stub = stub  # type: ignore[method-assign]
    return c, kv, used


SOCKET_CLOSED = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
REFUSED = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
HDR = rpc_pb2.ResponseHeader(revision=5)


def test_plain_put_is_never_retried_after_an_ambiguous_failure():
    c, kv, _ = fake_client([SOCKET_CLOSED, rpc_pb2.PutResponse(header=HDR)])
    with pytest.raises(OutcomeUnknown) as ei:
        c.put("k", "v")
    assert kv.calls == ["Put"]
    assert "may or may not have been applied" in str(ei.value)
    c.close()


def test_put_not_sent_is_retried_on_the_next_endpoint():
    c, kv, used = fake_client([REFUSED, rpc_pb2.PutResponse(header=HDR)])
    assert c.put("k", "v").revision == 5
    assert kv.calls == ["Put", "Put"] and used[0] != used[1]
    c.close()


def test_reads_and_guarded_txns_are_retried_unguarded_txn_is_not():
    c, kv, used = fake_client([SOCKET_CLOSED, FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
                               rpc_pb2.RangeResponse(header=HDR)])
    assert c.get("k") is None
    assert len(set(used)) == 3
    c.close()

    c, kv, _ = fake_client([SOCKET_CLOSED, rpc_pb2.TxnResponse(header=HDR, succeeded=False)])
    r = c.txn().if_(version("k") == 0).then(put("k", "v")).commit()
    assert r.retried and not r.succeeded and kv.calls == ["Txn", "Txn"]
    c.close()

    c, kv, _ = fake_client([SOCKET_CLOSED])
    with pytest.raises(OutcomeUnknown):
        c.txn().then(put("k", "v")).commit()
    c.close()


def test_fatal_error_is_raised_at_once_and_deadline_ends_retries():
    c, kv, _ = fake_client([FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")])
    with pytest.raises(ServerError, match="key is not provided"):
        c.get("")
    assert kv.calls == ["Range"]
    c.close()
    c, kv, _ = fake_client([REFUSED] * 10_000, timeout=0.3)
    with pytest.raises(Timeout):
        c.put("k", "v")
    c.close()


def test_async_client_shares_the_retry_rules():
    class AsyncKV(FakeKV):
        async def _anext(self, name, req):
            return self._next(name, req)

        def Put(self, req, timeout=None, metadata=None):
            return self._anext("Put", req)

        def Range(self, req, timeout=None, metadata=None):
            return self._anext("Range", req)

    async def main():
        c = AsyncClient("a:1,b:2", timeout=5.0, backoff_base=0.001, backoff_cap=0.002)
        kv = AsyncKV([SOCKET_CLOSED, SOCKET_CLOSED, rpc_pb2.RangeResponse(header=HDR, kvs=[kv_pb2.KeyValue(key=b"k")]),
                      SOCKET_CLOSED])

        async def ready(ep, timeout):
            return True

        c._ready = ready  # type: ignore[method-assign]
        c._stub = lambda ep, service: kv  # type: ignore[method-assign]
        got = await c.get("k")
        assert got.key == b"k" and kv.calls == ["Range"] * 3
        with pytest.raises(OutcomeUnknown):
            await c.put("k", "v")

    asyncio.run(main())


# -- transaction builder -------------------------------------------------------------------


def test_txn_builder_builds_etcd_request():
    b = TxnBuilder()
    req = (b.if_(value("k") == "v", version("k") > 1, create_revision("n") == 0, mod_revision("m") < 9,
                 lease("l") != 7)
           .then(put("k", "w", lease=3), get("p/", prefix=True, limit=2), delete("d", prefix=True),
                 txn_op([value("x") == "1"], [put("x", "2")]))
           .else_(get("k"))
           .request())
    C = rpc_pb2.Compare
    assert [(c.key, c.target, c.result) for c in req.compare] == [
        (b"k", C.VALUE, C.EQUAL), (b"k", C.VERSION, C.GREATER), (b"n", C.CREATE, C.EQUAL),
        (b"m", C.MOD, C.LESS), (b"l", C.LEASE, C.NOT_EQUAL)]
    assert req.compare[0].value == b"v" and req.compare[1].version == 1 and req.compare[4].lease == 7
    assert req.success[0].request_put.lease == 3
    assert req.success[1].request_range.range_end == b"p0" and req.success[1].request_range.limit == 2
    assert req.success[2].request_delete_range.range_end == b"e"
    assert req.success[3].request_txn.success[0].request_put.value == b"2"
    assert req.failure[0].request_range.key == b"k"
    assert compare("k", "mod", ">", 3).pb.mod_revision == 3


def test_txn_builder_misuse_is_an_error():
    with pytest.raises(TypeError):
        version("k") == "not an int"  # noqa: B015
    with pytest.raises(TypeError):
        bool(value("k") == "v")
    with pytest.raises(TypeError):
        value("k") <= "v"  # noqa: B015
    with pytest.raises(ValueError):
        TxnBuilder().then(put("a", "b")).if_(value("a") == "b")
    with pytest.raises(ValueError):
        TxnBuilder().then().then()
    with pytest.raises(TypeError):
        TxnBuilder().then("put a b")


def test_txn_safety():
    assert txn_is_safe(TxnBuilder().then(get("a")).request())
    assert txn_is_safe(TxnBuilder().if_(value("a") == "1").then(put("a", "2")).request())
    assert not txn_is_safe(TxnBuilder().then(put("a", "2")).request())
    assert not txn_is_safe(TxnBuilder().then(txn_op([], [delete("a")])).request())


def test_prefix_end():
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


# -- watch resumption -----------------------------------------------------------------------


def ev(key, rev, typ=kv_pb2.Event.PUT):
    return kv_pb2.Event(type=typ, kv=kv_pb2.KeyValue(key=key, mod_revision=rev, value=b"v"))


def resp(*events, revision=0, created=False, **kw):
    return rpc_pb2.WatchResponse(header=rpc_pb2.ResponseHeader(revision=revision), events=list(events),
                                 created=created, **kw)


def test_watch_resume_pins_now_and_resumes_without_gap_or_repeat():
    w = WatchResume(rpc_pb2.WatchCreateRequest(key=b"a"))
    assert not w.pinned
    assert w.on_response(resp(revision=10, created=True)) == []
    assert w.request().create_request.start_revision == 11
    # a revision split over two responses, connection lost after the first part
    got = w.on_response(resp(ev(b"a1", 11), ev(b"a2", 12)))
    assert [e.key for e in got] == [b"a1", b"a2"]
    assert w.request().create_request.start_revision == 12
    # the re-created watch repeats revision 12 entirely
    got = w.on_response(resp(ev(b"a2", 12), ev(b"a3", 12), ev(b"a4", 13)))
    assert [(e.key, e.revision) for e in got] == [(b"a3", 12), (b"a4", 13)]
    assert w.on_response(resp(ev(b"a4", 13))) == []
    # progress notification: everything up to 20 was sent
    assert w.on_response(resp(revision=20)) == []
    assert w.request().create_request.start_revision == 21
    assert w.on_response(resp(revision=15)) == [] and w.floor == 21


def test_watch_resume_explicit_start_and_compaction_and_cancel():
    w = WatchResume(rpc_pb2.WatchCreateRequest(key=b"a", start_revision=5), "watch 'a'")
    assert w.on_response(resp(revision=30, created=True)) == [] and w.floor == 5
    with pytest.raises(WatchCompacted) as ei:
        w.on_response(resp(canceled=True, compact_revision=9))
    assert ei.value.compact_revision == 9 and "re-list" in ei.value.message
    with pytest.raises(WatchError, match="permission denied"):
        w.on_response(resp(canceled=True, cancel_reason="etcdserver: permission denied"))


# -- kvctl pure parts ----------------------------------------------------------------------------


def test_env_mapping():
    assert env_name("/config/app/db-host", "/config/app/") == "DB_HOST"
    assert env_name("/config/app/db/port", "/config/app/") == "DB_PORT"
    assert env_name("/config/app/log.level", "/config/app/") == "LOG_LEVEL"
    assert env_name("/config/app/2fa", "/config/app/") == "_2FA"
    assert env_name("/config/app/", "/config/app/") is None
    assert env_name("/other", "/config/app/") is None
    assert env_name("/config/app/x", "/config/app/", "APP_") == "APP_X"
    kvs = [(b"/c/db_host", b"b"), (b"/c/db-host", b"a"), (b"/c/nul", b"x\0y"), (b"/c/bin", b"\xff")]
    env, warnings = build_env(kvs, "/c/")
    assert env["DB_HOST"] == "a"  # "/c/db-host" sorts before "/c/db_host"
    assert "NUL" not in env and env["BIN"].encode("utf-8", "surrogateescape") == b"\xff"
    assert any("both map to DB_HOST" in w for w in warnings) and any("NUL" in w for w in warnings)
    # deterministic whatever the input order
    assert build_env(list(reversed(kvs)), "/c/") == (env, warnings)


def test_template_rendering():
    kvs = {b"/app/db-host": b"db1", b"/app/servers/a": b"10.0.0.1", b"/app/servers/b": b"10.0.0.2",
           b"/app/price": b"5"}
    t = "host=$DB_HOST cost=$$${PRICE}\n{% for servers/ %}server $value; # $key ($name, $fullkey)\n{% end %}"
    assert render(t, kvs, "/app/") == (
        "host=db1 cost=$5\nserver 10.0.0.1; # a (SERVERS_A, /app/servers/a)\n"
        "server 10.0.0.2; # b (SERVERS_B, /app/servers/b)\n")
    assert render("{% for %}$key {% end %}", kvs, "/app/") == "db-host price servers/a servers/b "
    assert render("{% for servers/ %}{% for %}.{% end %}{% end %}", kvs, "/app/") == "." * 8
    with pytest.raises(TemplateError, match="MISSING"):
        render("$MISSING", kvs, "/app/")
    assert render("[$MISSING]", kvs, "/app/", missing="empty") == "[]"
    for bad in ("{% for x %}", "{% end %}"):
        with pytest.raises(TemplateError):
            render(bad, kvs, "/app/")


def test_txn_syntax():
    C = rpc_pb2.Compare
    c = parse_compare('mod("key1") > "0"').pb
    assert (c.key, c.target, c.result, c.mod_revision) == (b"key1", C.MOD, C.GREATER, 0)
    c = parse_compare('value("k") = "a \\"b\\""').pb
    assert c.value == b'a "b"' and c.result == C.EQUAL
    assert parse_compare('lease("k") = "1f"').pb.lease == 0x1F
    assert parse_compare('ver("k") != "2"').pb.version == 2
    r = parse_request('put k "hello world" --lease 1f').pb.request_put
    assert (r.key, r.value, r.lease) == (b"k", b"hello world", 0x1F)
    assert parse_request("get a --prefix --limit 3").pb.request_range.range_end == b"b"
    assert parse_request("del a b").pb.request_delete_range.range_end == b"b"
    cmps, ok, bad = parse_sections(['value("a") = "1"\n', "\n", "put a 2\n", "get a\n", "\n", "put a 3\n"])
    assert (len(cmps), len(ok), len(bad)) == (1, 2, 1)
    for line in ('value(k) = "1"', 'foo("k") = "1"', 'version("k") = "x"'):
        with pytest.raises(TxnSyntaxError):
            parse_compare(line)
    for line in ("frob a", "put a", "get"):
        with pytest.raises(TxnSyntaxError):
            parse_request(line)


def test_table_and_progress():
    out = io.StringIO()
    table(["name", "n"], [["a", 1], ["long-name", 22]], out)
    lines = out.getvalue().splitlines()
    assert len({len(x) for x in lines}) == 1  # aligned
    assert lines[1] == "|   NAME    | N  |"
    p = Progress("snap", stream=io.StringIO(), enabled=True)
    assert "50.0%" in p.render(50, 100)
    assert "snap [" in p.render(10, 0)
    quiet = io.StringIO()
    Progress("x", stream=quiet).update(1, 2)  # not a TTY: silent
    assert quiet.getvalue() == ""


def test_snapshot_accumulator_verifies_digest_across_chunk_boundaries():
    body = bytes(range(256)) * 40
    stream = body + hashlib.sha256(body).digest()
    out = io.BytesIO()
    acc = SnapshotAccumulator(out, None)
    for i in range(0, len(stream), 1000):  # the digest straddles chunks
        acc.add(stream[i:i + 1000], 0)
    info = acc.finish("ep")
    assert out.getvalue() == stream and info.size == len(body)
    bad = SnapshotAccumulator(io.BytesIO(), None)
    bad.add(body + b"\0" * 32, 0)
    with pytest.raises(Exception, match="SHA-256 mismatch"):
        bad.finish("ep")
