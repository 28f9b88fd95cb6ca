"""Unit tests of kvstore.auth: permission intervals, the replicated auth
store (etcd 3.4's rules and errors), tokens, the brute-force brake, password
hashes, and the apply-time checks through a real Applier on a real store."""
from __future__ import annotations

import asyncio
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import errors
from kvstore.apply import Applier
from kvstore.auth import INTERNAL, STALE, Auth, AuthInfo
from kvstore.auth import password as pw
from kvstore.auth.perms import READ, READWRITE, WRITE, Intervals, UserPerms, request_interval
from kvstore.auth.state import AuthState
from kvstore.auth.tokens import Throttle, TokenTable, split_token
from kvstore.errors import EtcdError
from kvstore.mvcc import MvccStore
from kvstore.pb import auth_pb2, internal_pb2, rpc_pb2
from raft.types import Entry, EntryType


def perm(t: int, key: bytes, end: bytes = b"") -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=t, key=key, range_end=end)


# ---------------------------------------------------------------------------
# permissions


def test_point_permission_allows_only_that_key() -> None:
    p = UserPerms([perm(READ, b"foo")])
    assert p.allows(READ, b"foo")
    assert not p.allows(READ, b"foo0")
    assert not p.allows(READ, b"fo")
    assert not p.allows(WRITE, b"foo")
    assert not p.allows(READ, b"foo", b"fop")  # a range, even one starting there


def test_range_prefix_and_from_key_permissions() -> None:
    p = UserPerms([perm(READWRITE, b"app/", b"app0"), perm(WRITE, b"z", b"\0")])
    assert p.allows(READ, b"app/x") and p.allows(WRITE, b"app/x")
    assert p.allows(READ, b"app/", b"app0")  # the whole prefix
    assert p.allows(READ, b"app/a", b"app/b")
    assert not p.allows(READ, b"app/", b"app1")  # beyond the prefix
    assert not p.allows(READ, b"ap", b"app0")  # starts before
    assert not p.allows(READ, b"app/", b"\0")  # from-key: unbounded
    assert p.allows(WRITE, b"zzz") and p.allows(WRITE, b"z", b"\0")
    assert not p.allows(READ, b"zzz")
    assert not p.allows(WRITE, b"y", b"\0")


def test_touching_and_overlapping_permissions_join() -> None:
    p = UserPerms([perm(READ, b"a", b"c"), perm(READ, b"c", b"e"), perm(READ, b"d", b"g")])
    assert p.allows(READ, b"a", b"g")
    q = UserPerms([perm(READ, b"a", b"c"), perm(READ, b"c\0", b"e")])  # gap: key "c"
    assert not q.allows(READ, b"a", b"e")
    assert q.allows(READ, b"c\0")
    # A point permission fills exactly one key of a gap.
    r = UserPerms([perm(READ, b"a", b"c"), perm(READ, b"c"), perm(READ, b"c\0", b"e")])
    assert r.allows(READ, b"a", b"e")


def test_empty_permission_ranges_grant_nothing_and_root_allows_all() -> None:
    p = UserPerms([perm(READ, b"b", b"a"), perm(READ, b"b", b"b")])
    assert not p.allows(READ, b"b")
    assert UserPerms([], root=True).allows(WRITE, b"\0", b"\0")


def _covered(perms: list[tuple[bytes, bytes]], key: bytes, end: bytes, universe: list[bytes]) -> bool:
    begin, stop = request_interval(key, end)
    want = [k for k in universe if k >= begin and (stop is None or k < stop)]
    ok = []
    for k in want:
        hit = False
        for pk, pe in perms:
            b, e = request_interval(pk, pe)
            if e is not None and e <= b:
                continue
            if k >= b and (e is None or k < e):
                hit = True
        ok.append(hit)
    return all(ok)


