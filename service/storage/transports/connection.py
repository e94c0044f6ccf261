"""One Redis connection that coalesces the commands of an event-loop tick into few writes.

redis-py spends most of a call on its own machinery (pool checkout, retry wrapper,
packing, parsing) and pays a socket write and a read per call. Redis itself answers
pipelined commands several times faster than one at a time. So: each `execute` packs
its command (hiredis, in C), appends it to a buffer and a FIFO of futures, and the
first call of a tick schedules one flush at the end of that tick. Replies come back
in order; hiredis parses them and each resolves the next future.

A batch is also written as soon as it holds `max_batch` calls. Under load one tick
can start a call on every client connection at once; sent as one batch at the end of
the tick, all of them would sit in Redis together while this process, with nothing
left to do, waits (a tenth of its time, measured with 64 clients). Written in slices,
Redis works on the first while the process prepares the next.

Why a reply can never reach another caller: every call's future belongs to the one
`Link` (socket) its command was queued on, and that link's FIFO is the only place
its reply is matched. A link fails every future it holds, written or not, the moment
it dies: on a reset, a protocol error, a reply that nobody is waiting for, a reply
that says the server cannot serve (READONLY, LOADING, MASTERDOWN, max clients), or a
reply overdue past `timeout` (a dead peer that never resets). A dead link is never
written to again; the next call opens a new one, and a call that finds its link died
while it waited for the connect fails at once instead of being queued on nothing.

A retired connection (to a Cluster node that left the slot map) takes no new call and
never reconnects; its link closes once the calls already on it have their replies.

Commands here are never retried: a command that was written may have run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import hiredis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.scripts import CombinableScript, ScriptArg
from service.storage.transports.combining import DISCARD, Combined, Shared
from service.storage.transports.faults import (
    COMMAND_REFUSALS,
    SERVER_FAULTS,
    CommandRefused,
    NotConnectedInTime,
    NotSent,
    ServerRefused,
)
from service.storage.urls import RedisUrl, parse

# RESP encoding of one command, in C.
_pack: Final[Callable[[tuple[Any, ...]], bytes]] = hiredis.pack_command


# Dead-peer detection by the kernel on an idle socket, beside our own reply timeout.
_KEEPALIVE: Final = (
    ("TCP_KEEPIDLE", 10),
    ("TCP_KEEPINTVL", 5),
    ("TCP_KEEPCNT", 3),
)


# Refusals of a command that was never sent (nothing ran; still a connection fault: 10002).
_CLOSED: Final = "the redis connection closed before the command was sent"
_RETIRED: Final = "the redis connection is retired (its node left the slot map); the command was not sent"


# A Cluster's redirections and refusals, as redis-py's parser names them (built from the
# reply minus its code), so ClusterTransport routes on the same exceptions as before.
_CLUSTER_REPLIES: Final[dict[str, type[RedisError]]] = {
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
}


def reply_error(message: str) -> RedisError:
    """The redis-py exception for an error reply, so callers catch one family."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    code, _, rest = message.partition(" ")
    cluster_reply = _CLUSTER_REPLIES.get(code)
    if cluster_reply is not None:
        return cluster_reply(rest)
    if message.startswith(SERVER_FAULTS):  # they close the link; the next call reconnects
        return ServerRefused(f"redis cannot serve: {message}")
    if message.startswith(COMMAND_REFUSALS):
        return CommandRefused(message)
    return ResponseError(message)


def ssl_context(url: RedisUrl) -> ssl.SSLContext | None:
    if not url.tls:
        return None
    context = ssl.create_default_context(cafile=url.ssl_ca_certs)
    if not url.verify_certificates:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _keep_alive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # keepalive is a second line of defence; the reply timeout is the first


