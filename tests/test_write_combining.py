"""Write combining (service/storage/transports/combining.py): updates of one group
waiting together to be sent on one connection go as one script call that applies each
as if it were alone. Real Redis (a single server, a master under `ack = "replicas"`, a
Cluster); the combined script against the one-by-one script on Redis and fakeredis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.storage.scripts import UPDATE_COUNTERS, ScriptCall
from service.storage.store import Store
from service.storage.transports import combining
from service.storage.transports.connection import PipelinedConnection
from service.storage.transports.faults import certainly_not_run
from tests.backends import empty_store
from tests.support import RedisServer
from tests.test_pipelined import outcomes_on_fake, pings_then
from tests.test_read_coalescing import script_calls

GROUP = "{1:hot}"
BACKENDS = ["redis", "replicas", "cluster"]
INT64_MAX = 2**63 - 1


def update(
    pairs: list[tuple[str, int]], *, op: str = "add", key: str = "", limit: int = 0, group: str = GROUP
) -> ScriptCall:
    record = f"{group}:idempotency:{key}" if key else group
    window = "{ratelimit:1}" if limit else group
    flat = [str(part) for pair in pairs for part in pair]
    fingerprint = f"{abs(hash((op, tuple(pairs)))):032x}" if key else ""
    return ScriptCall(
        UPDATE_COUNTERS,
        [group, window, record],
        ["0", limit, fingerprint, "token", "PUBLISH", f"{group}:changes", op, 86400, *flat],
    )


def on(backend: str, request: pytest.FixtureRequest, scenario: Callable[[Store, Any], Any]) -> Any:
    store, inspector = empty_store(backend, request)

    async def run() -> Any:
        try:
            # Both scripts loaded where the group lives: a key of its slot (its hash tag).
            warm = "{1:hot}:warm"
            await store.run(update([("warm", 1)], group=warm))
            await asyncio.gather(*(store.run(update([("warm", 1)], group=warm)) for _ in range(2)))
            return await scenario(store, inspector)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_updates_of_one_group_waiting_together_run_as_one_script_call(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, inspector: Any) -> tuple[list[Any], int]:
        before = script_calls(inspector)
        replies = await asyncio.gather(*(store.run(update([("a", 1)])) for _ in range(30)))
        return list(replies), script_calls(inspector) - before

    replies, calls = on(backend, request, scenario)
    assert sorted(int(reply[1]) for reply in replies) == list(range(1, 31)), "each its own reply"
    assert calls == 1  # 30 updates made in one step, in one batch (up to 32 calls)


# One server's script cache (a Cluster's is per node; routing is the first test's).
@pytest.mark.parametrize("backend", ["redis", "replicas"])
def test_an_update_alone_goes_as_the_plain_script(backend: str, request: pytest.FixtureRequest) -> None:
    async def scenario(store: Store, inspector: Any) -> list[bool]:
        inspector.script_flush()
        for n in range(5):
            assert await store.run(update([("a", 1)])) == [0, str(n + 1).encode()]
        exists: list[bool] = inspector.script_exists(UPDATE_COUNTERS.combined.sha, UPDATE_COUNTERS.sha)
        return exists

    assert on(backend, request, scenario) == [False, True]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_combined_call_that_fails_for_one_update_fails_only_that_one(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, inspector: Any) -> list[Any]:
        await store.run(update([("a", INT64_MAX - 2)], op="set"))
        calls = [
            update([("a", 1)]),
            update([("a", 5)]),
            update([("a", 1)]),
            update([(f"k{n}", 1) for n in range(21)]),
        ]
        return list(await asyncio.gather(*(store.run(call) for call in calls)))

    replies = on(backend, request, scenario)
    assert replies[0] == [0, str(INT64_MAX - 1).encode()]
    assert replies[1] == [10004, b"a"]
    assert replies[2] == [0, str(INT64_MAX).encode()]
    assert replies[3] == [10063, 22]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_combined_update_keeps_its_own_idempotency_record(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, _: Any) -> tuple[list[Any], list[Any]]:
        calls = [update([("a", n)], key=f"key-{n}") for n in range(1, 21)]
        first = await asyncio.gather(*(store.run(call) for call in calls))
        again = await asyncio.gather(*(store.run(call) for call in calls))
        return list(first), list(again)

    first, again = on(backend, request, scenario)
    assert first == again, "each key replays its own outcome"
    assert sorted(int(reply[1]) for reply in first)[-1] == sum(range(1, 21))


# Not on a Cluster: there the limit is counted by a script of its own, before the update.
@pytest.mark.parametrize("backend", ["redis", "replicas"])
def test_each_combined_update_is_counted_against_the_rate_limit(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, _: Any) -> list[Any]:
        return list(await asyncio.gather(*(store.run(update([("a", 1)], limit=5)) for _ in range(8))))

    replies = on(backend, request, scenario)
    assert sorted(reply[0] for reply in replies) == [0] * 5 + [60007] * 3


def test_each_combined_update_announces_its_own_version_in_order(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.flushall()
    pubsub = client.pubsub()
    pubsub.subscribe(f"{GROUP}:changes")
    pubsub.get_message(timeout=1.0)

    async def scenario() -> None:
        from service.storage.store import open_store

        store = open_store(redis_server.url, timeout=1.0)
        await asyncio.gather(*(store.run(update([("a", 1)])) for _ in range(40)))
        await store.close()

    asyncio.run(scenario())
    versions = []
    while (message := pubsub.get_message(timeout=1.0)) is not None:
        versions.append(int(message["data"].split(b"\xff")[1]))
    pubsub.close()
    client.close()
    assert versions == list(range(1, 41))


# Counts of one link; under ack = "replicas" a batch waiting for its replicas sends the
# next calls to another of the master's four links, which share nothing with it.
@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_a_combined_call_holds_at_most_max_calls(
    backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(combining, "MAX_CALLS", 8)

    async def scenario(store: Store, inspector: Any) -> tuple[list[Any], int]:
        before = script_calls(inspector)
        replies = await asyncio.gather(*(store.run(update([("a", 1)])) for _ in range(40)))
        return list(replies), script_calls(inspector) - before

    replies, calls = on(backend, request, scenario)
    assert sorted(int(reply[1]) for reply in replies) == list(range(1, 41))
    assert calls == 5  # 8 per call, whatever the batch


@pytest.mark.parametrize("backend", ["redis", "replicas"])
def test_a_redis_that_forgot_the_scripts_still_applies_each_update_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, inspector: Any) -> tuple[list[Any], Any]:
        inspector.script_flush()
        replies = await asyncio.gather(*(store.run(update([("a", 1)])) for _ in range(30)))
        more = await asyncio.gather(*(store.run(update([("a", 1)])) for _ in range(30)))
        return [*replies, *more], inspector.script_exists(UPDATE_COUNTERS.combined.sha)

    replies, loaded = on(backend, request, scenario)
    assert sorted(int(reply[1]) for reply in replies) == list(range(1, 61))
    assert loaded == [True], "and the combined form is loaded for the next time"


# ---- a Redis that fails a combined call ----


def combinable_update(connection: PipelinedConnection) -> Awaitable[Any]:
    call = update([("a", 1)])
    return connection.execute_update(
        UPDATE_COUNTERS, "EVALSHA", UPDATE_COUNTERS.sha, 3, *call.keys, *call.args
    )


@pytest.mark.parametrize(
    "reply",
    [
        b"-ERR user_script:80: Script attempted to access a non local key\r\n",
        b"-OOM command not allowed\r\n",
        b"*1\r\n:1\r\n",
        b"",
    ],
    ids=["script-error", "oom", "wrong-shape", "closes"],
)
def test_a_combined_call_that_fails_as_a_whole_answers_each_update_maybe(reply: bytes) -> None:
    outcomes = asyncio.run(outcomes_on_fake(pings_then(reply), combinable_update, 4))
    assert all(isinstance(o, redis.RedisError) and not certainly_not_run(o) for o in outcomes), outcomes


# ---- the combined script against one call at a time ----

amounts = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**62), 2**62),
    st.sampled_from([INT64_MAX, -INT64_MAX - 1, 2**53, -(2**53)]),
)
requests = st.lists(
    st.tuples(
        st.sampled_from(["add", "set"]),
        st.lists(
            st.tuples(st.sampled_from([f"k{n}" for n in range(22)]), amounts),
            min_size=1,
            max_size=4,
            unique_by=lambda p: p[0],
        ),
        st.sampled_from(["", "", "r1", "r2"]),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module", params=["redis", "fakeredis"])
def script_client(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return
    server = RedisServer().start()
    client = server.client()
    yield client
    client.close()
    server.stop()


def run_alone(client: redis.Redis, calls: list[ScriptCall]) -> list[Any]:
    return [client.eval(UPDATE_COUNTERS.source, 3, *c.keys, *c.args) for c in calls]


def run_combined(client: redis.Redis, calls: list[ScriptCall]) -> list[Any]:
    keys = [key for c in calls for key in c.keys]
    flat: list[Any] = [len(calls)]
    for c in calls:
        flat += [len(c.args), *c.args]
    reply: list[Any] = client.eval(UPDATE_COUNTERS.combined.source, len(keys), *keys, *flat)
    return reply


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests)
def test_the_combined_script_answers_and_stores_exactly_as_one_call_at_a_time(
    script_client: redis.Redis, batch: list[tuple[str, list[tuple[str, int]], str]]
) -> None:
    def calls(group: str) -> list[ScriptCall]:
        return [update(pairs, op=op, key=key, group=group) for op, pairs, key in batch]

    script_client.flushall()
    script_client.hset("{1:alone}", "seed", "1")
    script_client.hset("{1:together}", "seed", "1")
    with notices(script_client, "{1:alone}", "{1:together}") as heard:
        alone = run_alone(script_client, calls("{1:alone}"))
        together = run_combined(script_client, calls("{1:together}"))
    assert together == alone
    assert script_client.hgetall("{1:together}") == script_client.hgetall("{1:alone}")
    for key in ("r1", "r2"):
        assert script_client.get(f"{{1:together}}:idempotency:{key}") == script_client.get(
            f"{{1:alone}}:idempotency:{key}"
        )
    assert heard["{1:together}"] == heard["{1:alone}"], "the same notices, in the same order"


@contextmanager
def notices(client: redis.Redis, *groups: str) -> Iterator[dict[str, list[bytes]]]:
    """Every notice on each group's channel while the block runs, in order (each channel
    is read up to an end mark published after the block, so nothing is waited for)."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*(f"{group}:changes" for group in groups))
    for _ in groups:
        pubsub.get_message(timeout=1.0, ignore_subscribe_messages=False)
    heard: dict[str, list[bytes]] = {group: [] for group in groups}
    try:
        yield heard
        for group in groups:
            client.publish(f"{group}:changes", "end")
        ended = 0
        while ended < len(groups) and (message := pubsub.get_message(timeout=2.0)) is not None:
            group = message["channel"].decode().removesuffix(":changes")
            if message["data"] == b"end":
                ended += 1
            else:
                heard[group].append(message["data"])
        assert ended == len(groups), "every end mark came back"
    finally:
        pubsub.close()