_keys = st.binary(min_size=1, max_size=3).map(lambda b: bytes(x % 3 + 97 for x in b))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_keys, st.one_of(st.just(b""), st.just(b"\0"), _keys)), max_size=5),
    _keys,
    st.one_of(st.just(b""), _keys),
)
def test_coverage_agrees_with_brute_force(perms, key, end) -> None:
    # Keys of at most 4 letters over {a, b, c} (plus the "\0" successors a
    # point range contains) stand in for all keys: a bounded range whose ends
    # are such keys is covered iff each of its keys in this universe is.
    letters = [b"a", b"b", b"c"]
    universe = [b""]
    for _ in range(4):
        universe = universe + [u + c for u in universe for c in letters if len(u) < 4]
    universe = sorted(set(universe + [u + b"\0" for u in universe]))
    if end and end <= key:
        return
    p = UserPerms([perm(READ, k, e) for k, e in perms])
    assert p.allows(READ, key, end) == _covered(perms, key, end, universe)


def test_intervals_empty() -> None:
    assert not Intervals([]).covers(b"a", b"b")


# ---------------------------------------------------------------------------
# the auth store


def hdr(user: str, rev: int) -> internal_pb2.AuthHeader:
    return internal_pb2.AuthHeader(username=user, revision=rev)


def apply(s: AuthState, kind: str, msg, header=None):
    return s.apply(kind, msg, header)


def setup_root(s: AuthState) -> None:
    apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name="root", password_hash=b"h"))
    apply(s, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))


def test_enable_needs_root_user_with_root_role() -> None:
    s = AuthState()
    with pytest.raises(EtcdError) as e:
        apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    assert e.value.message == "etcdserver: root user does not exist"
    apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name="root", password_hash=b"h"))
    with pytest.raises(EtcdError) as e:
        apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    assert e.value.message == "etcdserver: root user does not have root role"
    # Granting the role "root" does not need the role to exist.
    apply(s, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    rev = s.revision
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    assert s.enabled and s.revision == rev  # enable does not bump the revision


def test_revision_bumps_and_noop_grant() -> None:
    s = AuthState()
    assert s.revision == 1
    setup_root(s)
    assert s.revision == 3
    apply(s, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    assert s.revision == 3  # already granted: nothing changes
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest(), hdr("root", 4))
    apply(s, "auth_disable", rpc_pb2.AuthDisableRequest(), hdr("root", 4))
    assert not s.enabled and s.revision == 5
    apply(s, "auth_disable", rpc_pb2.AuthDisableRequest())
    assert s.revision == 5


def test_admin_only_while_enabled() -> None:
    s = AuthState()
    setup_root(s)
    apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name="u", password_hash=b"h"))
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    cases = [
        (hdr("", 1), "etcdserver: user name is empty"),
        (hdr("ghost", 9), "etcdserver: user name not found"),
        (hdr("u", 9), "etcdserver: permission denied"),
    ]
    for h, msg in cases:
        with pytest.raises(EtcdError) as e:
            apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="x"), h)
        assert e.value.message == msg
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="x"), hdr("root", 1))  # admin: no revision check
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="y"), internal_pb2.AuthHeader(internal=True))


def test_root_protected_while_enabled_only() -> None:
    s = AuthState()
    setup_root(s)
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="root"))
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    root = hdr("root", s.revision)
    for kind, msg in [
        ("auth_user_delete", rpc_pb2.AuthUserDeleteRequest(name="root")),
        ("auth_role_delete", rpc_pb2.AuthRoleDeleteRequest(role="root")),
        ("auth_user_revoke_role", rpc_pb2.AuthUserRevokeRoleRequest(name="root", role="root")),
    ]:
        with pytest.raises(EtcdError) as e:
            apply(s, kind, msg, root)
        assert e.value.message == "etcdserver: invalid auth management"
    apply(s, "auth_disable", rpc_pb2.AuthDisableRequest(), root)
    apply(s, "auth_role_delete", rpc_pb2.AuthRoleDeleteRequest(role="root"))
    assert list(s.users["root"].roles) == []  # removed from its users too
    apply(s, "auth_user_delete", rpc_pb2.AuthUserDeleteRequest(name="root"))


