"""`ack = "replicas"`: a call is acknowledged only once every replica of its master has it.

Redis acknowledges a write as soon as the master has applied it; the replicas get it a
moment later. A failover in that moment (planned, or a master cut off from its
sentinels while it still serves us) promotes a replica without the write, and the
acknowledged update is gone. `WAIT n timeout` on a connection blocks until n replicas
confirm holding every write that connection made, or the timeout passes, and answers
how many did.

So, per node: each batch a link writes ends with a `WAIT <replicas> <ms>`, and the
replies of the batch's calls are held until its answer. Enough replicas: each call gets
its reply. Too few (a replica lagging, cut off, or gone): each call fails with
`NotAcknowledged`, a 10002 that says it may have run. An error reply is passed on at
once: it wrote nothing.

Redis blocks a connection behind its WAIT, so the calls after a batch go on another
link: a node gets `LINKS` connections, and a call goes to the first one with no WAIT in
flight (the one filling its batch), so batches stay as large as before.

How many replicas: the most the master's `ROLE` has listed (asked on a connection of
its own when the first call needs it, every `_ROLE_SECONDS`, and at once after a batch
that got too few). A replica that leaves is still waited for during `SHRINK_AFTER`:
when Sentinel promotes a replica, the old master sees it leave while it still takes
writes, and a count that followed at once would acknowledge writes no one else holds
(measured: hundreds lost per planned failover). Past that, a replica gone for good is
no longer waited for, and a master left with none acknowledges like `primary` (the
README's Durability section). A node that answers ROLE as a replica gets no call at all.

`ack_fsync` adds the disk: the batch ends with `WAITAOF 1 <replicas> <ms>` too, which
answers once the master and that many replicas have the writes in their AOF, fsynced. It
is Redis 7.2's (and Valkey's); a Redis without it, or with `appendonly no` on the master,
answers it with an error, so the probe asks before the first write and again each
`_ROLE_SECONDS`: while it errors, no call is sent (10002, Applied "no") and readiness
fails, the reason in the log. Acknowledging without the disk instead would break the
promise the config asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import hiredis
from redis.exceptions import RedisError, ResponseError

from service.storage.scripts import CombinableScript
from service.storage.transports.combining import DISCARD, Combined
from service.storage.transports.connection import Link, Pending, PipelinedConnection
from service.storage.transports.faults import NotAcknowledged, NotSent, ServerRefused
from service.storage.urls import RedisUrl

log = logging.getLogger("service.transports.acks")

# Connections per node: a batch waits for its replicas on one while the next fills another.
LINKS: Final = 4
_ROLE_SECONDS: Final = 1.0
# Seconds a master must list fewer replicas before writes stop waiting for the ones gone:
# well past the time the service takes to follow a failover (well under 2 s).
SHRINK_AFTER: Final = 10.0


class Needed:
    """How many replicas a write must reach on one master: the most it has listed, lowered
    only once it has listed fewer for `SHRINK_AFTER` seconds."""

    def __init__(self) -> None:
        self.count: int | None = None  # None until the first ROLE answer
        self._fewer_since: float | None = None

    def saw(self, listed: int, now: float) -> None:
        if self.count is None or listed >= self.count:
            self.count, self._fewer_since = listed, None
        elif self._fewer_since is None:
            self._fewer_since = now
        elif now - self._fewer_since >= SHRINK_AFTER:
            self.count, self._fewer_since = listed, None

    def forget(self) -> None:
        """Another master: its replicas are counted afresh."""
        self.count, self._fewer_since = None, None


_pack: Final[Callable[[tuple[Any, ...]], bytes]] = hiredis.pack_command


@dataclass(frozen=True)
class Ack:
    """What a write waits for once the master applied it (config `ack`, `ack_fsync`)."""

    replicas: bool  # every replica the master lists holds it (ack = "replicas")
    fsync: bool  # and it is fsynced to the AOF: the master's, and those replicas' (WAITAOF)
    wait: float  # seconds, at most; then the call is answered "maybe applied"

    @property
    def wait_ms(self) -> int:
        return max(1, round(self.wait * 1000))

    @property
    def longest(self) -> float:
        """How long a batch's waits may take in all, at most (each waits up to `wait`)."""
        return self.wait * (2 if self.fsync and self.replicas else 1)

    def commands(self, replicas: int) -> list[tuple[Any, ...]]:
        """What waits for `replicas` replicas (and the disks) after a write; the last
        one's answer says whether they confirmed it.

        With the disk and replicas, a WAIT goes first. Alone, a WAITAOF written right
        behind the writes waited a whole second here (Valkey 8.0): the replica answers the
        master's GETACK before its own fsync, and the next GETACK comes from the master's
        once-a-second cron. Behind a WAIT, the WAITAOF's GETACK finds the replica fsynced:
        both answer within a replica round trip each (0.3 ms against 1,003 ms, measured).
        """
        if not self.fsync:
            return [("WAIT", replicas, self.wait_ms)]
        if replicas == 0:
            return [("WAITAOF", 1, 0, self.wait_ms)]
        return [("WAIT", replicas, self.wait_ms), ("WAITAOF", 1, replicas, self.wait_ms)]

    def confirmed(self, answer: Any, replicas: int) -> bool:
        """Whether the command's answer confirms what was asked: WAIT answers how many
        replicas hold the writes; WAITAOF, [whether the master fsynced them, how many
        replicas did]."""
        if self.fsync:
            return (
                isinstance(answer, list)
                and len(answer) == 2
                and isinstance(answer[0], int)
                and isinstance(answer[1], int)
                and answer[0] >= 1
                and answer[1] >= replicas
            )
        return isinstance(answer, int) and answer >= replicas

    def describe(self, answer: Any, replicas: int) -> str:
        if self.fsync:
            return (
                f"WAITAOF answered {answer!r:.60}: the master and {replicas} replicas "
                "had to fsync the write in time"
            )
        return f"{answer!r:.60} of {replicas} replicas confirmed the write in time"


