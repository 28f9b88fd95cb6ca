"""One kvstore member: Raft node + state machine + client-facing listeners.

``KvServer`` owns the lifecycle and the two primitives every API adapter is
built from: ``propose`` (a write through Raft, answered when applied here)
and ``read_barrier`` (a linearizable read point through batched ReadIndex).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import shutil
import time
from urllib.parse import urlsplit

import grpc
from typing import Any

from raft.core import Config as RaftConfig
from raft.core import ReadOnlyOption
from raft.lmdb_storage import LmdbStorage
from raft.node import NodeOptions, RaftNode
from raft.transport import PeerTransport
from raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    ProposalDropped,
    Role,
    SoftState,
)

from . import errors, members
from .apply import Applied, Applier
from .compactor import AutoCompactor, policy_for
from .config import LEASE_CLOCK_DRIFT, ServerConfig, grpc_target
from .errors import EtcdError
from .lease import Lessor, min_lease_ttl
from .metrics import Metrics
from .mvcc import MvccStore
from .pb import internal_pb2, rpc_pb2

log = logging.getLogger("kvstore.server")

API_VERSION = "3.4.0"  # what clients gate features on (etcd's cluster version)
REQUEST_TIMEOUT = 7.0  # etcd: 5 s + 2 × election timeout


class DataDirError(Exception):
    """The data directory cannot be used (permissions, corruption, foreign)."""


def _remove_transient_snapshot_files(snap_dir: str) -> None:
    """Snapshots received (``*.snap``, restored at once, or never usable after
    a restart: Raft asks again) and copies made to send or to serve
    Maintenance.Snapshot (``out-*.db``, ``snapshot-*``): leftovers of a
    previous run take disk space and nothing else."""
    for name in os.listdir(snap_dir):
        if name.endswith(".snap") or name.startswith(("out-", "snapshot-")):
            try:
                os.unlink(os.path.join(snap_dir, name))
            except OSError as e:
                log.warning("cannot remove %s: %s", name, e.strerror)


class KvServer:
    def __init__(
        self, cfg: ServerConfig, peer_security: dict[str, Any] | None = None, client_tls: Any | None = None
    ) -> None:
        self.cfg = cfg
        self.client_tls = client_tls  # kvstore.tls.CertSource of the client listeners, if TLS
        self.peer_security = peer_security  # PeerTransport.set_security() arguments (TLS)
        self.cluster_id = cfg.cluster_id
        self.member_id = cfg.member_id(cfg.initial_advertise_peer_urls)
        self.member_dir = os.path.join(cfg.data_dir, "member")
        # Unique across restarts: an entry proposed by this member's previous
        # life may still be applied now, and must not answer a new request
        # (found by a fault run). ns since the epoch outruns any request rate.
        self._req_ids = itertools.count(time.time_ns())
        self._waiters: dict[int, asyncio.Future[Applied]] = {}
        self._stopping = asyncio.Event()
        self._listeners: list[Any] = []
        self.node: RaftNode
        self.store: MvccStore
        self.applier: Applier
        self.lessor: Lessor
        self.transport: PeerTransport
        self.removed = asyncio.Event()  # set when this member was removed
        self.auth: Any = None  # kvstore.auth.Auth once started
        self.metrics = Metrics()
        self._is_learner = False

    # ------------------------------------------------------------------ open
    def _open_storage(self) -> tuple[LmdbStorage, MvccStore]:
        try:
            os.makedirs(self.member_dir, exist_ok=True)
            os.makedirs(os.path.join(self.member_dir, "snap"), exist_ok=True)
            probe = os.path.join(self.member_dir, ".write-test")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as e:
            raise DataDirError(f"cannot use data directory {self.cfg.data_dir!r}: {e.strerror}") from None
        try:
            raft_store = LmdbStorage(os.path.join(self.member_dir, "raft"))
        except Exception as e:
            raise DataDirError(f"raft log in {self.cfg.data_dir!r} is unusable: {e}") from None
        # Only now, holding the raft log's lock: a second process started on a
        # live data directory must not delete the running member's files.
        _remove_transient_snapshot_files(os.path.join(self.member_dir, "snap"))
        try:
            kv = MvccStore(
                os.path.join(self.member_dir, "kv"),
                quota_bytes=self.cfg.quota_backend_bytes,
                max_txn_ops=self.cfg.max_txn_ops,
            )
        except Exception as e:
            raise DataDirError(f"key-value store in {self.cfg.data_dir!r} is unusable: {e}") from None
        return raft_store, kv

    def _bootstrap(self, raft_store: LmdbStorage) -> None:
        bootstrap_log(self.cfg, raft_store)

    async def start(self) -> None:
        raft_store, self.store = self._open_storage()
        fresh = raft_store.last_index() == 0 and raft_store.snapshot().is_empty
        if fresh and self.cfg.initial_cluster_state == "new":
            self._bootstrap(raft_store)
        elif not fresh and getattr(self.cfg, "force_new_cluster", False):
            removed = force_new_cluster(self.member_id, raft_store)
            log.warning(
                "--force-new-cluster: this member is now a one-member cluster (removed %s)",
                ", ".join(f"{m:x}" for m in removed) or "nobody",
            )
        self.applier = Applier(self.store, self.member_id, self._on_result, self._on_members_changed)
        self.applier.observe_commit = self.metrics.backend_commit.observe
        self.metrics.bind(self)
        self.lessor = Lessor(
            self.store,
            self.propose,
            min_ttl=min_lease_ttl(self.cfg.election_ticks, self.cfg.heartbeat_interval),
            extend=self.cfg.election_timeout / 1000.0,
        )
        self.applier.lease_observers.append(self.lessor)
        from .auth import Auth

        self.auth = Auth(self)
        self.applier.auth = self.auth
        self.applier.event_sinks.append(self.auth)  # reloads after a snapshot restore
        self.transport = PeerTransport(
            node_id=self.member_id,
            cluster_id=self.cluster_id,
            on_message=lambda m: self.node.step(m),
            on_snapshot=lambda m, path: self.node.step_snapshot(m, path),
            snapshot_source=self._snapshot_source,
            on_unreachable=lambda nid: self.node.report_unreachable(nid),
            on_snapshot_status=lambda nid, ok: self.node.report_snapshot(nid, ok),
            is_removed=lambda nid: nid in self.applier.members.removed,
            on_removed=self._on_removed,
            on_rtt=self.metrics.observe_peer_rtt,
            snapshot_dir=os.path.join(self.member_dir, "snap"),
        )
        if self.peer_security is not None:
            self.transport.set_security(**self.peer_security)
        rcfg = RaftConfig(
            id=self.member_id,
            election_tick=self.cfg.election_ticks,
            heartbeat_tick=1,
            read_only=ReadOnlyOption.LEASE_BASED if self.cfg.experimental_lease_read else ReadOnlyOption.SAFE,
            max_clock_drift=LEASE_CLOCK_DRIFT,
            rng=random.Random(int.from_bytes(os.urandom(8), "big")),
        )
        self.node = RaftNode(
            rcfg,
            raft_store,
            self.applier,
            self.transport,
            NodeOptions(
                observe_fsync=self.metrics.wal_fsync.observe,
                tick_interval=self.cfg.heartbeat_interval / 1000.0,
                snapshot_count=self.cfg.snapshot_count,
                catch_up_entries=min(5000, self.cfg.snapshot_count),
            ),
            on_soft_state=self._on_soft_state,
        )
        self.raft_store = raft_store
        # Peers known now: from the applied member list, else the flags.
        for name, urls in self.cfg.initial_cluster.items():
            mid = self.cfg.member_id(urls)
            if mid != self.member_id:
                self.transport.set_peer(mid, urls)
        self._on_members_changed(self.applier.members)
        await self.transport.start(self.cfg.listen_peer_urls)
        await self.node.start()
        self.lessor.start()
        self._publish_task = asyncio.create_task(self._publish_attributes())
        policy = policy_for(self.cfg.auto_compaction_mode, self.cfg.compaction_retention,
                            asyncio.get_running_loop().time())
        if policy is not None:
            self.compactor = AutoCompactor(policy, lambda: self.store.current_revision,
                                           lambda: self.node.is_leader, self._auto_compact)
            self.compactor.start()

    async def _auto_compact(self, revision: int) -> None:
        await self.propose(internal_pb2.InternalRequest(compaction=rpc_pb2.CompactionRequest(revision=revision)))

    async def stop(self) -> None:
        self._stopping.set()
        task = getattr(self, "_publish_task", None)
        if task is not None:
            task.cancel()
        compactor = getattr(self, "compactor", None)
        if compactor is not None:
            await compactor.stop()
        if hasattr(self, "lessor"):
            await self.lessor.stop()
        if hasattr(self, "node"):
            await self.node.stop()
        if hasattr(self, "transport"):
            await self.transport.stop()
        err = errors.STOPPED
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(err)
        if hasattr(self, "store"):
            try:
                self.store.checkpoint()
            finally:
                self.store.close()
        if hasattr(self, "raft_store"):
            self.raft_store.close()

    # --------------------------------------------------------------- callbacks
    def _on_result(self, rid: int, res: Applied) -> None:
        fut = self._waiters.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(res)

    def _on_members_changed(self, ml: members.MemberList) -> None:
        me = members.find(ml, self.member_id)
        self._is_learner = bool(me and me.is_learner)
        if not hasattr(self, "transport"):
            return
        present = set()
        for m in ml.members:
            present.add(m.id)
            if m.id != self.member_id and m.peer_urls:
                self.transport.set_peer(m.id, list(m.peer_urls))
        for mid in ml.removed:
            if mid != self.member_id:
                self.transport.remove_peer(mid)
        if self.member_id in ml.removed and self.member_id not in present:
            log.warning("this member was removed from the cluster")
            self.removed.set()

    def _on_removed(self) -> None:
        if not self.removed.is_set():
            log.warning("a peer reports this member was removed from the cluster")
            self.removed.set()

    def _on_soft_state(self, ss: SoftState) -> None:
        self.lessor.set_primary(ss.role == Role.LEADER)
        log.info(
            "raft state: role=%s leader=%x term=%d", ss.role.name, ss.leader, self.node.term
        )

    async def _snapshot_source(self, msg: Any):
        """State sent with a MsgSnap: a consistent copy of the store, in chunks."""
        path = os.path.join(self.member_dir, "snap", f"out-{msg.to:x}-{next(self._req_ids)}.db")
        await asyncio.get_running_loop().run_in_executor(None, self.store.copy_to, path)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    async def _publish_attributes(self) -> None:
        """Tell the cluster our name and client URLs (as etcd does after start)."""
        delay = 0.05
        while not self._stopping.is_set():
            me = members.find(self.applier.members, self.member_id)
            if me is not None and me.name == self.cfg.name and list(me.client_urls) == list(
                self.cfg.advertise_client_urls
            ):
                return
            req = internal_pb2.InternalRequest(
                member_attributes=internal_pb2.MemberAttributes(
                    id=self.member_id, name=self.cfg.name, client_urls=self.cfg.advertise_client_urls
                )
            )
            try:
                await self.propose(req, timeout=2.0)
            except EtcdError:
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    def member_channel(self, url: str) -> grpc.aio.Channel:
        """A channel to another member's client URL (forwarded lease renewals
        and promotions, the dashboard), with the TLS this member's clients use."""
        target = grpc_target(url)
        if urlsplit(url).scheme in ("https", "unixs"):
            if self.client_tls is not None:
                return grpc.aio.secure_channel(target, self.client_tls.grpc_channel_credentials())
            return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
        return grpc.aio.insecure_channel(target)

    # -------------------------------------------------------------- primitives
    @property
    def leader_id(self) -> int:
        return self.node.leader

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=self.store.current_revision if revision is None else revision,
            raft_term=self.node.term,
        )

    def _check_writable(self) -> None:
        if self.removed.is_set():
            raise errors.STOPPED
        if self.node.leader == NONE:
            raise errors.NO_LEADER

    async def propose(self, req: internal_pb2.InternalRequest, timeout: float = REQUEST_TIMEOUT) -> Applied:
        """Replicate ``req`` and wait until this member applied it."""
        self._check_writable()
        rid = next(self._req_ids)
        req.id = rid
        req.member_id = self.member_id
        if self.auth is not None and self.auth.enabled:
            self.auth.stamp(req)  # the caller's identity, checked when applied
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            self.node.propose(data)
        except ProposalDropped:
            self._waiters.pop(rid, None)
            raise errors.NO_LEADER from None
        return await self._wait(rid, fut, timeout)

    async def propose_conf_change(
        self, cc_type: ConfChangeType, node_id: int, member: internal_pb2.Member | None
    ) -> Applied:
        self._check_writable()
        rid = next(self._req_ids)
        ctx = internal_pb2.InternalRequest(id=rid, member_id=self.member_id)
        if member is not None:
            ctx.member_update.CopyFrom(member)
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            self.node.propose_conf_change(ConfChange(cc_type, node_id, ctx.SerializeToString()))
        except ProposalDropped as e:
            self._waiters.pop(rid, None)
            if "configuration change" in str(e):
                raise EtcdError(errors.MEMBER_NOT_ENOUGH_STARTED.code, f"etcdserver: {e}") from None
            raise errors.NO_LEADER from None
        return await self._wait(rid, fut, REQUEST_TIMEOUT)

    async def _wait(self, rid: int, fut: asyncio.Future[Applied], timeout: float) -> Applied:
        # One timer that fails the future, not asyncio.wait_for (which costs
        # a second future, a task wake-up and callbacks per proposal).
        timer = asyncio.get_running_loop().call_later(timeout, _time_out, fut)
        try:
            res = await fut
        finally:
            timer.cancel()
            self._waiters.pop(rid, None)
        if res.error is not None:
            raise res.error
        return res

    async def read_barrier(self, timeout: float = REQUEST_TIMEOUT) -> None:
        """Wait until this member's state reflects every write acknowledged
        before the call (ReadIndex: the node runs one round at a time, shared
        by every reader that arrived while the previous one was under way)."""
        try:
            async with asyncio.timeout(timeout):  # one timer, not a wait_for per step
                while True:
                    if self.node.leader == NONE:
                        # An election may be under way: wait for it, not for a timer.
                        await self.node.leader_changed.wait()
                        continue
                    try:
                        index = await self.node.read_index()
                    except ProposalDropped:
                        continue  # leader changed mid-read: ask the new one
                    await self.node.wait_applied(index)
                    return
        except TimeoutError:
            raise (errors.NO_LEADER if self.node.leader == NONE else errors.TIMEOUT) from None

    # ------------------------------------------------------------------ status
    def is_learner(self) -> bool:
        """Cached: asked on every request (learners refuse most RPCs)."""
        return self._is_learner

    def pending_proposals(self) -> int:
        return len(self._waiters)

    def has_leader(self) -> bool:
        return self.node.leader != NONE

    def status(self) -> rpc_pb2.StatusResponse:
        st = self.node.raft
        return rpc_pb2.StatusResponse(
            header=self.header(),
            version=API_VERSION,
            dbSize=self.store.db_size(),
            dbSizeInUse=self.store.db_size_in_use(),
            leader=self.node.leader,
            raftIndex=st.log.committed,
            raftTerm=st.term,
            raftAppliedIndex=self.node.applied,
            isLearner=self.is_learner(),
            # etcd: each alarm's protobuf compact text, e.g. "memberID:42 alarm:NOSPACE "
            errors=[
                f"memberID:{a.memberID} alarm:{rpc_pb2.AlarmType.Name(a.alarm)} " for a in self.applier.alarms.alarms
            ],
        )


