"""Following a Sentinel failover (README, "Durability"): the sentinels' +switch-master is
heard at once, the poll stays as the fallback, and only the old master's connections go."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis

from service.storage.scripts import UPDATE_COUNTERS, ScriptCall
from service.storage.store import open_store
from service.storage.transports import sentinel as sentinel_module
from service.storage.transports.sentinel import SentinelTransport
from service.storage.transports.sentinel_promotion import Promotions
from tests.topologies import MASTER_NAME, SentinelSetup, wait_for

KEY = "{1:switch}"
CALL = ScriptCall(UPDATE_COUNTERS, [KEY, KEY, KEY], ["0", "0", "", "token", "", "", "add", "86400", "a", "1"])


@pytest.fixture
def setup() -> Iterator[SentinelSetup]:
    topology = SentinelSetup().start()
    yield topology
    topology.stop()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `condition` held within `seconds`, asked every 20 ms."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def failover(setup: SentinelSetup) -> int:
    """SENTINEL FAILOVER; the new master's port once the sentinel names it."""
    old = setup.master_port()
    assert setup.sentinel is not None
    with setup.sentinel.client() as client:
        client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    wait_for(lambda: setup.master_port() != old, 20, "the sentinel to name a new master")
    return setup.master_port()


def test_a_switch_is_followed_when_the_sentinels_announce_it_not_at_the_next_poll(
    setup: SentinelSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sentinel_module, "_WATCH_SECONDS", 60.0)
    # Nor ahead of the announcement (tests/test_sentinel_promotion.py): only it can move it.
    monkeypatch.setattr(Promotions, "selected", lambda self, promotion: None)

    async def scenario() -> tuple[object, object, int, float]:
        store = open_store(setup.url, timeout=1.0)
        transport = store.transport
        assert isinstance(transport, SentinelTransport)
        await store.run(CALL)  # the watcher and the subscriptions start
        await asyncio.sleep(0.5)
        before = transport.master_address
        new_port = await asyncio.to_thread(failover, setup)
        # No call is made: only the announcement can move it before the next poll (60 s).
        await until(lambda: transport.master_address != before, 5.0)
        after, heard = transport.master_address, transport._switches.heard
        await store.close()
        return before, after, new_port, heard

    before, after, new_port, heard = asyncio.run(scenario())
    assert after != before
    assert after[1] == new_port  # type: ignore[index]
    assert heard >= 1


def test_a_sentinel_that_comes_back_is_listened_to_again_and_calls_go_on_meanwhile(
    setup: SentinelSetup,
) -> None:
    assert setup.sentinel is not None
    sentinel = setup.sentinel

    async def scenario() -> tuple[object, int]:
        store = open_store(setup.url, timeout=1.0)
        transport = store.transport
        assert isinstance(transport, SentinelTransport)
        await store.run(CALL)
        sentinel.stop()
        meanwhile = await store.run(CALL)  # the master is still there: calls go on
        sentinel.start()
        await asyncio.to_thread(sentinel.wait_ready)
        await asyncio.sleep(6.0)  # the subscription's backoff, up to 5 s
        await asyncio.to_thread(failover, setup)
        await until(lambda: transport._switches.heard > 0, 5.0)
        heard = transport._switches.heard
        await store.close()
        return meanwhile, heard

    meanwhile, heard = asyncio.run(scenario())
    assert meanwhile == [0, b"2"]
    assert heard >= 1


def test_a_switch_drops_the_connections_to_the_old_master_only(setup: SentinelSetup) -> None:
    async def scenario() -> tuple[int, int]:
        store = open_store(setup.url, timeout=1.0)
        transport = store.transport
        assert isinstance(transport, SentinelTransport)
        await asyncio.gather(*(store.run(CALL) for _ in range(8)))  # a few pooled connections
        old = transport.master_address
        new_port = await asyncio.to_thread(failover, setup)
        await asyncio.to_thread(wait_for, lambda: transport.master_address != old, 10, "the switch")
        # Calls on the new master: connections to it now sit in the pool.
        await asyncio.sleep(0.5)
        for _ in range(3):
            try:
                await asyncio.gather(*(store.run(CALL) for _ in range(8)))
                break
            except Exception:  # the first calls after a switch may meet the old master
                await asyncio.sleep(0.5)
        with redis.Redis(port=new_port) as client:
            before = len(client.client_list())
        await transport._drop_connections_to(old)  # as a late second announcement would
        await asyncio.sleep(0.2)
        with redis.Redis(port=new_port) as client:
            after = len(client.client_list())
        await store.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert after == before