def test_user_and_role_errors() -> None:
    s = AuthState()
    cases = [
        ("auth_user_add", internal_pb2.AuthUserAdd(name=""), "etcdserver: user name is empty"),
        ("auth_role_add", rpc_pb2.AuthRoleAddRequest(name=""), "etcdserver: role name is empty"),
        ("auth_user_delete", rpc_pb2.AuthUserDeleteRequest(name="x"), "etcdserver: user name not found"),
        ("auth_user_change_password", internal_pb2.AuthUserChangePassword(name="x"), "etcdserver: user name not found"),
        ("auth_role_delete", rpc_pb2.AuthRoleDeleteRequest(role="x"), "etcdserver: role name not found"),
        ("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="x", role="r"), "etcdserver: user name not found"),
        (
            "auth_role_grant_permission",
            rpc_pb2.AuthRoleGrantPermissionRequest(name="x", perm=perm(READ, b"k")),
            "etcdserver: role name not found",
        ),
        ("auth_authenticate", internal_pb2.AuthAuthenticate(name="x"), "etcdserver: authentication is not enabled"),
    ]
    for kind, msg, want in cases:
        with pytest.raises(EtcdError) as e:
            apply(s, kind, msg)
        assert e.value.message == want, kind
    apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name="u", password_hash=b"h"))
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    for kind, msg, want in [
        ("auth_user_add", internal_pb2.AuthUserAdd(name="u"), "etcdserver: user name already exists"),
        ("auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"), "etcdserver: role name already exists"),
        ("auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="u", role="q"), "etcdserver: role name not found"),
        ("auth_user_revoke_role", rpc_pb2.AuthUserRevokeRoleRequest(name="u", role="r"), "etcdserver: role is not granted to the user"),
        (
            "auth_role_revoke_permission",
            rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"k"),
            "etcdserver: permission is not granted to the role",
        ),
    ]:
        with pytest.raises(EtcdError) as e:
            apply(s, kind, msg)
        assert e.value.message == want, kind


def test_permission_grant_replace_revoke_and_check() -> None:
    s = AuthState()
    setup_root(s)
    apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name="u", password_hash=b"h"))
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    apply(s, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r"))
    grant = lambda p: apply(s, "auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=p))
    grant(perm(READ, b"b/", b"b0"))
    grant(perm(READ, b"a"))
    grant(perm(WRITE, b"b/", b"b0"))  # same key and end: type replaced
    assert [(p.key, p.permType) for p in s.roles["r"].keyPermission] == [(b"a", READ), (b"b/", WRITE)]
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    rev = s.revision
    assert s.op_error("u", rev, WRITE, b"b/1") is None
    assert s.op_error("u", rev, READ, b"b/1") == errors.PERMISSION_DENIED
    assert s.op_error("u", rev, READ, b"a") is None
    assert s.op_error("", rev, READ, b"a") == errors.USER_EMPTY
    assert s.op_error("u", 0, READ, b"a") == errors.USER_EMPTY
    assert s.op_error("ghost", rev, READ, b"a") == errors.PERMISSION_DENIED
    assert s.op_error("root", rev, WRITE, b"anything", b"\0") is None
    apply(s, "auth_role_revoke_permission", rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"a"), hdr("root", rev))
    assert s.revision == rev + 1
    assert s.op_error("u", rev, READ, b"a") == errors.AUTH_OLD_REVISION  # proposed before the change
    assert s.op_error("u", rev + 1, READ, b"a") == errors.PERMISSION_DENIED
    apply(s, "auth_user_revoke_role", rpc_pb2.AuthUserRevokeRoleRequest(name="u", role="r"), hdr("root", 0))
    assert s.op_error("u", s.revision, WRITE, b"b/1") == errors.PERMISSION_DENIED


def test_dump_load_round_trip_is_deterministic() -> None:
    s = AuthState()
    setup_root(s)
    for n in ["zed", "amy", "bob"]:
        apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name=n, password_hash=b"h" + n.encode()))
    apply(s, "auth_role_add", rpc_pb2.AuthRoleAddRequest(name="r"))
    apply(s, "auth_role_grant_permission", rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=perm(READ, b"k", b"\0")))
    apply(s, "auth_user_grant_role", rpc_pb2.AuthUserGrantRoleRequest(user="bob", role="r"))
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    t = AuthState.load(s.dump())
    assert t.dump() == s.dump()
    assert t.enabled and t.revision == s.revision
    assert t.user_names() == ["amy", "bob", "root", "zed"]
    assert t.op_error("bob", t.revision, READ, b"kz") is None


