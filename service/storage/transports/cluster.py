"""redis+cluster:// and rediss+cluster:// : redis-py's slot map, our pipelined connections.

redis-py's asyncio cluster client keeps the slot map (and serves the few calls off the
hot path: PING, SCAN, CONFIG GET). Script calls go to the node that owns the key's slot
over one `PipelinedConnection` per node, the single-Redis fast path: redis-py's own
path (a pooled connection per call in flight, stream reads, a retry wrapper) cost a
Cluster call more than twice a single Redis call's CPU (`make profile`). Nothing sends
a script call twice once it may have run: redis-py's Retry is `no_retry()`, and a
pipelined connection never resends. Beyond `max_pending` calls waiting on a node, a
call answers 10002 at once. Each time the slot map is read again, the connections to
nodes it no longer lists are retired: a cluster whose nodes come and go does not
pile up sockets to nodes gone from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Final

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.scripts import CombinableScript, ScriptArg, ScriptCall, ScriptReply, shareable
from service.storage.transports.acks import Ack, AckedConnections
from service.storage.transports.base import Gate, no_retry, run_with_reload, scan_reply
from service.storage.transports.connection import PipelinedConnection
from service.storage.transports.faults import is_connection_fault
from service.storage.transports.subscriber import Address, SocketSubscriber, Subscriber
from service.storage.urls import RedisUrl

log = logging.getLogger("service.transports.cluster")

# Connections per node of redis-py's own pool (PING, SCAN, CONFIG GET; not script calls).
_MAX_CONNECTIONS: Final = 16


# How a script call goes to its node: alone (None), as a read identical ones may share
# (SHARED), or as an update of the script's that others of its group may join.
SHARED: Final = "shared"
How = CombinableScript | str | None


class ClusterTransport:
    """redis+cluster:// and rediss+cluster:// : script calls over a pipelined connection per node.

    redis-py keeps the slot map; the routing of a script call is done here, so that what
    is retried is exactly what did not run:

    - MOVED: the slot map learns the new owner and the call goes there.
    - ASK (a slot half migrated): ASKING and the call go to the named node adjacent on
      one connection.
    - TRYAGAIN (a multi-key command during a migration; not ours today): a short pause.
    - NOSCRIPT: one EVAL of the same script on the same key (`run_with_reload`).
    - A broken connection, a timeout, CLUSTERDOWN, READONLY, LOADING, MASTERDOWN:
      raised (10002). The next call first refreshes the slot map from the cluster.
    """

    # The group's hash and the app's rate-limit window hash to different slots.
    cross_slot_scripts = False
    # Sharded: a notice goes only to the node of the group's slot (and its replicas),
    # not over the cluster bus to every node as a PUBLISH would.
    publish_command = "SPUBLISH"
    db = 0

    _REDIRECTS: Final = 16

    def __init__(
        self,
        url: RedisUrl,
        *,
        timeout: float,
        max_pending: int,
        on_flush: Callable[[int], None] | None = None,
        ack: Ack | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if url.tls:
            kwargs["ssl"] = True
            kwargs["ssl_ca_certs"] = url.ssl_ca_certs
            if not url.verify_certificates:
                kwargs["ssl_cert_reqs"] = "none"
                kwargs["ssl_check_hostname"] = False
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in url.hosts],
            username=url.username,
            password=url.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Its own commands (PING, CONFIG GET, the slot map) are not retried either.
            retry=no_retry(),
            # Never close every connection (calls in flight with them) after N MOVEDs.
            reinitialize_steps=0,
            max_connections=_MAX_CONNECTIONS,
            **kwargs,
        )
        self._gate = Gate(_MAX_CONNECTIONS, max_pending, timeout)
        self._timeout = timeout
        self._max_pending = max_pending
        self._on_flush = on_flush
        self._ack = ack
        self._connections: dict[str, PipelinedConnection | AckedConnections] = {}
        # Retired, their last calls still waiting for replies: closed too at shutdown.
        self._retired: list[PipelinedConnection | AckedConnections] = []
        self._stale = True
        self._reading: asyncio.Task[None] | None = None
        self._url = url

    async def _slot_map(self, deadline: float | None = None) -> Any:
        """The nodes manager, its slot map read again first when a call failed since.

        One read at a time, in a task of its own: behind a fault it may try node after
        node, each up to its timeouts, and a caller waits for it only until `deadline`
        (one redis_timeout from now by default), then answers without it (a timeout,
        10002) while the read goes on for the callers after it."""
        if self._stale:
            reading = self._reading
            if reading is None:
                reading = self._reading = asyncio.ensure_future(self._read_slot_map())
                reading.add_done_callback(_retrieved)
            if deadline is None:
                deadline = time.monotonic() + self._timeout
            try:
                await asyncio.wait_for(asyncio.shield(reading), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise RedisTimeoutError(
                    f"redis did not answer within {self._timeout} s (reading the cluster's slot map)"
                ) from None
        return self.client.nodes_manager

    async def _read_slot_map(self) -> None:
        try:
            if self.client.get_default_node() is None:
                await self.client.initialize()
            else:
                # Keeps the nodes' pools; connections in use reconnect after their call.
                await self.client.nodes_manager.initialize()
        except RedisClusterException as exc:  # not a RedisError
            raise ClusterError(f"cannot read the cluster's slot map: {exc}") from exc
        finally:
            self._reading = None
        self._retire_departed()
        self._stale = False

    def run_script(self, call: ScriptCall) -> Coroutine[Any, Any, ScriptReply]:
        # The hot path, as the single-Redis one: the coroutine itself, nothing around it.
        # NOSCRIPT's EVAL names the same key, hence goes to the node that owns its slot.
        script = call.script
        if isinstance(script, CombinableScript):
            return run_with_reload(partial(self._call, how=script), call)
        if shareable(call):
            return run_with_reload(partial(self._call, how=SHARED), call)
        return run_with_reload(self._call, call)

    def _call(self, *command: ScriptArg, how: How = None) -> Coroutine[Any, Any, Any]:
        """EVALSHA/EVAL (command[3] is the first key) on the node that owns the key's slot.

        Each attempt is bounded by its connection's `timeout` (a link whose replies are
        overdue fails its calls); redirects and TRYAGAIN pauses stop at one `timeout`
        from the start. A call that times out leaves its future in its link's queue:
        its reply, when it comes, is read and dropped there, never handed to another.
        A plain function: the hot path awaits `_route` itself, no coroutine around it."""
        deadline = time.monotonic() + self._timeout + (self._ack.longest if self._ack is not None else 0.0)
        if not self._stale:
            return self._route(command, self.client.nodes_manager, deadline, how)
        return self._call_after_reading(command, deadline, how)

    async def _call_after_reading(self, command: tuple[ScriptArg, ...], deadline: float, how: How) -> Any:
        """Reading the slot map takes part of the call's one timeout: the rest bounds the call."""
        nodes = await self._slot_map(deadline)
        try:
            return await asyncio.wait_for(
                self._route(command, nodes, deadline, how), max(deadline - time.monotonic(), 0.001)
            )
        except TimeoutError:
            self._stale = True
            raise RedisTimeoutError(f"redis did not answer within {self._timeout} s") from None

    async def _route(self, command: tuple[ScriptArg, ...], nodes: Any, deadline: float, how: How) -> Any:
        """`_call` once the slot map is at hand: to the slot's owner, following redirects."""
        key = command[3]
        slot = self.client.keyslot(key)
        try:
            node: ClusterNode | None = nodes.get_node_from_slot(slot)
        except RedisClusterException as exc:
            self._stale = True
            raise ClusterError(str(exc)) from exc
        asking = False
        for _ in range(self._REDIRECTS):
            assert node is not None
            connection = self._connection(node)
            try:
                if asking:
                    return await connection.execute_asking(*command)
                if how is SHARED:
                    return await connection.execute_shared(*command)
                if isinstance(how, CombinableScript):
                    return await connection.execute_update(how, *command)
                return await connection.execute(*command)
            except MovedError as exc:  # did not run: the slot has a new owner
                await nodes.move_slot(exc)
                node, asking = nodes.get_node_from_slot(slot), False
            except AskError as exc:  # did not run: this key is on the importing node
                node, asking = nodes.get_node(host=exc.host, port=exc.port), True
                if node is None:
                    self._stale = True
                    raise ClusterError(f"ASK to a node not in the slot map: {exc.host}:{exc.port}") from exc
            except TryAgainError:  # did not run
                await asyncio.sleep(0.05)
            except RedisError as exc:
                if not (is_connection_fault(exc) or isinstance(exc, ClusterDownError)):
                    raise
                # May have run: raised, never retried. (The connection replaces a link
                # that failed.) Read the slot map again before the next call.
                self._stale = True
                raise
            if time.monotonic() > deadline:  # only after a redirect or a TRYAGAIN
                self._stale = True
                raise RedisTimeoutError(f"redis did not answer within {self._timeout} s")
        raise ClusterError(f"more than {self._REDIRECTS} MOVED/ASK redirects for slot {slot}")

    def _connection(self, node: ClusterNode) -> PipelinedConnection | AckedConnections:
        connection = self._connections.get(node.name)
        if connection is None:
            url = dataclasses.replace(self._url, hosts=[(node.host, int(node.port))], db=0)
            if self._ack is None:
                connection = PipelinedConnection(
                    url, timeout=self._timeout, max_pending=self._max_pending, on_flush=self._on_flush
                )
            else:
                connection = AckedConnections(
                    url,
                    timeout=self._timeout,
                    ack=self._ack,
                    max_pending=self._max_pending,
                    on_flush=self._on_flush,
                )
            self._connections[node.name] = connection
        return connection

    def _retire_departed(self) -> None:
        """Retire the connection of every node the slot map no longer lists (it left the
        cluster, or holds no slot any more). Retired, not closed: a call in flight there
        may have run, so it still gets its own reply (a MOVED is followed as ever)."""
        listed = {node.name for node in self.client.get_nodes()}
        self._retired = [connection for connection in self._retired if connection.connected]
        for name in [name for name in self._connections if name not in listed]:
            connection = self._connections.pop(name)
            connection.retire()
            if connection.connected:
                self._retired.append(connection)
            log.info("redis cluster: node %s left the slot map; its connection is retired", name)

    def subscriber(self) -> Subscriber:
        async def locate(channel: str) -> Address:
            nodes = await self._slot_map()
            node: ClusterNode | None = nodes.get_node_from_slot(self.client.keyslot(channel))
            if node is None:
                raise ClusterError(f"no node serves the slot of channel {channel!r}")
            return node.host, int(node.port)

        def stale() -> None:
            self._stale = True

        return SocketSubscriber(self._url, locate=locate, sharded=True, timeout=self._timeout, on_fault=stale)

    async def _primaries(self) -> list[ClusterNode]:
        await self._slot_map()
        return sorted(self.client.get_primaries(), key=lambda node: node.name)

    async def ping(self) -> None:
        """Every primary answers."""
        for node in await self._primaries():
            try:
                await node.execute_command("PING")
            except RedisError as exc:
                if is_connection_fault(exc):
                    self._stale = True
                raise

    async def masters(self) -> int:
        return len(await self._primaries())

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        """SCAN on the master-th primary (by name). A topology change between two pages
        renumbers them: a listing is only exact while the cluster's masters stay put."""
        try:
            async with asyncio.timeout(self._timeout), self._gate:
                primaries = await self._primaries()
                if master >= len(primaries):
                    raise ClusterError(f"the cluster has {len(primaries)} masters, not {master + 1}")
                node = primaries[master]
                try:
                    reply = await node.execute_command("SCAN", cursor, "MATCH", match, "COUNT", count)
                except RedisError as exc:
                    if is_connection_fault(exc):
                        self._stale = True
                    raise
        except TimeoutError:
            self._stale = True
            raise RedisTimeoutError(f"redis did not answer within {self._timeout} s") from None
        return scan_reply(reply)

    async def config_value(self, name: str) -> str:
        """The primaries' value; where they differ, each is logged and the first returned."""
        values: dict[str, str] = {}
        for node in await self._primaries():
            reply = await node.execute_command("CONFIG", "GET", name)
            if isinstance(reply, dict):
                value = next(iter(reply.values()), b"")
            else:
                value = reply[1] if len(reply) == 2 else b""
            values[node.name] = value.decode() if isinstance(value, bytes) else str(value)
        if len(set(values.values())) > 1:
            log.warning("the cluster's primaries disagree on %s: %s", name, values)
        return next(iter(values.values()), "")

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        for connection in (*self._connections.values(), *self._retired):
            connection.close()
        await self.client.aclose()


def _retrieved(reading: asyncio.Task[None]) -> None:
    """A slot map read whose callers all gave up still had its outcome read (asyncio
    would log an exception that no one retrieved); the next call starts another."""
    if not reading.cancelled():
        reading.exception()
