"""Redis Cluster: where groups live, redirects, NOSCRIPT, and no double apply.

The contract tests already run on the cluster (the "cluster" backend in conftest.py);
these check what only a cluster has. They share the session's three-master cluster,
which they leave working (a migrated slot stays on its new node).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, cast

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisError
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.scripts import UPDATE_COUNTERS, Script, ScriptCall
from service.storage.store import Store, open_store
from service.storage.transports.cluster import ClusterTransport
from service.storage.transports.connection import PipelinedConnection
from tests.support import REGISTERED_APP, Api, group_key
from tests.topologies import Cluster, Process, wait_for


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    inspector = redis_cluster.inspector()
    inspector.flushall(target_nodes=inspector.PRIMARIES)
    inspector.close()
    return redis_cluster


@contextmanager
def serving(cluster: Cluster, settings: Settings, timeout: float = 2.0) -> Iterator[Api]:
    """The app in-process on the cluster; `api.inspector` reads any key of the cluster."""
    inspector = cluster.inspector()
    with TestClient(create_app(settings, open_store(cluster.url, timeout=timeout))) as client:
        yield Api(client=client, inspector=cast(redis.Redis, inspector))
    inspector.close()


def slot_owners(cluster: Cluster) -> dict[int, int]:
    """Slot -> port of the master serving it, from CLUSTER NODES (not redis-py's map)."""
    with cluster.nodes[0].client() as client:
        text = client.execute_command("CLUSTER", "NODES")
    owners: dict[int, int] = {}
    for line in (text.decode() if isinstance(text, bytes) else str(text)).splitlines():
        fields = line.split()
        if "master" not in fields[2]:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = item.partition("-")
            for slot in range(int(low), int(high or low) + 1):
                owners[slot] = port
    return owners


def keys_on(node: Process) -> set[bytes]:
    with node.client() as client:
        return set(client.keys("*"))


def node_id(node: Process) -> str:
    with node.client() as client:
        reply = client.execute_command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def slot_of(group_id: str) -> int:
    return key_slot(group_key(REGISTERED_APP, group_id))


def groups_in_slot(slot: int, count: int, prefix: str) -> list[str]:
    found: list[str] = []
    n = 0
    while len(found) < count:
        candidate = f"{prefix}{n}"
        n += 1
        if slot_of(candidate) == slot:
            found.append(candidate)
    return found


def counter(api: Api, group_id: str, key: str = "a") -> int:
    value = api.inspector.hget(group_key(REGISTERED_APP, group_id), key)
    return int(value or b"0")


def test_groups_spread_over_the_three_masters_each_on_the_owner_of_its_slot(
    cluster: Cluster, settings: Settings
) -> None:
    with serving(cluster, settings) as api:
        groups = [f"spread-{n}" for n in range(30)]
        for n, group_id in enumerate(groups):
            api.create(group_id)
            assert api.update(group_id, {"a": n})["ErrorCode"] == 0
        owners = slot_owners(cluster)
        held = {node.port: keys_on(node) for node in cluster.nodes}
        for n, group_id in enumerate(groups):
            key = group_key(REGISTERED_APP, group_id)
            owner = owners[key_slot(key)]
            assert key in held[owner], (group_id, owner)
            assert all(key not in keys for port, keys in held.items() if port != owner)
            assert api.counters(group_id) == {"a": n}
        assert all(held[node.port] for node in cluster.nodes), "every master holds some group"


def test_a_migrating_slot_is_followed_through_ask_then_moved(cluster: Cluster, settings: Settings) -> None:
    with serving(cluster, settings) as api:
        api.create("mover")
        api.update("mover", {"a": 10, "b": 7})
        slot = slot_of("mover")
        source = cluster.node(slot_owners(cluster)[slot])
        target = next(node for node in cluster.nodes if node is not source)
        late = groups_in_slot(slot, 1, "late-")[0]
        key = group_key(REGISTERED_APP, "mover")
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
            assert key in keys_on(target)
            assert key not in keys_on(source)

            # Half migrated: the source answers ASK for this group; calls still succeed,
            # also 40 at once (ASKING must share the connection with its call).
            assert api.counters("mover") == {"a": 10, "b": 7}
            with ThreadPoolExecutor(max_workers=20) as pool:
                replies = list(pool.map(lambda _: api.update("mover", {"a": 1}, "Increase"), range(40)))
            assert [reply["ErrorCode"] for reply in replies] == [0] * 40
            api.create(late)  # a new group of that slot is created on the importing node
            assert group_key(REGISTERED_APP, late) in keys_on(target)

            for node in cluster.nodes:
                with node.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))
        cluster.wait_ok()
        assert slot_owners(cluster)[slot] == target.port

        # Migrated: the store's map still says source, which answers MOVED.
        with ThreadPoolExecutor(max_workers=20) as pool:
            replies = list(pool.map(lambda _: api.update("mover", {"a": 1}, "Increase"), range(40)))
        assert [reply["ErrorCode"] for reply in replies] == [0] * 40
        assert api.counters("mover") == {"a": 90, "b": 7}
        assert api.counters(late) == {}
        assert key in keys_on(target)
        assert key not in keys_on(source)


