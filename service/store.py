"""Redis access: key naming, the Lua scripts, and the one call path every command uses.

A group's counters live in one hash named `{<sdkappid>:<GroupId>}`; the braces make
the whole name the Redis Cluster hash tag, so any later key of the group (an
idempotency record, say) written as `{<sdkappid>:<GroupId>}:<suffix>` lands in the
same slot.

redis://, rediss:// and unix:// go through `PipelinedConnection` (one connection, all
calls of an event-loop tick in one write); `memory://` runs the same scripts on
fakeredis inside the process (Lua 5.1, as in Redis), for a first run with no Redis.
Nothing here retries a script call: one that timed out may have run, and running an
Increase twice would count it twice. Failing with 10002 lets the client decide.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service import topology
from service.errors import ErrorCode, ServiceError
from service.metrics import TALLY
from service.pipelined import Endpoint, PipelinedConnection

log = logging.getLogger("service.store")

EMBEDDED_URL: Final = "memory://"

ScriptArg = str | bytes | int
# Each script documents its reply shape in its header; commands.py reads it at the boundary.
ScriptReply = list[Any]


# Not a group's key: GroupIds are never empty, so `{<sdkappid>:...}` never matches it.
READINESS_KEY: Final = "{readyz}"


def group_key(sdkappid: int, group_id: str) -> str:
    return f"{{{sdkappid}:{group_id}}}"


def idempotency_key(group: str, key: str) -> str:
    """The record of an Idempotency-Key, after the group's key (`group_key`): in the
    group's slot, so the script that updates the group can write it."""
    return f"{group}:idempotency:{key}"


def rate_limit_key(sdkappid: int) -> str:
    # Never a group's key: those tags start with the numeric sdkappid.
    return f"{{ratelimit:{sdkappid}}}"


def _lua_dir() -> Path:
    """The scripts ship inside the wheel as service/lua; a source checkout has ./lua."""
    packaged = resources.files("service").joinpath("lua")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "lua"


def _with_includes(source: str) -> str:
    """Shared Lua from lua/include/, placed right after the script's header comment."""
    header_end = source.index("]]\n") + 3
    shared = (_lua_dir() / "include" / "rate_limit.lua").read_text(encoding="utf-8")
    return source[:header_end] + shared + source[header_end:]


class Script:
    """One Lua file, called with `keys` KEYS (the count its header documents)."""

    def __init__(self, name: str, keys: int) -> None:
        self.name = name
        self.keys = keys
        self.source = _with_includes((_lua_dir() / f"{name}.lua").read_text(encoding="utf-8"))
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


UPDATE_COUNTERS: Final = Script("update_counters", keys=3)
GET_COUNTERS: Final = Script("get_counters", keys=2)
DELETE_COUNTERS: Final = Script("delete_counters", keys=3)
CREATE_GROUP: Final = Script("create_group", keys=2)
DESTROY_GROUP: Final = Script("destroy_group", keys=2)
RATE_LIMIT: Final = Script("rate_limit", keys=1)
SCRIPTS: Final = (UPDATE_COUNTERS, GET_COUNTERS, DELETE_COUNTERS, CREATE_GROUP, DESTROY_GROUP, RATE_LIMIT)


class Transport(Protocol):
    """How the store reaches Redis: the pipelined connection, or redis-py."""

    # Whether one script may touch keys of different hash slots (the group's and the
    # app's rate-limit window): true on one Redis, false on a Cluster.
    limiter_shares_call: bool

    async def run_script(
        self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]
    ) -> ScriptReply: ...

    async def ping(self) -> None: ...

    async def config_value(self, name: str) -> str: ...

    async def close(self) -> None: ...


class PipelinedTransport:
    """redis://, rediss:// and unix:// through one coalescing connection (the fast path)."""

    limiter_shares_call = True

    def __init__(self, url: str, *, timeout: float, max_pending: int) -> None:
        self.connection = PipelinedConnection(
            url, timeout=timeout, max_pending=max_pending, on_flush=TALLY.batch
        )

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        try:
            reply: ScriptReply = await self.connection.execute(
                "EVALSHA", script.sha, script.keys, *keys, *args
            )
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # A restarted or flushed Redis forgot the script: EVAL runs and caches it. Once.
            reply = await self.connection.execute("EVAL", script.source, script.keys, *keys, *args)
        return reply

    async def ping(self) -> None:
        await self.connection.execute("PING")

    async def config_value(self, name: str) -> str:
        reply = await self.connection.execute("CONFIG", "GET", name)
        return reply[1].decode() if len(reply) == 2 else ""

    async def close(self) -> None:
        self.connection.close()


class RedisPyTransport:
    """redis-py: the embedded store on fakeredis (and any client redis-py offers)."""

    limiter_shares_call = True

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._scripts = {script.name: client.register_script(script.source) for script in SCRIPTS}

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        # AsyncScript: EVALSHA, and on NOSCRIPT one SCRIPT LOAD and retry.
        reply: ScriptReply = await self._scripts[script.name](keys=keys, args=args)
        return reply

    async def ping(self) -> None:
        await self.client.ping()

    async def config_value(self, name: str) -> str:
        return await topology.config_value(self.client, name)

    async def close(self) -> None:
        await self.client.aclose()


def embedded_client() -> aioredis.Redis:
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


def open_store(url: str, *, timeout: float, max_pending: int = 10_000) -> Store:
    if url == EMBEDDED_URL:
        return Store(RedisPyTransport(embedded_client()))
    if topology.supports(url):  # redis+cluster://, rediss+cluster://, redis+sentinel://
        return Store(topology.open_transport(url, timeout=timeout, max_pending=max_pending))
    if not Endpoint.supports(url):
        raise ValueError(f"unsupported redis_url {url!r}")
    return Store(PipelinedTransport(url, timeout=timeout, max_pending=max_pending))


class Store:
    """Runs the scripts; every Redis fault becomes a 10002 `ServiceError`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.limiter_shares_call = transport.limiter_shares_call

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        assert len(keys) == script.keys, f"{script.name} takes {script.keys} keys"
        started = time.perf_counter()
        try:
            reply = await self.transport.run_script(script, keys, args)
        except RedisError as exc:
            TALLY.redis_error(script.name)
            log.warning("redis call %s failed: %s: %s", script.name, type(exc).__name__, exc)
            raise ServiceError(
                ErrorCode.INTERNAL, "internal error: the store is unavailable, retry later"
            ) from exc
        TALLY.redis_call(script.name, time.perf_counter() - started)
        return reply

    async def probe(self) -> None:
        """A real script round trip (EVALSHA, reloading on NOSCRIPT), for readiness."""
        await self.run(GET_COUNTERS, [READINESS_KEY, READINESS_KEY], ["0", "0"])

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
