"""memory://: the same scripts on fakeredis inside the process (Lua 5.1, as in Redis),
for a first run with no Redis. Also any redis-py client a test hands the store."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.storage.scripts import ScriptCall, ScriptReply
from service.storage.transports.base import config_value, run_with_reload, scan_reply
from service.storage.transports.subscriber import RedisPySubscriber, Subscriber


class RedisPyTransport:
    cross_slot_scripts = True
    publish_command = "PUBLISH"

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.db = int(client.connection_pool.connection_kwargs.get("db", 0))

    async def run_script(self, call: ScriptCall) -> ScriptReply:
        return await run_with_reload(self.client.execute_command, call)

    def subscriber(self) -> Subscriber:
        return RedisPySubscriber(self.client)

    async def ping(self) -> None:
        await self.client.ping()

    async def masters(self) -> int:
        return 1

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        return scan_reply(await self.client.scan(cursor, match=match, count=count))

    async def config_value(self, name: str) -> str:
        return await config_value(self.client, name)

    async def close(self) -> None:
        await self.client.aclose()


def embedded_client() -> aioredis.Redis:
    import fakeredis

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
