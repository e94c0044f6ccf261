"""What every transport offers the store, and the pieces they share.

A transport runs a `ScriptCall` on Redis and never retries one that may have run: a
timed-out Increase may have been applied, and running it twice would count it twice.
The one retry every transport makes is after NOSCRIPT, which proves nothing ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from service.storage.scripts import ScriptCall, ScriptReply
from service.storage.transports.faults import NotConnectedInTime, NotSent

if TYPE_CHECKING:
    from service.storage.transports.subscriber import Subscriber


class Transport(Protocol):
    """How the store reaches Redis."""

    # Whether one script may touch keys of different hash slots: true on one Redis
    # (and Sentinel's master), false on a Cluster.
    cross_slot_scripts: bool
    # How a script announces a change on its group's channel: PUBLISH, or SPUBLISH on a
    # Cluster (the channel in the group's slot, so the notice stays on the group's node).
    publish_command: str
    # The database the keys are in (SELECT; always 0 on a Cluster). Pub/sub ignores it,
    # so the channels name it (`keys.changes_channel`).
    db: int

    def subscriber(self) -> Subscriber:
        """The process's subscriber for live counters, made at the first watcher."""
        ...

    async def run_script(self, call: ScriptCall) -> ScriptReply: ...

    async def ping(self) -> None: ...

    # Listing an app's groups walks every master's keys with SCAN (no index costs the
    # update path a write). Masters are numbered 0..masters()-1 in a stable order.
    async def masters(self) -> int: ...

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]: ...

    async def config_value(self, name: str) -> str: ...

    async def close(self) -> None: ...


async def run_with_reload(execute: Callable[..., Awaitable[Any]], call: ScriptCall) -> ScriptReply:
    """EVALSHA; on NOSCRIPT (nothing ran: a restarted or flushed Redis forgot the
    script) one EVAL of the same call, which runs it and caches it. Once."""
    script = call.script
    try:
        reply: ScriptReply = await execute("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args)
    except ResponseError as exc:
        # redis-py raises NoScriptError; the pipelined connection a plain ResponseError.
        if not (isinstance(exc, NoScriptError) or str(exc).startswith("NOSCRIPT")):
            raise
        reply = await execute("EVAL", script.source, len(call.keys), *call.keys, *call.args)
    return reply


async def config_value(client: Any, name: str) -> str:
    """One CONFIG GET through a redis-py client (keys come back as str or bytes)."""
    reply: dict[Any, Any] = await client.config_get(name)
    value = reply.get(name.encode(), reply.get(name, b""))
    return value.decode() if isinstance(value, bytes) else str(value)


def scan_reply(reply: Any) -> tuple[int, list[bytes]]:
    """SCAN's [cursor, keys], raw or as redis-py's callback parses it (cursor as int)."""
    cursor, keys = reply
    return int(cursor), list(keys)


def no_retry() -> Retry:
    """For every redis-py client here: a command that may have run is never sent again."""
    return Retry(NoBackoff(), 0)


class Gate:
    """At most `slots` calls at once; a call waits for a turn within `timeout`, and
    beyond `max_pending` waiting calls one is refused at once."""

    def __init__(self, slots: int, max_pending: int, timeout: float) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._max_pending = max_pending
        self._timeout = timeout
        self._waiting = 0

    async def __aenter__(self) -> None:
        if self._waiting >= self._max_pending:
            raise NotSent(f"{self._max_pending} redis calls already waiting; refusing more")
        self._waiting += 1
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise NotConnectedInTime(f"no redis connection free within {self._timeout} s") from None
        finally:
            self._waiting -= 1

    async def __aexit__(self, *_: object) -> None:
        self._slots.release()
