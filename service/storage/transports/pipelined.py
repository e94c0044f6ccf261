"""redis://, rediss:// and unix:// through one coalescing connection (the fast path)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from service.storage.scripts import CombinableScript, ScriptCall, ScriptReply, shareable
from service.storage.transports.acks import Ack, AckedConnections
from service.storage.transports.base import run_with_reload, scan_reply
from service.storage.transports.connection import PipelinedConnection
from service.storage.transports.subscriber import Address, SocketSubscriber, Subscriber
from service.storage.urls import RedisUrl


class PipelinedTransport:
    cross_slot_scripts = True
    publish_command = "PUBLISH"

    def __init__(
        self,
        url: RedisUrl,
        *,
        timeout: float,
        max_pending: int,
        on_flush: Callable[[int], None] | None = None,
        ack: Ack | None = None,
    ) -> None:
        self.connection: PipelinedConnection | AckedConnections
        if ack is None:
            self.connection = PipelinedConnection(
                url, timeout=timeout, max_pending=max_pending, on_flush=on_flush
            )
        else:
            self.connection = AckedConnections(
                url, timeout=timeout, ack=ack, max_pending=max_pending, on_flush=on_flush
            )
        self.db = url.db

    def run_script(self, call: ScriptCall) -> Coroutine[Any, Any, ScriptReply]:
        # The hot path: the coroutine itself, not one more of our own around it.
        script = call.script
        if isinstance(script, CombinableScript):
            return run_with_reload(partial(self.connection.execute_update, script), call)
        if shareable(call):
            return run_with_reload(self.connection.execute_shared, call)
        return run_with_reload(self.connection.execute, call)

    def subscriber(self) -> Subscriber:
        url = self.connection.url
        address: Address = url.hosts[0] if url.hosts else ("unix", 0)

        async def locate(_: str) -> Address:
            return address

        return SocketSubscriber(url, locate=locate, sharded=False, timeout=self.connection.timeout)

    async def ping(self) -> None:
        await self.connection.execute("PING")

    async def masters(self) -> int:
        return 1

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        return scan_reply(await self.connection.execute("SCAN", cursor, "MATCH", match, "COUNT", count))

    async def config_value(self, name: str) -> str:
        reply = await self.connection.execute("CONFIG", "GET", name)
        return reply[1].decode() if len(reply) == 2 else ""

    async def close(self) -> None:
        self.connection.close()
