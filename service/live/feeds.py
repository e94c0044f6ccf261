"""Live counters: one feed per watched group per process, fanned out to its watchers.

A feed holds the group's state as of its last notice (every counter, the version and
the incarnation) and one subscription to the group's channel, however many watchers it
has. It is the sequencer: a notice that continues its version is applied and sent to
every watcher as one frame, encoded once; a notice that does not (a gap, another
incarnation) and every new subscription (the first, or one renewed after a Redis
restart, a failover, a resharding) make it read a snapshot, which goes to every watcher
flagged as a resync. Notices that arrive while the snapshot is read wait, and those it
already contains are dropped. So a watcher sees each version once, in order, or a resync.
Frames are kept until every watcher has had them; a cursor walks the watchers, writing
to each all it lacks in one write, so a frame reaches every watcher within one pass.

Each watcher has a bounded buffer of frames not yet written to its socket. A watcher
whose buffer overflows (a client that does not read, once its socket's own buffer is
full) is ended: memory never grows with a slow reader, and its EventSource reconnects
with Last-Event-ID and resyncs. The last watcher to leave ends the feed and its
subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from service.api.commands import GroupSnapshot, read_snapshot
from service.errors import ErrorCode, ServiceError
from service.live.watcher import WATCHER_BUFFER_BYTES, Notice, Watcher, event_id, sse_frame
from service.ops.metrics import TALLY
from service.storage.store import Store
from service.storage.transports.subscriber import Subscriber
from service.wire import ChangeEvent, DestroyedEvent, GroupCounter, SnapshotEvent

log = logging.getLogger("service.feeds")

HEARTBEAT_SECONDS: Final = 15.0
_HEARTBEAT: Final = b": heartbeat\n\n"
_RETRY_FIRST: Final = 0.05
_RETRY_LAST: Final = 2.0
# Watchers a feed writes to in one step of the event loop: other calls run between steps.
PUMP_SLICE: Final = 256


class Feed:
    """One watched group in this process."""

    def __init__(self, owner: Feeds, channel: str, group: str, group_id: str, registered: str) -> None:
        self.owner = owner
        self.channel = channel
        self.group = group
        self.group_id = group_id
        self.registered = registered
        self.watchers: set[Watcher] = set()
        self.joining = 0
        self.subscribed = False
        self.snapshot: GroupSnapshot | None = None  # None: out of sync
        self.counters: dict[str, int] = {}
        self.incarnation = ""
        self.version = 0
        self.pending: list[Notice] = []
        self.synced = asyncio.Event()
        self.error: ServiceError | None = None
        self.syncing: asyncio.Task[None] | None = None
        self._snapshot_frames: dict[bool, bytes] = {}
        # Delivery: frames not yet written to every watcher (`log`, the first of which is
        # number `log_start`), and a cursor that walks `ring`, the watchers in order,
        # writing to each what it has not had, all of it in one write (see `_pump`).
        self.log: list[bytes] = []
        self.log_start = 0
        self.ring: list[Watcher] = []
        self.cursor = 0
        self.pumping = False
        self.pass_started = 0.0

    @property
    def head(self) -> int:
        """The number the next frame will have: a watcher with `seen == head` has them all."""
        return self.log_start + len(self.log)

    def add(self, watcher: Watcher) -> None:
        watcher.seen = self.head
        self.watchers.add(watcher)
        self.ring.append(watcher)

    def remove(self, watcher: Watcher) -> None:
        """The watcher left: the ring lets go of it (and what it holds) soon, not only
        at the next broadcast, which a quiet group may never have. Pruned when the ring
        holds twice as many as are left, so a leave costs O(1) on average; a ring being
        walked is pruned when the walk ends (`_wrap`)."""
        self.watchers.discard(watcher)
        if not self.pumping and len(self.ring) > 2 * len(self.watchers) + 8:
            watchers = self.watchers
            self.ring = [kept for kept in self.ring if kept in watchers and not kept.ended]

    def broadcast(self, frame: bytes) -> None:
        self.log.append(frame)
        if not self.pumping:
            self.pumping = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Write to the next PUMP_SLICE watchers of the ring what each has not had yet.

        One write per watcher is one system call, the bulk of a delivery's cost (a
        profile with 10,000 watchers: over nine tenths of the worker's time in the
        sockets' writes), so a watcher gets every frame it lacks in one write, and the
        cursor does not go back to the start of the ring for a new frame: a frame that
        arrives mid-pass goes to the rest of this pass and to the others on the next,
        so every frame reaches every watcher within one pass of the ring, however many
        frames arrive meanwhile. Between slices the loop serves other calls."""
        ring, head, log, start = self.ring, self.head, self.log, self.log_start
        if self.cursor == 0:
            self.pass_started = time.perf_counter()
        end = min(self.cursor + PUMP_SLICE, len(ring))
        chunks: dict[int, tuple[bytes, bytes]] = {}
        for index in range(self.cursor, end):
            watcher = ring[index]
            seen = watcher.seen
            if seen == head or watcher.ended:
                continue
            pending = chunks.get(seen)
            if pending is None:
                chunk = b"".join(log[seen - start :])
                # chunked transfer encoding, built once for every watcher at this point
                pending = chunks[seen] = (chunk, b"%x\r\n%b\r\n" % (len(chunk), chunk))
            watcher.seen = head
            watcher.push(*pending)
        self.cursor = end
        if end == len(ring) and self._wrap():
            self.pumping = False
            return
        asyncio.get_running_loop().call_soon(self._pump)

    def _wrap(self) -> bool:
        """At the end of the ring: drop the watchers that left and the frames every
        watcher has had, and start again; True when every watcher has every frame."""
        # A frame waits at most about one pass to reach every watcher: the delivery lag.
        TALLY.delivery_pass(time.perf_counter() - self.pass_started)
        self.owner.drop_overflowed(self)
        watchers = self.watchers
        self.ring = [watcher for watcher in self.ring if watcher in watchers and not watcher.ended]
        oldest = min((watcher.seen for watcher in self.ring), default=self.head)
        del self.log[: oldest - self.log_start]
        self.log_start = oldest
        self.cursor = 0
        return not self.log

    def _deliver_all(self) -> None:
        """Every watcher gets every frame it lacks, now (before its stream's last frame)."""
        head, log, start = self.head, self.log, self.log_start
        for watcher in self.ring:
            if watcher.seen != head and watcher in self.watchers:
                watcher.push(b"".join(log[watcher.seen - start :]))
                watcher.seen = head
        self.log.clear()
        self.log_start = head

    @property
    def in_sync(self) -> bool:
        return self.snapshot is not None

    @property
    def event_id(self) -> str:
        return event_id(self.incarnation, self.version)

    def snapshot_frame(self, resync: bool) -> bytes:
        frame = self._snapshot_frames.get(resync)
        if frame is None:
            counters = [GroupCounter(key=key, value=value) for key, value in sorted(self.counters.items())]
            event = SnapshotEvent(self.group_id, self.version, resync, counters)
            frame = self._snapshot_frames[resync] = sse_frame("snapshot", self.event_id, event)
        return frame

    # ---- the subscription's news ----

    def ready(self) -> None:
        self.subscribed = True
        self.resync()

    def lost(self) -> None:
        self.subscribed = False
        self._out_of_sync()

    def forget(self) -> None:
        """Released: nothing that a watcher or a frame left behind stays reachable from here."""
        self.ring = []
        self.log = []
        self.log_start = self.cursor = 0
        self.counters = {}
        self._snapshot_frames = {}

    def _out_of_sync(self) -> None:
        self.snapshot = None
        self.synced.clear()
        self.pending.clear()
        if self.syncing is not None:
            self.syncing.cancel()
            self.syncing = None

    def resync(self) -> None:
        self._out_of_sync()
        self.syncing = asyncio.create_task(self._sync())

    def notice(self, notice: Notice) -> None:
        if not self.subscribed:
            return
        if self.snapshot is None:
            self.pending.append(notice)
            return
        self._apply(notice)

    # ---- the state ----

    def _apply(self, notice: Notice) -> None:
        same_life = notice.incarnation == self.incarnation
        if same_life and notice.version <= self.version:
            return  # already in the snapshot
        if notice.kind == b"x":
            self._destroyed(notice.incarnation, notice.version)
            return
        if not (same_life and notice.version == self.version + 1) and not (
            self.version == 0 and notice.version == 1
        ):
            log.info(
                "live counters: group %r jumped from %s to %s: resync",
                self.group_id,
                self.event_id,
                event_id(notice.incarnation, notice.version),
            )
            self.resync()
            self.pending.append(notice)
            return
        self.incarnation, self.version = notice.incarnation, notice.version
        self._snapshot_frames.clear()
        items = notice.items
        if notice.kind == b"u":
            changed = []
            for key, value in zip(items[0::2], items[1::2], strict=True):
                name = key.decode()
                self.counters[name] = number = int(value)
                changed.append(GroupCounter(key=name, value=number))
            event = ChangeEvent(self.group_id, self.version, changed, [])
        else:
            deleted = [key.decode() for key in items]
            for name in deleted:
                self.counters.pop(name, None)
            event = ChangeEvent(self.group_id, self.version, [], deleted)
        self.broadcast(sse_frame("change", self.event_id, event))

    def _end_watchers(self, incarnation: str, version: int) -> None:
        frame = sse_frame("destroyed", event_id(incarnation, version), DestroyedEvent(self.group_id, version))
        self._deliver_all()
        watchers, self.watchers, self.ring = self.watchers, set(), []
        for watcher in watchers:
            watcher.end(frame)

    def _destroyed(self, incarnation: str, version: int) -> None:
        self._end_watchers(incarnation, version)
        self._out_of_sync()
        if self.joining:
            self.resync()  # what a watcher on its way finds now: 10010, or (implicit) an empty group
        else:
            self.owner.release(self)

    async def _sync(self) -> None:
        delay = _RETRY_FIRST
        while True:
            try:
                snapshot = await read_snapshot(self.owner.store, self.registered, self.group, self.group_id)
                break
            except ServiceError as exc:
                if exc.code != ErrorCode.INTERNAL:
                    self._refused(exc)
                    return
                log.info("live counters: snapshot of %r failed; retrying in %.2f s", self.group_id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_LAST)
        self.syncing = None
        resynced = self.snapshot is None and bool(self.watchers)
        self.snapshot = snapshot
        self.counters = dict(snapshot.counters)
        self.incarnation, self.version = snapshot.incarnation, snapshot.version
        self._snapshot_frames.clear()
        self.error = None
        if resynced:
            self.broadcast(self.snapshot_frame(resync=True))
            TALLY.resync_snapshots("gap", len(self.watchers))
        pending, self.pending = self.pending, []
        caught_up = False
        for notice in pending:
            if self.snapshot is None:  # a gap in what waited: another snapshot is on its way
                self.pending.append(notice)
                continue
            # A notice of another life of the group that waited for this snapshot was
            # published before it (a later life would start with the destroy of this
            # one): the snapshot holds its outcome, and resyncing on it would never end.
            if (
                not caught_up
                and notice.incarnation != self.incarnation
                and not (self.version == 0 and notice.version == 1)
            ):
                continue
            caught_up = True
            self._apply(notice)
        if self.snapshot is not None:
            self.synced.set()

    def _refused(self, exc: ServiceError) -> None:
        """The group is gone (10010: destroyed while the subscription was down) or is
        not one with counters (10007): watchers end, watchers on their way are refused."""
        self.syncing = None
        self._end_watchers(self.incarnation, self.version + 1)
        self.error = exc
        self.synced.set()
        self.owner.release(self)


