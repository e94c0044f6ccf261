"""Fixtures: every contract test runs against a real redis-server, the embedded store
and a three-master Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings, parse_config
from service.storage.store import Store, open_store
from service.storage.transports.embedded import RedisPyTransport
from tests.support import CONFIG, Api, RedisServer
from tests.topologies import Cluster

BACKENDS = ["redis", "memory", "cluster"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    cluster = Cluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def settings() -> Settings:
    return parse_config(CONFIG, environ={})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def api(backend: str, settings: Settings, request: pytest.FixtureRequest) -> Iterator[Api]:
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        inspector = redis.Redis.from_url(server.url)
        inspector.flushall()
        store = open_store(server.url, timeout=2.0)
    elif backend == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        cluster_client = cluster.inspector()
        cluster_client.flushall(target_nodes=cluster_client.PRIMARIES)
        # Not a redis.Redis, but it answers every call the tests make on an inspector.
        inspector = cast(redis.Redis, cluster_client)
        store = open_store(cluster.url, timeout=2.0)
    else:
        fake_server = fakeredis.FakeServer()
        inspector = fakeredis.FakeRedis(server=fake_server)
        store = Store(RedisPyTransport(fakeredis.FakeAsyncRedis(server=fake_server)))
    with TestClient(create_app(settings, store)) as client:
        yield Api(client=client, inspector=inspector)
    inspector.close()
