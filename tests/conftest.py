"""Fixtures: every contract test runs against a real redis-server, the embedded store,
a three-master Redis Cluster, and a redis-server with a replica under `ack = "replicas"`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings, parse_config
from tests.backends import BACKENDS, empty_store
from tests.edge import served
from tests.support import AOF_ALWAYS, CONFIG, Api, RedisServer
from tests.topologies import Cluster, ReplicatedRedis


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


@pytest.fixture(scope="session")
def replicated_redis() -> Iterator[ReplicatedRedis]:
    master = ReplicatedRedis().start()
    yield master
    master.stop()


@pytest.fixture(scope="session")
def fsynced_valkey() -> Iterator[ReplicatedRedis]:
    """A Valkey master and replica, each with an AOF fsynced at every write (ack_fsync)."""
    master = ReplicatedRedis(binary="valkey-server", persistence=AOF_ALWAYS).start()
    yield master
    master.stop()


@pytest.fixture
def settings() -> Settings:
    return parse_config(CONFIG, environ={})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _api(backend: str, settings: Settings, request: pytest.FixtureRequest, *, asgi: bool) -> Iterator[Api]:
    store, inspector = empty_store(backend, request)
    app = create_app(settings, store)
    with TestClient(app) if asgi else served(app) as client:
        yield Api(client=client, inspector=inspector)
    inspector.close()


@pytest.fixture
def api(backend: str, settings: Settings, request: pytest.FixtureRequest) -> Iterator[Api]:
    # The embedded store's tests call over ASGI; the others through a real HTTP server (tests/edge.py).
    yield from _api(backend, settings, request, asgi=backend == "memory")


@pytest.fixture
def asgi_api(backend: str, settings: Settings, request: pytest.FixtureRequest) -> Iterator[Api]:
    """As `api`, over ASGI on every backend (a TestClient): for requests no HTTP client sends."""
    yield from _api(backend, settings, request, asgi=True)
