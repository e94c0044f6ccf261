"""`ack_fsync` (README, "Durability"): an update is acknowledged only once it is fsynced
to the AOF of the master, and with `ack = "replicas"` of every replica waited for too
(WAITAOF). On real Valkey 8 processes (Redis 7.2's fork; Debian's Redis 7.0 has no
WAITAOF) and on a fake Redis that misbehaves around the WAITAOF. The contract tests also
run in this mode (the "disk" backend)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.config import ConfigError, parse_config
from service.errors import ServiceError
from service.storage.store import open_store
from service.storage.transports.acks import Ack
from service.storage.transports.faults import certainly_not_run
from service.storage.transports.sentinel_acks import SentinelAcks
from tests.support import AOF_ALWAYS, CONFIG, RedisServer
from tests.test_ack_hostile_redis import ROLE_ONE_REPLICA, Reaction, acked_outcomes, all_maybe, closes
from tests.test_ack_replicas import held, increase, increase_all
from tests.test_pipelined import Handler, _commands
from tests.topologies import ReplicatedRedis, wait_for

WAIT = 0.3
ON_DISK_EVERYWHERE = Ack(replicas=True, fsync=True, wait=WAIT)
ON_THE_MASTERS_DISK = Ack(replicas=False, fsync=True, wait=WAIT)
AOF_NEVER_FSYNCED = ("--save", "", "--appendonly", "yes", "--appendfsync", "no")
NO_AOF = ("--save", "", "--appendonly", "no")


@pytest.fixture
def valkey_pair() -> Iterator[ReplicatedRedis]:
    """A Valkey master and replica, each with an AOF fsynced at every write."""
    topology = ReplicatedRedis(binary="valkey-server", persistence=AOF_ALWAYS).start()
    yield topology
    topology.stop()


def outcomes_of(ack: Ack, url: str, groups: list[str]) -> list[BaseException | object]:
    async def scenario() -> list[BaseException | object]:
        store = open_store(url, timeout=1.0, ack=ack)
        try:
            return await increase_all(store, groups)
        finally:
            await store.close()

    return asyncio.run(scenario())


def applied(outcomes: list[BaseException | object]) -> set[Any]:
    return {
        getattr(o, "applied", "answered") if isinstance(o, BaseException) else "answered" for o in outcomes
    }


# ---- real servers ----


def test_an_update_acknowledged_with_ack_fsync_is_on_every_replica_when_acknowledged(
    valkey_pair: ReplicatedRedis,
) -> None:
    groups = [f"g{n % 8}" for n in range(200)]
    outcomes = outcomes_of(ON_DISK_EVERYWHERE, valkey_pair.url, groups)
    assert applied(outcomes) == {"answered"}
    replica = valkey_pair.replicas[0].client()
    assert {held(replica, g) for g in set(groups)} == {25}  # read at once


def test_a_write_the_masters_aof_has_not_fsynced_is_never_acknowledged() -> None:
    """appendfsync no: the master writes its AOF but never fsyncs it itself."""
    topology = ReplicatedRedis(count=0, binary="valkey-server", persistence=AOF_NEVER_FSYNCED).start()
    try:
        started = time.monotonic()
        outcomes = outcomes_of(ON_THE_MASTERS_DISK, topology.url, ["g"] * 5)
        assert applied(outcomes) == {"maybe"}, outcomes
        assert time.monotonic() - started < 1.0 + WAIT + 2.0
    finally:
        topology.stop()


def test_a_write_a_replica_has_not_fsynced_is_never_acknowledged() -> None:
    topology = ReplicatedRedis(
        binary="valkey-server", persistence=AOF_ALWAYS, replica_persistence=NO_AOF
    ).start()
    try:
        outcomes = outcomes_of(ON_DISK_EVERYWHERE, topology.url, ["g"] * 5)
        assert applied(outcomes) == {"maybe"}, outcomes
        # ... while the same writes without the disk are acknowledged: it is the fsync missing.
        plain = outcomes_of(Ack(replicas=True, fsync=False, wait=WAIT), topology.url, ["g"])
        assert applied(plain) == {"answered"}
    finally:
        topology.stop()


def test_ack_fsync_on_a_master_without_appendonly_sends_no_call_until_it_has_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = ReplicatedRedis(count=0, binary="valkey-server", persistence=NO_AOF).start()
    assert topology.master is not None
    client = topology.master.client()
    try:

        async def scenario() -> tuple[list[BaseException | object], list[BaseException | object]]:
            store = open_store(topology.url, timeout=1.0, ack=ON_THE_MASTERS_DISK)
            refused = await increase_all(store, ["g"] * 3)
            with pytest.raises(ServiceError) as readiness:
                await store.probe()
            assert readiness.value.applied == "no"
            client.config_set("appendonly", "yes")
            await asyncio.to_thread(
                wait_for, lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, 10, "the AOF"
            )
            await asyncio.sleep(1.5)  # the probe asks again each second
            served = await increase_all(store, ["g"])
            await store.close()
            return refused, served

        with caplog.at_level(logging.ERROR):
            refused, served = asyncio.run(scenario())
        assert applied(refused) == {"no"}, refused
        assert applied(served) == {"answered"}, served
        assert held(client, "g") == 1  # only the call made once the AOF was on
        assert "ack_fsync is set but this Redis cannot confirm a write on disk" in caplog.text
    finally:
        topology.stop()


def test_ack_fsync_on_a_redis_without_waitaof_sends_no_call(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.flushall()
    version = client.info("server")["redis_version"]
    assert tuple(int(part) for part in version.split(".")[:2]) < (7, 2), "this Redis has WAITAOF"
    outcomes = outcomes_of(ON_THE_MASTERS_DISK, redis_server.url, ["g"] * 3)
    assert applied(outcomes) == {"no"}, outcomes
    assert held(client, "g") == 0


def test_ack_fsync_through_sentinel_acks_waits_for_the_disks(valkey_pair: ReplicatedRedis) -> None:
    """The Sentinel transport's path (a pipeline per call), on the master directly."""
    assert valkey_pair.master is not None
    replica = valkey_pair.replicas[0].client()

    async def scenario() -> list[Any]:
        client = aioredis.Redis(port=valkey_pair.master.port if valkey_pair.master else 0)
        acks = SentinelAcks(client, timeout=1.0, ack=ON_DISK_EVERYWHERE)
        store = open_store(valkey_pair.url, timeout=1.0)
        try:
            return list(await asyncio.gather(*(acks.run(increase(store, "s")) for _ in range(10))))
        finally:
            acks.close()
            await store.close()
            await client.aclose()

    replies = asyncio.run(scenario())
    assert sorted(int(reply[1]) for reply in replies) == list(range(1, 11))
    assert held(replica, "s") == 10


