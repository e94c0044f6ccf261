"""service/live/feeds.py on its own: the sequencing of notices, without Redis or HTTP.

A scripted store answers the snapshots and a scripted subscriber delivers the
notices, so each rule of the feed is checked on exactly the order of events it is about.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

import pytest

from service.errors import ErrorCode, ServiceError
from service.live import feeds as feeds_module
from service.live.feeds import Feeds
from service.live.watcher import Watcher
from service.ops.metrics import Tally
from service.storage.scripts import ScriptCall
from service.storage.store import Store
from service.storage.transports.subscriber import Listener

CHANNEL = "{1:g}:changes"


class ScriptedSubscriber:
    def __init__(self) -> None:
        self.listener: Listener | None = None
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []

    def start(self, listener: Listener) -> None:
        self.listener = listener

    def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    def unsubscribe(self, channel: str) -> None:
        self.unsubscribed.append(channel)

    def lose_all(self) -> None:
        pass

    async def close(self) -> None:
        pass


class ScriptedStore:
    """Answers snapshot_group with `snapshot` ("<version> <incarnation>" and counters)."""

    def __init__(self) -> None:
        self.snapshot: tuple[bytes, dict[str, int]] = (b"", {})
        self.reads = 0
        self.before_reply: list[Any] = []  # notices the subscriber delivers while a read is in flight
        self.transport = self
        self.subscriber_made = ScriptedSubscriber()
        self.gate: asyncio.Event | None = None  # when set: a read waits for it

    def subscriber(self) -> ScriptedSubscriber:
        return self.subscriber_made

    async def run(self, call: ScriptCall) -> list[Any]:
        self.reads += 1
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        for deliver in self.before_reply:
            deliver()
        self.before_reply = []
        held, counters = self.snapshot
        reply: list[Any] = [0, held]
        for key, value in counters.items():
            reply += [key.encode(), str(value).encode()]
        return reply


def notice(incarnation: str, version: int, kind: str, *items: str) -> bytes:
    return "\xff".join([incarnation, str(version), kind, *items]).encode("latin-1")


def frames(watcher: Watcher) -> bytes:
    return b"".join(watcher.frames)


async def _joined(store: ScriptedStore, feeds: Feeds, last_event_id: str | None = None) -> Watcher:
    join = asyncio.ensure_future(feeds.join(CHANNEL, "{1:g}", "g", "1", last_event_id))
    await asyncio.sleep(0)
    listener = store.subscriber_made.listener
    assert listener is not None
    listener.on_ready(CHANNEL)
    return await join


async def _five_watchers(store: ScriptedStore, feeds: Feeds, held: bytes) -> list[Watcher]:
    """Five watchers of the group, from a snapshot of `held` ("<version> <incarnation>") and a = 1."""
    store.snapshot = (held, {"a": 1})
    first = await _joined(store, feeds)
    return [first] + [await feeds.join(CHANNEL, "{1:g}", "g", "1", None) for _ in range(4)]


def test_notices_of_an_earlier_life_that_waited_for_a_snapshot_are_dropped_not_resynced_forever() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        store.snapshot = (b"2 bbbb", {"a": 2})

        # While the snapshot is read: the destroy of life "aaaa", then life "bbbb" v3.
        def deliver(payload: bytes) -> Any:
            return lambda: feeds.on_message(CHANNEL, payload)

        store.before_reply = [deliver(notice("aaaa", 5, "x")), deliver(notice("bbbb", 3, "u", "a", "3"))]
        watcher = await _joined(store, feeds)
        await asyncio.sleep(0.01)
        assert store.reads == 1, "one snapshot, no resync loop"
        # The new watcher starts from the state after v3: snapshot v2 plus the notice of v3.
        assert b'"Version":3,"Resync":false,"GroupCounter":[{"Key":"a","Value":3}]' in frames(watcher)
        assert feeds.feeds[CHANNEL].event_id == "bbbb-3"

    asyncio.run(scenario())


def test_a_skipped_version_makes_one_resync_snapshot_for_every_watcher() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        store.snapshot = (b"1 cccc", {"a": 1})
        first = await _joined(store, feeds)
        second = await feeds.join(CHANNEL, "{1:g}", "g", "1", None)
        first.frames.clear()
        second.frames.clear()
        store.snapshot = (b"3 cccc", {"a": 3})
        feeds.on_message(CHANNEL, notice("cccc", 3, "u", "a", "3"))  # 2 never came
        await asyncio.sleep(0.01)
        assert store.reads == 2, "one snapshot for the feed, not one per watcher"
        for watcher in (first, second):
            (frame,) = watcher.frames
            assert b"event: snapshot" in frame
            assert b'"Version":3,"Resync":true' in frame
        feed = feeds.feeds[CHANNEL]
        assert feed.event_id == "cccc-3"
        assert feed.counters == {"a": 3}

    asyncio.run(scenario())


def test_a_watcher_with_the_current_last_event_id_gets_no_snapshot() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        store.snapshot = (b"4 dddd", {"a": 4})
        await _joined(store, feeds)
        current = await feeds.join(CHANNEL, "{1:g}", "g", "1", "dddd-4")
        stale = await feeds.join(CHANNEL, "{1:g}", "g", "1", "eeee-4")
        assert current.frames == []
        assert b'"Resync":true' in frames(stale)

    asyncio.run(scenario())


def test_the_last_watcher_leaving_drops_the_subscription() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        watchers = [await _joined(store, feeds)] + [
            await feeds.join(CHANNEL, "{1:g}", "g", "1", None) for _ in range(2)
        ]
        assert store.subscriber_made.subscribed == [CHANNEL]
        for watcher in watchers[:2]:
            feeds.leave(CHANNEL, watcher)
        assert store.subscriber_made.unsubscribed == []
        feeds.leave(CHANNEL, watchers[2])
        assert store.subscriber_made.unsubscribed == [CHANNEL]
        assert CHANNEL not in feeds.feeds

    asyncio.run(scenario())


def test_each_pass_over_the_watchers_is_timed_as_the_delivery_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    tally = Tally()
    monkeypatch.setattr(feeds_module, "TALLY", tally)
    monkeypatch.setattr(feeds_module, "PUMP_SLICE", 2)

    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        watchers = await _five_watchers(store, feeds, b"1 gggg")
        for watcher in watchers:
            watcher.attach(FakeCycle().send)
            await watcher.flush()
        loop = asyncio.get_running_loop()
        # The pass's three slices, with a call that takes 20 ms served between two of them.
        feeds.on_message(CHANNEL, notice("gggg", 2, "u", "a", "2"))
        loop.call_soon(time.sleep, 0.02)  # runs after the pass's first slice
        await asyncio.sleep(0.05)
        passes = tally._delivery_passes
        assert sum(passes.buckets) == 1
        assert 0.02 <= passes.total < 1.0

    asyncio.run(scenario())


def test_closing_the_feeds_ends_every_watcher_and_lets_every_group_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tally = Tally()
    monkeypatch.setattr(feeds_module, "TALLY", tally)

    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        watchers = [await _joined(store, feeds), await feeds.join(CHANNEL, "{1:g}", "g", "1", None)]
        assert tally.watched_groups == 1
        await feeds.close()
        assert all(watcher.ended for watcher in watchers)
        assert tally.watched_groups == 0
        assert feeds.feeds == {}
        feeds.leave(CHANNEL, watchers[0])  # what each stream's endpoint does as it ends
        assert tally.watched_groups == 0

    asyncio.run(scenario())


class FakeTransport:
    """A socket that takes every write at once, recording it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class FakeCycle:
    """What a watcher finds behind uvicorn's `send`: a chunked response and its transport."""

    chunked_encoding = True

    def __init__(self) -> None:
        self.transport = FakeTransport()

    async def send(self, message: Any) -> None:
        self.transport.write(message["body"])


