"""The sentinels' `+switch-master` and `+selected-slave` announcements, heard as they happen.

Each sentinel publishes `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`
on its own pub/sub the moment a failover it led (or learned of) completes; the leader of
a failover publishes `+selected-slave` when it picks the replica to promote. One
subscription per configured sentinel, each reconnecting with a backoff up to 5 s when
its sentinel is gone; on a message for our master, `on_switch` (or `on_selected`, with
the replica) runs at once. The transport's poll (every 0.5 s) stays as the fallback for
a message lost in a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.storage.transports.sentinel_promotion import Promoted, selected_replica

log = logging.getLogger("service.transports.sentinel")

CHANNEL: Final = "+switch-master"
SELECTED: Final = "+selected-slave"
_MAX_BACKOFF: Final = 5.0


class SwitchListener:
    def __init__(
        self,
        sentinels: list[aioredis.Redis],
        master_name: str,
        on_switch: Callable[[], None],
        on_selected: Callable[[Promoted], None],
    ) -> None:
        self._sentinels = sentinels
        self._name = master_name.encode()
        self._on_switch = on_switch
        self._on_selected = on_selected
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.heard = 0  # switches of our master heard, over this listener's life

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._listen(sentinel)) for sentinel in self._sentinels]

    async def _listen(self, sentinel: aioredis.Redis) -> None:
        backoff = 0.1
        # Not `while True`: redis-py's get_message(timeout=...) can swallow a cancel.
        while not self._closed:
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(CHANNEL, SELECTED)
                backoff = 0.1
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._heard(message.get("channel"), message.get("data"))
            except (RedisError, OSError) as exc:
                log.debug("lost the subscription to a sentinel's announcements: %s", exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _heard(self, channel: object, data: object) -> None:
        if channel == SELECTED.encode():
            if (promotion := selected_replica(data, self._name)) is not None:
                self._on_selected(promotion)
        elif self._ours(data):
            self.heard += 1
            self._on_switch()

    def _ours(self, data: object) -> bool:
        return isinstance(data, bytes) and data.split(b" ", 1)[0] == self._name

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
