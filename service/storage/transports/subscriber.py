"""Pub/sub for live counters: one subscription per channel per process, followed through faults.

A `Subscriber` holds the channels the process wants and tells its `Listener` three
things: a channel's subscription is confirmed (`on_ready`: from now on every notice
published on it arrives, in order), it may have missed notices (`on_lost`: the
connection broke, the node gave the slot away, the master changed), and a notice
(`on_message`). It subscribes again by itself; each new confirmation is another
`on_ready`, and the listener resynchronises from a snapshot then. Nothing here ever
hides a gap: redis-py's PubSub re-subscribes silently on reconnect, which would
lose the notices published in between without a word, so the socket subscriber
speaks RESP itself (hiredis parses), as the pipelined connection does.

Where a channel lives is the transport's answer (`locate`): one address on one Redis,
the master the sentinels name, the node owning the channel's slot on a Cluster, where
the channel is sharded (SSUBSCRIBE; a node that loses the slot says `sunsubscribe`,
and a MOVED reply names the new owner).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import hiredis

from service.storage.transports.connection import _pack, ssl_context
from service.storage.urls import RedisUrl

log = logging.getLogger("service.transports.subscriber")

Address = tuple[str, int]

# A subscribed connection that has said nothing for this long is sent a PING; one
# that has not answered a PING within the same time is dead (a peer gone without a
# reset would otherwise keep every watcher waiting on nothing).
PING_SECONDS: Final = 5.0
_BACKOFF_FIRST: Final = 0.05
_BACKOFF_LAST: Final = 2.0


class Listener(Protocol):
    def on_ready(self, channel: str) -> None: ...

    def on_lost(self, channel: str) -> None: ...

    def on_message(self, channel: str, payload: bytes) -> None: ...


class Subscriber(Protocol):
    def start(self, listener: Listener) -> None: ...

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def lose_all(self) -> None:
        """Drop every connection and subscribe again: notices may have been missed (a
        Sentinel failover that left our connection to the old master open)."""

    async def close(self) -> None: ...


class SocketSubscriber:
    """SUBSCRIBE (or SSUBSCRIBE) on plain connections, one per node that holds a wanted channel."""

    def __init__(
        self,
        url: RedisUrl,
        *,
        locate: Callable[[str], Awaitable[Address]],
        sharded: bool,
        timeout: float,
        on_fault: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.locate = locate
        self.sharded = sharded
        self.timeout = timeout
        self.on_fault = on_fault
        self.listener: Listener | None = None
        self.wanted: set[str] = set()
        self.links: dict[Address, _Link] = {}
        self._unplaced: collections.deque[str] = collections.deque()
        self._placing = asyncio.Event()
        self._placer: asyncio.Task[None] | None = None
        self._backoff = _BACKOFF_FIRST
        self._ssl = ssl_context(url)

    def start(self, listener: Listener) -> None:
        self.listener = listener

    def subscribe(self, channel: str) -> None:
        if channel in self.wanted:
            return
        self.wanted.add(channel)
        self._place(channel)

    def unsubscribe(self, channel: str) -> None:
        self.wanted.discard(channel)
        for link in list(self.links.values()):
            link.remove(channel)

    def lose_all(self) -> None:
        for link in list(self.links.values()):
            link.fail("the master changed")

    def _place(self, channel: str) -> None:
        self._unplaced.append(channel)
        self._placing.set()
        if self._placer is None or self._placer.done():
            self._placer = asyncio.create_task(self._place_all())

    async def _place_all(self) -> None:
        """Put each unplaced wanted channel on the link to the node that serves it."""
        while self._unplaced:
            channel = self._unplaced.popleft()
            if channel not in self.wanted or any(channel in link.channels for link in self.links.values()):
                continue
            try:
                address = await self.locate(channel)
            except Exception as exc:  # any fault finding the node: try again later
                log.warning("cannot find the node for channel %r: %s", channel, exc)
                self._unplaced.append(channel)
                await self.pause()
                continue
            link = self.links.get(address)
            if link is None:
                link = self.links[address] = _Link(self, address)
            link.add(channel)

    async def pause(self) -> None:
        """Wait before trying again after a fault, longer after each until a connect works."""
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_LAST)

    def connected(self) -> None:
        self._backoff = _BACKOFF_FIRST

    def link_failed(self, link: _Link, channels: set[str]) -> None:
        if self.links.get(link.address) is link:
            del self.links[link.address]
        self.on_fault()
        for channel in channels:
            if self.listener is not None:
                self.listener.on_lost(channel)
        for channel in channels:
            if channel in self.wanted:
                self._place(channel)

    def moved(self, channel: str) -> None:
        """The node does not serve this channel (MOVED, or it gave the slot away)."""
        self.on_fault()
        if self.listener is not None:
            self.listener.on_lost(channel)
        if channel in self.wanted:
            self._place(channel)

    async def close(self) -> None:
        self.wanted.clear()
        if self._placer is not None:
            self._placer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._placer
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()


class _Link:
    """One subscribed connection to one node; it never reconnects itself: when it fails,
    its channels go back to the subscriber, which places them again (maybe elsewhere)."""

    def __init__(self, owner: SocketSubscriber, address: Address) -> None:
        self.owner = owner
        self.address = address
        self.channels: set[str] = set()
        # Channels whose (S)SUBSCRIBE or (S)UNSUBSCRIBE was written, in order: an error
        # reply (MOVED) names no channel, so it belongs to the oldest command written.
        self.sent: collections.deque[tuple[str, bool]] = collections.deque()
        self.writer: asyncio.StreamWriter | None = None
        self.task = asyncio.create_task(self._run())
        self.closed = False

    def _command(self, subscribe: bool, channel: str) -> None:
        assert self.writer is not None
        verb = ("SSUBSCRIBE" if subscribe else "SUNSUBSCRIBE") if self.owner.sharded else None
        if verb is None:
            verb = "SUBSCRIBE" if subscribe else "UNSUBSCRIBE"
        self.writer.write(_pack((verb, channel)))
        self.sent.append((channel, subscribe))

    def add(self, channel: str) -> None:
        self.channels.add(channel)
        if self.writer is not None:
            self._command(True, channel)

    def remove(self, channel: str) -> None:
        if channel not in self.channels:
            return
        self.channels.discard(channel)
        if self.writer is not None:
            self._command(False, channel)
        # A link left with no channel stays open (PINGed like any other): a client that
        # watches and leaves in a loop would otherwise cost Redis a new connection each time.

    def fail(self, why: str) -> None:
        if not self.task.done():
            self.task.cancel(why)

    async def close(self) -> None:
        self.closed = True
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            if self.closed:
                self._drop()
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # cancelled by `fail`: this link ends, its channels go on
            log.warning("live counters: subscription to %s:%s dropped", *self.address)
        except Exception as exc:  # any fault of this connection: the channels are placed again
            log.warning("live counters: subscription to %s:%s failed: %s", *self.address, exc)
        self._drop()
        channels, self.channels = self.channels, set()
        self.closed = True
        await self.owner.pause()
        self.owner.link_failed(self, channels)

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None

    async def _serve(self) -> None:
        owner, url = self.owner, self.owner.url
        host, port = self.address
        async with asyncio.timeout(owner.timeout):
            if url.unix_path is not None:
                reader, writer = await asyncio.open_unix_connection(url.unix_path)
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=owner._ssl)
            parser = hiredis.Reader()
            if url.password is not None:
                credentials = [url.username, url.password] if url.username else [url.password]
                writer.write(_pack(("AUTH", *credentials)))
                reply = await _next_reply(reader, parser)
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"AUTH refused: {reply}")
        self.writer = writer
        owner.connected()
        for channel in sorted(self.channels):
            self._command(True, channel)
        waiting_pong = False
        while True:
            try:
                async with asyncio.timeout(PING_SECONDS):
                    reply = await _next_reply(reader, parser)
            except TimeoutError:
                if waiting_pong:
                    raise ConnectionError(f"no answer to PING within {PING_SECONDS} s") from None
                writer.write(_pack(("PING",)))
                waiting_pong = True
                continue
            waiting_pong = False
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        listener = self.owner.listener
        if isinstance(reply, hiredis.ReplyError):
            channel, _ = self.sent.popleft() if self.sent else ("", True)
            if str(reply).startswith("MOVED") and channel:
                self.channels.discard(channel)
                self.owner.moved(channel)
                return
            raise ConnectionError(f"subscription refused: {reply}")
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind = reply[0]
        channel = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        if kind in (b"message", b"smessage"):
            if listener is not None and channel in self.channels:
                listener.on_message(channel, reply[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self._confirmed(channel)
            if listener is not None and channel in self.channels:
                listener.on_ready(channel)
        elif kind in (b"unsubscribe", b"sunsubscribe"):
            asked = self._confirmed(channel)
            if not asked and channel in self.channels:
                # Not ours: the node gave the channel's slot away (a Cluster resharding).
                self.channels.discard(channel)
                self.owner.moved(channel)

    def _confirmed(self, channel: str) -> bool:
        """Whether a command of ours awaited this confirmation (and it is now answered)."""
        if self.sent and self.sent[0][0] == channel:
            self.sent.popleft()
            return True
        return False


async def _next_reply(reader: asyncio.StreamReader, parser: Any) -> Any:
    while True:
        reply = parser.gets()
        if reply is not False:
            return reply
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("connection closed by redis")
        parser.feed(data)


class RedisPySubscriber:
    """The embedded store (fakeredis in the process): no socket to lose, so its PubSub
    serves as it is."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pubsub: Any = None
        self.listener: Listener | None = None
        self.wanted: set[str] = set()
        self._ops: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self, listener: Listener) -> None:
        self.listener = listener

    def subscribe(self, channel: str) -> None:
        if channel not in self.wanted:
            self.wanted.add(channel)
            self._op(True, channel)

    def unsubscribe(self, channel: str) -> None:
        if channel in self.wanted:
            self.wanted.discard(channel)
            self._op(False, channel)

    def lose_all(self) -> None:
        """Nothing to lose in the process."""

    def _op(self, subscribe: bool, channel: str) -> None:
        self._ops.put_nowait((subscribe, channel))
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self.pubsub = self.client.pubsub()
        # Not `while True`: redis-py's get_message(timeout=...) can swallow the task's
        # cancellation when it lands as its own timeout fires (it then answers None), and
        # the loop would go on forever, hanging close().
        while not self._closing:
            while not self._ops.empty():
                subscribe, channel = self._ops.get_nowait()
                if subscribe:
                    await self.pubsub.subscribe(channel)
                else:
                    await self.pubsub.unsubscribe(channel)
            if not self.pubsub.subscribed:
                subscribe, channel = await self._ops.get()
                self._ops.put_nowait((subscribe, channel))
                continue
            message = await self.pubsub.get_message(timeout=0.01)
            if message is None or self.listener is None:
                continue
            channel = message["channel"].decode()
            if message["type"] == "message" and channel in self.wanted:
                self.listener.on_message(channel, message["data"])
            elif message["type"] == "subscribe" and channel in self.wanted:
                self.listener.on_ready(channel)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.pubsub is not None:
            await self.pubsub.aclose()