def test_authenticate_apply_rules() -> None:
    s = AuthState()
    setup_root(s)
    apply(s, "auth_user_add", internal_pb2.AuthUserAdd(name="np", no_password=True))
    apply(s, "auth_enable", rpc_pb2.AuthEnableRequest())
    for name in ["ghost", "np"]:
        with pytest.raises(EtcdError) as e:
            apply(s, "auth_authenticate", internal_pb2.AuthAuthenticate(name=name, checked_revision=s.revision))
        assert e.value.message == "etcdserver: authentication failed, invalid user ID or password"
    from kvstore.auth.state import Stale

    with pytest.raises(Stale):
        apply(s, "auth_authenticate", internal_pb2.AuthAuthenticate(name="root", checked_revision=s.revision - 1))
    apply(s, "auth_authenticate", internal_pb2.AuthAuthenticate(name="root", checked_revision=s.revision))


# ---------------------------------------------------------------------------
# tokens, throttle, passwords


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_ttl_renewed_on_use_and_dropped() -> None:
    from kvstore.auth.tokens import secret_hash

    clock = Clock()
    tt = TokenTable(ttl=300, clock=clock)
    tt.add(secret_hash("s1"), "alice")
    tt.add(secret_hash("s2"), "bob")
    clock.t += 200
    assert tt.lookup("s1") == "alice"  # renewed: lives until +500
    clock.t += 200
    assert tt.lookup("s1") == "alice"
    assert tt.lookup("s2") is None  # expired at +300
    tt.drop_user("alice")
    assert tt.lookup("s1") is None
    assert tt.lookup("nope") is None
    tt.add(secret_hash("s3"), "carol")
    clock.t += 301
    tt.sweep()
    assert len(tt) == 0


def test_split_token() -> None:
    assert split_token("abc.12") == ("abc", 12)
    assert split_token("a.b.12") == ("a.b", 12)
    for bad in ["", "abc", "abc.", ".12", "abc.x1", "abc." + "9" * 30]:
        assert split_token(bad) is None


def test_throttle_backs_off_per_name_and_globally() -> None:
    clock = Clock()
    th = Throttle(free=2, base=0.5, cap=4.0, window=60, global_free=10, global_delay=1.0, clock=clock)
    assert th.delay("a") == 0
    th.failed("a")
    th.failed("a")
    assert th.delay("a") == 0.5
    th.failed("a")
    assert th.delay("a") == 1.0
    for _ in range(10):
        th.failed("a")
    assert th.delay("a") == 4.0  # capped
    assert th.delay("b") == 1.0  # many failures overall: everybody waits a little
    th.succeeded("a")
    clock.t += 61
    assert th.delay("a") == 0 and th.delay("b") == 0


def test_password_hash_and_verify() -> None:
    h = pw.hash_password("s3cret", log2_n=4)
    assert h.startswith(b"scrypt$4$")
    assert pw.verify_password("s3cret", h)
    assert not pw.verify_password("s3cre", h)
    assert pw.hash_password("s3cret", log2_n=4) != h  # salted
    for bad in [b"", b"bcrypt$x", b"scrypt$4$8$1$!!$!!", b"scrypt$30$8$1$AA==$AA=="]:
        assert not pw.verify_password("s3cret", bad)


# ---------------------------------------------------------------------------
# apply-time checks through the Applier on a real store


class FakeNode:
    applied = 0

    async def wait_applied(self, index: int) -> None:  # pragma: no cover
        return None


class FakeServer:
    def __init__(self, store: MvccStore) -> None:
        self.store = store
        self.node = FakeNode()
        self.cfg = None


class Member:
    """A store + applier + auth, fed entries like a Raft member."""

    def __init__(self, path: str) -> None:
        self.store = MvccStore(path)
        self.results: dict[int, object] = {}
        self.applier = Applier(self.store, 1, self._result, lambda ml: None)
        self.auth = Auth(FakeServer(self.store), hash_log2_n=4)
        self.applier.auth = self.auth
        self.applier.event_sinks.append(self.auth)
        self.index = 0
        self.rid = 0

    def _result(self, rid: int, res) -> None:
        self.results[rid] = res

    def entry(self, req: internal_pb2.InternalRequest) -> Entry:
        self.rid += 1
        req.id = self.rid
        req.member_id = 1
        self.index += 1
        return Entry(1, self.index, EntryType.NORMAL, req.SerializeToString())

    def run(self, reqs: list[internal_pb2.InternalRequest], split: int = 1) -> list:
        ents = [self.entry(r) for r in reqs]
        for i in range(0, len(ents), split):
            self.applier.apply(ents[i : i + split])
        return [self.results.pop(e_id) for e_id in range(self.rid - len(reqs) + 1, self.rid + 1)]


