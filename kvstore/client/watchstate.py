"""Watch resumption, shared by both flavours (pure: responses in, events out).

The state is a *floor*: the lowest revision whose events may not all have
been delivered yet, plus the keys already delivered at that revision. A
re-created watch starts at the floor and the events it repeats (same
revision, key already delivered) are dropped, so the caller sees every event
exactly once even if a revision's events were split over two responses when
the connection broke. Progress notifications (and the "created" answer of a
watch started "from now") raise the floor past revisions known complete.
"""
from __future__ import annotations

from ..pb import rpc_pb2
from .errors import WatchCompacted, WatchError
from .model import Event


class WatchResume:
    def __init__(self, create: rpc_pb2.WatchCreateRequest, what: str = "watch") -> None:
        self.create = create
        self.what = what
        self.floor = create.start_revision  # 0 until the first "created" pins "now"
        self.seen: set[bytes] = set()

    @property
    def pinned(self) -> bool:
        return self.floor > 0

    def request(self) -> rpc_pb2.WatchRequest:
        c = rpc_pb2.WatchCreateRequest()
        c.CopyFrom(self.create)
        c.start_revision = self.floor
        return rpc_pb2.WatchRequest(create_request=c)

    def on_response(self, resp: rpc_pb2.WatchResponse) -> list[Event]:
        if resp.compact_revision:
            raise WatchCompacted(
                f"{self.what}: revision {self.floor} has been compacted (compact revision "
                f"{resp.compact_revision}); re-list the keys and start a new watch from the listing's revision + 1",
                resp.compact_revision,
            )
        if resp.canceled:
            raise WatchError(f"{self.what}: cancelled by the server: {resp.cancel_reason or 'no reason given'}",
                             "CANCELLED")
        if resp.created:
            if self.floor == 0:
                self.floor = resp.header.revision + 1
            return []
        if not resp.events:
            # Progress notification: every event up to the header revision was sent.
            if resp.header.revision + 1 > self.floor:
                self.floor = resp.header.revision + 1
                self.seen = set()
            return []
        out: list[Event] = []
        for ev in resp.events:
            rev, key = ev.kv.mod_revision, ev.kv.key
            if rev < self.floor or (rev == self.floor and key in self.seen):
                continue  # already delivered before a reconnect
            if rev > self.floor:
                self.floor = rev
                self.seen = {key}
            else:
                self.seen.add(key)
            out.append(Event.of(ev))
        return out


# Stream errors after which a watch does not reconnect.
FATAL_WATCH_CODES = ("PERMISSION_DENIED", "INVALID_ARGUMENT", "UNIMPLEMENTED", "FAILED_PRECONDITION", "NOT_FOUND",
                     "OUT_OF_RANGE")
