"""redis+sentinel://: the master the sentinels name, rediscovered after a failover.

redis-py's Sentinel pool asks the sentinels for the master on each new connection,
with one connection per call in flight (so a reply cannot reach another call). A
connection still talking to a demoted master gets READONLY, which redis-py turns into
a ConnectionError and a disconnect. What redis-py lacks is added here: a watcher that
asks the sentinels every `_WATCH_SECONDS`, and at once after a connection fault
(READONLY, LOADING, MASTERDOWN, a reset, a timeout), and moves every connection to
the new master when the answer changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.scripts import ScriptCall, ScriptReply
from service.storage.transports.acks import Ack
from service.storage.transports.base import (
    Gate,
    config_value,
    no_retry,
    run_with_reload,
    scan_reply,
)
from service.storage.transports.faults import is_connection_fault
from service.storage.transports.sentinel_acks import SentinelAcks
from service.storage.transports.sentinel_events import SwitchListener
from service.storage.transports.sentinel_promotion import FollowingSentinel, Promotions
from service.storage.transports.subscriber import Address, SocketSubscriber, Subscriber
from service.storage.urls import RedisUrl

log = logging.getLogger("service.transports.sentinel")

T = TypeVar("T")

# Calls in flight at once, hence connections to the master.
_MAX_CONNECTIONS: Final = 128
# How often the sentinels are asked which node is master.
_WATCH_SECONDS: Final = 0.5


class SentinelTransport:
    cross_slot_scripts = True  # one master holds every key
    publish_command = "PUBLISH"

    def __init__(self, url: RedisUrl, *, timeout: float, max_pending: int, ack: Ack | None = None) -> None:
        # With `ack` a call's reply also waits up to ack.longest for its WAITs.
        timeout += ack.longest if ack is not None else 0.0
        socket_kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "socket_keepalive": True,
            "retry": no_retry(),
        }
        self.master_name = url.master
        self.db = url.db
        self._ask_now = asyncio.Event()

        def connect(address: Address) -> aioredis.Redis:
            host, port = address
            return aioredis.Redis(
                host=host, port=port, username=url.username, password=url.password, **socket_kwargs
            )

        # A replica the sentinels promote is followed once it answers ROLE as master.
        self.promotions = Promotions(connect, self._ask_now.set)
        # Each new master connection asks a sentinel first, on a pooled connection too.
        self.sentinel = FollowingSentinel(
            url.hosts,
            self.promotions,
            sentinel_kwargs={**socket_kwargs, "max_connections": _MAX_CONNECTIONS + 2},
        )
        self.client: aioredis.Redis = self.sentinel.master_for(
            url.master,
            username=url.username,
            password=url.password,
            db=url.db,
            # The gate admits _MAX_CONNECTIONS calls; redis-py's pool would refuse past its
            # own default (100) with "Too many connections". Room for ROLE (ack = "replicas").
            max_connections=_MAX_CONNECTIONS + 2,
            **socket_kwargs,
        )
        self._gate = Gate(_MAX_CONNECTIONS, max_pending, timeout)
        self._timeout = timeout
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self.master_address: Any = None  # as the watcher last heard it from the sentinels
        self._drop_idle = False
        self._url = url
        self._subscriber: SocketSubscriber | None = None
        self._acks = None if ack is None else SentinelAcks(self.client, timeout=timeout, ack=ack)
        # +switch-master from any sentinel: the watcher asks at once, not at its next poll.
        self._switches = SwitchListener(
            self.sentinel.sentinels, url.master, self._ask_now.set, self.promotions.selected
        )

    def _watch_master(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._follow_master())
            self._switches.start()

    async def _follow_master(self) -> None:
        """When the sentinels name another master, drop every connection (a call in
        flight answers 10002) so the next call goes to the new master. redis-py alone
        only asks on a new connection, and a demoted master keeps taking writes until
        the sentinels reconfigure it: writes it then loses."""
        known: Any = None
        # Not `while True`: on Python 3.11 a cancel that lands as asyncio.timeout below
        # expires is taken for the timeout's own, and the loop would go on after close().
        while not self._closed:
            # Cleared before asking, not after: a promotion followed while the sentinels
            # are being asked must wake the next round, not wait out the poll.
            self._ask_now.clear()
            try:
                address = await self.sentinel.discover_master(self.master_name)
            except RedisError as exc:
                log.debug("sentinels did not name the master of %s: %s", self.master_name, exc)
            else:
                if known is not None and address != known:
                    log.warning(
                        "sentinels name a new master for %s: %s (was %s); reconnecting",
                        self.master_name,
                        address,
                        known,
                    )
                    await self._drop_connections_to(known)
                    if self._acks is not None:
                        self._acks.ask_again()
                    if self._subscriber is not None:
                        # A demoted master keeps its subscribers and, as a replica, even
                        # relays notices; watchers resync from the new master anyway.
                        self._subscriber.lose_all()
                known = self.master_address = address
            if self._drop_idle:
                self._drop_idle = False
                await self.client.connection_pool.disconnect(inuse_connections=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WATCH_SECONDS):
                    await self._ask_now.wait()

    async def _drop_connections_to(self, address: Any) -> None:
        """Disconnect every connection of the pool to `address`, idle or in use (a call
        in flight there answers 10002: it may have run); those already made to the new
        master stay."""
        pool = self.client.connection_pool
        connections = [*pool._available_connections, *pool._get_in_use_connections()]
        for connection in connections:
            if (getattr(connection, "host", None), getattr(connection, "port", None)) == tuple(address):
                await connection.disconnect()

    def _faulted(self, exc: RedisError) -> None:
        if is_connection_fault(exc):
            # Idle connections may lead to the same sick server: the watcher drops
            # them and asks again, off this call's path.
            self._drop_idle = True
            self._ask_now.set()

    async def _bounded(self, command: Callable[[], Awaitable[T]]) -> T:
        """One bound for all of a call: its turn, the master's address, connect, reply.
        A cancelled redis-py call disconnects its connection: no reply is left behind."""
        self._watch_master()
        try:
            async with asyncio.timeout(self._timeout), self._gate:
                return await command()
        except TimeoutError:
            exc: RedisError = RedisTimeoutError(f"redis did not answer within {self._timeout} s")
            self._faulted(exc)
            raise exc from None
        except RedisError as exc:
            self._faulted(exc)
            raise

    async def run_script(self, call: ScriptCall) -> ScriptReply:
        if self._acks is not None:
            return await self._bounded(partial(self._acks.run, call))
        return await self._bounded(partial(run_with_reload, self.client.execute_command, call))

    def subscriber(self) -> Subscriber:
        self._watch_master()

        async def locate(_: str) -> Address:
            host, port = await self.sentinel.discover_master(self.master_name)
            return str(host), int(port)

        self._subscriber = SocketSubscriber(
            self._url, locate=locate, sharded=False, timeout=self._timeout, on_fault=self._ask_now.set
        )
        return self._subscriber

    async def ping(self) -> None:
        self._watch_master()
        try:
            await self.client.ping()
        except RedisError as exc:
            self._faulted(exc)
            raise

    async def masters(self) -> int:
        return 1

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        return scan_reply(await self._bounded(partial(self.client.scan, cursor, match=match, count=count)))

    async def config_value(self, name: str) -> str:
        return await config_value(self.client, name)

    async def close(self) -> None:
        self._closed = True
        await self._switches.close()
        await self.promotions.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._acks is not None:
            self._acks.close()
        await self.client.aclose()
        for sentinel in self.sentinel.sentinels:
            await sentinel.aclose()
