"""What the sync and asyncio clients share: configuration, endpoints and
channel set-up, error classification (which failures may be retried for which
operations), and every unary operation as a ``Call`` (request, decoder,
safety) that each flavour executes with its own I/O loop.

Retry rules (the same in both flavours):

* A failure that proves the request never reached the cluster (cannot
  connect, "no leader", "not supported for learner", "too many requests",
  an expired auth token) is retried on the next endpoint for every operation.
* An ambiguous failure (connection lost mid-call, deadline exceeded,
  "request timed out", "server stopped", "leader changed") is retried only
  for a *safe* operation: reads, guarded or read-only transactions, and
  idempotent operations (lease revoke, compaction, alarm disarm, lock or
  campaign with an existing lease, unlock, resign, proclaim, status...). A
  plain put/delete or an unguarded writing transaction raises
  ``OutcomeUnknown`` instead.
* Any other server answer is raised at once as a ``ServerError``.

Between rounds over all endpoints the client sleeps with exponential
back-off and jitter; every operation has a deadline (``timeout``).
"""
from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc

from ..pb import (
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)
from . import model as M
from .backoff import Backoff
from .errors import ClientError, OutcomeUnknown, Timeout, Unavailable, server_error
from .txn import TxnBuilder

DEFAULT_ENDPOINT = "127.0.0.1:2379"
DEFAULT_TIMEOUT = 10.0
DEFAULT_DIAL_TIMEOUT = 2.0

STUBS: dict[str, Any] = {
    "KV": rpc_pb2_grpc.KVStub,
    "Watch": rpc_pb2_grpc.WatchStub,
    "Lease": rpc_pb2_grpc.LeaseStub,
    "Cluster": rpc_pb2_grpc.ClusterStub,
    "Maintenance": rpc_pb2_grpc.MaintenanceStub,
    "Auth": rpc_pb2_grpc.AuthStub,
    "Lock": v3lock_pb2_grpc.LockStub,
    "Election": v3election_pb2_grpc.ElectionStub,
}

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Detect a dead peer under an idle watch; servers allow pings every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]

REQUIRE_LEADER = ("hasleader", "true")

# -- outcome of a failed attempt ------------------------------------------------------

NOT_SENT = "not-sent"  # provably not applied: retry anything elsewhere
AMBIGUOUS = "ambiguous"  # may have been applied: retry safe operations only
REAUTH = "reauth"  # token expired: authenticate again, then retry
FATAL = "fatal"  # the server's answer: raise

_NOT_SENT_MARKERS = (
    "no leader",
    "not supported for learner",
    "too many requests",
    "not capable",
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "connections to all backends failing",
    "name resolution",
    "channel is closed",  # our own channel, closed before the call started
)
_AMBIGUOUS_UNKNOWN = ("stream removed", "socket closed", "connection reset", "broken pipe", "goaway")


def classify(code: grpc.StatusCode | None, details: str) -> str:
    d = (details or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        return NOT_SENT if any(m in d for m in _NOT_SENT_MARKERS) else AMBIGUOUS
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many requests" in d:
        return NOT_SENT
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return AMBIGUOUS
    if code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in d:
        return REAUTH
    if code == grpc.StatusCode.CANCELLED and "cancelled" in d and "locally" not in d:
        return AMBIGUOUS
    if code == grpc.StatusCode.UNKNOWN and any(m in d for m in _AMBIGUOUS_UNKNOWN):
        return AMBIGUOUS
    return FATAL


# -- endpoints and credentials ------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    target: str  # what grpc dials: host:port or unix:path
    tls: bool | None  # True for https://, False for http://, None: from the client options

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        t = text.strip()
        if not t:
            raise ValueError("empty endpoint")
        if t.startswith(("unix:", "unixs:")):
            return cls(t.replace("unixs:", "unix:", 1), t.startswith("unixs:"))
        if "://" in t:
            p = urlsplit(t)
            if p.scheme not in ("http", "https"):
                raise ValueError(f"endpoint {text!r}: scheme must be http or https")
            if not p.hostname or p.port is None:
                raise ValueError(f"endpoint {text!r}: needs a host and a port")
            host = f"[{p.hostname}]" if ":" in p.hostname else p.hostname
            return cls(f"{host}:{p.port}", p.scheme == "https")
        if ":" not in t:
            raise ValueError(f"endpoint {text!r}: needs host:port")
        return cls(t, None)


def parse_endpoints(endpoints: str | Sequence[str] | None) -> list[Endpoint]:
    if endpoints is None:
        endpoints = os.environ.get("KVSTORE_ENDPOINTS") or DEFAULT_ENDPOINT
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e.strip()]
    eps = [Endpoint.parse(e) for e in endpoints]
    if not eps:
        raise ValueError("no endpoints given")
    return eps


