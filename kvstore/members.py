"""The cluster's member list: pure functions over ``internal_pb2.MemberList``.

It lives in the state machine (applied from Raft) so every member sees the
same list at the same index; the server maps it onto the peer transport.
"""
from __future__ import annotations

from kvstore.pb import internal_pb2, rpc_pb2

Member = internal_pb2.Member
MemberList = internal_pb2.MemberList

META_KEY = b"members"


def load(raw: bytes | None) -> MemberList:
    ml = MemberList()
    if raw:
        ml.ParseFromString(raw)
    return ml


def dump(ml: MemberList) -> bytes:
    return ml.SerializeToString(deterministic=True)


def find(ml: MemberList, member_id: int) -> Member | None:
    for m in ml.members:
        if m.id == member_id:
            return m
    return None


def upsert(ml: MemberList, member: Member) -> None:
    """Add or replace ``member``, keeping the list sorted by id."""
    kept = [m for m in ml.members if m.id != member.id]
    kept.append(member)
    kept.sort(key=lambda m: m.id)
    del ml.members[:]
    ml.members.extend(kept)
    if member.id in ml.removed:
        ml.removed.remove(member.id)


def remove(ml: MemberList, member_id: int) -> None:
    kept = [m for m in ml.members if m.id != member_id]
    del ml.members[:]
    ml.members.extend(kept)
    if member_id not in ml.removed:
        ml.removed.append(member_id)


def to_etcd(m: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=m.id,
        name=m.name,
        peerURLs=list(m.peer_urls),
        clientURLs=list(m.client_urls),
        isLearner=m.is_learner,
    )


def peer_url_taken(ml: MemberList, urls: list[str], except_id: int = 0) -> bool:
    wanted = set(urls)
    return any(m.id != except_id and wanted & set(m.peer_urls) for m in ml.members)


# etcd's strict reconfiguration checks (``--strict-reconfig-check``, on by
# default in etcd 3.4). "Started" = the member published its name, i.e. it
# ran at least once. Each asks: after the change, could the started voting
# members still form a quorum?
def voters(ml: MemberList) -> list[Member]:
    return [m for m in ml.members if not m.is_learner]


def ready_to_add_voting(ml: MemberList) -> bool:
    voting = voters(ml)
    started = sum(1 for m in voting if m.name)
    n = len(voting) + 1
    if started == 1 and n == 2:  # a second member for a single-member cluster
        return True
    return started >= n // 2 + 1


def ready_to_remove_voting(ml: MemberList, member_id: int) -> bool:
    rest = [m for m in voters(ml) if m.id != member_id]
    return sum(1 for m in rest if m.name) >= len(rest) // 2 + 1


def ready_to_promote(ml: MemberList) -> bool:
    voting = voters(ml)
    return sum(1 for m in voting if m.name) + 1 >= (len(voting) + 1) // 2 + 1


def connected_enough_to_remove(voting: list[int], me: int, member_id: int, in_contact: set[int]) -> bool:
    """etcd's mayRemoveMember: a member out of contact is safe to remove;
    otherwise the members in contact with this one (itself included), minus
    the removed one, must still be a quorum of the current voting members."""
    if member_id != me and member_id not in in_contact:
        return True
    active = sum(1 for v in voting if v == me or v in in_contact)
    return active - 1 >= 1 + (len(voting) - 1) // 2