def R(user: str | None = None, rev: int = 0, **kw) -> internal_pb2.InternalRequest:
    req = internal_pb2.InternalRequest(**kw)
    if user is not None:
        req.auth_header.CopyFrom(hdr(user, rev))
    return req


def _scenario() -> list[internal_pb2.InternalRequest]:
    P = rpc_pb2.PutRequest
    return [
        R(auth_user_add=internal_pb2.AuthUserAdd(name="root", password_hash=b"h")),
        R(auth_user_grant_role=rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root")),
        R(auth_user_add=internal_pb2.AuthUserAdd(name="u", password_hash=b"h")),
        R(auth_role_add=rpc_pb2.AuthRoleAddRequest(name="r")),
        R(auth_role_grant_permission=rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=perm(READWRITE, b"a/", b"a0"))),
        R(auth_user_grant_role=rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r")),  # revision 7
        R(auth_enable=rpc_pb2.AuthEnableRequest()),
        R("u", 7, put=P(key=b"a/1", value=b"v")),  # 7: allowed
        R("u", 7, put=P(key=b"b/1", value=b"v")),  # 8: denied
        R(put=P(key=b"a/2", value=b"v")),  # 9: no identity: refused
        R("", 7, put=P(key=b"a/2", value=b"v")),  # 10: no user
        R("u", 7, txn=rpc_pb2.TxnRequest(  # 11: compare outside
            compare=[rpc_pb2.Compare(key=b"zz", target=rpc_pb2.Compare.VERSION, version=0)],
            success=[rpc_pb2.RequestOp(request_put=P(key=b"a/3", value=b"x"))])),
        R("u", 7, txn=rpc_pb2.TxnRequest(  # 12: nested txn writes outside
            success=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(
                success=[rpc_pb2.RequestOp(request_put=P(key=b"c", value=b"x"))]))])),
        R("u", 7, delete_range=rpc_pb2.DeleteRangeRequest(key=b"a/", range_end=b"a1")),  # 13: beyond
        R("u", 7, delete_range=rpc_pb2.DeleteRangeRequest(key=b"a/", range_end=b"a0")),  # 14: ok
        R(lease_grant=rpc_pb2.LeaseGrantRequest(ID=77, TTL=60)),  # 15
        R("root", 7, put=P(key=b"secret", value=b"s", lease=77)),  # 16: root may
        R("u", 7, put=P(key=b"a/4", value=b"v", lease=77)),  # 17: lease carries an unwritable key
        R("u", 7, lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=77)),  # 18: same
        R("root", 7, auth_role_revoke_permission=rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"a/", range_end=b"a0")),
        R("u", 7, put=P(key=b"a/5", value=b"v")),  # 20: proposed before the change
        R("u", 8, put=P(key=b"a/5", value=b"v")),  # 21: after it: denied
        R(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=77)),  # 22: the lessor (no identity) may
        R("root", 8, auth_disable=rpc_pb2.AuthDisableRequest()),
        R(put=P(key=b"b/2", value=b"v")),  # 24: open again
    ]


def _outcome(results: list) -> list[str]:
    return ["ok" if r.error is None else r.error.message for r in results]


def test_writes_are_checked_when_applied() -> None:
    with tempfile.TemporaryDirectory() as d:
        m = Member(os.path.join(d, "kv"))
        out = _outcome(m.run(_scenario()))
        deny, empty, old = "etcdserver: permission denied", "etcdserver: user name is empty", "etcdserver: revision of auth store is old"
        assert out[7:] == [
            "ok", deny, empty, empty, deny, deny, deny, "ok", "ok", "ok", deny, deny, "ok", old, deny, "ok", "ok", "ok",
        ]
        assert m.store.range(rpc_pb2.RangeRequest(key=b"b/2")).count == 1
        m.store.close()