# ---- a combined call on its group ----


def test_a_combined_call_counts_the_keys_its_earlier_updates_added(script_client: redis.Redis) -> None:
    """The 20-Key limit sees the Keys the same call's earlier updates added."""
    script_client.flushall()
    calls = [update([(f"k{5 * n + i}", 1) for i in range(5)]) for n in range(5)]
    replies = run_combined(script_client, calls)
    assert [reply[0] for reply in replies] == [0, 0, 0, 0, 10063]
    assert replies[4] == [10063, 25]
    assert script_client.hlen(GROUP) == 20 + 1  # and the version


def test_a_refused_write_announces_nothing_and_changes_nothing() -> None:
    """Redis refuses a script's first write (here: out of memory under noeviction); an
    update writes its group before its notice, so a combined call refused there
    announces nothing: no notice names a change that was not made."""
    server = RedisServer().start()
    client = server.client()
    try:
        client.hset(GROUP, "a", "5")
        client.config_set("maxmemory-policy", "noeviction")
        with notices(client, GROUP) as heard:
            client.config_set("maxmemory", 1)
            with pytest.raises(redis.ResponseError, match="used memory > 'maxmemory'"):
                run_combined(client, [update([("a", 1)]), update([("b", 1)]), update([("a", 2)])])
            client.config_set("maxmemory", 0)
        assert heard[GROUP] == []
        assert client.hgetall(GROUP) == {b"a": b"5"}
    finally:
        client.close()
        server.stop()


# Counts of one link; under ack = "replicas" a batch waiting for its replicas sends the
# next calls to another of the master's four links, which share nothing with it.
@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_combined_updates_are_written_in_slices_of_max_batch_calls(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Redis works on the first slice while the process makes the next (connection.py)."""

    async def scenario(store: Store, inspector: Any) -> int:
        before = script_calls(inspector)
        await asyncio.gather(*(store.run(update([("a", 1)])) for _ in range(100)))
        return script_calls(inspector) - before

    assert on(backend, request, scenario) == 4  # 32 + 32 + 32 + 4


def test_max_pending_bounds_the_updates_that_joined_one_call_too() -> None:
    """A stalled Redis: past `max_pending` waiting callers, combined or not, a call is
    refused at once (certainly not run) rather than joining the queue."""
    outcomes = asyncio.run(outcomes_on_fake(pings_then(None), combinable_update, 20, max_pending=8))
    refused = [o for o in outcomes if isinstance(o, redis.RedisError) and certainly_not_run(o)]
    assert len(refused) == 12, outcomes