def _read(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    if isinstance(path, bytes):
        return path
    with open(path, "rb") as f:
        return f.read()


@dataclass
class Options:
    endpoints: list[Endpoint]
    timeout: float = DEFAULT_TIMEOUT
    dial_timeout: float = DEFAULT_DIAL_TIMEOUT
    user: str | None = None
    password: str | None = None
    ca_cert: str | bytes | None = None
    cert: str | bytes | None = None
    key: str | bytes | None = None
    tls: bool = False
    server_name: str | None = None
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    rng: random.Random | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_cert), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )

    def use_tls(self, ep: Endpoint) -> bool:
        if ep.tls is not None:
            return ep.tls
        return self.tls or self.ca_cert is not None or self.cert is not None

    def channel_options(self) -> list[tuple[str, Any]]:
        opts = list(CHANNEL_OPTIONS)
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return opts

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base, self.backoff_cap, rng=self.rng)


def make_options(
    endpoints: str | Sequence[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    dial_timeout: float = DEFAULT_DIAL_TIMEOUT,
    user: str | None = None,
    password: str | None = None,
    ca_cert: str | bytes | None = None,
    cert: str | bytes | None = None,
    key: str | bytes | None = None,
    tls: bool = False,
    server_name: str | None = None,
    backoff_base: float = 0.05,
    backoff_cap: float = 2.0,
) -> Options:
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs both cert and key")
    if user is not None and password is None and ":" in user:
        user, password = user.split(":", 1)  # etcdctl's --user name:password
    if user is not None and password is None:
        raise ValueError("auth needs both user and password")
    if timeout <= 0 or dial_timeout <= 0:
        raise ValueError("timeouts must be positive")
    return Options(parse_endpoints(endpoints), timeout, dial_timeout, user, password, ca_cert, cert, key, tls,
                   server_name, backoff_base, backoff_cap)


# -- one operation ------------------------------------------------------------------------


@dataclass
class Call:
    service: str
    method: str
    request: Any
    decode: Callable[[Any], Any]
    safe: bool
    what: str
    timeout: float | None = None  # None: the client's default; math.inf: no deadline
    endpoint: str | None = None  # send to this endpoint only (no fail-over)
    # After an ambiguous attempt was retried, a server error that the first
    # attempt's success explains (e.g. "lease not found" for a revoke) means done:
    accept_on_retry: Callable[[ClientError], bool] | None = None
    accept_value: Any = None
    # A server error that is an answer, on any attempt (e.g. "election: no leader" → None):
    accept_always: Callable[[ClientError], bool] | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    blocking: bool = False  # long-poll RPC (Lock, Campaign): one attempt may use all the time left
    stream_once: bool = False  # a bidi-stream method used for one request/response (lease keep-alive)


def describe(key: M.Bytesish) -> str:
    k = M.to_bytes(key)
    try:
        s = k.decode()
    except UnicodeDecodeError:
        return repr(k)
    return repr(s)


def finish(call: Call, resp: Any, retried: bool) -> Any:
    out = call.decode(resp)
    if retried and isinstance(out, M.TxnResult):
        out = dataclasses.replace(out, retried=True)
    return out


def not_applied(call: Call, last: str, deadline: bool) -> ClientError:
    cls = Timeout if deadline else Unavailable
    tail = "" if call.safe else " (not applied)"
    return cls(f"{call.what}: {'deadline exceeded' if deadline else 'no endpoint available'}{tail}: {last}",
               "DEADLINE_EXCEEDED" if deadline else "UNAVAILABLE")


def outcome_unknown(call: Call, last: str) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"{call.what}: outcome unknown, the request may or may not have been applied ({last}); "
        "read the key(s) to find out before retrying",
        "UNKNOWN",
    )


def attempt_timeout(call: Call, remaining: float | None, total: float) -> float | None:
    """A safe, short operation gets a share of the time left so that a hung
    endpoint leaves room to try another; others may use all of it."""
    if call.blocking or not call.safe or call.endpoint:
        return remaining
    share = max(1.0, total / 2)
    return share if remaining is None else min(remaining, share)


def random_lease_id(rng: random.Random | None = None) -> int:
    """A client-chosen lease ID (positive int64) makes LeaseGrant idempotent."""
    r = rng or random.SystemRandom()
    return r.getrandbits(62) | (1 << 61)