def test_apply_is_the_same_whatever_the_batch_boundaries() -> None:
    with tempfile.TemporaryDirectory() as d:
        outs, dumps, hashes = [], [], []
        for split in (1, 3, 100):
            m = Member(os.path.join(d, f"kv{split}"))
            outs.append(_outcome(m.run(_scenario(), split=split)))
            dumps.append(m.auth.state.dump())
            hashes.append(m.store.hash_kv()[0])
            m.store.close()
        assert outs[0] == outs[1] == outs[2]
        assert dumps[0] == dumps[1] == dumps[2]
        assert hashes[0] == hashes[1] == hashes[2]


def test_auth_state_survives_reopen_and_restore_hook() -> None:
    with tempfile.TemporaryDirectory() as d:
        m = Member(os.path.join(d, "kv"))
        m.run(_scenario()[:7])
        assert m.auth.enabled
        m.store.close()
        m2 = Member(os.path.join(d, "kv"))
        assert m2.auth.enabled and m2.auth.state.user_names() == ["root", "u"]
        m2.auth.tokens.add(b"x" * 32, "ghost")
        m2.auth.on_restore()  # as after a snapshot: tokens of unknown users go
        assert len(m2.auth.tokens) == 0
        m2.store.close()


def test_identity_stamping_and_checks() -> None:
    with tempfile.TemporaryDirectory() as d:
        m = Member(os.path.join(d, "kv"))
        m.run(_scenario()[:7])
        a = m.auth
        req = internal_pb2.InternalRequest(put=rpc_pb2.PutRequest(key=b"k"))
        a.stamp(req)
        assert not req.HasField("auth_header")  # no identity: nothing
        with a.identity(AuthInfo("u")):
            a.stamp(req)
        assert req.auth_header.username == "u" and req.auth_header.revision == a.state.revision
        req2 = internal_pb2.InternalRequest()
        with a.internal():
            a.stamp(req2)
        assert req2.auth_header.internal
        a.check(AuthInfo("u"), "read", b"a/1")
        a.check(INTERNAL, "write", b"zz")
        with pytest.raises(EtcdError, match="permission denied"):
            a.check(AuthInfo("u"), "read", b"a/", b"\0")
        with pytest.raises(EtcdError, match="permission denied"):
            a.check(AuthInfo("u"), "admin")
        a.check("root", "admin")
        with pytest.raises(EtcdError, match="user name is empty"):
            a.check_request(AuthInfo(""), "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=b"a/1"))
        # read-only txn checked at the API, write txn left to apply
        ro = rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"x", target=rpc_pb2.Compare.VERSION)])
        with pytest.raises(EtcdError, match="permission denied"):
            a.check_request(AuthInfo("u"), "/etcdserverpb.KV/Txn", ro)
        ro.success.add().request_put.key = b"x"
        a.check_request(AuthInfo("u"), "/etcdserverpb.KV/Txn", ro)
        # watch: from-key needs the whole range
        assert a.watch_error(AuthInfo("u"), rpc_pb2.WatchCreateRequest(key=b"a/1")) is None
        assert a.watch_error(AuthInfo("u"), rpc_pb2.WatchCreateRequest(key=b"a/1", range_end=b"\0")) is not None
        m.store.close()


