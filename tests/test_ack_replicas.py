"""`ack = "replicas"` (README, "Durability"): an update is acknowledged only once every
replica its master reports holds it. The contract tests also run on this mode (the
"replicas" backend); these are its own rules, on real master/replica processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from service.config import ConfigError, parse_config
from service.errors import ServiceError
from service.storage.scripts import UPDATE_COUNTERS, ScriptCall
from service.storage.store import Store, open_store
from service.storage.transports import acks
from service.storage.transports.acks import Ack, AckedConnections
from service.storage.urls import parse
from tests.support import CONFIG
from tests.topologies import ReplicatedRedis, SentinelSetup, wait_for

ACK_WAIT = 0.3
ACK = Ack(replicas=True, fsync=False, wait=ACK_WAIT)
PATIENT = Ack(replicas=True, fsync=False, wait=2.0)


def increase(store: Store, group: str) -> ScriptCall:
    key = f"{{1:{group}}}"
    return ScriptCall(
        UPDATE_COUNTERS, [key, key, key], ["0", "0", "", "token", "", "", "add", "86400", "a", "1"]
    )


async def increase_all(store: Store, groups: list[str]) -> list[BaseException | object]:
    return await asyncio.gather(*(store.run(increase(store, g)) for g in groups), return_exceptions=True)


def held(client: redis.Redis, group: str) -> int:
    return int(client.hget(f"{{1:{group}}}", "a") or 0)


@pytest.fixture
def two_replicas() -> Iterator[ReplicatedRedis]:
    topology = ReplicatedRedis(count=2).start()
    yield topology
    topology.stop()


def test_an_acknowledged_update_is_on_every_replica_when_it_is_acknowledged(
    two_replicas: ReplicatedRedis,
) -> None:
    groups = [f"g{n % 16}" for n in range(400)]
    replicas = [replica.client() for replica in two_replicas.replicas]

    async def scenario() -> None:
        store = open_store(two_replicas.url, timeout=1.0, ack=PATIENT)
        for round_ in range(1, 6):
            outcomes = await increase_all(store, groups)
            assert not [o for o in outcomes if isinstance(o, BaseException)]
            # Read at once, no waiting: the acknowledgment already means they have it.
            for replica in replicas:
                assert {held(replica, g) for g in set(groups)} == {25 * round_}
        await store.close()

    asyncio.run(scenario())


def test_a_replica_that_does_not_confirm_fails_the_write_within_the_ack_timeout(
    two_replicas: ReplicatedRedis,
) -> None:
    stopped = two_replicas.replicas[1].process
    assert stopped is not None

    async def scenario() -> tuple[list[BaseException | object], float]:
        store = open_store(two_replicas.url, timeout=1.0, ack=ACK)
        await increase_all(store, ["warm"])
        stopped.send_signal(19)  # SIGSTOP: connected, confirms nothing
        started = time.monotonic()
        try:
            outcomes = await increase_all(store, [f"g{n}" for n in range(50)])
        finally:
            stopped.send_signal(18)
        elapsed = time.monotonic() - started
        await store.close()
        return outcomes, elapsed

    outcomes, elapsed = asyncio.run(scenario())
    assert {(type(o).__name__, getattr(o, "applied", o)) for o in outcomes} == {("ServiceError", "maybe")}
    assert elapsed < ACK_WAIT + 1.0


def test_a_replica_that_leaves_is_still_waited_for_then_not_past_the_shrink_delay(
    two_replicas: ReplicatedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica promoted by Sentinel leaves the old master while it still takes writes:
    acknowledging them without it would lose them. One gone for good stops being waited
    for after SHRINK_AFTER."""
    monkeypatch.setattr(acks, "SHRINK_AFTER", 3.0)

    async def scenario() -> tuple[list[BaseException | object], list[BaseException | object]]:
        store = open_store(two_replicas.url, timeout=1.0, ack=ACK)
        await increase_all(store, ["warm"])
        two_replicas.replicas[1].stop()
        two_replicas.replicas.pop()
        await asyncio.to_thread(wait_for, two_replicas.in_sync, 10, "the master to drop the replica")
        await asyncio.sleep(1.5)  # ROLE has been read since: it lists one replica
        early = await increase_all(store, ["early"])
        await asyncio.sleep(4.0)  # fewer listed for SHRINK_AFTER, read every second
        late = await increase_all(store, ["late"])
        await store.close()
        return early, late

    early, late = asyncio.run(scenario())
    assert [getattr(o, "applied", o) for o in early] == ["maybe"]
    assert late == [[0, b"1"]]


def test_a_node_that_answers_role_as_a_replica_gets_no_write(two_replicas: ReplicatedRedis) -> None:
    replica = two_replicas.replicas[0]

    async def scenario() -> list[BaseException | object]:
        store = open_store(
            f"redis://127.0.0.1:{replica.port}/0",
            timeout=1.0,
            ack=ACK,
        )
        outcomes = await increase_all(store, ["g"])
        await store.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ServiceError) and o.applied == "no" for o in outcomes), outcomes
    stats = replica.client().info("commandstats")
    assert "cmdstat_evalsha" not in stats
    assert "cmdstat_eval" not in stats


def test_ack_replicas_with_the_in_memory_store_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match='ack = "replicas" needs a Redis with replicas'):
        parse_config('ack = "replicas"\n' + CONFIG, environ={"REDIS_URL": "memory://"})


def test_ack_replicas_through_sentinel_holds_the_reply_until_the_replica_has_it() -> None:
    setup = SentinelSetup().start()
    try:
        assert setup.replica is not None
        replica = setup.replica.client()
        groups = [f"g{n % 8}" for n in range(200)]

        async def scenario() -> list[BaseException | object]:
            store = open_store(setup.url, timeout=1.0, ack=PATIENT)
            outcomes = await increase_all(store, groups)
            for group in set(groups):  # read at once
                assert held(replica, group) == 25
            assert setup.replica is not None
            assert setup.replica.process is not None
            setup.replica.process.send_signal(19)
            try:
                stalled = await asyncio.wait_for(
                    asyncio.gather(
                        *(store.run(increase(store, "late")) for _ in range(3)), return_exceptions=True
                    ),
                    10,
                )
            finally:
                setup.replica.process.send_signal(18)
            await store.close()
            return [*outcomes[:1], *stalled]

        outcomes = asyncio.run(scenario())
        assert outcomes[0] == [0, b"1"]
        assert all(isinstance(o, ServiceError) and o.applied == "maybe" for o in outcomes[1:]), outcomes
    finally:
        setup.stop()


def test_a_retired_node_is_asked_role_no_more(two_replicas: ReplicatedRedis) -> None:
    """A Cluster node that left the slot map: its connections retire, and so does the
    task that reads its ROLE every second."""

    async def scenario() -> bool:
        connections = AckedConnections(parse(two_replicas.url), timeout=1.0, ack=ACK, max_pending=100)
        await connections.execute("PING")
        task = connections.replicas._task
        assert task is not None
        connections.retire()
        await asyncio.sleep(0.1)
        done = task.done()
        connections.close()
        return done

    assert asyncio.run(scenario())