def test_ack_fsync_through_sentinel_acks_on_a_redis_without_waitaof_sends_no_call(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    client.flushall()

    async def scenario() -> BaseException | None:
        connection = aioredis.Redis(port=redis_server.port)
        acks = SentinelAcks(connection, timeout=1.0, ack=ON_THE_MASTERS_DISK)
        store = open_store(redis_server.url, timeout=1.0)
        try:
            await acks.run(increase(store, "g"))
        except RedisError as exc:
            return exc
        finally:
            acks.close()
            await store.close()
            await connection.aclose()
        return None

    error = asyncio.run(scenario())
    assert error is not None
    assert certainly_not_run(error), error
    assert held(client, "g") == 0


def test_ack_fsync_with_the_in_memory_store_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="ack_fsync needs a Redis with an AOF on disk"):
        parse_config("ack_fsync = true\n" + CONFIG, environ={"REDIS_URL": "memory://"})


def test_ack_fsync_alone_waits_for_the_masters_disk_only() -> None:
    settings = parse_config("ack_fsync = true\n" + CONFIG, environ={"REDIS_URL": "redis://h:6379/0"})
    assert settings.config.ack_policy() == Ack(replicas=False, fsync=True, wait=0.5)
    settings = parse_config(CONFIG, environ={"REDIS_URL": "redis://h:6379/0"})
    assert settings.config.ack_policy() is None