def versions(write: bytes) -> list[int]:
    return [int(version) for version in re.findall(rb'"Version":(\d+)', write)]


def test_a_frame_that_arrives_mid_pass_reaches_every_watcher_once_in_order_one_write_per_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feeds_module, "PUMP_SLICE", 2)

    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        watchers = await _five_watchers(store, feeds, b"1 ffff")
        cycles = []
        for watcher in watchers:
            cycle = FakeCycle()
            cycles.append(cycle)
            watcher.attach(cycle.send)
            await watcher.flush()  # the snapshot
            cycle.transport.writes.clear()
        loop = asyncio.get_running_loop()
        feeds.on_message(CHANNEL, notice("ffff", 2, "u", "a", "2"))
        # Runs after the pump's first step (watchers 0 and 1), before its second.
        loop.call_soon(feeds.on_message, CHANNEL, notice("ffff", 3, "u", "a", "3"))
        await asyncio.sleep(0.05)
        writes = [cycle.transport.writes for cycle in cycles]
        assert [len(w) for w in writes] == [2, 2, 1, 1, 1]
        for watcher_writes in writes:
            assert [v for write in watcher_writes for v in versions(write)] == [2, 3]
        feed = feeds.feeds[CHANNEL]
        assert feed.log == [], "frames every watcher has had are let go"
        assert not feed.pumping

    asyncio.run(scenario())