def bootstrap_log(cfg: ServerConfig, raft_store: LmdbStorage) -> None:
    """A brand-new member of a new cluster (also ``kvctl snapshot restore``):
    every initial member writes the same conf-change entries at term 1, so
    all logs agree from index 1."""
    ents = []
    for i, (name, urls) in enumerate(sorted(cfg.initial_cluster.items(), key=lambda kv: cfg.member_id(kv[1])), 1):
        mid = cfg.member_id(urls)
        ctx = internal_pb2.InternalRequest(member_update=internal_pb2.Member(id=mid, name=name, peer_urls=urls))
        cc = ConfChange(ConfChangeType.ADD_NODE, mid, ctx.SerializeToString())
        ents.append(Entry(1, i, EntryType.CONF_CHANGE, cc.encode()))
    raft_store.save(HardState(term=1, vote=NONE, commit=len(ents)), ents, None, True)


def force_new_cluster(member_id: int, raft_store: LmdbStorage) -> list[int]:
    """Recover from the loss of a majority (etcd's --force-new-cluster): drop
    the uncommitted tail and commit conf changes that remove every other
    member, so this member alone is the cluster, with all committed data.
    Returns the removed member IDs."""
    hard, conf = raft_store.initial_state()
    snap_index = raft_store.snapshot().meta.index
    commit = max(hard.commit, snap_index)
    others = set(conf.voters) | set(conf.learners)
    if commit > snap_index:
        for e in raft_store.entries(snap_index + 1, commit + 1):
            if e.type != EntryType.CONF_CHANGE:
                continue
            try:
                cc = ConfChange.decode(e.data)
            except ValueError:
                continue
            if cc.type == ConfChangeType.REMOVE_NODE:
                others.discard(cc.node_id)
            else:
                others.add(cc.node_id)
    others.discard(member_id)
    removed = sorted(others)
    term = hard.term or 1
    ents = [
        Entry(term, commit + i, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.REMOVE_NODE, mid).encode())
        for i, mid in enumerate(removed, 1)
    ]
    if ents:
        # Entries at commit+1 replace (and so discard) any uncommitted tail.
        raft_store.save(HardState(term=term, vote=hard.vote, commit=commit + len(ents)), ents, None, True)
    return removed


def remove_data_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(errors.TIMEOUT)
