"""Authentication and role-based access control, as etcd 3.4 does it.

Every member has one ``Auth`` at ``server.auth`` (made in ``KvServer.start``).

The model (etcd's): users with salted password hashes and roles; roles with
READ / WRITE / READWRITE permissions on a key, a range ``[key, range_end)``,
a prefix (``range_end`` = prefix end) or everything from a key
(``range_end == b"\\0"``); the ``root`` user and role (root may do anything);
an enabled flag; an auth revision bumped by every change. That state is
replicated through Raft and applied deterministically (``state.py``), so all
members enforce the same rules from the same log index on. Tokens are
etcd's simple tokens (``tokens.py``).

Where the checks happen
-----------------------
* gRPC: each method's wrapper (``kvstore.api.authz``; no interceptor)
  resolves the ``token`` metadata (or a client certificate's common name)
  and runs ``check_request`` for every unary and server-streaming call; the Watch
  stream checks each create request (``watch_error``). Reads are checked
  after their ReadIndex barrier, against the member's applied auth state.
* Writes (Put, DeleteRange, Txn with writes, LeaseRevoke) and auth changes
  are checked when *applied*, as etcd does: ``KvServer.propose`` stamps the
  request with the caller's identity and the current auth revision
  (``stamp``), and ``apply_check`` refuses it on every member alike; a
  request proposed before a permission change and applied after it fails
  with "etcdserver: revision of auth store is old". Lock and Election are
  checked through the Txn/DeleteRange requests their recipes propose (plus a
  READ check of the election/lock prefix at the API).
* While auth is disabled everything passes: the method wrappers, ``propose`` and
  the apply loop each test one boolean (``auth.enabled``).

Use from other front ends (HTTP gateway, REST API, dashboard)
--------------------------------------------------------------
::

    info = await server.auth.resolve(token=tok, cert_cn=cn)   # AuthInfo; raises EtcdError
    # reads: after your read barrier
    server.auth.check(info, "read", key, range_end)          # or "write", "admin"
    server.auth.check_request(info, "/etcdserverpb.KV/Range", range_request)
    # writes: propose under the caller's identity, so apply checks it
    with server.auth.identity(info):
        await server.propose(internal_pb2.InternalRequest(put=req))
    token = (await server.auth.authenticate(name, password)).token   # login

``server.auth.user_from_token(token)`` is the synchronous lookup (no wait for
a token issued on another member an instant ago). ``check`` and friends
raise ``EtcdError`` with etcd's messages ("etcdserver: permission denied",
"etcdserver: user name is empty", "etcdserver: invalid auth token", ...).
IMPORTANT: a Put/DeleteRange/Txn proposed with no identity while auth is
enabled is refused at apply ("user name is empty"); code that writes on the
server's own behalf runs under ``with server.auth.internal():``.

Deliberate differences from etcd 3.4.23 (all toward refusing more):
nested Txn operations and Txn puts with a lease are checked; a from-key
watch needs READ on the whole range from its key (etcd checks its key only);
LeaseTimeToLive needs READ on the lease's keys (etcd 3.4.26+); MoveLeader and
Alarm activate/deactivate need root (etcd 3.5); with auth disabled a request
carrying a stale token is served (etcd refuses it with "invalid auth token").
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

from .. import errors
from ..errors import EtcdError
from ..pb import auth_pb2, internal_pb2, rpc_pb2, v3lock_pb2
from . import password as pw
from .state import KINDS, META_KEY, NO_PASSWORD_USER, RAW_AUTH_MESSAGES, ROOT, AuthState, Stale
from .tokens import DEFAULT_TTL, Throttle, TokenTable, new_secret, secret_hash, split_token

log = logging.getLogger("kvstore.auth")

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
_OPS = {"read": READ, "write": WRITE, READ: READ, WRITE: WRITE}

MAX_HASHES_AT_ONCE = 2  # password hashes computed concurrently per member
TOKEN_INDEX_SLACK = 1_000_000  # a token "from the future" beyond this is not waited for
TOKEN_WAIT = 5.0  # seconds a member waits to apply up to a fresh token's index


class AuthInfo(NamedTuple):
    """Who a request acts for ("" = nobody: no token was given)."""

    user: str


ANONYMOUS = AuthInfo("")
INTERNAL = AuthInfo("\0internal")  # the server itself

_identity: contextvars.ContextVar[Optional[AuthInfo]] = contextvars.ContextVar("kvstore_auth_identity", default=None)

STALE = object()  # apply result of an Authenticate overtaken by an auth change


def prefix_end(key: bytes) -> bytes:
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def raw_auth_error(e: EtcdError) -> EtcdError:
    """etcd's Maintenance API returns auth errors unconverted: UNKNOWN "auth: ..."."""
    msg = RAW_AUTH_MESSAGES.get(e.message)
    if msg is None:
        return e
    return EtcdError(NO_PASSWORD_USER.code, msg)


