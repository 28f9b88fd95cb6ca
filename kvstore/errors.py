"""etcd's error vocabulary: gRPC status codes and the exact message strings
clients match on (from etcd's rpctypes). Every layer raises ``EtcdError``; the
gRPC and HTTP adapters translate it, never the other way round.
"""
from __future__ import annotations

import grpc


class EtcdError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"

    def with_detail(self, detail: str) -> "EtcdError":
        return EtcdError(self.code, f"{self.message}: {detail}")


def _e(code: str, message: str) -> EtcdError:
    return EtcdError(getattr(grpc.StatusCode, code), message)


EMPTY_KEY = _e("INVALID_ARGUMENT", "etcdserver: key is not provided")
KEY_NOT_FOUND = _e("INVALID_ARGUMENT", "etcdserver: key not found")
VALUE_PROVIDED = _e("INVALID_ARGUMENT", "etcdserver: value is provided")
LEASE_PROVIDED = _e("INVALID_ARGUMENT", "etcdserver: lease is provided")
TOO_MANY_OPS = _e("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _e("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
COMPACTED = _e("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _e("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _e("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
LEASE_NOT_FOUND = _e("NOT_FOUND", "etcdserver: requested lease not found")
LEASE_EXIST = _e("FAILED_PRECONDITION", "etcdserver: lease already exists")
LEASE_T_T_L_TOO_LARGE = _e("OUT_OF_RANGE", "etcdserver: too large lease TTL")
WATCH_CANCELED = _e("CANCELLED", "etcdserver: watch canceled")
MEMBER_EXIST = _e("FAILED_PRECONDITION", "etcdserver: member ID already exist")
PEER_U_R_L_EXIST = _e("FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED = _e("FAILED_PRECONDITION", "etcdserver: re-configuration failed due to not enough started members")
MEMBER_BAD_U_R_LS = _e("INVALID_ARGUMENT", "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = _e("NOT_FOUND", "etcdserver: member not found")
MEMBER_NOT_LEARNER = _e("FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
LEARNER_NOT_READY = _e("FAILED_PRECONDITION", "etcdserver: can only promote a learner member which is in sync with leader")
TOO_MANY_LEARNERS = _e("FAILED_PRECONDITION", "etcdserver: too many learner members in cluster")
REQUEST_TOO_LARGE = _e("INVALID_ARGUMENT", "etcdserver: request is too large")
REQUEST_TOO_MANY_REQUESTS = _e("RESOURCE_EXHAUSTED", "etcdserver: too many requests")
ROOT_USER_NOT_EXIST = _e("FAILED_PRECONDITION", "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST = _e("FAILED_PRECONDITION", "etcdserver: root user does not have root role")
USER_ALREADY_EXIST = _e("FAILED_PRECONDITION", "etcdserver: user name already exists")
USER_EMPTY = _e("INVALID_ARGUMENT", "etcdserver: user name is empty")
USER_NOT_FOUND = _e("FAILED_PRECONDITION", "etcdserver: user name not found")
ROLE_ALREADY_EXIST = _e("FAILED_PRECONDITION", "etcdserver: role name already exists")
ROLE_NOT_FOUND = _e("FAILED_PRECONDITION", "etcdserver: role name not found")
ROLE_EMPTY = _e("INVALID_ARGUMENT", "etcdserver: role name is empty")
AUTH_FAILED = _e("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED = _e("PERMISSION_DENIED", "etcdserver: permission denied")
ROLE_NOT_GRANTED = _e("FAILED_PRECONDITION", "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _e("FAILED_PRECONDITION", "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED = _e("FAILED_PRECONDITION", "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN = _e("UNAUTHENTICATED", "etcdserver: invalid auth token")
INVALID_AUTH_MGMT = _e("INVALID_ARGUMENT", "etcdserver: invalid auth management")
AUTH_OLD_REVISION = _e("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
NO_LEADER = _e("UNAVAILABLE", "etcdserver: no leader")
NOT_LEADER = _e("FAILED_PRECONDITION", "etcdserver: not leader")
LEADER_CHANGED = _e("UNAVAILABLE", "etcdserver: leader changed")
NOT_CAPABLE = _e("UNAVAILABLE", "etcdserver: not capable")
STOPPED = _e("UNAVAILABLE", "etcdserver: server stopped")
TIMEOUT = _e("UNAVAILABLE", "etcdserver: request timed out")
TIMEOUT_DUE_TO_LEADER_FAIL = _e("UNAVAILABLE", "etcdserver: request timed out, possibly due to previous leader failure")
TIMEOUT_DUE_TO_CONNECTION_LOST = _e("UNAVAILABLE", "etcdserver: request timed out, possibly due to connection lost")
TIMEOUT_WAIT_APPLIED_INDEX = _e("UNAVAILABLE", "etcdserver: request timed out, waiting for the applied index took too long")
UNHEALTHY = _e("UNAVAILABLE", "etcdserver: unhealthy cluster")
CORRUPT = _e("DATA_LOSS", "etcdserver: corrupt cluster")
BAD_LEADER_TRANSFEREE = _e("FAILED_PRECONDITION", "etcdserver: bad leader transferee")