# ---- a fake Redis around the WAITAOF ----


def fake_redis(
    on_waitaof: Reaction, probe: bytes = b"*2\r\n:1\r\n:0\r\n", seen: list[bytes] | None = None
) -> Handler:
    """Lists one replica; answers the probe (`WAITAOF 1 0 ...`) with `probe`, a batch's
    WAIT with 1, and its WAITAOF as `on_waitaof` says."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for command in _commands(reader):
            name = command[0].upper()
            if seen is not None:
                seen.append(name)
            if name == b"PING":
                writer.write(b"+PONG\r\n")
            elif name == b"ROLE":
                writer.write(ROLE_ONE_REPLICA)
            elif name == b"WAIT":
                writer.write(b":1\r\n")
            elif name == b"WAITAOF" and command[2] == b"0":
                writer.write(probe)
            elif name == b"WAITAOF":
                if not await on_waitaof(writer):
                    return
            else:
                writer.write(b":1\r\n")

    return handler


async def fake_outcomes(handler: Handler) -> list[Any]:
    return (await acked_outcomes(handler, Ack(replicas=True, fsync=True, wait=0.2)))[0]


def answering(reply: bytes) -> Reaction:
    async def react(writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        return True

    return react


async def half_a_reply(writer: asyncio.StreamWriter) -> bool:
    writer.write(b"*2\r\n:1\r\n")
    await writer.drain()
    await asyncio.sleep(5)
    return False


@pytest.mark.parametrize(
    "on_waitaof",
    [
        answering(b"*2\r\n:0\r\n:1\r\n"),
        answering(b"*2\r\n:1\r\n:0\r\n"),
        answering(b":1\r\n"),
        answering(b"-ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.\r\n"),
        answering(b"!!not resp\r\n"),
        closes,
        half_a_reply,
    ],
    ids=[
        "master-not-fsynced",
        "replica-not-fsynced",
        "a-wait-answer",
        "error",
        "garbage",
        "closes",
        "half-a-reply",
    ],
)
def test_a_batch_whose_waitaof_does_not_confirm_both_disks_is_never_acknowledged(
    on_waitaof: Reaction,
) -> None:
    results = asyncio.run(fake_outcomes(fake_redis(on_waitaof)))
    assert all_maybe(results), results


def test_a_batch_fsynced_by_the_master_and_its_replicas_is_answered() -> None:
    assert asyncio.run(fake_outcomes(fake_redis(answering(b"*2\r\n:1\r\n:1\r\n")))) == [1] * 5


def test_a_redis_that_refuses_the_probe_gets_no_call() -> None:
    seen: list[bytes] = []
    unknown = b"-ERR unknown command 'WAITAOF', with args beginning with: \r\n"
    results = asyncio.run(
        fake_outcomes(fake_redis(answering(b"*2\r\n:1\r\n:1\r\n"), probe=unknown, seen=seen))
    )
    assert all(isinstance(r, RedisError) and certainly_not_run(r) for r in results), results
    assert b"INCR" not in seen


def test_the_probe_of_a_replica_refuses_writes_to_it(valkey_pair: ReplicatedRedis) -> None:
    """Valkey answers WAITAOF on a replica with an error; ROLE already keeps writes off it."""
    replica = valkey_pair.replicas[0]
    outcomes = outcomes_of(ON_DISK_EVERYWHERE, f"redis://127.0.0.1:{replica.port}/0", ["g"])
    assert applied(outcomes) == {"no"}
    assert "cmdstat_evalsha" not in replica.client().info("commandstats")