class Pending(Protocol):
    """What a link's queue holds for a command: its caller's future, or (acks.py) a
    stand-in that hands the reply on later."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class Link(asyncio.Protocol):
    """One socket to Redis and, in order, the calls queued or written on it."""

    def __init__(self, owner: PipelinedConnection) -> None:
        self._owner = owner
        self._loop = owner.loop
        self._max_batch = owner.max_batch
        self._timeout = owner.timeout
        self._on_flush = owner.on_flush
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        # Futures of the calls written on this link without a reply yet, then the
        # ones in `_buffer`, in order: the n-th reply belongs to waiting[0].
        self.waiting: collections.deque[Pending] = collections.deque()
        self._buffer: list[bytes | Combined] = []
        # The reads in `_buffer` that identical reads may still join (`send_shared`), and
        # the updates of each group that updates of it may still join (`send_combinable`).
        self._unsent_reads: dict[bytes, Shared] = {}
        self._unsent_updates: dict[ScriptArg, Combined] = {}
        # Calls in `_buffer`, those that joined another's entry included: a batch is written
        # at `max_batch` calls, so shared and combined ones keep Redis and this process
        # working side by side too.
        self._calls = 0
        # Callers that joined another's entry in `waiting` (a Shared or Combined entry is
        # one command, several callers): `max_pending` bounds callers, not commands.
        self.joined = 0
        self._flush_scheduled = False
        self.written = 0  # commands written on this link: a write's timer needs only this number
        self.closed = False
        self.open = False  # the handshake is done: calls may be queued
        self.draining = False  # takes no more calls; closes once the last one has its reply

    # ---- the socket's side ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # (uvloop's are not asyncio.Transport)
        _keep_alive(transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self.waiting
        fault: RedisError | None = None
        try:
            while (reply := self._reader.gets()) is not False:
                if not waiting or len(waiting) == len(self._buffer):
                    self.abort(RedisConnectionError(f"redis sent a reply nobody asked for: {reply!r:.100}"))
                    return
                future = waiting.popleft()
                if self.joined:
                    self.joined -= getattr(future, "joined", 0)
                if isinstance(reply, hiredis.ReplyError):
                    error = reply_error(str(reply))
                    if isinstance(error, RedisConnectionError):
                        # The calls written behind it may have run: they get a plain fault.
                        fault = fault or RedisConnectionError(str(error))
                    if not future.done():
                        future.set_exception(error)
                elif not future.done():  # done: it timed out or its caller left
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            fault = RedisConnectionError(f"redis protocol error: {exc}")
        if fault is not None:
            # Replies parsed before the fault were delivered; nothing after it is trusted.
            self.abort(fault)
        elif self.draining and not waiting:
            self.abort(RedisConnectionError("connection retired"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    # ---- the callers' side ----

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self.send_entry(packed, future)
        return future

    def send_entry(self, packed: bytes | Combined, entry: Pending) -> None:
        """Queue `packed` for `entry` (acks.py holds its reply for the replicas)."""
        self.queue(packed, entry)

    def send_shared(self, packed: bytes) -> asyncio.Future[Any]:
        """A read that changes nothing: joins an identical one still unsent on this link,
        so both get the reply of one command; never one already written, so the reply
        reflects a state after this call was made."""
        shared = self._unsent_reads.get(packed)
        if shared is not None:
            future = shared.join(self._loop)
            self._joined()
            return future
        shared = Shared()
        future = shared.join(self._loop)
        self.send_entry(packed, shared)
        if self._buffer:  # not written at once (a full batch): later ones may join it
            self._unsent_reads[packed] = shared
        return future

    def send_combinable(
        self, script: CombinableScript, keys: Sequence[ScriptArg], args: Sequence[ScriptArg]
    ) -> asyncio.Future[Any]:
        """An update of the group `keys[0]`: joins the unsent updates of that group on
        this link, if any and if there is room, else starts them (combining.py)."""
        combined = self._unsent_updates.get(keys[0])
        if combined is not None and (future := combined.join(keys, args, self._loop)) is not None:
            self._joined()
            return future
        combined = Combined(script, self._load, keys, args, self._loop)
        self.send_entry(combined, combined)
        if self._buffer:  # not written at once (a full batch): later ones may join it
            self._unsent_updates[keys[0]] = combined
        return combined.first

    def queued(self) -> int:
        """Callers waiting on this link: what `max_pending` bounds."""
        return len(self.waiting) + self.joined

    def _joined(self) -> None:
        self.joined += 1
        self._calls += 1
        if self._calls >= self._max_batch:
            self._write()

    def _load(self, packed: bytes) -> None:
        """Send a command whose reply nobody waits for (combining.py's SCRIPT LOAD)."""
        with contextlib.suppress(RedisError):
            self.send_entry(packed, DISCARD)

    def _payload(self) -> bytes:
        """The buffer as the bytes to write; nothing can join what it held any more."""
        buffer, self._buffer = self._buffer, []
        self._calls = 0
        self._unsent_reads.clear()
        self._unsent_updates.clear()
        return b"".join(item if isinstance(item, bytes) else item.packed() for item in buffer)

    def queue(self, packed: bytes | Combined, entry: Pending) -> None:
        """Buffer `packed`; `entry` (a future, or anything with a future's done,
        set_result and set_exception) receives its reply."""
        if self.closed or self.draining:
            raise NotSent(_RETIRED if self.draining else _CLOSED)
        self.waiting.append(entry)
        self._buffer.append(packed)
        self._calls += 1
        if self._calls >= self._max_batch:
            self._write()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._buffer and not self.closed:
            self._write()

    def _write(self) -> None:
        transport = self._transport
        assert transport is not None
        count = len(self._buffer)
        payload = self._payload()
        transport.write(payload)
        self.written += count
        self._on_flush(count)
        # The timer holds a number, not the futures: holding 1 s worth of futures and
        # their replies kept ~20k objects per second alive for the garbage collector
        # to walk, in pauses of 5 to 20 ms under load.
        self._loop.call_later(self._timeout, self._expire, self.written)

    def _expire(self, written: int) -> None:
        """Close the link if a call up to command number `written` still has no reply.

        `waiting` holds the written calls without a reply, then the buffered ones; the
        last `self.written - written` written calls came after that write, so the overdue
        ones are the first of the rest. A peer that stops answering without a reset (host
        gone, partition) would otherwise keep this socket, and every later call would
        queue behind the lost replies until the kernel gave up, minutes later."""
        if self.closed:
            return
        overdue = len(self.waiting) - len(self._buffer) - (self.written - written)
        if overdue <= 0:
            return
        timeout = self._timeout
        error = RedisTimeoutError(f"redis did not answer within {timeout} s")
        for future in itertools.islice(self.waiting, overdue):
            if not future.done():
                future.set_exception(error)
        self.abort(RedisConnectionError(f"redis replies overdue past {timeout} s: connection dropped"))

    def drain(self) -> None:
        """Take no more calls; close once every call queued or written has its reply
        (or, for a peer that stops answering, at the usual reply timeout)."""
        self.draining = True
        if not self.waiting:
            self.abort(RedisConnectionError("connection retired"))

    def abort(self, error: RedisError) -> None:
        """This link is dead: fail everything it holds; it is never written to again.
        A written call gets `error` (it may have run); a buffered one, never written,
        says so (NotSent)."""
        if self.closed:
            return
        self.closed = True
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        written = len(self.waiting) - len(self._buffer)
        self._buffer.clear()
        self._calls = 0
        self._unsent_reads.clear()
        self._unsent_updates.clear()
        unsent = NotSent(f"{error}; the command was not sent")
        self.joined = 0
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error if written > 0 else unsent)
            written -= 1
        self._owner.link_closed(self)


