"""`ack = "replicas"` on Sentinel: each script call and a WAIT for the master's replicas.

The Sentinel transport runs each call on a connection of its own (redis-py's pool), so
the WAIT goes right behind the call on that connection, in one round trip (a pipeline
without MULTI), and blocks only that call. How many replicas: the master's `ROLE`,
asked every `_ROLE_SECONDS` and at once after a call that got too few. The rules are
those of acks.py: a call is acknowledged only when every replica the master reports
holds it; otherwise it answers 10002, maybe applied. With `ack_fsync` the WAIT is a
WAITAOF, probed at each ROLE as acks.py says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from service.storage.scripts import ScriptCall, ScriptReply
from service.storage.transports.acks import Ack, Needed, check_fsync
from service.storage.transports.faults import NotAcknowledged, NotSent, ServerRefused

log = logging.getLogger("service.transports.sentinel")

_ROLE_SECONDS: Final = 1.0


class SentinelAcks:
    def __init__(self, client: aioredis.Redis, *, timeout: float, ack: Ack) -> None:
        self._client = client
        self._timeout = timeout
        self.ack = ack
        self.needed = Needed()
        self.master = True
        self.refused: str | None = None
        self._ask = asyncio.Event()
        self._known = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._asking: asyncio.Future[Any] | None = None
        self._closed = False

    async def run(self, call: ScriptCall) -> ScriptReply:
        if self._task is None:
            self._task = asyncio.ensure_future(self._follow())
        if not self._known.is_set():
            await self._wait_known()
        if not self.master:
            raise ServerRefused("the master the sentinels name answers ROLE as a replica")
        if self.refused is not None:
            raise ServerRefused(self.refused)
        needed = (self.needed.count or 0) if self.ack.replicas else 0
        script = call.script
        reply, answer = await self._pipeline(needed, "EVALSHA", script.sha, call)
        if isinstance(reply, NoScriptError):  # nothing ran: once more with the source
            reply, answer = await self._pipeline(needed, "EVAL", script.source, call)
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(answer, ResponseError):  # the WAIT's own error: the call ran, unconfirmed
            self._ask.set()
            raise NotAcknowledged(f"the wait for the write's copies failed: {answer}")
        if isinstance(answer, BaseException):
            raise answer
        if not self.ack.confirmed(answer, needed):
            self._ask.set()
            raise NotAcknowledged(self.ack.describe(answer, needed))
        return reply  # type: ignore[no-any-return]

    async def _pipeline(self, needed: int, command: str, script: str, call: ScriptCall) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.execute_command(command, script, len(call.keys), *call.keys, *call.args)
            for wait in self.ack.commands(needed):
                pipe.execute_command(*wait)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return [results[0], results[-1]]  # the call's reply, and the last wait's answer

    async def _wait_known(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._known.wait()
        except TimeoutError:
            raise NotSent(f"the master did not answer ROLE within {self._timeout} s") from None

    def ask_again(self) -> None:
        """After a failover: the new master's replicas are counted before the next call.
        A ROLE still in flight went to the old master, which may take a whole timeout to
        fail while calls wait for the answer: it is dropped, and the new master asked."""
        self.needed.forget()
        self._known.clear()
        self._ask.set()
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()

    async def _follow(self) -> None:
        # Not `while True`: on Python 3.11 a cancel that lands as asyncio.timeout below
        # expires is taken for the timeout's own, and the loop would outlive close().
        while not self._closed:
            self._ask.clear()
            self._asking = asyncio.ensure_future(self._client.role())
            try:
                role = await self._asking
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    raise
                continue  # ask_again(): this ROLE went to the old master; ask the new one
            except RedisError as exc:
                log.debug("ROLE on the master failed: %s", exc)
            else:
                self.master = role[0] in (b"master", "master")
                self.needed.saw(len(role[2]) if self.master else 0, time.monotonic())
                if self.ack.fsync and self.master:
                    await self._check_fsync()
                self._known.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ROLE_SECONDS):
                    await self._ask.wait()

    async def _check_fsync(self) -> None:
        self.refused = await check_fsync(self._client.execute_command, self.refused, "the master")

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
