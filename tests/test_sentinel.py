"""Redis Sentinel: the service follows a failover by itself, keeping what it acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import ReadOnlyError
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.scripts import GET_COUNTERS, ScriptCall
from service.storage.store import open_store
from service.storage.transports.sentinel import SentinelTransport
from service.storage.urls import parse
from tests.support import REGISTERED_APP, Api, group_key
from tests.topologies import MASTER_NAME, SentinelSetup, wait_for


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    setup = SentinelSetup()
    try:
        yield setup.start()
    finally:
        setup.stop()


def until_answered(call: Any, seconds: float = 10.0) -> dict[str, Any]:
    """Call until it does not answer 10002 (the store unreachable)."""
    deadline = time.monotonic() + seconds
    while True:
        reply: dict[str, Any] = call()
        if reply["ErrorCode"] != 10002:
            return reply
        assert time.monotonic() < deadline, f"still 10002 after {seconds} s"
        time.sleep(0.1)


def test_the_service_carries_on_after_a_sentinel_failover(
    sentinel_setup: SentinelSetup, settings: Settings
) -> None:
    master, replica, sentinel = sentinel_setup.master, sentinel_setup.replica, sentinel_setup.sentinel
    assert master is not None
    assert replica is not None
    assert sentinel is not None
    store = open_store(sentinel_setup.url, timeout=1.0)
    with TestClient(create_app(settings, store)) as client, master.client() as old_master:
        api = Api(client=client, inspector=old_master)
        api.create("g")
        for _ in range(5):
            assert api.update("g", {"a": 1}, "Increase")["ErrorCode"] == 0
        assert api.update("g", {"b": 7})["ErrorCode"] == 0
        assert client.get("/readyz").status_code == 200
        # Everything acknowledged is on the replica before it is promoted.
        assert old_master.execute_command("WAIT", 1, 1000) == 1

        assert sentinel_setup.master_port() == master.port
        with sentinel.client() as sentinel_client:
            sentinel_client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        failover_started = time.monotonic()
        with replica.client() as new_master:
            wait_for(
                lambda: (
                    sentinel_setup.master_port() == replica.port
                    and new_master.info("replication")["role"] == "master"
                ),
                20,
                "the sentinel to name the replica as master",
            )

            # Same app, same store, no restart: calls during the switch may answer
            # 10002 (a read retried, or an idempotent Set); then every call succeeds,
            # against the new master.
            reply = until_answered(lambda: api.get("g"))
            assert reply["ErrorCode"] == 0, reply
            assert {item["Key"]: item["Value"] for item in reply["GroupCounter"]} == {"a": 5, "b": 7}
            reply = until_answered(lambda: api.update("g", {"c": 1}))
            assert reply["ErrorCode"] == 0, reply
            assert time.monotonic() - failover_started < 3
            for _ in range(5):
                assert api.update("g", {"a": 1}, "Increase")["ErrorCode"] == 0
            stored = new_master.hgetall(group_key(REGISTERED_APP, "g"))
            assert stored.pop(b"\xfd").startswith(b"12 "), "the group's version: one per change"
            assert stored == {
                b"\xff": b"Public",
                b"a": b"10",
                b"b": b"7",
                b"c": b"1",
            }
            api.create("after")
            assert new_master.exists(group_key(REGISTERED_APP, "after")) == 1
            assert client.get("/readyz").status_code == 200
        # Nothing acknowledged went to the demoted master (which will drop what it has
        # and copy the new master's data once the sentinel reconfigures it).
        stored = old_master.hgetall(group_key(REGISTERED_APP, "g"))
        assert stored.pop(b"\xfd").startswith(b"6 ")
        assert stored == {
            b"\xff": b"Public",
            b"a": b"5",
            b"b": b"7",
        }
        assert old_master.exists(group_key(REGISTERED_APP, "after")) == 0


def test_the_eviction_warning_reads_the_masters_config_through_the_sentinels(
    sentinel_setup: SentinelSetup, caplog: pytest.LogCaptureFixture
) -> None:
    assert sentinel_setup.master is not None
    with sentinel_setup.master.client() as master:
        master.config_set("maxmemory-policy", "allkeys-lru")

    async def check() -> str:
        store = open_store(sentinel_setup.url, timeout=1.0)
        try:
            await store.warn_if_unsafe()
            return await store.transport.config_value("maxmemory-policy")
        finally:
            await store.close()

    assert asyncio.run(check()) == "allkeys-lru"
    assert "REDIS CAN EVICT COUNTERS" in caplog.text


def test_a_connection_fault_makes_the_service_ask_the_sentinels_at_once() -> None:
    """READONLY (a demoted master) is a connection fault: the watcher drops idle
    connections and asks the sentinels now, not at its next 0.5 s tick."""
    asked: list[float] = []
    dropped: list[bool] = []

    async def scenario() -> tuple[Any, float]:
        transport = SentinelTransport(parse("redis+sentinel://127.0.0.1:1/m"), timeout=1.0, max_pending=10)

        async def discover(name: str) -> tuple[str, int]:
            asked.append(time.monotonic())
            return ("127.0.0.1", 6379)

        async def answers(*args: Any, **kwargs: Any) -> Any:
            return True

        async def demoted(*args: Any) -> Any:
            raise ReadOnlyError("You can't write against a read only replica.")

        async def disconnect(inuse_connections: bool = True) -> None:
            dropped.append(inuse_connections)

        transport.sentinel.discover_master = discover  # type: ignore[method-assign,assignment]
        transport.client.ping = answers  # type: ignore[method-assign]
        transport.client.execute_command = demoted  # type: ignore[method-assign]
        transport.client.connection_pool.disconnect = disconnect  # type: ignore[method-assign]
        await transport.ping()  # starts the watcher, which asks once
        await asyncio.sleep(0.1)
        faulted_at = time.monotonic()
        call = ScriptCall(GET_COUNTERS, ["{1:g}", "{1:g}"], ["0", "0"])
        error = (await asyncio.gather(transport.run_script(call), return_exceptions=True))[0]
        await asyncio.sleep(0.2)
        assert transport._watcher is not None
        transport._watcher.cancel()
        return error, faulted_at

    error, faulted_at = asyncio.run(scenario())
    assert isinstance(error, ReadOnlyError)
    assert len(asked) == 2, f"asked {len(asked)} times: not again at once after the fault"
    assert asked[1] - faulted_at < 0.3
    assert dropped == [False]
