"""Coalescing in the watch hub: a synced watcher whose stream has not sent
its queued response yet gets later revisions in that same response (read
from its group's shared log at send time), in order, none lost, none
duplicated; cut at revision boundaries by size; sealed before progress and
cancel responses; evicted to history replay when the stream's bytes bound
is hit. A reader that keeps up still gets one response per revision.
"""
from __future__ import annotations

import asyncio

from kvstore.pb import rpc_pb2
from kvstore.watch import SEG_ITEMS, item_bytes

from .test_watch_hub import C, check_stream, evs_of, mkhub, put, same_events, settle


def revs(r: rpc_pb2.WatchResponse) -> list[int]:
    return [e.kv.mod_revision for e in r.events]


def test_slow_reader_gets_many_revisions_in_one_response():
    store, hub = mkhub()
    slow, fast = hub.open_stream(), hub.open_stream()
    for s in (slow, fast):
        for _ in range(3):
            s.create(C(key=b"k"))
        s.create(C(key=b"k", range_end=b"l", prev_kv=True))
    slow_rs, fast_rs = slow.drain(), fast.drain()
    n = 3 * SEG_ITEMS  # spans several log segments
    for i in range(n):
        put(store, hub, (b"k", b"v%d" % i))
        fast_rs += fast.drain()
    slow_rs += slow.drain()
    last = store.rev
    ev_rs = [r for r in slow_rs if r.events]
    assert [(r.watch_id, r.header.revision, len(r.events)) for r in ev_rs] == [(w, last, n) for w in range(4)]
    assert revs(ev_rs[0]) == list(range(2, last + 1))
    assert sum(1 for r in fast_rs if r.events) == 4 * n  # kept up: one per revision
    for rs in (slow_rs, fast_rs):
        got = check_stream(rs)
        for w in range(3):
            same_events(got[w], store.expected(2, b"k", b""))
        same_events(got[3], store.expected(2, b"k", b"l", prev_kv=True))
    assert slow.queued == 0 and slow.queued_bytes == 0 and fast.queued_bytes == 0


def test_shared_log_and_idle_watchers_get_new_entries():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"k"))
    s.create(C(key=b"k"))
    s.drain()
    put(store, hub, (b"k", b"1"))
    put(store, hub, (b"k", b"2"))
    first = s.get_nowait()  # watch 0: revisions 2 and 3
    put(store, hub, (b"k", b"3"))  # watch 0 idle again: a new response; watch 1 still waiting
    rs = [rpc_pb2.WatchResponse.FromString(item_bytes(first))] + s.drain()
    assert [(r.watch_id, revs(r)) for r in rs] == [(0, [2, 3]), (1, [2, 3, 4]), (0, [4])]
    assert first[2] is s.hub._key_groups[b"k"][(b"k", None, False, False, False)].seg.items[0][2][0]


def test_coalesced_responses_are_cut_at_revision_boundaries():
    store, hub = mkhub(chunk_bytes=300)
    s = hub.open_stream()
    s.create(C(key=b"a", range_end=b"b"))
    for i in range(20):
        put(store, hub, (b"a", b"x" * 50))
    put(store, hub, *[(b"a%d" % i, b"y" * 100) for i in range(5)])  # one revision of ~700 bytes
    put(store, hub, (b"a", b"z"))
    rs = s.drain()
    sizes = [len(r.events) for r in rs[1:]]
    assert all(r.ByteSize() <= 300 + 100 for r in rs if len(set(revs(r))) > 1)
    assert [revs(r) for r in rs if 22 in revs(r)] == [[22] * 5]  # a revision is never split
    assert len(rs) > 3 and sum(sizes) == 26
    assert all(r.header.revision == revs(r)[-1] for r in rs[1:])
    same_events(check_stream(rs)[0], store.expected(2, b"a", b"b"))


