"""Redis access: key naming, the Lua scripts, and the one call path every command uses.

A group's counters live in one hash named `{<sdkappid>:<GroupId>}`; the braces make
the whole name the Redis Cluster hash tag, so any later key of the group (an
idempotency record, say) written as `{<sdkappid>:<GroupId>}:<suffix>` lands in the
same slot.

`memory://` runs the same scripts on fakeredis inside the process (Lua 5.1, as in
Redis), for a first run with no Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.errors import ErrorCode, ServiceError
from service.metrics import REDIS_ERRORS, REDIS_SECONDS

log = logging.getLogger("service.store")

EMBEDDED_URL: Final = "memory://"

ScriptArg = str | bytes | int
# Each script documents its reply shape in its header; commands.py reads it at the boundary.
ScriptReply = list[Any]


# Not a group's key: GroupIds are never empty, so `{<sdkappid>:...}` never matches it.
READINESS_KEY: Final = "{readyz}"


def group_key(sdkappid: int, group_id: str) -> str:
    return f"{{{sdkappid}:{group_id}}}"


def _lua_dir() -> Path:
    """The scripts ship inside the wheel as service/lua; a source checkout has ./lua."""
    packaged = resources.files("service").joinpath("lua")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "lua"


class Script:
    """One Lua file, called with `keys` KEYS (the count its header documents)."""

    def __init__(self, name: str, keys: int) -> None:
        self.name = name
        self.keys = keys
        self.source = (_lua_dir() / f"{name}.lua").read_text(encoding="utf-8")


UPDATE_COUNTERS: Final = Script("update_counters", keys=1)
GET_COUNTERS: Final = Script("get_counters", keys=1)
DELETE_COUNTERS: Final = Script("delete_counters", keys=1)
CREATE_GROUP: Final = Script("create_group", keys=1)
DESTROY_GROUP: Final = Script("destroy_group", keys=1)
SCRIPTS: Final = (UPDATE_COUNTERS, GET_COUNTERS, DELETE_COUNTERS, CREATE_GROUP, DESTROY_GROUP)


def connect(url: str, *, timeout: float, max_connections: int) -> aioredis.Redis:
    if url == EMBEDDED_URL:
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    # No automatic retries: a script call that timed out may have run, and running
    # an Increase twice would count it twice. Failing with 10002 lets the client decide.
    # A blocking pool bounds the connections: past max_connections a call waits up
    # to `timeout` for a free one and then fails, instead of opening sockets unboundedly.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        timeout=timeout,
    )
    return aioredis.Redis.from_pool(pool)


class Store:
    """Runs the scripts; every Redis fault becomes a 10002 `ServiceError`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._scripts = {script.name: client.register_script(script.source) for script in SCRIPTS}

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        assert len(keys) == script.keys, f"{script.name} takes {script.keys} keys"
        started = time.perf_counter()
        try:
            reply: ScriptReply = await self._scripts[script.name](keys=keys, args=args)
        except RedisError as exc:
            REDIS_ERRORS.labels(script.name).inc()
            log.warning("redis call %s failed: %s: %s", script.name, type(exc).__name__, exc)
            raise ServiceError(
                ErrorCode.INTERNAL, "internal error: the store is unavailable, retry later"
            ) from exc
        REDIS_SECONDS.labels(script.name).observe(time.perf_counter() - started)
        return reply

    async def probe(self) -> None:
        """A real script round trip (EVALSHA, reloading on NOSCRIPT), for readiness."""
        await self.run(GET_COUNTERS, [READINESS_KEY], ["0"])

    async def warn_if_unsafe(self) -> None:
        """Say loudly when this Redis can silently lose counters."""
        try:
            policy = await self._config_value("maxmemory-policy")
            appendonly = await self._config_value("appendonly")
            save = await self._config_value("save")
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

    async def wait_until_reachable(self, url_for_log: str) -> None:
        """Ping until Redis answers, backing off to 5 s, saying so at each failure."""
        delay = 0.1
        while True:
            try:
                await self.client.ping()
            except RedisError as exc:
                log.warning(
                    "redis at %s is unreachable (%s); retrying in %.1f s",
                    url_for_log,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("redis at %s is reachable", url_for_log)
            if url_for_log != EMBEDDED_URL:
                await self.warn_if_unsafe()
            return

    async def _config_value(self, name: str) -> str:
        reply: dict[Any, Any] = await self.client.config_get(name)
        value = reply.get(name.encode(), reply.get(name, b""))
        return value.decode() if isinstance(value, bytes) else str(value)

    async def close(self) -> None:
        await self.client.aclose()