def test_authenticate_flow_tokens_and_throttle() -> None:
    class Node(FakeNode):
        pass

    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            m = Member(os.path.join(d, "kv"))
            hashed = pw.hash_password("pw", 4)
            reqs = _scenario()[:7]
            reqs[2] = R(auth_user_add=internal_pb2.AuthUserAdd(name="u", password_hash=hashed))
            m.run(reqs)
            srv = m.auth.s

            async def read_barrier() -> None:
                return None

            async def propose(req):
                res = m.run([req])[0]
                if res.error is not None:
                    raise res.error
                return res

            srv.read_barrier = read_barrier
            srv.propose = propose
            srv.header = lambda rev=None: rpc_pb2.ResponseHeader(revision=rev or 0)
            a = m.auth
            a.throttle.base = 0.001
            resp = await a.authenticate("u", "pw")
            assert (await a.resolve(resp.token)) == AuthInfo("u")
            assert a.user_from_token(resp.token) == AuthInfo("u")
            for bad in ["nope", resp.token + "x", "x" + resp.token]:
                with pytest.raises(EtcdError, match="invalid auth token"):
                    await a.resolve(bad)
            for name, password in [("u", "bad"), ("ghost", "pw")]:
                with pytest.raises(EtcdError, match="authentication failed, invalid user ID or password"):
                    await a.authenticate(name, password)
            assert a.throttle.delay("u") == 0  # one failure is free
            # A password change drops the user's tokens everywhere.
            m.run([R("root", 9, auth_user_change_password=internal_pb2.AuthUserChangePassword(name="u", password_hash=hashed))])
            with pytest.raises(EtcdError, match="invalid auth token"):
                await a.resolve(resp.token)
            # An Authenticate overtaken by an auth change is redone.
            orig = propose
            calls = []

            async def racing(req):
                if req.HasField("auth_authenticate") and not calls:
                    calls.append(1)
                    m.run([R("root", 10, auth_role_add=rpc_pb2.AuthRoleAddRequest(name="late"))])
                    res = await orig(req)
                    assert res.response is STALE
                    return res
                return await orig(req)

            srv.propose = racing
            resp2 = await a.authenticate("u", "pw")
            assert calls and a.user_from_token(resp2.token) == AuthInfo("u")
            m.store.close()

    asyncio.run(main())


def test_guard_authorises_direct_servicer_calls() -> None:
    """kvstore.api.auth.guard: what the HTTP gateway and REST API wrap the
    servicer methods with (the same code path as the gRPC interceptor)."""
    import grpc

    from kvstore.api.auth import guard
    from kvstore.auth.tokens import secret_hash

    class Aborted(Exception):
        pass

    class Ctx:
        def __init__(self, md) -> None:
            self.md = md
            self.aborted = None

        def invocation_metadata(self):
            return self.md

        async def abort(self, code, msg):
            self.aborted = (code, msg)
            raise Aborted()

    async def main() -> None:
        with tempfile.TemporaryDirectory() as d:
            m = Member(os.path.join(d, "kv"))
            srv = m.auth.s
            srv.auth = m.auth
            srv.is_learner = lambda: False
            barriers = []

            async def read_barrier() -> None:
                barriers.append(1)

            srv.read_barrier = read_barrier
            seen = []

            async def rng(req, ctx):
                seen.append((Auth.current(), req.serializable))
                return "ok"

            async def snap(req, ctx):
                yield Auth.current()

            g = guard(srv, "/etcdserverpb.KV/Range", rng)
            # Disabled: straight through, no barrier, no identity.
            assert await g(rpc_pb2.RangeRequest(key=b"b/1"), Ctx([])) == "ok"
            assert seen.pop() == (None, False) and not barriers
            m.run(_scenario()[:7])
            m.auth.tokens.add(secret_hash("sec"), "u")
            ctx = Ctx([("authorization", "sec.1")])
            assert await g(rpc_pb2.RangeRequest(key=b"a/1"), ctx) == "ok"
            assert seen.pop() == (AuthInfo("u"), True) and barriers  # read point taken first
            for md, req, want in [
                ([("token", "sec.1")], rpc_pb2.RangeRequest(key=b"b/1"), (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")),
                ([], rpc_pb2.RangeRequest(key=b"a/1"), (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")),
                ([("token", "bad.1")], rpc_pb2.RangeRequest(key=b"a/1"), (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")),
            ]:
                ctx = Ctx(md)
                with pytest.raises(Aborted):
                    await g(req, ctx)
                assert ctx.aborted == want
            gs = guard(srv, "/etcdserverpb.Maintenance/Snapshot", snap)
            ctx = Ctx([("token", "sec.1")])
            with pytest.raises(Aborted):
                [x async for x in gs(rpc_pb2.SnapshotRequest(), ctx)]
            assert ctx.aborted == (grpc.StatusCode.UNKNOWN, "auth: permission denied")
            m.auth.tokens.add(secret_hash("rootsec"), "root")
            assert [x async for x in gs(rpc_pb2.SnapshotRequest(), Ctx([("token", "rootsec.1")]))] == [AuthInfo("root")]
            m.store.close()

    asyncio.run(main())
