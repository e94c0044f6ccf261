"""The one call path every command uses: run a script, turn any Redis fault into 10002.

Nothing here retries a script call: one that timed out may have run, and running an
Increase twice would count it twice. Failing with 10002 lets the client decide. How
Redis is reached (one Redis, Cluster, Sentinel, the embedded store) is the
transport's business (`service/storage/transports/`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from redis.exceptions import RedisError

from service.errors import ErrorCode, ServiceError
from service.ops.metrics import TALLY
from service.storage.keys import READINESS_KEY
from service.storage.scripts import GET_COUNTERS, ScriptCall, ScriptReply
from service.storage.transports import Ack, Transport, open_transport
from service.storage.transports.faults import certainly_not_run
from service.storage.urls import EMBEDDED

log = logging.getLogger("service.store")

EMBEDDED_URL: Final = f"{EMBEDDED}://"


def open_store(url: str, *, timeout: float, max_pending: int = 10_000, ack: Ack | None = None) -> Store:
    return Store(open_transport(url, timeout=timeout, max_pending=max_pending, on_flush=TALLY.batch, ack=ack))


def unavailable(name: str, exc: RedisError) -> ServiceError:
    """The 10002 for a Redis fault, logged and counted, saying whether the call ran."""
    TALLY.redis_error(name)
    log.warning("redis call %s failed: %s: %s", name, type(exc).__name__, exc)
    if certainly_not_run(exc):
        return ServiceError(
            ErrorCode.INTERNAL,
            "internal error: the store is unavailable; the call did not run, retry later",
            "no",
        )
    return ServiceError(
        ErrorCode.INTERNAL, "internal error: the store is unavailable; the call may have run", "maybe"
    )


class Store:
    """Runs the scripts; every Redis fault becomes a 10002 `ServiceError`."""

    def __init__(self, transport: Transport, *, live: bool = True) -> None:
        self.transport = transport
        # `live_counters`: whether scripts announce their changes (docs/API.md §8).
        self.live = live
        # `idempotency_ttl`: how long an Idempotency-Key's record is kept, in seconds.
        self.record_ttl = 86400

    @property
    def announce(self) -> str:
        """How the scripts announce a change: ARGV "PUBLISH", "SPUBLISH" or "" (off)."""
        return self.transport.publish_command if self.live else ""

    @property
    def db(self) -> int:
        """The database the keys are in, which the group channels' names carry."""
        return self.transport.db

    @property
    def cross_slot_scripts(self) -> bool:
        """Whether one script may touch keys of different hash slots (not on a Cluster)."""
        return self.transport.cross_slot_scripts

    async def run(self, call: ScriptCall) -> ScriptReply:
        name = call.script.name
        assert len(call.keys) == call.script.keys or (
            call.script.more_keys and len(call.keys) > call.script.keys
        ), f"{name} takes {call.script.keys} keys"
        started = time.perf_counter()
        try:
            reply = await self.transport.run_script(call)
        except RedisError as exc:
            raise unavailable(name, exc) from exc
        TALLY.redis_call(name, time.perf_counter() - started)
        return reply

    async def masters(self) -> int:
        """How many masters a listing walks (1 unless on a Cluster); 10002 on a fault."""
        try:
            return await self.transport.masters()
        except RedisError as exc:
            raise unavailable("masters", exc) from exc

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        """One SCAN step on one master; 10002 on a fault."""
        try:
            return await self.transport.scan(master, cursor, match, count)
        except RedisError as exc:
            raise unavailable("scan", exc) from exc

    async def probe(self) -> None:
        """A real script round trip (EVALSHA, reloading on NOSCRIPT), for readiness."""
        await self.run(ScriptCall(GET_COUNTERS, [READINESS_KEY, READINESS_KEY], ["0", "0"]))

    async def wait_until_reachable(self, url_for_log: str) -> None:
        """Ping until Redis answers, backing off to 5 s, saying so at each failure."""
        delay = 0.1
        while True:
            try:
                await self.transport.ping()
            except RedisError as exc:
                log.warning("redis at %s is unreachable (%s); retrying in %.1f s", url_for_log, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("redis at %s is reachable", url_for_log)
            if url_for_log != EMBEDDED_URL:
                await self.warn_if_unsafe()
            return

    async def warn_if_unsafe(self) -> None:
        """Say loudly when this Redis can silently lose counters."""
        try:
            policy = await self.transport.config_value("maxmemory-policy")
            appendonly = await self.transport.config_value("appendonly")
            save = await self.transport.config_value("save")
        except RedisError as exc:
            log.info("could not read the Redis config to check eviction and persistence: %s", exc)
            return
        if policy.startswith("allkeys-"):
            log.error(
                "REDIS CAN EVICT COUNTERS: maxmemory-policy is %s; an evicted group is a silently "
                "lost counter. Set maxmemory-policy noeviction.",
                policy,
            )
        if appendonly == "no" and not save:
            log.error(
                "REDIS KEEPS NOTHING ON DISK: appendonly is off and no RDB save is configured; "
                "a Redis restart loses every counter. Set appendonly yes (appendfsync everysec)."
            )

    async def close(self) -> None:
        await self.transport.close()