class Feeds:
    """Every feed of this process, and the subscriber they share (the subscription `Listener`)."""

    def __init__(
        self,
        store: Store,
        *,
        timeout: float,
        buffer_bytes: int = WATCHER_BUFFER_BYTES,
        max_joins: int = 1000,
        max_joins_per_identity: int = 4,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.buffer_bytes = buffer_bytes
        self.max_joins = max_joins
        self.max_joins_per_identity = max_joins_per_identity
        # Joins that started their group's feed and wait for its first snapshot (a
        # subscription and a read each): in all, and per identity that is bounded.
        self.starting = 0
        self.starting_by: dict[str, int] = {}
        self.feeds: dict[str, Feed] = {}
        self._subscriber: Subscriber | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def subscriber(self) -> Subscriber:
        if self._subscriber is None:
            self._subscriber = self.store.transport.subscriber()
            self._subscriber.start(self)
            self._heartbeat = asyncio.create_task(self._beat())
        return self._subscriber

    def watchers(self) -> int:
        return sum(len(feed.watchers) for feed in self.feeds.values())

    async def join(
        self,
        channel: str,
        group: str,
        group_id: str,
        registered: str,
        last_event_id: str | None,
        identity: str | None = None,
    ) -> Watcher:
        """A new watcher of the group, its first frame queued: a snapshot, flagged as a
        resync when it came with a Last-Event-ID the group has moved on from, or none
        when the group is still at that id. 10010/10007 as a read; 10002 when the
        subscription or the snapshot cannot be had within `timeout`.

        A join that starts its group's feed (a group no one watches here: a subscription
        and a snapshot to read) is admitted only while fewer than `max_joins` others do
        (10002 at once otherwise), and, for a bounded `identity` (an end user), fewer
        than `max_joins_per_identity` of its own (61007): a burst of joins is answered
        early, not left to miss the same deadline together. A join to a feed already
        there, in sync or starting, costs Redis nothing and is not bounded here."""
        if self.closed:
            raise ServiceError(ErrorCode.INTERNAL, "internal error: the service is shutting down")
        feed = self.feeds.get(channel)
        if feed is not None and feed.in_sync:
            return self._add(feed, last_event_id)
        starts = feed is None
        if feed is None:
            self._admit(identity)
            feed = self.feeds[channel] = Feed(self, channel, group, group_id, registered)
            self.subscriber.subscribe(channel)
            TALLY.watched_groups += 1
            self.starting += 1
            if identity is not None:
                self.starting_by[identity] = self.starting_by.get(identity, 0) + 1
        feed.joining += 1
        try:
            async with asyncio.timeout(self.timeout):
                while not feed.in_sync:
                    await feed.synced.wait()
                    if feed.error is not None and not feed.in_sync:
                        raise feed.error
            return self._add(feed, last_event_id)
        except TimeoutError:
            raise ServiceError(
                ErrorCode.INTERNAL, "internal error: the store is unavailable, retry later"
            ) from None
        finally:
            feed.joining -= 1
            if starts:
                self._started(identity)
            # Whatever became of this join: a snapshot that landed after the deadline
            # fired but before this task resumed leaves the feed in sync and without
            # this watcher, and a feed nobody watches must not keep its subscription.
            self.release(feed)

    def _admit(self, identity: str | None) -> None:
        if self.starting >= self.max_joins:
            raise ServiceError(
                ErrorCode.INTERNAL,
                f"internal error: {self.starting} watches are starting on this worker, retry later",
            )
        if identity is not None and self.starting_by.get(identity, 0) >= self.max_joins_per_identity:
            raise ServiceError(
                ErrorCode.END_USER_LIMITED,
                f"end user over their limit: {self.max_joins_per_identity} watches starting at once",
            )

    def _started(self, identity: str | None) -> None:
        self.starting -= 1
        if identity is not None:
            left = self.starting_by[identity] - 1
            if left:
                self.starting_by[identity] = left
            else:
                del self.starting_by[identity]

    def _add(self, feed: Feed, last_event_id: str | None) -> Watcher:
        """The watcher, on a feed in sync. Nothing awaits here: the snapshot and the first
        notice after it meet in this watcher's queue in order. The watcher starts at the
        feed's head: frames already sent out are in the state it is shown."""
        watcher = Watcher(self.buffer_bytes)
        if last_event_id != feed.event_id:
            watcher.push(feed.snapshot_frame(resync=last_event_id is not None))
            TALLY.resync_snapshots("reconnect", int(last_event_id is not None))
        feed.add(watcher)
        return watcher

    def leave(self, channel: str, watcher: Watcher) -> None:
        feed = self.feeds.get(channel)
        if feed is not None:
            feed.remove(watcher)
            self.release(feed)

    def release(self, feed: Feed) -> None:
        """End the feed and its subscription when no watcher is left or on the way."""
        if feed.watchers or feed.joining or self.feeds.get(feed.channel) is not feed:
            return
        del self.feeds[feed.channel]
        TALLY.watched_groups -= 1
        feed._out_of_sync()
        feed.forget()
        if self._subscriber is not None:
            self._subscriber.unsubscribe(feed.channel)

    def drop_overflowed(self, feed: Feed) -> None:
        overflowed = [watcher for watcher in feed.watchers if watcher.overflowed]
        if overflowed:
            log.warning(
                "live counters: %d watcher(s) of %r cut off: over %d bytes unread",
                len(overflowed),
                feed.group_id,
                self.buffer_bytes,
            )
            feed.watchers.difference_update(overflowed)
            self.release(feed)

    # ---- Listener ----

    def on_ready(self, channel: str) -> None:
        feed = self.feeds.get(channel)
        if feed is not None:
            feed.ready()

    def on_lost(self, channel: str) -> None:
        feed = self.feeds.get(channel)
        if feed is not None:
            feed.lost()

    def on_message(self, channel: str, payload: bytes) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        try:
            notice = Notice.parse(payload)
        except ValueError:
            log.error("live counters: unreadable notice on %r: %r", channel, payload[:200])
            feed.resync()
            return
        feed.notice(notice)

    async def _beat(self) -> None:
        """A comment every HEARTBEAT_SECONDS to every watcher, so proxies keep the connection."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            for feed in list(self.feeds.values()):
                feed.broadcast(_HEARTBEAT)

    def end_all(self) -> None:
        """Shutting down: every stream ends now (its client reconnects elsewhere)."""
        self.closed = True
        for feed in self.feeds.values():
            for watcher in feed.watchers:
                watcher.end()

    async def close(self) -> None:
        self.end_all()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for feed in self.feeds.values():
            feed._out_of_sync()
            feed.forget()
        TALLY.watched_groups -= len(self.feeds)
        self.feeds.clear()
        if self._subscriber is not None:
            await self._subscriber.close()
