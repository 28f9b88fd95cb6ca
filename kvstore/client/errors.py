"""Errors of the client library.

Every failure the client reports is a ``ClientError``; the subclasses say what
the caller can do about it:

* ``OutcomeUnknown``: a write that is not safe to repeat (a plain put or
  delete, an unguarded transaction) failed in a way that does not tell whether
  the cluster applied it. The client never retries such a write on its own:
  read the key(s) to find out, then decide.
* ``Unavailable``: no endpoint could serve the request before the deadline
  (every attempt was either refused before it reached the cluster, or was a
  safe operation). A write reported as ``Unavailable`` was not applied.
* ``Timeout``: a safe operation ran out of time (a subclass of Unavailable).
* ``WatchCompacted``: a watch could not resume because the revisions it still
  needed were compacted away; re-list the keys and start a new watch from the
  revision of that listing.
* ``ServerError`` (and subclasses): the cluster answered with an error.
"""
from __future__ import annotations

import grpc


class ClientError(Exception):
    """Base class: ``code`` is the gRPC status code name (or '') and
    ``message`` a one-line description."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Unavailable(ClientError):
    """No endpoint served the request in time; a write was not applied."""


class Timeout(Unavailable):
    """The operation's deadline passed (safe operations only)."""


class OutcomeUnknown(ClientError):
    """A non-idempotent write failed ambiguously: it may or may not have been applied."""


class ServerError(ClientError):
    """The cluster answered with an error (``code`` and etcd's message)."""


class InvalidArgument(ServerError):
    pass


class Compacted(ServerError):
    """The requested revision was compacted."""


class FutureRevision(ServerError):
    pass


class LeaseNotFound(ServerError):
    pass


class NoSpace(ServerError):
    """The cluster's NOSPACE alarm is raised: writes are refused."""


class PermissionDenied(ServerError):
    pass


class AuthFailed(ServerError):
    """Wrong user name or password, or authentication not enabled."""


class NotFound(ServerError):
    pass


class WatchError(ClientError):
    """A watch was cancelled by the server for a reason other than compaction."""


class WatchCompacted(WatchError):
    """The watch cannot continue: the revisions it needs were compacted."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message, "OUT_OF_RANGE")
        self.compact_revision = compact_revision


class LockTimeout(ClientError):
    """The lock (or leadership) was not acquired before the timeout."""


class LeaseExpired(ClientError):
    """A session's lease was lost (expired or revoked): the lock or leadership it backed is gone."""


class NotLeader(ClientError):
    """An election operation was made by a campaigner that is no longer the leader."""


_BY_MESSAGE = (
    ("required revision has been compacted", Compacted),
    ("required revision is a future revision", FutureRevision),
    ("requested lease not found", LeaseNotFound),
    ("database space exceeded", NoSpace),
    ("authentication failed", AuthFailed),
    ("authentication is not enabled", AuthFailed),
    ("permission denied", PermissionDenied),
    ("session expired", LeaseExpired),
    ("election: not leader", NotLeader),
)

_BY_CODE = {
    "INVALID_ARGUMENT": InvalidArgument,
    "PERMISSION_DENIED": PermissionDenied,
    "NOT_FOUND": NotFound,
    "UNAUTHENTICATED": AuthFailed,
}


def status_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code or "")


def server_error(code: object, message: str) -> ClientError:
    """The ClientError for a server's answer (code, etcd message)."""
    name = status_name(code)
    msg = message or name
    for needle, cls in _BY_MESSAGE:
        if needle in msg:
            return cls(msg, name)
    return _BY_CODE.get(name, ServerError)(msg, name)
