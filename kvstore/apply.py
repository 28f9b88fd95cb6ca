"""The key-value state machine: committed Raft entries → MVCC store.

Deterministic by construction: every member applies the same entries to the
same bytes. A whole batch of entries is one LMDB write transaction; results
go back to the member that proposed each request (matched by request id), and
the batch's events go to the watch hub only after the transaction commits.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from google.protobuf.message import DecodeError

from raft import failpoints as _fp
from raft.types import ConfChange, ConfChangeType, Entry, EntryType, Snapshot

from . import errors, members
from .errors import EtcdError
from .mvcc import MvccStore
from .pb import internal_pb2, kv_pb2, rpc_pb2

log = logging.getLogger("kvstore.apply")

ALARMS_KEY = b"alarms"
# Request kinds that need no bookkeeping beyond their response and events.
_PLAIN_KINDS = frozenset(("put", "txn", "delete_range", "compaction", "alarm", "lease_checkpoint"))


class EventSink(Protocol):
    def notify(self, revision: int, events: list[kv_pb2.Event]) -> None: ...


class LeaseObserver(Protocol):
    def on_grant(self, lease_id: int, ttl: int) -> None: ...

    def on_revoke(self, lease_id: int) -> None: ...

    def on_restore(self) -> None: ...


@dataclass
class Applied:
    """What the proposer gets back: a response message or an error."""

    response: object | None
    error: EtcdError | None
    revision: int


class Applier:
    """Implements raft.node.StateMachine for the key-value store."""

    def __init__(
        self,
        store: MvccStore,
        member_id: int,
        on_result: Callable[[int, Applied], None],
        on_members_changed: Callable[[members.MemberList], None],
    ) -> None:
        self.store = store
        self.member_id = member_id
        self.on_result = on_result
        self.on_members_changed = on_members_changed
        self.event_sinks: list[EventSink] = []
        self.lease_observers: list[LeaseObserver] = []
        self.members = members.load(store.get_meta(members.META_KEY))
        self.alarms = self._load_alarms()
        self.term = 0  # raft term of the last applied entry (for headers)
        self.auth: Any = None  # kvstore.auth.Auth, set by the server
        self.observe_commit: Callable[[float], None] | None = None  # metrics hook

    # -- raft.node.StateMachine ----------------------------------------------
    def applied_index(self) -> int:
        return self.store.consistent_index

    def checkpoint(self) -> None:
        self.store.checkpoint()

    def restore(self, snapshot: Snapshot, data_path: str | None) -> None:
        if data_path is None:
            raise RuntimeError("snapshot received without state data")
        self.store.restore(data_path)
        try:
            os.unlink(data_path)  # the store holds (and fsynced) its copy now
        except OSError as e:
            log.warning("cannot remove the received snapshot %s: %s", data_path, e.strerror)
        self.members = members.load(self.store.get_meta(members.META_KEY))
        self.alarms = self._load_alarms()
        self.on_members_changed(self.members)
        for obs in self.lease_observers:
            obs.on_restore()
        for sink in self.event_sinks:  # the store jumped: watchers catch up from history
            on_restore = getattr(sink, "on_restore", None)
            if on_restore is not None:
                on_restore()

    def apply(self, entries: Sequence[Entry]) -> None:
        ci = self.store.consistent_index
        todo = [e for e in entries if e.index > ci]
        if not todo:
            return
        results: list[tuple[int, Applied]] = []
        all_events: list[kv_pb2.Event] = []
        granted: list[tuple[int, int]] = []
        revoked: list[int] = []
        members_changed = False
        started = time.perf_counter()
        if _fp.ENABLED:
            _fp.inject("beforeApply")
        me = self.member_id
        parse = internal_pb2.InternalRequest.FromString
        with self.store.write() as batch:
            for e in todo:
                if e.type == EntryType.CONF_CHANGE:
                    rid, proposer = self._apply_conf_change(batch, e)
                    members_changed = True
                    if proposer == me:
                        results.append((rid, Applied(None, None, batch.current_revision)))
                    continue
                data = e.data
                if not data:
                    continue  # a new leader's empty entry
                try:
                    req = parse(data)
                except DecodeError:
                    log.error("skipping undecodable entry at index %d", e.index)
                    continue
                kind = req.WhichOneof("request")
                mine = req.member_id == me
                try:
                    resp, events = self._dispatch(batch, req, kind, mine)
                except EtcdError as ex:
                    if mine:
                        results.append((req.id, Applied(None, ex, batch.current_revision)))
                    continue
                if kind not in _PLAIN_KINDS:
                    if kind == "lease_grant":
                        granted.append((req.lease_grant.ID, req.lease_grant.TTL))
                    elif kind == "lease_revoke":
                        revoked.append(req.lease_revoke.ID)
                    elif kind in ("member_attributes", "member_update"):
                        members_changed = True
                if events:
                    all_events += events
                if mine:
                    results.append((req.id, Applied(resp, None, batch.current_revision)))
            self.term = todo[-1].term
            batch.set_consistent_index(todo[-1].index)
        if _fp.ENABLED:
            _fp.inject("afterApply")
        if self.observe_commit is not None:
            self.observe_commit(time.perf_counter() - started)
        # Committed: now tell the rest of the server.
        if all_events:
            for sink in self.event_sinks:
                sink.notify(self.store.current_revision, all_events)
        for obs in self.lease_observers:
            for lid, ttl in granted:
                obs.on_grant(lid, ttl)
            for lid in revoked:
                obs.on_revoke(lid)
        if members_changed:
            self.on_members_changed(self.members)
        for rid, res in results:
            self.on_result(rid, res)

    # -- requests ----------------------------------------------------------------
    def _dispatch(self, batch, req: internal_pb2.InternalRequest, kind: str | None, reply: bool = True):
        """Apply one request: (response, events). Without ``reply`` (not this
        member's proposal) a KV write may skip building its response."""
        auth = self.auth
        if auth is not None and (auth.enabled or kind in auth.KINDS):
            handled = auth.apply(batch, req, kind)  # auth entries; refuses unauthorised writes
            if handled is not None:
                return handled
        if kind == "put":
            if self._nospace:
                raise errors.NO_SPACE
            return batch.put(req.put, reply)
        if kind == "txn":
            if self._nospace and _txn_has_put(req.txn):
                # A read-only or delete-only transaction may still run: it frees space.
                raise errors.NO_SPACE
            return batch.txn(req.txn, reply)
        if kind == "delete_range":
            return batch.delete_range(req.delete_range, reply)
        if kind == "compaction":
            c = req.compaction
            batch.compact(c.revision, c.physical)
            return rpc_pb2.CompactionResponse(), []
        if kind == "lease_grant":
            g = req.lease_grant
            batch.lease_grant(g.ID, g.TTL)
            return rpc_pb2.LeaseGrantResponse(ID=g.ID, TTL=g.TTL), []
        if kind == "lease_revoke":
            events = batch.lease_revoke(req.lease_revoke.ID)
            return rpc_pb2.LeaseRevokeResponse(), events
        if kind == "alarm":
            return self._apply_alarm(batch, req.alarm), []
        if kind == "member_attributes":
            a = req.member_attributes
            m = members.find(self.members, a.id)
            if m is not None:
                m.name = a.name
                del m.client_urls[:]
                m.client_urls.extend(a.client_urls)
                batch.put_meta(members.META_KEY, members.dump(self.members))
            return None, []
        if kind == "member_update":
            u = req.member_update
            m = members.find(self.members, u.id)
            if m is None:
                raise errors.MEMBER_NOT_FOUND
            del m.peer_urls[:]
            m.peer_urls.extend(u.peer_urls)
            batch.put_meta(members.META_KEY, members.dump(self.members))
            return rpc_pb2.MemberUpdateResponse(), []
        if kind == "lease_checkpoint":
            return None, []
        raise errors.EtcdError(errors.INVALID_AUTH_MGMT.code, f"kvstore: unknown request {kind!r}")

    # -- alarms ------------------------------------------------------------------
    def _load_alarms(self) -> rpc_pb2.AlarmResponse:
        resp = rpc_pb2.AlarmResponse()
        raw = self.store.get_meta(ALARMS_KEY)
        if raw:
            resp.ParseFromString(raw)
        self._set_nospace(any(a.alarm == rpc_pb2.NOSPACE for a in resp.alarms))
        return resp

    def _set_nospace(self, on: bool) -> None:
        """The NOSPACE alarm is in force: puts and txns with puts are refused."""
        self._nospace = on
        self.store.capped = on

    def _apply_alarm(self, batch, a: rpc_pb2.AlarmRequest) -> rpc_pb2.AlarmResponse:
        current = {(m.memberID, m.alarm) for m in self.alarms.alarms}
        changed: list[rpc_pb2.AlarmMember] = []
        if a.action == rpc_pb2.AlarmRequest.ACTIVATE and a.alarm != rpc_pb2.NONE:
            if (a.memberID, a.alarm) not in current:
                current.add((a.memberID, a.alarm))
                changed.append(rpc_pb2.AlarmMember(memberID=a.memberID, alarm=a.alarm))
        elif a.action == rpc_pb2.AlarmRequest.DEACTIVATE:
            for mid, al in sorted(current):
                if (a.memberID in (0, mid)) and (a.alarm in (rpc_pb2.NONE, al)):
                    current.discard((mid, al))
                    changed.append(rpc_pb2.AlarmMember(memberID=mid, alarm=al))
        else:
            return rpc_pb2.AlarmResponse(alarms=list(self.alarms.alarms))
        self.alarms = rpc_pb2.AlarmResponse(
            alarms=[rpc_pb2.AlarmMember(memberID=m, alarm=al) for m, al in sorted(current)]
        )
        batch.put_meta(ALARMS_KEY, self.alarms.SerializeToString(deterministic=True))
        self._set_nospace(any(al == rpc_pb2.NOSPACE for _, al in current))
        return rpc_pb2.AlarmResponse(alarms=changed)

    # -- membership --------------------------------------------------------------
    def _apply_conf_change(self, batch, e: Entry) -> tuple[int, int]:
        try:
            cc = ConfChange.decode(e.data)
            ctx = internal_pb2.InternalRequest()
            ctx.ParseFromString(cc.context)
        except (ValueError, DecodeError):
            log.error("skipping malformed conf change at index %d", e.index)
            return 0, 0
        ml = self.members
        if cc.type == ConfChangeType.REMOVE_NODE:
            members.remove(ml, cc.node_id)
        else:
            m = members.find(ml, cc.node_id)
            if m is None:
                m = internal_pb2.Member()
                if ctx.HasField("member_update"):
                    m.CopyFrom(ctx.member_update)
                m.id = cc.node_id
            m.is_learner = cc.type == ConfChangeType.ADD_LEARNER
            members.upsert(ml, m)
        batch.put_meta(members.META_KEY, members.dump(ml))
        return ctx.id, ctx.member_id


def _txn_has_put(txn: rpc_pb2.TxnRequest) -> bool:
    for op in list(txn.success) + list(txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put":
            return True
        if kind == "request_txn" and _txn_has_put(op.request_txn):
            return True
    return False
