"""`Applied` on a 10002 (docs/API.md, "Applied"): "no" only when the call certainly did
not run, "maybe" whenever its bytes may have reached Redis. Each "maybe" case below
also shows that the call did run, so "no" there would have been a lie."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.scripts import UPDATE_COUNTERS
from service.storage.store import Store, open_store
from service.storage.transports.acks import Ack
from service.storage.transports.base import no_retry
from service.storage.transports.connection import PipelinedConnection
from service.storage.transports.faults import NotAcknowledged, certainly_not_run
from tests.support import IMPLICIT_APP, RedisServer, free_port, group_key, query
from tests.topologies import ReplicatedRedis

GROUP = "applied"
KEY = group_key(IMPLICIT_APP, GROUP)


def increase(store: Store, settings: Settings, before: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """One Increase of `a` by 1 on GROUP through the whole service, once the service is
    up and its connection made and `before` has run; its reply."""
    with TestClient(create_app(settings, store)) as client:
        client.get("/readyz")  # the connection to Redis is made
        before()
        response = client.post(
            f"/v4/group_open_http_svc/update_group_counter?{query(IMPLICIT_APP)}",
            json={"GroupId": GROUP, "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]},
        )
    assert response.status_code == 200
    reply: dict[str, Any] = response.json()
    return reply


def value_of(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.hget(KEY, "a") or 0)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    own = RedisServer().start()
    yield own
    own.stop()


def test_a_redis_that_refuses_connections_answers_not_applied(settings: Settings) -> None:
    reply = increase(open_store(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5), settings)
    assert (reply["ErrorCode"], reply["Applied"]) == (10002, "no")
    assert "did not run" in reply["ErrorInfo"]


def test_a_call_that_timed_out_answers_maybe_applied_and_it_did_run(
    server: RedisServer, settings: Settings
) -> None:
    stall = threading.Thread(target=server.client().execute_command, args=("DEBUG", "SLEEP", "1.5"))

    def fall_asleep() -> None:
        with server.client() as client:  # the call's EVALSHA finds its script: it runs on waking
            client.script_load(UPDATE_COUNTERS.source)
        stall.start()
        time.sleep(0.2)  # Redis is asleep: the call is written and waits

    reply = increase(open_store(server.url, timeout=0.5), settings, fall_asleep)
    stall.join()
    assert (reply["ErrorCode"], reply["Applied"]) == (10002, "maybe")
    assert value_of(server) == 1  # it ran once Redis woke: "no" would have been false


def test_a_replica_refusing_the_write_answers_not_applied_and_nothing_changed(settings: Settings) -> None:
    topology = ReplicatedRedis().start()
    try:
        replica = topology.replicas[0]
        reply = increase(open_store(f"redis://127.0.0.1:{replica.port}/0", timeout=1.0), settings)
        assert (reply["ErrorCode"], reply["Applied"]) == (10002, "no")
        with topology.master.client() as master:  # type: ignore[union-attr]
            assert master.hget(KEY, "a") is None
    finally:
        topology.stop()


def test_a_redis_out_of_memory_answers_not_applied_and_nothing_changed(
    server: RedisServer, settings: Settings
) -> None:
    with server.client() as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
    reply = increase(open_store(server.url, timeout=1.0), settings)
    with server.client() as client:
        client.config_set("maxmemory", 0)
    assert (reply["ErrorCode"], reply["Applied"]) == (10002, "no")
    assert value_of(server) == 0


def test_calls_still_in_the_send_buffer_when_the_connection_dies_did_not_run(server: RedisServer) -> None:
    async def scenario() -> list[BaseException | Any]:
        connection = PipelinedConnection(server.url, timeout=1.0)
        await connection.execute("PING")
        calls = [asyncio.ensure_future(connection.execute("INCR", "n")) for _ in range(3)]
        await asyncio.sleep(0)  # queued, not yet flushed (the flush runs at the tick's end)
        assert connection.link is not None
        connection.link.abort(RedisConnectionError("connection to redis lost"))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        connection.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, BaseException) and certainly_not_run(o) for o in outcomes), outcomes
    with server.client() as client:
        assert client.get("n") is None


def test_calls_written_when_the_connection_dies_may_have_run(server: RedisServer) -> None:
    async def scenario() -> list[BaseException | Any]:
        connection = PipelinedConnection(server.url, timeout=5.0)
        await connection.execute("PING")
        with server.client() as admin:
            stall = asyncio.ensure_future(asyncio.to_thread(admin.execute_command, "DEBUG", "SLEEP", "0.5"))
            await asyncio.sleep(0.1)
            calls = [asyncio.ensure_future(connection.execute("INCR", "n")) for _ in range(3)]
            await asyncio.sleep(0.1)  # written; Redis is asleep
            assert connection.link is not None
            connection.link.abort(RedisConnectionError("connection to redis lost"))
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            await stall
        connection.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, BaseException) and not certainly_not_run(o) for o in outcomes), outcomes


def test_calls_refused_past_max_pending_did_not_run(server: RedisServer) -> None:
    async def scenario() -> list[BaseException | Any]:
        connection = PipelinedConnection(server.url, timeout=2.0, max_pending=2)
        await connection.execute("PING")
        outcomes = await asyncio.gather(
            *(connection.execute("INCR", "n") for _ in range(5)), return_exceptions=True
        )
        connection.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 3, outcomes
    assert all(certainly_not_run(o) for o in refused), outcomes
    with server.client() as client:
        assert client.get("n") == b"2"


@pytest.mark.parametrize(
    "error",
    [
        ReadOnlyError("You can't write against a read only replica."),
        MasterDownError("Link with MASTER is down"),
        BusyLoadingError("Redis is loading the dataset in memory"),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ResponseError("NOREPLICAS Not enough good replicas to write."),
        ResponseError("MISCONF Errors writing to the AOF file"),
        ResponseError("BUSY Redis is busy running a script."),
    ],
)
def test_redis_py_refusals_prove_the_call_did_not_run(error: Exception) -> None:
    """Sentinel and the embedded store speak through redis-py, which names errors its way."""
    assert certainly_not_run(error)


def test_a_redis_py_connect_that_failed_proves_the_call_was_not_sent() -> None:
    """redis-py connects a pooled connection before sending on it (Sentinel's path)."""

    async def refused() -> BaseException:
        client = aioredis.Redis(port=free_port(), retry=no_retry())
        try:
            await client.ping()
        except RedisError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("nothing listens there, yet PING answered")

    assert certainly_not_run(asyncio.run(refused()))
    assert certainly_not_run(MasterNotFoundError("No master found for 'countermaster'"))
    assert certainly_not_run(RedisTimeoutError("Timeout connecting to server"))
    assert certainly_not_run(RedisConnectionError("The previous master is now a slave"))


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Connection closed by server."),
        RedisTimeoutError("Timeout reading from socket"),
        ResponseError("ERR Error running script (call to f_0): user_script:1: oops"),
        NotAcknowledged("0 of 1 replicas confirmed the write in time"),
    ],
)
def test_faults_after_the_write_may_have_run(error: Exception) -> None:
    assert not certainly_not_run(error)


def test_a_replica_that_does_not_confirm_answers_maybe_applied_and_the_master_holds_it(
    settings: Settings,
) -> None:
    topology = ReplicatedRedis().start()
    try:
        replica = topology.replicas[0].process
        assert replica is not None
        store = open_store(topology.url, timeout=1.0, ack=Ack(replicas=True, fsync=False, wait=0.3))
        try:
            # SIGSTOP: still connected, never confirms
            reply = increase(store, settings, lambda: replica.send_signal(19))
        finally:
            replica.send_signal(18)
        assert (reply["ErrorCode"], reply["Applied"]) == (10002, "maybe")
        with topology.master.client() as master:  # type: ignore[union-attr]
            assert master.hget(KEY, "a") == b"1"
    finally:
        topology.stop()


def test_applied_is_absent_from_replies_other_than_10002(api: Any) -> None:
    api.create("g")
    ok = api.update("g", {"a": 1})
    refused = api.update("g", {"a": 1}, mode="Nonsense")
    assert ok["ErrorCode"] == 0
    assert "Applied" not in ok
    assert refused["ErrorCode"] == 10004
    assert "Applied" not in refused