class _Incr:
    """A script of the test's own (the transport needs only these three attributes)."""

    name = "test_incr"
    keys = 1
    source = "return redis.call('HINCRBY', KEYS[1], 'n', 1)"
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def test_concurrent_calls_during_a_migration_all_follow_ask_and_moved(cluster: Cluster) -> None:
    in_slot = [f"{{ask:0}}:{n}" for n in range(40)]  # one hash tag: one slot
    slot = key_slot(in_slot[0].encode())
    source = cluster.node(slot_owners(cluster)[slot])
    target = next(node for node in cluster.nodes if node is not source)
    script = cast(Script, _Incr())

    # Keys of a slot the target owns: a burst on them leaves it a pool of idle connections.
    owners = slot_owners(cluster)
    tag = next(
        f"warm:{n}" for n in range(100_000) if owners[key_slot(f"{{warm:{n}}}".encode())] == target.port
    )
    warm = [f"{{{tag}}}:{n}" for n in range(40)]

    async def burst(store: Store, keys: list[str]) -> list[object]:
        calls = (store.transport.run_script(ScriptCall(script, [key], [])) for key in keys)
        return list(await asyncio.gather(*calls, return_exceptions=True))

    async def one_by_one(store: Store) -> list[object]:
        replies: list[object] = []
        for key in in_slot:
            try:
                replies.append(await store.transport.run_script(ScriptCall(script, [key], [])))
            except RedisError as exc:
                replies.append(exc)
        return replies

    async def scenario() -> tuple[list[object], list[object], list[object]]:
        store = open_store(cluster.url, timeout=2.0)
        try:
            before = await burst(store, in_slot)  # every key created on the source
            await burst(store, warm)
            with source.client() as src, target.client() as dst:
                dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
                src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *in_slot)
                # The source answers ASK for every key: ASKING and the call must share a
                # connection, whichever idle ones the target has, at once or one by one.
                during = await burst(store, in_slot) + await one_by_one(store)
                for node in cluster.nodes:
                    with node.client() as client:
                        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))
            after = await burst(store, in_slot)  # the source answers MOVED
            return before, during, after
        finally:
            await store.close()

    before, during, after = asyncio.run(scenario())
    assert before == [1] * 40
    assert during == [2] * 40 + [3] * 40
    assert after == [4] * 40
    cluster.wait_ok()
    assert set(in_slot) == {key.decode() for key in keys_on(target) if key.startswith(b"{ask:0}")}


def test_noscript_after_a_script_flush_on_one_node_reloads_the_script_there(
    cluster: Cluster, settings: Settings
) -> None:
    with serving(cluster, settings) as api:
        api.create("flushed")
        api.update("flushed", {"a": 1})
        owner = cluster.node(slot_owners(cluster)[slot_of("flushed")])
        with owner.client() as client:
            client.script_flush()
            assert client.script_exists(UPDATE_COUNTERS.sha) == [False]
            evals_before = evals(client)
            assert api.update("flushed", {"a": 2}, "Increase")["ErrorCode"] == 0
            assert client.script_exists(UPDATE_COUNTERS.sha) == [True]
            assert evals(client) == evals_before + 1  # one EVAL, on this node
            assert api.update("flushed", {"a": 3}, "Increase")["ErrorCode"] == 0
            assert evals(client) == evals_before + 1  # then EVALSHA again
        assert api.counters("flushed") == {"a": 6}