def test_a_join_refused_at_its_deadline_releases_the_feed_though_the_snapshot_landed_meanwhile() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        store.gate = asyncio.Event()
        timeout = 0.05
        feeds = Feeds(cast(Store, store), timeout=timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        join = asyncio.ensure_future(feeds.join(CHANNEL, "{1:g}", "g", "1", None))
        await asyncio.sleep(0)
        listener = store.subscriber_made.listener
        assert listener is not None
        listener.on_ready(CHANNEL)  # the snapshot's read starts, and waits at the gate
        await asyncio.sleep(0)
        # The gate opens just before the join's deadline, in the same step of the loop as
        # the deadline's timer: the snapshot task is woken first, then the join is
        # cancelled, so the snapshot lands between the deadline and the join's resumption.
        loop.call_at(started + timeout - 0.001, store.gate.set)
        time.sleep(timeout + 0.02)  # noqa: ASYNC251 (blocks the loop: both timers fall due together)
        with pytest.raises(ServiceError) as refused:
            await join
        assert refused.value.code == ErrorCode.INTERNAL
        assert CHANNEL not in feeds.feeds, "a refused join's feed is released"
        assert store.subscriber_made.unsubscribed == [CHANNEL]

    asyncio.run(scenario())


def test_watchers_that_leave_a_quiet_group_are_let_go_without_waiting_for_a_broadcast() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0)
        stays = await _joined(store, feeds)
        feed = feeds.feeds[CHANNEL]
        for _ in range(1000):  # watch and leave, over and over, and nothing ever changes
            feeds.leave(CHANNEL, await feeds.join(CHANNEL, "{1:g}", "g", "1", None))
        assert feed.watchers == {stays}
        assert len(feed.ring) <= 2 * len(feed.watchers) + 8, len(feed.ring)
        feeds.leave(CHANNEL, stays)
        assert CHANNEL not in feeds.feeds
        assert (feed.ring, feed.log, feed.counters) == ([], [], {}), "a released feed holds nothing"

    asyncio.run(scenario())


def test_joins_starting_a_group_beyond_the_workers_bound_are_refused_at_once_with_10002() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0, max_joins=3)
        waiting = [
            asyncio.ensure_future(feeds.join(f"{{1:g{n}}}:changes", f"{{1:g{n}}}", f"g{n}", "1", None))
            for n in range(3)
        ]
        await asyncio.sleep(0)
        assert feeds.starting == 3
        with pytest.raises(ServiceError) as refused:
            await feeds.join("{1:late}:changes", "{1:late}", "late", "1", None)
        assert refused.value.code == ErrorCode.INTERNAL
        assert "{1:late}:changes" not in feeds.feeds, "a refused join starts no subscription"
        assert store.subscriber_made.subscribed == [f"{{1:g{n}}}:changes" for n in range(3)]
        for join in waiting:
            join.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert (feeds.starting, feeds.feeds) == (0, {})

    asyncio.run(scenario())


def test_an_end_users_joins_starting_a_group_beyond_their_bound_are_refused_with_61007() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0, max_joins_per_identity=2)

        def join(n: int, identity: str | None) -> Any:
            return feeds.join(f"{{1:g{n}}}:changes", f"{{1:g{n}}}", f"g{n}", "1", None, identity)

        waiting = [asyncio.ensure_future(join(n, "1:fan")) for n in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ServiceError) as refused:
            await join(2, "1:fan")
        assert refused.value.code == ErrorCode.END_USER_LIMITED
        others = [asyncio.ensure_future(join(3, "1:other")), asyncio.ensure_future(join(4, None))]
        await asyncio.sleep(0)
        assert (feeds.starting, feeds.starting_by) == (4, {"1:fan": 2, "1:other": 1})
        for pending in waiting + others:
            pending.cancel()
        await asyncio.gather(*waiting, *others, return_exceptions=True)
        assert (feeds.starting, feeds.starting_by) == (0, {})

    asyncio.run(scenario())


def test_a_join_to_a_group_in_sync_or_starting_is_never_refused_by_the_bound_on_joins() -> None:
    async def scenario() -> None:
        store = ScriptedStore()
        feeds = Feeds(cast(Store, store), timeout=2.0, max_joins=1, max_joins_per_identity=1)
        await _joined(store, feeds)
        other = ("{1:other}:changes", "{1:other}", "other", "1", None, "1:a")
        starting = asyncio.ensure_future(feeds.join(*other))
        await asyncio.sleep(0)
        assert feeds.starting == 1
        # The worker's one slot, and the end user's, are taken: these need none.
        for _ in range(5):
            await feeds.join(CHANNEL, "{1:g}", "g", "1", None, "1:a")
        joining = [asyncio.ensure_future(feeds.join(*other)) for _ in range(5)]
        await asyncio.sleep(0)
        assert feeds.feeds["{1:other}:changes"].joining == 6
        listener = store.subscriber_made.listener
        assert listener is not None
        listener.on_ready("{1:other}:changes")
        assert len(await asyncio.gather(starting, *joining)) == 6
        assert feeds.starting == 0

    asyncio.run(scenario())