class PipelinedConnection:
    """redis://, rediss:// and unix://: one link at a time, replaced when it dies."""

    def __init__(
        self,
        url: RedisUrl | str,
        *,
        timeout: float,
        max_pending: int = 10_000,
        max_batch: int = 32,
        on_flush: Callable[[int], None] | None = None,
        link: Callable[[PipelinedConnection], Link] | None = None,
    ) -> None:
        self.url = parse(url) if isinstance(url, str) else url
        # What a link is: `Link`, or one that holds replies until replicas have them (acks.py).
        self.new_link: Callable[[PipelinedConnection], Link] = link or Link
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.on_flush: Callable[[int], None] = on_flush or (lambda _: None)
        self._ssl = ssl_context(self.url)
        self._link: Link | None = None
        self._connecting: asyncio.Future[Link] | None = None
        self._awaiting_link = 0  # calls waiting for a connect: max_pending bounds them too
        self._retired = False
        self.connects = 0  # links opened over this object's life
        # Cached at the first call: on Python 3.11 get_running_loop() costs a getpid().
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def execute(self, *args: Any) -> Any:
        link = self._link
        if link is not None:
            self._admit(link.queued())
            return await link.send(_pack(args))
        if self._retired:
            raise NotSent(_RETIRED)
        # No live link: this call waits for one, and all of it (connect, handshake,
        # reply) stays within one `timeout`, as a call on a live link does.
        self._admit(self._awaiting_link)
        started = time.monotonic()
        self._awaiting_link += 1
        try:
            link = await self._connect()
        except RedisTimeoutError as exc:  # no link: nothing was sent
            raise NotConnectedInTime(str(exc)) from exc
        except ResponseError as exc:  # the handshake was refused (a wrong password)
            raise CommandRefused(str(exc)) from exc
        except RedisError as exc:
            raise NotSent(str(exc)) from exc
        finally:
            self._awaiting_link -= 1
        self._admit(link.queued())
        remaining = self.timeout - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(link.send(_pack(args)), max(remaining, 0.001))
        except TimeoutError:
            raise RedisTimeoutError(f"redis did not answer within {self.timeout} s") from None

    async def execute_shared(self, *args: Any) -> Any:
        """As `execute`, for a read that changes nothing: an identical one still unsent
        on the link serves both (Link.send_shared)."""
        link = self._link
        if link is None:
            return await self.execute(*args)
        self._admit(link.queued())
        return await link.send_shared(_pack(args))

    async def execute_update(self, script: CombinableScript, *args: Any) -> Any:
        """As `execute`; an EVALSHA of `script` joins the unsent updates of its group on
        the link (combining.py). Its EVAL after a NOSCRIPT goes alone."""
        link = self._link
        if link is None or args[0] != "EVALSHA":
            return await self.execute(*args)
        self._admit(link.queued())
        return await link.send_combinable(script, args[3:6], args[6:])

    async def execute_asking(self, *args: Any) -> Any:
        """ASKING and then the command, adjacent on one link: a Cluster slot half migrated.

        Both are queued in one synchronous step, so no other call's command can come
        between them (Redis applies ASKING to the client's next command only)."""
        if self._link is None:
            await self.execute("PING")  # a live link first, within the usual bounds
        link = self._link
        if link is None:
            raise NotSent(_CLOSED)
        self._admit(link.queued())
        asking, reply = link.send(_pack(("ASKING",))), link.send(_pack(args))
        outcomes = await asyncio.gather(asking, reply, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes[1]

    def _admit(self, waiting: int) -> None:
        """Refuse a call at once when `waiting` calls are already ahead of it: past
        `max_pending`, a Redis that fell behind would only make it time out later."""
        if waiting >= self.max_pending:
            raise NotSent(f"{self.max_pending} redis calls already waiting; refusing more")

    async def _connect(self) -> Link:
        # Concurrent callers share one connection attempt.
        connecting = self._connecting
        if connecting is None:
            self.loop = asyncio.get_running_loop()
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(connecting)

    def _connect_done(self, connecting: asyncio.Future[Link]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: a failed attempt with no caller left is not "never retrieved"

    async def _open(self) -> Link:
        link = self.new_link(self)
        try:
            async with asyncio.timeout(self.timeout):
                await self._handshake(link)
        except TimeoutError:
            link.abort(RedisConnectionError("connect timed out"))
            raise RedisTimeoutError(f"no redis connection within {self.timeout} s") from None
        except OSError as exc:
            link.abort(RedisConnectionError("connect failed"))
            raise RedisConnectionError(f"cannot connect to redis: {exc or type(exc).__name__}") from exc
        except BaseException:
            link.abort(RedisConnectionError("the handshake failed"))
            raise
        if link.closed:
            raise RedisConnectionError("connection to redis lost during the handshake")
        link.open = True
        if self._retired:  # while it connected: nothing is on it yet, so it closes at once
            link.drain()
            raise NotSent(_RETIRED)
        self._link = link
        return link

    async def _handshake(self, link: Link) -> None:
        """Connect, then prove the link serves before any call is queued on it: a Redis
        that accepts and then refuses (max clients, still loading) fails here."""
        loop, url = self.loop, self.url
        if url.unix_path is not None:
            await loop.create_unix_connection(lambda: link, url.unix_path)
        else:
            host, port = url.hosts[0]
            await loop.create_connection(lambda: link, host, port, ssl=self._ssl)
        self.connects += 1
        handshake = []
        if url.password is not None:
            credentials = [url.username, url.password] if url.username else [url.password]
            handshake.append(link.send(_pack(("AUTH", *credentials))))
        if url.db:
            handshake.append(link.send(_pack(("SELECT", url.db))))
        handshake.append(link.send(_pack(("PING",))))
        results = await asyncio.gather(*handshake, return_exceptions=True)
        refused = next((result for result in results if isinstance(result, BaseException)), None)
        if refused is not None:
            raise refused

    def link_closed(self, link: Link) -> None:
        if self._link is link:
            self._link = None

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def link(self) -> Link | None:
        """The live link, if any."""
        return self._link

    def retire(self) -> None:
        """Take no more calls, and close once the calls already made have their replies.

        For a Cluster node that left the slot map. A call already queued may have run:
        it gets its own reply (or, should the link die first, a connection fault), never
        a refusal. A later call is refused without being sent, and nothing reconnects."""
        self._retired = True
        if self._link is not None:
            self._link.drain()

    def close(self) -> None:
        if self._link is not None:
            self._link.abort(RedisConnectionError("connection closed"))