def evals(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_eval", {}).get("calls", 0))


def test_an_increase_that_times_out_answers_10002_and_is_not_sent_again(
    cluster: Cluster, settings: Settings
) -> None:
    with serving(cluster, settings, timeout=0.5) as api:
        api.create("slow")
        assert api.update("slow", {"a": 1}, "Increase")["ErrorCode"] == 0
        owner = cluster.node(slot_owners(cluster)[slot_of("slow")])

        def sleep_the_owner() -> None:
            with owner.client(timeout=10) as client:
                client.execute_command("DEBUG", "SLEEP", "2")

        sleeper = threading.Thread(target=sleep_the_owner)
        sleeper.start()
        time.sleep(0.3)
        started = time.monotonic()
        reply = api.update("slow", {"a": 1}, "Increase")
        assert reply["ErrorCode"] == 10002, reply
        assert time.monotonic() - started < 1.5
        sleeper.join()
        # The owner woke and may have run the call it had read: once, never twice.
        after = counter(api, "slow")
        assert after in (1, 2)
        time.sleep(0.3)
        assert counter(api, "slow") == after
        assert api.update("slow", {"a": 1}, "Increase")["ErrorCode"] == 0
        assert counter(api, "slow") == after + 1


def test_a_call_that_must_read_the_slot_map_again_still_answers_within_one_timeout(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a fault the read may try node after node: a call waits for it only within
    its own redis_timeout, and one read serves every call that waits for it."""
    script = cast(Script, _Incr())

    async def scenario() -> tuple[list[float], list[object], int, object]:
        store = open_store(cluster.url, timeout=0.5)
        try:
            transport = cast(ClusterTransport, store.transport)
            first: object = await transport.run_script(ScriptCall(script, ["{slow-map}:a"], []))
            assert first == 1
            manager = transport.client.nodes_manager
            read = type(manager).initialize
            reads = 0

            async def slow_read(self: Any, *args: Any, **kwargs: Any) -> None:
                nonlocal reads
                reads += 1
                await asyncio.sleep(2.0)
                await read(self, *args, **kwargs)

            monkeypatch.setattr(type(manager), "initialize", slow_read)
            transport._stale = True  # as a failed call leaves it
            took: list[float] = []

            async def timed() -> object:
                started = time.monotonic()
                try:
                    return await transport.run_script(ScriptCall(script, ["{slow-map}:a"], []))
                except RedisError as exc:
                    return exc
                finally:
                    took.append(time.monotonic() - started)

            waited = await asyncio.gather(*(timed() for _ in range(5)))
            await asyncio.sleep(2.0)  # the read finishes for the calls after them
            after = await transport.run_script(ScriptCall(script, ["{slow-map}:a"], []))
            return took, waited, reads, after
        finally:
            await store.close()

    took, waited, reads, after = asyncio.run(scenario())
    assert all(isinstance(reply, RedisError) for reply in waited), waited  # 10002: nothing was sent
    assert max(took) < 0.5 + 0.4, took
    assert reads == 1, "one read for every call that waited"
    assert after == 2, "the map read, calls go through again (the timed-out calls never ran)"


def test_an_increase_whose_connection_breaks_answers_10002_and_is_not_sent_again(
    cluster: Cluster, settings: Settings
) -> None:
    with serving(cluster, settings, timeout=5.0) as api:
        api.create("broken")
        assert api.update("broken", {"a": 1}, "Increase")["ErrorCode"] == 0
        owner = cluster.node(slot_owners(cluster)[slot_of("broken")])
        replies: list[dict[str, Any]] = []
        with owner.client() as admin:
            # Scripts wait while paused: the Increase is read, not run, when its
            # connection is killed. Sent again, it would run at the unpause.
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            try:
                caller = threading.Thread(
                    target=lambda: replies.append(api.update("broken", {"a": 1}, "Increase"))
                )
                caller.start()

                def held() -> bool:
                    clients = admin.execute_command("CLIENT", "LIST").decode()
                    return any("cmd=evalsha" in line and "flags=b" in line for line in clients.splitlines())

                wait_for(held, 5, "the Increase to wait on the paused node")
                admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                time.sleep(0.2)
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            caller.join(10)
        assert [reply["ErrorCode"] for reply in replies] == [10002]
        time.sleep(0.3)
        assert counter(api, "broken") == 1  # the killed call never ran, and was not sent again
        assert api.update("broken", {"a": 1}, "Increase")["ErrorCode"] == 0
        assert counter(api, "broken") == 2


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of the test's own: the test empties one of its masters for good."""
    cluster = Cluster().start()
    yield cluster
    cluster.stop()


def hand_over_every_slot(cluster: Cluster, leaving: Process, heir: Process) -> None:
    """Every slot of `leaving` (holding no key) to `heir`: CLUSTER SLOTS stops listing
    `leaving`, as after a resharding that empties a node before it is removed."""
    slots = [slot for slot, port in slot_owners(cluster).items() if port == leaving.port]
    heir_id = node_id(heir)
    for node in sorted(cluster.nodes, key=lambda node: node is leaving):  # the leaving node last
        with node.client() as client:
            pipe = client.pipeline(transaction=False)
            for slot in slots:
                pipe.execute_command("CLUSTER", "SETSLOT", slot, "NODE", heir_id)
            pipe.execute()
    with heir.client() as client:
        client.execute_command("CLUSTER", "BUMPEPOCH")  # its claim outranks any stale gossip

    def unlisted_everywhere() -> bool:
        for node in cluster.nodes:
            with node.client() as client:
                ranges = client.execute_command("CLUSTER", "SLOTS")
            if any(int(owner[1]) == leaving.port for _, _, owner, *_ in ranges):
                return False
        return True

    wait_for(unlisted_everywhere, 20, f"no node to list {leaving.port} in CLUSTER SLOTS")


def test_a_node_that_leaves_the_slot_map_loses_its_connection_and_calls_in_flight_there_get_their_replies(
    own_cluster: Cluster,
) -> None:
    cluster = own_cluster
    leaving, heir = cluster.nodes[2], cluster.nodes[0]
    leaving_name = f"127.0.0.1:{leaving.port}"
    owners = slot_owners(cluster)
    keys = [f"{{churn:{n}}}" for n in range(60)]
    on_leaving = next(key for key in keys if owners[key_slot(key.encode())] == leaving.port)
    elsewhere = next(key for key in keys if owners[key_slot(key.encode())] != leaving.port)

    def clients() -> list[dict[str, str]]:
        with leaving.client() as client:
            return cast(list[dict[str, str]], client.client_list())

    def held() -> bool:
        return any(entry["cmd"] == "evalsha" and "b" in entry["flags"] for entry in clients())

    async def scenario() -> tuple[set[str], object, list[object], set[str]]:
        store = open_store(cluster.url, timeout=5.0)
        transport = cast(ClusterTransport, store.transport)

        async def incr(key: str) -> object:
            return await transport.run_script(ScriptCall(cast(Script, _Incr()), [key], []))

        try:
            await asyncio.gather(*map(incr, keys))  # a connection to every node
            before = set(transport._connections)
            retiring = transport._connections[leaving_name]
            assert isinstance(retiring, PipelinedConnection)
            assert retiring._link is not None
            assert retiring._link._transport is not None
            host, port = retiring._link._transport.get_extra_info("sockname")[:2]
            with leaving.client() as admin:
                await asyncio.to_thread(admin.flushall)
                # Scripts wait while paused: a call stays in flight on the leaving node
                # across the slot map's reload.
                await asyncio.to_thread(admin.execute_command, "CLIENT", "PAUSE", 10_000, "WRITE")
                try:
                    in_flight = asyncio.ensure_future(incr(on_leaving))
                    await asyncio.to_thread(wait_for, held, 5, "the call to wait on the paused node")
                    await asyncio.to_thread(hand_over_every_slot, cluster, leaving, heir)
                    transport._stale = True  # as a failed call leaves it: the next call reads the map
                    assert await incr(elsewhere) == 2
                    assert leaving_name not in transport._connections
                    assert not in_flight.done()
                finally:
                    await asyncio.to_thread(admin.execute_command, "CLIENT", "UNPAUSE")
            # Released, the leaving node answers MOVED; the call follows it to the heir.
            reply = await asyncio.wait_for(in_flight, 5)
            await asyncio.to_thread(
                wait_for,
                lambda: all(entry["addr"] != f"{host}:{port}" for entry in clients()),
                5,
                "the leaving node to see our connection closed",
            )
            assert not retiring.connected
            after = await asyncio.gather(*map(incr, keys), return_exceptions=True)
            return before, reply, after, set(transport._connections)
        finally:
            await store.close()

    before, reply, after, connections = asyncio.run(scenario())
    names = {f"127.0.0.1:{node.port}" for node in cluster.nodes}
    assert before == names
    assert reply == 1  # its own reply: the key went with the node's flushed keys
    assert all(isinstance(result, int) for result in after), after
    assert connections == names - {leaving_name}