def test_fragmented_revision_inside_a_backlog():
    store, hub = mkhub(max_response_bytes=2500)
    s = hub.open_stream()
    s.create(C(key=b"f", range_end=b"g", fragment=True))
    s.create(C(key=b"f", range_end=b"g"))
    put(store, hub, (b"f", b"1"))
    put(store, hub, *[(b"f%d" % i, b"x" * 900) for i in range(5)])
    put(store, hub, (b"f", b"2"))
    rs = s.drain()
    assert [(r.watch_id, revs(r), r.fragment) for r in rs[2:] if r.watch_id == 0] == [
        (0, [2], False), (0, [3, 3], True), (0, [3, 3], True), (0, [3], False), (0, [4], False)]
    assert [(r.watch_id, len(r.events)) for r in rs[2:] if r.watch_id == 1] == [(1, 1), (1, 5), (1, 1)]
    got = check_stream(rs)
    for w in (0, 1):
        same_events(got[w], store.expected(2, b"f", b"g"))


def test_progress_response_is_not_overtaken_by_later_events():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a"))
    s.create(C(key=b"b"))
    put(store, hub, (b"a", b"1"))
    put(store, hub, (b"b", b"1"))
    s.request_progress()
    put(store, hub, (b"a", b"2"))
    put(store, hub, (b"b", b"2"))
    rs = s.drain()
    assert [(r.watch_id, r.header.revision, revs(r)) for r in rs[2:]] == [
        (0, 2, [2]), (1, 3, [3]), (-1, 3, []), (0, 4, [4]), (1, 5, [5])]
    check_stream(rs)


def test_sealed_backlog_is_cut_and_stays_before_the_progress_response():
    store, hub = mkhub(chunk_bytes=200)
    s = hub.open_stream()
    s.create(C(key=b"a"))
    s.create(C(key=b"a"))
    for i in range(10):
        put(store, hub, (b"a", b"x" * 50))
    s.request_progress()  # both backlogs end here
    put(store, hub, (b"a", b"y"))
    rs = s.drain()
    kinds = [(r.watch_id, r.header.revision if not r.events else None) for r in rs[2:]]
    at = kinds.index((-1, 11))
    before, after = rs[2:2 + at], rs[3 + at:]
    assert len(before) > 2 and all(revs(r) and revs(r)[-1] <= 11 for r in before)
    assert [(r.watch_id, revs(r)) for r in after] == [(0, [12]), (1, [12])]
    got = check_stream(rs)
    for w in (0, 1):
        same_events(got[w], store.expected(2, b"a", b""))


def test_cancel_sends_what_was_queued_and_nothing_after():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a"))
    put(store, hub, (b"a", b"1"))
    put(store, hub, (b"a", b"2"))
    s.cancel(0)
    put(store, hub, (b"a", b"3"))
    s.create(C(key=b"a"))
    put(store, hub, (b"a", b"4"))
    rs = s.drain()
    assert [(r.watch_id, r.created, r.canceled, revs(r)) for r in rs] == [
        (0, True, False, []), (0, False, False, [2, 3]), (0, False, True, []), (1, True, False, []),
        (1, False, False, [5])]


def test_progress_notify_skips_a_watcher_with_a_queued_response():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a", progress_notify=True))
    s.drain()
    put(store, hub, (b"a", b"1"))
    s.progress_tick()
    s.progress_tick()  # still queued: events are on their way, no progress response
    put(store, hub, (b"a", b"2"))
    rs = s.drain()
    assert [(r.header.revision, revs(r)) for r in rs] == [(3, [2, 3])]
    s.progress_tick()  # just got events: skipped this once (as etcd)
    assert s.drain() == []
    s.progress_tick()
    assert [(r.header.revision, revs(r)) for r in s.drain()] == [(3, [])]


def test_eviction_drops_the_oldest_entry_first_and_replays_it():
    store, hub = mkhub()
    s = hub.open_stream()
    s.create(C(key=b"a"))
    s.create(C(key=b"a"))
    rs = s.drain()
    for i in range(4):
        put(store, hub, (b"a", b"x" * 100))
    per_rev = s.queued_bytes // 8
    rs.append(rpc_pb2.WatchResponse.FromString(item_bytes(s.get_nowait())))  # watch 0's: it is idle
    put(store, hub, (b"a", b"x" * 100))  # watch 1: 5 revisions queued, watch 0: 1
    hub.queue_max_bytes = s.queued_bytes + 2 * per_rev - 1  # the next put does not fit both
    put(store, hub, (b"a", b"x" * 100))
    assert [w.id for w in hub.unsynced] == [1]  # the oldest, larger one
    assert s.watchers[0].entry is not None and s.queued_bytes <= hub.queue_max_bytes
    hub.queue_max_bytes = 16 << 20
    for _ in range(100):
        rs += s.drain()
        settle(hub)
        if not hub.unsynced and not s.queued:
            break
    got = check_stream(rs)
    for w in (0, 1):
        same_events(got[w], store.expected(2, b"a", b""))