# The probe for ack_fsync: answers at once on a connection that wrote nothing; errors on a
# Redis without WAITAOF, on one with appendonly off, and on a replica.
FSYNC_PROBE: Final = ("WAITAOF", 1, 0, 100)


async def check_fsync(execute: Callable[..., Awaitable[Any]], refused: str | None, where: str) -> str | None:
    """The probe's verdict: why no call may be sent, or None; logged when it changes.
    Other faults (the connection's) propagate: the verdict stands until the next probe."""
    try:
        await execute(*FSYNC_PROBE)
    except ResponseError as exc:
        why = (
            f"ack_fsync is set but this Redis cannot confirm a write on disk ({exc}): it needs "
            "Redis 7.2 or newer (or Valkey) with appendonly yes; until then every call is refused"
        )
        if refused is None:
            log.error("%s: %s", where, why)
        return why
    if refused is not None:
        log.warning("%s confirms writes on disk again: calls are sent", where)
    return None


class Replicas:
    """What a node's ROLE says: whether it is a master, and how many replicas it has."""

    def __init__(self, url: RedisUrl, *, timeout: float, ack: Ack) -> None:
        self.ack = ack
        self.needed = Needed()
        self.master = True
        self.refused: str | None = None  # why no call may be sent (ack_fsync on a Redis that cannot)
        self._probe = PipelinedConnection(url, timeout=timeout, max_pending=4)
        self._timeout = timeout
        self._ask = asyncio.Event()
        self._known = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._waits: dict[int, list[bytes]] = {}

    def wait_commands(self) -> tuple[int, list[bytes]]:
        """How many replicas a batch written now needs, and its WAIT (or WAITAOF) commands."""
        count = (self.needed.count or 0) if self.ack.replicas else 0
        packed = self._waits.get(count)
        if packed is None:
            packed = self._waits[count] = [_pack(command) for command in self.ack.commands(count)]
        return count, packed

    async def known(self) -> None:
        """Return once ROLE has answered (NotSent if it does not within the timeout)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._follow())
        try:
            async with asyncio.timeout(self._timeout):
                await self._known.wait()
        except TimeoutError:
            raise NotSent(f"redis did not answer ROLE within {self._timeout} s") from None
        if self.refused is not None:
            raise ServerRefused(self.refused)

    @property
    def ready(self) -> bool:
        """ROLE (and with ack_fsync, the probe) has answered once."""
        return self._known.is_set()

    def ask_again(self) -> None:
        self._ask.set()

    async def _follow(self) -> None:
        # Not `while True`: on Python 3.11 a cancel that lands as asyncio.timeout below
        # expires is taken for the timeout's own, and the loop would outlive close().
        while not self._closed:
            self._ask.clear()
            try:
                self._read(await self._probe.execute("ROLE"))
                if self.ack.fsync and self.master:
                    await self._check_fsync()
                self._known.set()
            except RedisError as exc:
                log.debug("ROLE failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ROLE_SECONDS):
                    await self._ask.wait()

    def _read(self, role: Any) -> None:
        master = role[0] == b"master"
        listed = len(role[2]) if master else 0
        before = (self.master, self.needed.count)
        self.master = master
        self.needed.saw(listed, time.monotonic())
        if (self.master, self.needed.count) != before:
            log.info(
                "redis at %s: %s listing %d replicas; writes wait for %s",
                self._probe.url.hosts,
                role[0].decode(),
                listed,
                self.needed.count,
            )

    async def _check_fsync(self) -> None:
        self.refused = await check_fsync(
            self._probe.execute, self.refused, f"redis at {self._probe.url.hosts}"
        )

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._probe.close()


class _Held:
    """A call's place in its link's queue: its reply waits here for the batch's WAIT."""

    __slots__ = ("caller", "reply")

    def __init__(self, caller: Pending) -> None:
        self.caller = caller
        self.reply: Any = None

    @property
    def joined(self) -> int:
        return int(getattr(self.caller, "joined", 0))

    def done(self) -> bool:
        return self.caller.done()

    def set_result(self, reply: Any) -> None:
        self.reply = reply

    def set_exception(self, error: BaseException) -> None:
        self.caller.set_exception(error)


