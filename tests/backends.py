"""The store each contract test runs on, emptied, with a client that reads it directly."""

from __future__ import annotations

from typing import cast

import fakeredis
import pytest
import redis

from service.storage.store import Store, open_store
from service.storage.transports.acks import Ack
from service.storage.transports.embedded import RedisPyTransport
from tests.support import RedisServer
from tests.topologies import Cluster, ReplicatedRedis

# "replicas": a redis-server with a replica, the store with `ack = "replicas"` (a WAIT
# per batch, every reply held until the replica has it). "disk": a Valkey (Redis 7.2's
# fork) with a replica, both with an AOF, the store with `ack = "replicas"` and
# `ack_fsync` (a WAITAOF per batch): the scripts on Redis 7.2's code too.
BACKENDS = ["redis", "memory", "cluster", "replicas", "disk"]

# How long a write of the "replicas" backend waits for its replica.
ACK_WAIT = 2.0


def memory_store() -> Store:
    """The embedded store on a fakeredis server of its own."""
    return Store(RedisPyTransport(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())))


def empty_store(backend: str, request: pytest.FixtureRequest) -> tuple[Store, redis.Redis]:
    """A store on `backend` (one of `BACKENDS`), emptied, and an inspector of it.

    The session's redis-servers and Cluster come from their fixtures through `request`.
    """
    inspector: redis.Redis
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        inspector = redis.Redis.from_url(server.url)
        inspector.flushall()
        return open_store(server.url, timeout=2.0), inspector
    if backend == "replicas":
        master: ReplicatedRedis = request.getfixturevalue("replicated_redis")
        inspector = redis.Redis.from_url(master.url)
        inspector.flushall()
        return open_store(
            master.url, timeout=2.0, ack=Ack(replicas=True, fsync=False, wait=ACK_WAIT)
        ), inspector
    if backend == "disk":
        valkey: ReplicatedRedis = request.getfixturevalue("fsynced_valkey")
        inspector = redis.Redis.from_url(valkey.url)
        inspector.flushall()
        ack = Ack(replicas=True, fsync=True, wait=ACK_WAIT)
        return open_store(valkey.url, timeout=2.0, ack=ack), inspector
    if backend == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        cluster_client = cluster.inspector()
        cluster_client.flushall(target_nodes=cluster_client.PRIMARIES)
        # Not a redis.Redis, but it answers every call the tests make on an inspector.
        return open_store(cluster.url, timeout=2.0), cast(redis.Redis, cluster_client)
    fake_server = fakeredis.FakeServer()
    inspector = fakeredis.FakeRedis(server=fake_server)
    return Store(RedisPyTransport(fakeredis.FakeAsyncRedis(server=fake_server))), inspector