def rpc_failure(e: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return code, details or (code.name if code else "error")


# -- the operations, shared by both flavours -------------------------------------------------


def _lease_gone(e: ClientError) -> bool:
    return "lease not found" in e.message


def _lease_exists(e: ClientError) -> bool:
    return "lease already exists" in e.message


def _compacted(e: ClientError) -> bool:
    return "compacted" in e.message


def _member_gone(e: ClientError) -> bool:
    return "member not found" in e.message


class Operations:
    """Every unary operation, written once. ``_run(call)`` is the flavour's
    executor: it returns the decoded result (sync) or an awaitable of it."""

    def _run(self, call: Call) -> Any:  # pragma: no cover - provided by the flavours
        raise NotImplementedError

    # KV -------------------------------------------------------------------------------------
    def get(self, key: M.Bytesish, *, revision: int = 0, serializable: bool = False,
            timeout: float | None = None) -> Any:
        """The key's KeyValue, or None."""
        req = M.range_request(key, revision=revision, serializable=serializable)
        return self._run(Call("KV", "Range", req, M.decode_first, True, f"get {describe(key)}", timeout))

    def range(self, key: M.Bytesish, range_end: M.Bytesish | None = None, *, timeout: float | None = None,
              **kw: Any) -> Any:
        """A RangeResult (kvs, count, more, revision). Keyword options:
        prefix, from_key, revision, limit, keys_only, count_only,
        serializable, sort_order, sort_target, min/max_mod/create_revision."""
        req = M.range_request(key, range_end, **kw)
        return self._run(Call("KV", "Range", req, M.decode_range, True, f"range {describe(key)}", timeout))

    def get_prefix(self, prefix: M.Bytesish, *, timeout: float | None = None, **kw: Any) -> Any:
        return self.range(prefix, prefix=True, timeout=timeout, **kw)

    def put(self, key: M.Bytesish, value: M.Bytesish, *, lease: int = 0, prev_kv: bool = False,
            ignore_value: bool = False, ignore_lease: bool = False, timeout: float | None = None) -> Any:
        """A PutResult. Never retried after an ambiguous failure (OutcomeUnknown)."""
        req = M.put_request(key, value, lease=lease, prev_kv=prev_kv, ignore_value=ignore_value,
                            ignore_lease=ignore_lease)
        return self._run(Call("KV", "Put", req, M.decode_put, False, f"put {describe(key)}", timeout))

    def delete(self, key: M.Bytesish, range_end: M.Bytesish | None = None, *, prefix: bool = False,
               from_key: bool = False, prev_kv: bool = False, timeout: float | None = None) -> Any:
        """A DeleteResult. Never retried after an ambiguous failure (OutcomeUnknown)."""
        req = M.delete_request(key, range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv)
        return self._run(Call("KV", "DeleteRange", req, M.decode_delete, False, f"delete {describe(key)}",
                              timeout))

    def delete_prefix(self, prefix: M.Bytesish, *, prev_kv: bool = False, timeout: float | None = None) -> Any:
        return self.delete(prefix, prefix=True, prev_kv=prev_kv, timeout=timeout)

    def txn(self) -> TxnBuilder:
        """``c.txn().if_(...).then(...).else_(...).commit()``"""
        return TxnBuilder(self.txn_request)

    def txn_request(self, req: rpc_pb2.TxnRequest, timeout: float | None = None) -> Any:
        return self._run(Call("KV", "Txn", req, M.decode_txn, M.txn_is_safe(req), "txn", timeout))

    def compact(self, revision: int, *, physical: bool = False, timeout: float | None = None) -> Any:
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        return self._run(Call("KV", "Compact", req, lambda r: M.Header.of(r.header), True,
                              f"compact {revision}", timeout, accept_on_retry=_compacted))

    # Lease ------------------------------------------------------------------------------------
    def grant(self, ttl: int, *, id: int = 0, timeout: float | None = None) -> Any:
        """A LeaseGrant (id, ttl). An explicit id makes the grant idempotent."""
        req = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=id)
        return self._run(Call("Lease", "LeaseGrant", req, M.decode_grant, id != 0, f"lease grant {ttl}s", timeout,
                              accept_on_retry=_lease_exists, accept_value=M.LeaseGrant(id, ttl, M.Header())))

    def keep_alive_once(self, lease_id: int, *, timeout: float | None = None) -> Any:
        """Renew once: the new TTL in seconds (0: the lease does not exist any more)."""
        req = rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)
        return self._run(Call("Lease", "LeaseKeepAlive", req, lambda r: r.TTL, True,
                              f"lease keep-alive {lease_id:x}", timeout, metadata=(REQUIRE_LEADER,),
                              stream_once=True))

    def revoke(self, lease_id: int, *, timeout: float | None = None) -> Any:
        req = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        return self._run(Call("Lease", "LeaseRevoke", req, lambda r: M.Header.of(r.header), True,
                              f"lease revoke {lease_id:x}", timeout, accept_on_retry=_lease_gone))

    def time_to_live(self, lease_id: int, *, keys: bool = False, timeout: float | None = None) -> Any:
        req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        return self._run(Call("Lease", "LeaseTimeToLive", req, M.decode_ttl, True,
                              f"lease timetolive {lease_id:x}", timeout))

    def leases(self, *, timeout: float | None = None) -> Any:
        return self._run(Call("Lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest(),
                              lambda r: [x.ID for x in r.leases], True, "lease list", timeout))

    # Cluster -----------------------------------------------------------------------------------
    def member_list(self, *, timeout: float | None = None) -> Any:
        return self._run(Call("Cluster", "MemberList", rpc_pb2.MemberListRequest(), M.decode_members, True,
                              "member list", timeout))

    def member_add(self, peer_urls: Sequence[str], *, learner: bool = False, timeout: float | None = None) -> Any:
        """(new Member, all members). Not retried after an ambiguous failure."""
        req = rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)
        return self._run(Call("Cluster", "MemberAdd", req, lambda r: (M.Member.of(r.member), M.decode_members(r)),
                              False, "member add", timeout))

    def member_remove(self, member_id: int, *, timeout: float | None = None) -> Any:
        req = rpc_pb2.MemberRemoveRequest(ID=member_id)
        return self._run(Call("Cluster", "MemberRemove", req, M.decode_members, True,
                              f"member remove {member_id:x}", timeout, accept_on_retry=_member_gone,
                              accept_value=[]))

    def member_update(self, member_id: int, peer_urls: Sequence[str], *, timeout: float | None = None) -> Any:
        req = rpc_pb2.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls))
        return self._run(Call("Cluster", "MemberUpdate", req, M.decode_members, True,
                              f"member update {member_id:x}", timeout))

    def member_promote(self, member_id: int, *, timeout: float | None = None) -> Any:
        req = rpc_pb2.MemberPromoteRequest(ID=member_id)
        return self._run(Call("Cluster", "MemberPromote", req, M.decode_members, False,
                              f"member promote {member_id:x}", timeout))

    # Maintenance ---------------------------------------------------------------------------------
    def status(self, endpoint: str | None = None, *, timeout: float | None = None) -> Any:
        """Status of ``endpoint`` (no fail-over), or of whichever endpoint answers."""
        return self._run(Call("Maintenance", "Status", rpc_pb2.StatusRequest(),
                              M.decode_status(endpoint or ""), True, f"status {endpoint or ''}".strip(), timeout,
                              endpoint=endpoint))

    def alarms(self, *, timeout: float | None = None) -> Any:
        req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET)
        return self._run(Call("Maintenance", "Alarm", req, M.decode_alarms, True, "alarm list", timeout))

    def alarm_disarm(self, member_id: int = 0, alarm: str = "NONE", *, timeout: float | None = None) -> Any:
        req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=member_id,
                                   alarm=rpc_pb2.AlarmType.Value(alarm))
        return self._run(Call("Maintenance", "Alarm", req, M.decode_alarms, True, "alarm disarm", timeout))

    def defragment(self, endpoint: str | None = None, *, timeout: float | None = None) -> Any:
        return self._run(Call("Maintenance", "Defragment", rpc_pb2.DefragmentRequest(),
                              lambda r: M.Header.of(r.header), True, f"defragment {endpoint or ''}".strip(),
                              timeout, endpoint=endpoint))

    def hash_kv(self, endpoint: str | None = None, revision: int = 0, *, timeout: float | None = None) -> Any:
        """(hash, compact_revision, header)"""
        return self._run(Call("Maintenance", "HashKV", rpc_pb2.HashKVRequest(revision=revision),
                              lambda r: (r.hash, r.compact_revision, M.Header.of(r.header)), True, "hashkv",
                              timeout, endpoint=endpoint))

    def move_leader(self, target_id: int, endpoint: str, *, timeout: float | None = None) -> Any:
        """Ask the leader (``endpoint``) to hand leadership to ``target_id``."""
        return self._run(Call("Maintenance", "MoveLeader", rpc_pb2.MoveLeaderRequest(targetID=target_id),
                              lambda r: M.Header.of(r.header), True, "move-leader", timeout, endpoint=endpoint))

    # Lock / Election, raw RPCs (the context managers build on these) -----------------------------
    def lock_rpc(self, name: M.Bytesish, lease_id: int, *, timeout: float | None = None) -> Any:
        """(key, header). Safe to repeat: a Lock with a lease that already waits
        or holds the lock reuses its key."""
        req = v3lock_pb2.LockRequest(name=M.to_bytes(name), lease=lease_id)
        return self._run(Call("Lock", "Lock", req, lambda r: (r.key, M.Header.of(r.header)), True,
                              f"lock {describe(name)}", timeout, blocking=True))

    def unlock_rpc(self, key: bytes, *, timeout: float | None = None) -> Any:
        req = v3lock_pb2.UnlockRequest(key=key)
        return self._run(Call("Lock", "Unlock", req, lambda r: M.Header.of(r.header), True,
                              f"unlock {describe(key)}", timeout))

    def campaign_rpc(self, name: M.Bytesish, lease_id: int, value: M.Bytesish, *,
                     timeout: float | None = None) -> Any:
        """The LeaderKey (name, key, rev, lease) once elected. Safe to repeat
        with the same lease (the campaign reuses its key)."""
        req = v3election_pb2.CampaignRequest(name=M.to_bytes(name), lease=lease_id, value=M.to_bytes(value))
        return self._run(Call("Election", "Campaign", req, lambda r: r.leader, True,
                              f"campaign {describe(name)}", timeout, blocking=True))

    def proclaim_rpc(self, leader: v3election_pb2.LeaderKey, value: M.Bytesish, *,
                     timeout: float | None = None) -> Any:
        req = v3election_pb2.ProclaimRequest(leader=leader, value=M.to_bytes(value))
        return self._run(Call("Election", "Proclaim", req, lambda r: M.Header.of(r.header), True, "proclaim",
                              timeout))

    def resign_rpc(self, leader: v3election_pb2.LeaderKey, *, timeout: float | None = None) -> Any:
        req = v3election_pb2.ResignRequest(leader=leader)
        return self._run(Call("Election", "Resign", req, lambda r: M.Header.of(r.header), True, "resign", timeout))

    def leader(self, name: M.Bytesish, *, timeout: float | None = None) -> Any:
        """The current leader's KeyValue of election ``name``, or None."""
        req = v3election_pb2.LeaderRequest(name=M.to_bytes(name))
        return self._run(Call("Election", "Leader", req, lambda r: M.KeyValue.of(r.kv), True,
                              f"leader {describe(name)}", timeout, accept_always=is_no_leader))


