"""Redis Cluster and Sentinel: their URLs and the transports that reach them.

    redis+cluster://[user:password@]host:port[,host:port...]
    rediss+cluster://[user:password@]host:port[,host:port...][?ssl_ca_certs=PATH&ssl_cert_reqs=none]
    redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/db]

A cluster URL lists seed nodes (any of them; the rest are discovered) and takes no
db. A sentinel URL lists sentinels and names the monitored master; the password, if
any, is the master's (the sentinels themselves are reached without one). Ports
default to 6379 (cluster) and 26379 (sentinel).

Both use redis-py (its connections, pools and the cluster's slot map), and nothing
sends a script call twice once it may have run: every Retry is `Retry(NoBackoff(), 0)`,
and on a cluster the script calls do not go through `RedisCluster.execute_command`
(which retries ConnectionError and TimeoutError) but through `ClusterTransport._call`.
What is followed or retried is only what proves the command did not run: MOVED, ASK,
TRYAGAIN, and NOSCRIPT, answered by one EVAL of the same script on the same key,
hence on the node that owns the key's slot. A call that breaks or times out answers
10002; the next call reconnects, and on a cluster first reads the slot map again; on
sentinel a watcher moves every connection to the master the sentinels name.

redis-py opens one connection per call in flight; at most `_MAX_CONNECTIONS` calls run
at once (per cluster node, or to the master), the rest wait for a turn within the
timeout, and beyond `max_pending` waiting calls answer 10002 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, unquote

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.store import Script, ScriptArg, ScriptReply

log = logging.getLogger("service.topology")

CLUSTER_SCHEMES: Final = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES: Final = ("redis+sentinel://",)
SCHEMES: Final = CLUSTER_SCHEMES + SENTINEL_SCHEMES

# Calls in flight at once, hence connections per node (cluster) or to the master.
_MAX_CONNECTIONS: Final = 128
# How often a sentinel-backed store asks the sentinels which node is master.
_WATCH_SECONDS: Final = 0.5


def supports(url: str) -> bool:
    return url.startswith(SCHEMES)


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


@dataclass(frozen=True)
class Topology:
    """What a redis+cluster:// or redis+sentinel:// URL says."""

    scheme: str
    hosts: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    master: str = ""
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss+cluster"


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"redis_url {url!r}: empty host in {text!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"redis_url {url!r}: bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"redis_url {url!r}: bad port in {text!r}")
    return host, port


