"""A replica the sentinels are promoting, followed as soon as it takes writes.

The sentinels' leader announces `+selected-slave` and sends that replica `REPLICAOF NO
ONE` at once, but it sees the promotion only at its next `INFO` of the replica (once a
second during a failover); only then does it announce `+switch-master` and answer with
the new address. Measured on loopback (SIGKILL, down-after-milliseconds 1000): the
replica answered `ROLE` as master 1.41 s after the kill, `+switch-master` came at 2.28 s.

So on `+selected-slave` for our master, that replica's `ROLE` is asked every
`_PROBE_EVERY` seconds. Once it answers master, the sentinels' answer is read as that
replica for as long as they still name the old master (or name none, the old one being
down): every new connection goes there, and the transport drops those to the old one.
It ends when the sentinels name the replica themselves or a third node, when the replica
answers as a replica again, or `_AHEAD_SECONDS` after it answered master: then the
sentinels' word is followed alone, as before.

Why writing there early is safe: only the sentinels' leader promotes, and a replica that
answers master has been promoted by it. Writes to it are writes the sentinels would send
there a moment later. What can lose them: a failover the sentinels abort after the
replica took writes (their leader never saw the promotion within `failover-timeout`),
which turns it back into a replica of the old master; hence the short `_AHEAD_SECONDS`
(README, "Durability").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.exceptions import RedisError

from service.storage.transports.subscriber import Address

log = logging.getLogger("service.transports.sentinel")

# How often the chosen replica is asked, until it answers master; then how often it is
# asked whether it still is.
_PROBE_EVERY: Final = 0.025
_CHECK_EVERY: Final = 0.5
# How long the replica is asked before it answers master; then how long it is followed
# ahead of the sentinels. Their leader sees the promotion at its next INFO, within a
# second (0.87 s measured); past 3 s something is wrong with the failover itself.
_PROBE_SECONDS: Final = 30.0
_AHEAD_SECONDS: Final = 3.0


@dataclass(frozen=True)
class Promoted:
    old: Address
    new: Address


def selected_replica(data: object, master_name: bytes) -> Promoted | None:
    """`+selected-slave slave <ip>:<port> <ip> <port> @ <name> <master-ip> <master-port>`,
    for our master; None for anything else."""
    if not isinstance(data, bytes):
        return None
    parts = data.split()
    if len(parts) != 8 or parts[0] != b"slave" or parts[4] != b"@" or parts[5] != master_name:
        return None
    try:
        return Promoted(
            old=(parts[6].decode(), int(parts[7])),
            new=(parts[2].decode(), int(parts[3])),
        )
    except (UnicodeDecodeError, ValueError):
        return None


class Promotions:
    """The one promotion followed ahead of the sentinels, if any."""

    def __init__(self, connect: Callable[[Address], aioredis.Redis], on_change: Callable[[], None]) -> None:
        self._connect = connect
        self._on_change = on_change
        self.current: Promoted | None = None
        self._probe: asyncio.Task[None] | None = None
        self.followed = 0  # promoted replicas followed once they answered master

    def selected(self, promotion: Promoted) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self._set(None)
        self._probe = asyncio.ensure_future(self._follow(promotion))

    def resolve(self, named: Address | None) -> Address | None:
        """The master to use, given the one the sentinels name (None: they name none)."""
        current = self.current
        if current is None or (named is not None and named != current.old):
            # The sentinels name the replica themselves, or chose another node.
            self.current = None
            return named
        return current.new

    async def _follow(self, promotion: Promoted) -> None:
        client = self._connect(promotion.new)
        deadline = time.monotonic() + _PROBE_SECONDS
        try:
            while not await self._is_master(client):
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(_PROBE_EVERY)
            self.followed += 1
            log.warning("the replica the sentinels promote, %s, takes writes: following it", promotion.new)
            self._set(promotion)
            # Until resolve() lets it go (the sentinels caught up), or it is a replica again.
            deadline = time.monotonic() + _AHEAD_SECONDS
            while self.current == promotion and time.monotonic() < deadline:
                await asyncio.sleep(_CHECK_EVERY)
                if self.current == promotion and not await self._is_master(client):
                    self._set(None)
        finally:
            if self.current == promotion:
                self._set(None)
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _set(self, promotion: Promoted | None) -> None:
        if promotion != self.current:
            self.current = promotion
            self._on_change()

    @staticmethod
    async def _is_master(client: aioredis.Redis) -> bool:
        try:
            role: Any = await client.role()
        except (RedisError, OSError):
            return False
        return bool(role) and role[0] in (b"master", "master")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


class FollowingSentinel(Sentinel):
    """redis-py's Sentinel, whose answer for the master goes through `promotions`: the
    transport's watcher, every new connection and the subscriber all ask here."""

    def __init__(self, sentinels: list[Address], promotions: Promotions, **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)
        self.promotions = promotions

    async def discover_master(self, service_name: str) -> Any:
        try:
            host, port = await super().discover_master(service_name)
        except MasterNotFoundError:
            if (early := self.promotions.resolve(None)) is None:
                raise
            return early
        return self.promotions.resolve((str(host), int(port)))