def is_no_leader(e: ClientError) -> bool:
    return "election: no leader" in e.message


def accepted(call: Call, err: ClientError, retried: bool) -> bool:
    """Is this server error the expected answer (returned as accept_value)?"""
    if call.accept_always is not None and call.accept_always(err):
        return True
    return retried and call.accept_on_retry is not None and call.accept_on_retry(err)


@dataclass
class Done:
    """An attempt's failure that still ends the call with a value."""

    value: Any


class Attempts:
    """The retry decisions of one call, shared by the sync and asyncio
    clients (they only do the I/O): which failure ends the call, which lets it
    move to another endpoint, and when to authenticate again."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.retried = False
        self.reauthed = False
        self.last = "no attempt made"

    def cannot_connect(self, target: str) -> None:
        self.last = f"{target}: cannot connect"

    def rpc_error(self, e: grpc.RpcError, target: str) -> str | Done:
        """REAUTH: drop the token and retry at once; NOT_SENT or AMBIGUOUS:
        try the next endpoint; Done: return its value. Raises when the call
        must end (the server's answer, or an unsafe call's unknown outcome)."""
        code, details = rpc_failure(e)
        self.last = f"{target}: {details}"
        outcome = classify(code, details)
        if outcome == FATAL:
            err = server_error(code, details)
            if accepted(self.call, err, self.retried):
                return Done(self.call.accept_value)
            raise err from None
        if outcome == REAUTH:
            if self.reauthed:
                raise server_error(code, details) from None
            self.reauthed = True
        elif outcome == AMBIGUOUS:
            self.ambiguous()
        return outcome

    def no_answer(self, e: Unavailable) -> None:
        """A stream that ended without an answer: the request may have landed."""
        self.last = e.message
        self.ambiguous()

    def ambiguous(self) -> None:
        if not self.call.safe:
            raise outcome_unknown(self.call, self.last) from None
        self.retried = True