def test_slow_async_reader_gets_everything_once():
    async def main():
        store, hub = mkhub(chunk_bytes=500)
        streams = [hub.open_stream() for _ in range(3)]
        for s in streams:
            for _ in range(5):
                s.create(C(key=b"k"))
        got: list[list[rpc_pb2.WatchResponse]] = [[] for _ in streams]

        async def reader(i: int) -> None:
            while sum(len(r.events) for r in got[i]) < 5 * 300:
                item = await asyncio.wait_for(streams[i].get(), 5)
                got[i].append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
                for _ in range(i * 3):  # stream 0 keeps up, 2 is slowest
                    await asyncio.sleep(0)

        readers = [asyncio.ensure_future(reader(i)) for i in range(3)]
        for i in range(300):
            put(store, hub, (b"k", b"%d" % i))
            await asyncio.sleep(0)
        await asyncio.gather(*readers)
        hub.close()
        return store, got

    store, got = asyncio.run(main())
    for rs in got:
        per_watch = check_stream(rs)
        for w in range(5):
            same_events(per_watch[w], store.expected(2, b"k", b""))
    n_slow = sum(1 for r in got[2] if r.events)
    assert n_slow < 5 * 300  # the slow reader got revisions coalesced
    assert evs_of(got[0], 0)[-1][2] == store.rev


def test_behind_watcher_is_held_to_take_in_more_revisions():
    async def main():
        store, hub = mkhub(coalesce_delay=60.0)
        s = hub.open_stream()
        s.create(C(key=b"k"))
        s.create(C(key=b"j"))
        got = [rpc_pb2.WatchResponse.FromString(item_bytes(await s.get())) for _ in range(2)]
        put(store, hub, (b"k", b"1"))
        got.append(rpc_pb2.WatchResponse.FromString(item_bytes(await asyncio.wait_for(s.get(), 5))))
        assert not s.watchers[0].behind  # one revision: it keeps up, never held
        for i in range(3):
            put(store, hub, (b"k", b"%d" % i))
        got.append(rpc_pb2.WatchResponse.FromString(item_bytes(await asyncio.wait_for(s.get(), 5))))
        assert s.watchers[0].behind  # three revisions in one response
        put(store, hub, (b"k", b"x"))
        task = asyncio.ensure_future(s.get())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()  # held: it waits for more revisions
        put(store, hub, (b"k", b"y"))
        put(store, hub, (b"j", b"z"))  # queued behind the held one
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        s.request_progress()  # seals the held response: it goes now, with both revisions
        got.append(rpc_pb2.WatchResponse.FromString(item_bytes(await asyncio.wait_for(task, 5))))
        while (item := s.get_nowait()) is not None:
            got.append(rpc_pb2.WatchResponse.FromString(item_bytes(item)))
        hub.close()
        return store, got

    store, got = asyncio.run(main())
    assert [(r.watch_id, revs(r)) for r in got[2:]] == [(0, [2]), (0, [3, 4, 5]), (0, [6, 7]), (1, [8]), (-1, [])]
    got_ = check_stream(got)
    same_events(got_[0], store.expected(2, b"k", b""))


def test_held_watcher_that_gets_one_revision_is_no_longer_behind():
    async def main():
        store, hub = mkhub(coalesce_delay=0.01)
        s = hub.open_stream()
        s.create(C(key=b"k"))
        await s.get()
        for i in range(3):
            put(store, hub, (b"k", b"%d" % i))
        first = await asyncio.wait_for(s.get(), 5)
        assert s.watchers[0].behind
        put(store, hub, (b"k", b"x"))
        second = await asyncio.wait_for(s.get(), 5)  # after the delay, alone
        behind = s.watchers[0].behind
        hub.close()
        return [rpc_pb2.WatchResponse.FromString(item_bytes(i)) for i in (first, second)], behind

    (first, second), behind = asyncio.run(main())
    assert (revs(first), revs(second), behind) == ([2, 3, 4], [5], False)