def parse_url(url: str) -> Topology:
    """Parse a cluster or sentinel URL; ValueError names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or not supports(url):
        raise ValueError(f"redis_url {url!r}: expected {', '.join(SCHEMES)}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None if colon else None
        password = unquote(secret) if colon else unquote(user)
    sentinel = scheme == "redis+sentinel"
    default_port = 26379 if sentinel else 6379
    hosts = [_host_port(item, default_port, url) for item in hostlist.split(",") if item]
    if not hosts:
        raise ValueError(f"redis_url {url!r}: no host:port given")
    options = {name: values[-1] for name, values in parse_qs(query).items()}
    master, db = "", 0
    segments = [segment for segment in path.split("/") if segment]
    if sentinel:
        if not 1 <= len(segments) <= 2:
            raise ValueError(f"redis_url {url!r}: expected /<master-name>[/db] after the sentinels")
        master = unquote(segments[0])
        if len(segments) == 2:
            if not segments[1].isdigit():
                raise ValueError(f"redis_url {url!r}: db must be a number, not {segments[1]!r}")
            db = int(segments[1])
        if options:
            raise ValueError(f"redis_url {url!r}: unknown options {sorted(options)}")
    else:
        if segments not in ([], ["0"]):
            raise ValueError(f"redis_url {url!r}: a cluster has no database to select")
        unknown = set(options) - {"ssl_ca_certs", "ssl_cert_reqs"}
        if unknown or (options and scheme != "rediss+cluster"):
            raise ValueError(f"redis_url {url!r}: unknown options {sorted(unknown or options)}")
    return Topology(scheme, hosts, username, password, master, db, options)


class _Gate:
    """At most `slots` calls at once; a call waits for a turn within `timeout`."""

    def __init__(self, slots: int, max_pending: int, timeout: float) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._max_pending = max_pending
        self._timeout = timeout
        self._waiting = 0

    async def __aenter__(self) -> None:
        if self._waiting >= self._max_pending:
            raise RedisConnectionError(f"{self._max_pending} redis calls already waiting; refusing more")
        self._waiting += 1
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise RedisTimeoutError(f"no redis connection free within {self._timeout} s") from None
        finally:
            self._waiting -= 1

    async def __aexit__(self, *_: object) -> None:
        self._slots.release()


async def config_value(client: Any, name: str) -> str:
    """One CONFIG GET through a redis-py client (keys come back as str or bytes)."""
    reply: dict[Any, Any] = await client.config_get(name)
    value = reply.get(name.encode(), reply.get(name, b""))
    return value.decode() if isinstance(value, bytes) else str(value)


async def _eval(client: Any, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
    """EVALSHA; on NOSCRIPT (nothing ran) one EVAL of the same key, which caches the script."""
    try:
        reply: ScriptReply = await client.execute_command("EVALSHA", script.sha, script.keys, *keys, *args)
    except NoScriptError:
        reply = await client.execute_command("EVAL", script.source, script.keys, *keys, *args)
    return reply


class ClusterTransport:
    """redis+cluster:// and rediss+cluster:// over redis-py's asyncio cluster client.

    redis-py keeps the slot map and a connection pool per node; the routing of a script
    call is done here, so that what is retried is exactly what did not run:

    - MOVED: the slot map learns the new owner and the call goes there.
    - ASK (a slot half migrated): ASKING and the call go to the named node in one write
      on one connection. (redis-py's own ASK handling sends ASKING and the command on
      whichever pooled connections come first, which under load bounces until it
      gives up.)
    - TRYAGAIN (a multi-key command during a migration; not ours today): a short pause.
    - NOSCRIPT: one EVAL of the same script on the same key (see `_eval`).
    - A broken connection, a timeout, CLUSTERDOWN: raised (10002). The next call first
      refreshes the slot map from the cluster.
    """

    # The group's hash and the app's rate-limit window hash to different slots.
    limiter_shares_call = False

    _REDIRECTS: Final = 16

    def __init__(self, url: str, *, timeout: float, max_pending: int) -> None:
        topology = parse_url(url)
        kwargs: dict[str, Any] = {}
        if topology.tls:
            kwargs["ssl"] = True
            kwargs["ssl_ca_certs"] = topology.options.get("ssl_ca_certs")
            if topology.options.get("ssl_cert_reqs") == "none":
                kwargs["ssl_cert_reqs"] = "none"
                kwargs["ssl_check_hostname"] = False
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.hosts],
            username=topology.username,
            password=topology.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Its own commands (PING, CONFIG GET, the slot map) are not retried either.
            retry=_no_retry(),
            # Never close every connection (calls in flight with them) after N MOVEDs.
            reinitialize_steps=0,
            max_connections=_MAX_CONNECTIONS,
            **kwargs,
        )
        self._gate = _Gate(_MAX_CONNECTIONS, max_pending, timeout)
        self._stale = True
        self._refreshing = asyncio.Lock()

    async def _slot_map(self) -> Any:
        """The nodes manager, its slot map refreshed first when a call failed since."""
        if self._stale:
            async with self._refreshing:
                if self._stale:
                    try:
                        if self.client.get_default_node() is None:
                            await self.client.initialize()
                        else:
                            # Keeps the nodes' pools; connections in use reconnect after their call.
                            await self.client.nodes_manager.initialize()
                    except RedisClusterException as exc:  # not a RedisError
                        raise ClusterError(f"cannot read the cluster's slot map: {exc}") from exc
                    self._stale = False
        return self.client.nodes_manager

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        async with self._gate:
            try:
                reply: ScriptReply = await self._call(
                    keys[0], "EVALSHA", script.sha, script.keys, *keys, *args
                )
            except NoScriptError:
                reply = await self._call(keys[0], "EVAL", script.source, script.keys, *keys, *args)
            return reply

    async def _call(self, key: str, *command: ScriptArg) -> Any:
        nodes = await self._slot_map()
        slot = self.client.keyslot(key)
        try:
            node: ClusterNode | None = nodes.get_node_from_slot(slot)
        except RedisClusterException as exc:
            self._stale = True
            raise ClusterError(str(exc)) from exc
        asking = False
        for _ in range(self._REDIRECTS):
            assert node is not None
            try:
                if asking:
                    return await self._asking(node, command)
                return await node.execute_command(*command)
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
            except (RedisConnectionError, RedisTimeoutError, ClusterDownError):
                # May have run: raised, never retried. Drop this node's idle connections
                # and read the slot map again before the next call.
                node.update_active_connections_for_reconnect()
                await node.disconnect_free_connections()
                self._stale = True
                raise
        raise ClusterError(f"more than {self._REDIRECTS} MOVED/ASK redirects for slot {slot}")

    @staticmethod
    async def _asking(node: ClusterNode, command: tuple[ScriptArg, ...]) -> Any:
        """ASKING and the command on one connection, in one write."""
        asking, call = PipelineCommand(0, "ASKING"), PipelineCommand(1, *command)
        await node.execute_pipeline([asking, call])
        for result in (asking.result, call.result):
            if isinstance(result, Exception):
                raise result
        return call.result

    async def _primaries(self) -> list[ClusterNode]:
        await self._slot_map()
        return sorted(self.client.get_primaries(), key=lambda node: node.name)

    async def ping(self) -> None:
        """Every primary answers."""
        for node in await self._primaries():
            try:
                await node.execute_command("PING")
            except (RedisConnectionError, RedisTimeoutError):
                self._stale = True
                raise

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
        await self.client.aclose()


class SentinelTransport:
    """redis+sentinel://: the master the sentinels name, rediscovered after a failover."""

    limiter_shares_call = True  # one master holds every key

    limiter_shares_call = True

    def __init__(self, url: str, *, timeout: float, max_pending: int) -> None:
        topology = parse_url(url)
        socket_kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": _no_retry(),
        }
        self.master_name = topology.master
        # (redis-py's Sentinel has no annotations.)
        self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
            topology.hosts, sentinel_kwargs=dict(socket_kwargs)
        )
        # The pool asks the sentinels for the master on each new connection and drops
        # idle connections to a master that is no longer the one they name; a connection
        # still talking to a demoted master gets READONLY, which redis-py turns into a
        # ConnectionError (10002) and a disconnect: the next call reaches the new master.
        self.client: aioredis.Redis = self.sentinel.master_for(
            topology.master,
            username=topology.username,
            password=topology.password,
            db=topology.db,
            **socket_kwargs,
        )
        self._gate = _Gate(_MAX_CONNECTIONS, max_pending, timeout)
        self._watcher: asyncio.Task[None] | None = None

    def _watch_master(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._follow_master())

    async def _follow_master(self) -> None:
        """Ask the sentinels every `_WATCH_SECONDS` which node is master; when that changes,
        drop every connection (a call in flight answers 10002) so the next call goes to the
        new master. redis-py alone only asks on a new connection, and a demoted master
        keeps taking writes until the sentinels reconfigure it: writes it then loses."""
        known: Any = None
        while True:
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
                    await self.client.connection_pool.disconnect(inuse_connections=True)
                known = address
            await asyncio.sleep(_WATCH_SECONDS)

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        self._watch_master()
        async with self._gate:
            return await _eval(self.client, script, keys, args)

    async def ping(self) -> None:
        self._watch_master()
        await self.client.ping()

    async def config_value(self, name: str) -> str:
        return await config_value(self.client, name)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.client.aclose()
        for sentinel in self.sentinel.sentinels:
            await sentinel.aclose()


def open_transport(url: str, *, timeout: float, max_pending: int) -> ClusterTransport | SentinelTransport:
    if url.startswith(CLUSTER_SCHEMES):
        return ClusterTransport(url, timeout=timeout, max_pending=max_pending)
    return SentinelTransport(url, timeout=timeout, max_pending=max_pending)