class Auth:
    KINDS = KINDS

    def __init__(
        self,
        server: Any,
        token_ttl: float | None = None,
        hash_log2_n: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = server
        cfg = getattr(server, "cfg", None)
        ttl = token_ttl if token_ttl is not None else float(getattr(cfg, "auth_token_ttl", 0) or DEFAULT_TTL)
        self.hash_log2_n = hash_log2_n if hash_log2_n is not None else pw.DEFAULT_LOG2_N
        self.client_cert_auth = bool(getattr(cfg, "client_cert_auth", False))
        self.tokens = TokenTable(ttl, clock)
        self.throttle = Throttle(clock=clock)
        self._hashing: asyncio.Semaphore | None = None
        self.state = AuthState.load(server.store.get_meta(META_KEY))
        self.enabled = self.state.enabled

    # ------------------------------------------------------------------ identity
    @contextlib.contextmanager
    def identity(self, info: AuthInfo) -> Iterator[None]:
        """Proposals made inside carry ``info`` (checked when applied)."""
        tok = _identity.set(info)
        try:
            yield
        finally:
            _identity.reset(tok)

    def internal(self) -> contextlib.AbstractContextManager[None]:
        """Proposals made inside act for the server itself (never refused)."""
        return self.identity(INTERNAL)

    @staticmethod
    def current() -> Optional[AuthInfo]:
        return _identity.get()

    def stamp(self, req: internal_pb2.InternalRequest) -> None:
        """Called by KvServer.propose while auth is enabled."""
        info = _identity.get()
        if info is None:
            return
        h = req.auth_header
        if info is INTERNAL:
            h.internal = True
        else:
            h.username = info.user
            h.revision = self.state.revision

    # ------------------------------------------------------------------ tokens
    def user_from_token(self, token: str) -> AuthInfo:
        """The user of a token this member knows; raises INVALID_AUTH_TOKEN."""
        parts = split_token(token)
        if parts is not None:
            user = self.tokens.lookup(parts[0])
            if user is not None:
                return AuthInfo(user)
        raise errors.INVALID_AUTH_TOKEN

    async def resolve(self, token: str | None = None, cert_cn: str | None = None) -> AuthInfo:
        """etcd's AuthInfoFromCtx: the token's user; without a token the
        client certificate's common name (when --client-cert-auth is on);
        else ANONYMOUS. A token issued on another member a moment ago is
        waited for until this member applied its Authenticate entry."""
        if token:
            parts = split_token(token)
            if parts is None:
                raise errors.INVALID_AUTH_TOKEN
            user = self.tokens.lookup(parts[0])
            if user is None:
                node = self.s.node
                if node.applied < parts[1] <= node.applied + TOKEN_INDEX_SLACK:
                    try:
                        await asyncio.wait_for(node.wait_applied(parts[1]), TOKEN_WAIT)
                    except asyncio.TimeoutError:
                        pass
                    user = self.tokens.lookup(parts[0])
            if user is None:
                raise errors.INVALID_AUTH_TOKEN
            return AuthInfo(user)
        if cert_cn:
            return AuthInfo(cert_cn)
        return ANONYMOUS

    # ------------------------------------------------------------------ checks
    def check(self, info: AuthInfo | str, op: str | int, key: bytes = b"", range_end: bytes = b"") -> None:
        """Raise unless ``info`` may do ``op`` ("read", "write" on [key,
        range_end), or "admin") under the current applied auth state."""
        if not self.enabled:
            return
        user = info if isinstance(info, str) else info.user
        if info is INTERNAL:
            return
        if op == "admin":
            err = self.state.admin_error(user)
        else:
            err = self.state.op_error(user, self.state.revision, _OPS[op], key, range_end)
        if err is not None:
            raise err

    def check_txn(self, info: AuthInfo, txn: rpc_pb2.TxnRequest) -> None:
        if not self.enabled or info is INTERNAL:
            return
        err = self._txn_error(info.user, self.state.revision, txn)
        if err is not None:
            raise err

    def check_request(self, info: AuthInfo, method: str, request: Any) -> None:
        """The API-level check of one call (gRPC method path). Writes that
        go through Raft are checked when applied instead (see module doc)."""
        if not self.enabled or info is INTERNAL:
            return
        rule = _RULES.get(method)
        if rule is not None:
            rule(self, info, request)

    def watch_error(self, info: AuthInfo, create: rpc_pb2.WatchCreateRequest) -> EtcdError | None:
        """A watch may be created on its range only with READ on all of it."""
        if not self.enabled or info is INTERNAL:
            return None
        key = create.key or b"\0"
        return self.state.op_error(info.user, self.state.revision, READ, key, create.range_end)

    def lease_keys(self, lease_id: int) -> list[bytes]:
        return self.s.store.lease_keys(lease_id)

    # ------------------------------------------------------------------ apply side
    def apply(self, batch: Any, req: internal_pb2.InternalRequest, kind: str | None):
        """Called by the Applier for every entry while auth is enabled, and
        for auth entries always. Returns (response, events) for an auth
        entry, None to let the normal dispatch go on; raises to refuse."""
        if kind in KINDS:
            return self._apply_auth(batch, req, kind), []
        if kind in ("put", "delete_range", "txn", "lease_revoke"):
            err = self.apply_error(batch, req, kind)
            if err is not None:
                raise err
        return None

    def apply_error(self, batch: Any, req: internal_pb2.InternalRequest, kind: str) -> EtcdError | None:
        """etcd's authApplierV3 checks for one write."""
        if not req.HasField("auth_header"):
            # Proposed with no identity: the lessor revoking an expired lease
            # (etcd does that as root); any other write is refused.
            return None if kind == "lease_revoke" else errors.USER_EMPTY
        h = req.auth_header
        if h.internal:
            return None
        user, rev = h.username, h.revision
        if kind == "put":
            return self._put_error(batch, user, rev, req.put)
        if kind == "delete_range":
            return self._delete_error(user, rev, req.delete_range)
        if kind == "txn":
            return self._txn_error(user, rev, req.txn, batch)
        if kind == "lease_revoke":
            return self._lease_write_error(batch, user, rev, req.lease_revoke.ID)
        return None

    def _put_error(self, batch, user: str, rev: int, p: rpc_pb2.PutRequest) -> EtcdError | None:
        st = self.state
        err = st.op_error(user, rev, WRITE, p.key)
        if err is None and p.lease:
            # Attaching a lease whose keys the user cannot write would let it
            # revoke them (etcd's checkLeasePuts).
            err = self._lease_write_error(batch, user, rev, p.lease)
        if err is None and p.prev_kv:
            err = st.op_error(user, rev, READ, p.key)
        return err

    def _delete_error(self, user: str, rev: int, d: rpc_pb2.DeleteRangeRequest) -> EtcdError | None:
        st = self.state
        err = st.op_error(user, rev, WRITE, d.key, d.range_end)
        if err is None and d.prev_kv:
            err = st.op_error(user, rev, READ, d.key, d.range_end)
        return err

    def _txn_error(self, user: str, rev: int, t: rpc_pb2.TxnRequest, batch: Any = None) -> EtcdError | None:
        st = self.state
        for c in t.compare:
            err = st.op_error(user, rev, READ, c.key, c.range_end)
            if err is not None:
                return err
        for op in list(t.success) + list(t.failure):
            which = op.WhichOneof("request")
            if which == "request_range":
                r = op.request_range
                err = st.op_error(user, rev, READ, r.key, r.range_end)
            elif which == "request_put":
                err = self._put_error(batch, user, rev, op.request_put) if batch is not None else st.op_error(
                    user, rev, WRITE, op.request_put.key
                )
            elif which == "request_delete_range":
                err = self._delete_error(user, rev, op.request_delete_range)
            elif which == "request_txn":
                err = self._txn_error(user, rev, op.request_txn, batch)
            else:
                err = None
            if err is not None:
                return err
        return None

    def _lease_write_error(self, batch: Any, user: str, rev: int, lease_id: int) -> EtcdError | None:
        st = self.state
        if st.is_root(user):
            return st.op_error(user, rev, WRITE, b"\0")  # the revision / enabled checks only
        for key in _batch_lease_keys(batch, lease_id):
            err = st.op_error(user, rev, WRITE, key)
            if err is not None:
                return err
        return None

    def _apply_auth(self, batch: Any, req: internal_pb2.InternalRequest, kind: str):
        header = req.auth_header if req.HasField("auth_header") else None
        msg = getattr(req, kind)
        try:
            resp = self.state.apply(kind, msg, header)
        except Stale:
            return STALE
        if kind == "auth_authenticate":
            self.tokens.add(msg.token_hash, msg.name)
            return resp
        batch.put_meta(META_KEY, self.state.dump())
        if kind in ("auth_user_delete", "auth_user_change_password"):
            self.tokens.drop_user(msg.name)
        elif kind == "auth_disable":
            self.tokens.clear()
        if self.enabled != self.state.enabled:
            log.info("authentication %s", "enabled" if self.state.enabled else "disabled")
        self.enabled = self.state.enabled
        return resp

    # Applier event sink: only the snapshot-restore hook matters.
    def notify(self, revision: int, events: list) -> None:
        pass

    def on_restore(self) -> None:
        self.state = AuthState.load(self.s.store.get_meta(META_KEY))
        self.enabled = self.state.enabled
        if self.enabled:
            self.tokens.keep_users(set(self.state.users))
        else:
            self.tokens.clear()

    # ------------------------------------------------------------------ flows
    async def _hash(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a password hash in a thread, a few at a time."""
        if self._hashing is None:
            self._hashing = asyncio.Semaphore(MAX_HASHES_AT_ONCE)
        async with self._hashing:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def hash_password(self, password: str) -> bytes:
        return await self._hash(pw.hash_password, password, self.hash_log2_n)

    async def authenticate(self, name: str, password: str) -> rpc_pb2.AuthenticateResponse:
        """etcd's Authenticate: check the password here (slow hash, throttled),
        then record a new token on every member through Raft."""
        await self.s.read_barrier()
        for _ in range(5):
            if not self.state.enabled:
                raise errors.AUTH_NOT_ENABLED
            delay = self.throttle.delay(name)
            if delay > 0:
                await asyncio.sleep(delay)
            st = self.state
            if not st.enabled:
                raise errors.AUTH_NOT_ENABLED
            checked = st.revision
            user = st.users.get(name)
            if user is not None and user.options.no_password:
                raise NO_PASSWORD_USER
            stored = user.password if user is not None else pw.dummy_hash(self.hash_log2_n)
            ok = await self._hash(pw.verify_password, password, stored)
            if not ok or user is None:
                self.throttle.failed(name)
                log.info("authentication failed for user %r", name)
                raise errors.AUTH_FAILED
            self.throttle.succeeded(name)
            secret = new_secret()
            with self.identity(INTERNAL):
                res = await self.s.propose(
                    internal_pb2.InternalRequest(
                        auth_authenticate=internal_pb2.AuthAuthenticate(
                            name=name, token_hash=secret_hash(secret), checked_revision=checked
                        )
                    )
                )
            if res.response is STALE:
                continue  # the auth store changed since the check: check again
            index = max(self.s.store.consistent_index, self.s.node.applied)
            return rpc_pb2.AuthenticateResponse(header=self.s.header(res.revision), token=f"{secret}.{index}")
        raise errors.TIMEOUT


def _batch_lease_keys(batch: Any, lease_id: int) -> list[bytes]:
    """Keys attached to a lease as seen inside the apply batch (so every
    member sees the same keys, whatever its batch boundaries)."""
    if batch is None or not lease_id:
        return []
    from ..mvcc import keys as K

    s = batch._s
    txn = batch._txn
    cur = txn.cursor(s._lkeys)
    encs = list(cur.iternext_dup(keys=False, values=True)) if cur.set_key(K.int64_key(lease_id)) else []
    out = []
    for enc in encs:
        raw = txn.get(enc, db=s._kv)
        if raw is not None:
            out.append(K.kv_key(raw))
    out.sort()
    return out


# ---------------------------------------------------------------------------
# API-level rules, by gRPC method path


def _range(a: Auth, info: AuthInfo, r: rpc_pb2.RangeRequest) -> None:
    a.check(info, "read", r.key, r.range_end)


def _txn(a: Auth, info: AuthInfo, t: rpc_pb2.TxnRequest) -> None:
    from ..mvcc import is_txn_readonly

    if is_txn_readonly(t):  # served locally: checked here; others when applied
        a.check_txn(info, t)


def _admin(a: Auth, info: AuthInfo, _: Any) -> None:
    a.check(info, "admin")


def _alarm(a: Auth, info: AuthInfo, r: rpc_pb2.AlarmRequest) -> None:
    if r.action != rpc_pb2.AlarmRequest.GET:
        a.check(info, "admin")


def _lease_ttl(a: Auth, info: AuthInfo, r: rpc_pb2.LeaseTimeToLiveRequest) -> None:
    # etcd 3.4.26's checkLeaseTimeToLive: READ on every key of the lease.
    if not info.user:
        raise errors.USER_EMPTY
    if a.state.is_root(info.user):
        return
    for key in a.lease_keys(r.ID):
        a.check(info, "read", key)


def _lock(a: Auth, info: AuthInfo, r: v3lock_pb2.LockRequest) -> None:
    p = r.name + b"/"
    a.check(info, "read", p, prefix_end(p))


def _election_name(a: Auth, info: AuthInfo, r: Any) -> None:
    p = r.name + b"/"
    a.check(info, "read", p, prefix_end(p))


def _user_admin(a: Auth, info: AuthInfo, _: Any) -> None:
    # Before hashing a password: an unauthorised caller costs no CPU.
    a.check(info, "admin")


_RULES: dict[str, Callable[[Auth, AuthInfo, Any], None]] = {
    "/etcdserverpb.KV/Range": _range,
    "/etcdserverpb.KV/Txn": _txn,
    "/etcdserverpb.Lease/LeaseTimeToLive": _lease_ttl,
    "/etcdserverpb.Maintenance/Defragment": _admin,
    "/etcdserverpb.Maintenance/Snapshot": _admin,
    "/etcdserverpb.Maintenance/Hash": _admin,
    "/etcdserverpb.Maintenance/HashKV": _admin,
    "/etcdserverpb.Maintenance/MoveLeader": _admin,
    "/etcdserverpb.Maintenance/Alarm": _alarm,
    "/etcdserverpb.Cluster/MemberAdd": _admin,
    "/etcdserverpb.Cluster/MemberRemove": _admin,
    "/etcdserverpb.Cluster/MemberUpdate": _admin,
    "/etcdserverpb.Cluster/MemberPromote": _admin,
    "/etcdserverpb.Auth/UserAdd": _user_admin,
    "/etcdserverpb.Auth/UserChangePassword": _user_admin,
    "/v3lockpb.Lock/Lock": _lock,
    "/v3electionpb.Election/Campaign": _election_name,
    "/v3electionpb.Election/Leader": _election_name,
    "/v3electionpb.Election/Observe": _election_name,
}

__all__ = ["Auth", "AuthInfo", "ANONYMOUS", "INTERNAL", "STALE", "READ", "WRITE", "ROOT", "raw_auth_error", "prefix_end"]