class _Wait:
    """A batch's WAIT in its link's queue: its answer releases or fails the batch."""

    __slots__ = ("batch", "link", "needed")

    def __init__(self, batch: list[_Held], needed: int, link: AckedLink) -> None:
        self.batch = batch
        self.needed = needed
        self.link = link

    def done(self) -> bool:
        return False

    def set_result(self, answer: Any) -> None:
        self.link.waits -= 1
        ack = self.link.replicas.ack
        if ack.confirmed(answer, self.needed):
            for held in self.batch:
                if not held.caller.done():
                    held.caller.set_result(held.reply)
            return
        self.link.replicas.ask_again()
        self.set_exception(NotAcknowledged(ack.describe(answer, self.needed)))

    def set_exception(self, error: BaseException) -> None:
        if isinstance(error, ResponseError):  # the WAIT's own error: the batch ran, unconfirmed
            self.link.replicas.ask_again()
            error = NotAcknowledged(f"the wait for the write's copies failed: {error}")
        for held in self.batch:
            if not held.caller.done():
                held.caller.set_exception(error)


class AckedLink(Link):
    """A link whose batches each end with a WAIT, their replies held until it answers."""

    def __init__(self, owner: PipelinedConnection, replicas: Replicas) -> None:
        super().__init__(owner)
        self.replicas = replicas
        self._batch: list[_Held] = []
        self.waits = 0  # WAITs written and not answered yet

    def send_entry(self, packed: bytes | Combined, entry: Pending) -> None:
        if not self.open:  # the handshake (AUTH, SELECT, PING): nothing to replicate
            self.queue(packed, entry)
            return
        if not self.replicas.master:
            raise ServerRefused("redis answers ROLE as a replica: no write is sent to it")
        if self.replicas.refused is not None:
            raise ServerRefused(self.replicas.refused)
        held = _Held(entry)
        self._batch.append(held)
        try:
            self.queue(packed, held)
        except RedisError:
            self._batch.pop()
            raise

    def _write(self) -> None:
        if not self._batch:  # the handshake's
            super()._write()
            return
        transport = self._transport
        assert transport is not None
        count = len(self._buffer)
        needed, waits = self.replicas.wait_commands()
        for wait in waits[:-1]:  # only prompts the last: its failure fails that one too
            self._buffer.append(wait)
            self.waiting.append(DISCARD)
        self._buffer.append(waits[-1])
        self.waiting.append(_Wait(self._batch, needed, self))
        self._batch = []
        self.waits += 1
        payload = self._payload()
        transport.write(payload)
        self.written += count + len(waits)
        self._on_flush(count)
        self._loop.call_later(self._timeout, self._expire, self.written)


class AckedConnections:
    """A node's `LINKS` pipelined connections, each batch acknowledged by its replicas.
    Offers what a `PipelinedConnection` offers the transports."""

    def __init__(
        self,
        url: RedisUrl,
        *,
        timeout: float,
        ack: Ack,
        max_pending: int,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.replicas = Replicas(url, timeout=timeout, ack=ack)
        replicas = self.replicas

        def link(owner: PipelinedConnection) -> Link:
            return AckedLink(owner, replicas)

        # A call's reply now also waits for its batch's WAIT: its bound grows by that.
        self.connections = [
            PipelinedConnection(
                url, timeout=timeout + ack.longest, max_pending=max_pending, on_flush=on_flush, link=link
            )
            for _ in range(LINKS)
        ]

    def _pick(self) -> PipelinedConnection:
        for connection in self.connections:
            link = connection.link
            if link is None or not isinstance(link, AckedLink) or link.waits == 0:
                return connection
        return min(self.connections, key=lambda c: c.link.waits if isinstance(c.link, AckedLink) else 0)

    async def execute(self, *args: Any) -> Any:
        if not self.replicas.ready:
            await self.replicas.known()
        return await self._pick().execute(*args)

    async def execute_shared(self, *args: Any) -> Any:
        if not self.replicas.ready:
            await self.replicas.known()
        return await self._pick().execute_shared(*args)

    async def execute_update(self, script: CombinableScript, *args: Any) -> Any:
        if not self.replicas.ready:
            await self.replicas.known()
        return await self._pick().execute_update(script, *args)

    async def execute_asking(self, *args: Any) -> Any:
        if not self.replicas.ready:
            await self.replicas.known()
        return await self._pick().execute_asking(*args)

    @property
    def connected(self) -> bool:
        return any(connection.connected for connection in self.connections)

    def retire(self) -> None:
        """As PipelinedConnection.retire; the node left: its ROLE is asked no more (the
        calls already written wait for their batches' WAITs, sent with them)."""
        for connection in self.connections:
            connection.retire()
        self.replicas.close()

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.replicas.close()
