"""Read coalescing (README, "Sizing"): identical get_group_counter calls still waiting
to be sent on one connection share one script call; never one already sent, never
one that counts the app's rate limit. Real Redis: a single server, a master under
`ack = "replicas"`, and a Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from service.storage.scripts import GET_COUNTERS, UPDATE_COUNTERS, ScriptCall
from service.storage.store import Store
from service.storage.transports.connection import PipelinedConnection
from service.storage.transports.faults import certainly_not_run
from tests.backends import empty_store
from tests.test_pipelined import outcomes_on_fake, pings_then

GROUP = "{1:hot}"
BACKENDS = ["redis", "replicas", "cluster"]


def read(keys: list[str], limit: int = 0) -> ScriptCall:
    window = "{ratelimit:1}" if limit else GROUP
    return ScriptCall(GET_COUNTERS, [GROUP, window], ["0", limit, *keys])


def add(amount: int) -> ScriptCall:
    return ScriptCall(
        UPDATE_COUNTERS, [GROUP, GROUP, GROUP], ["0", 0, "", "token", "", "", "add", 86400, "a", amount]
    )


def script_calls(inspector: Any) -> int:
    """EVALSHA and EVAL calls Redis has run, on every master."""
    if isinstance(inspector, redis.Redis):
        stats = {"one": inspector.info("commandstats")}
    else:  # a Cluster: each master's
        stats = inspector.info("commandstats", target_nodes=inspector.PRIMARIES)
    total = 0
    for node_stats in stats.values():
        for name in ("cmdstat_evalsha", "cmdstat_eval"):
            if name in node_stats:
                total += int(node_stats[name]["calls"])
    return total


def on(backend: str, request: pytest.FixtureRequest, scenario: Callable[[Store, Any], Any]) -> Any:
    """`scenario(store, inspector)` on `backend`, the group's `a` at 7."""
    store, inspector = empty_store(backend, request)

    async def run() -> Any:
        try:
            await store.run(add(7))  # warm: the connection and both scripts loaded
            await store.run(read(["warm"]))
            return await scenario(store, inspector)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_reads_waiting_together_run_one_script_call(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, inspector: Any) -> tuple[list[Any], int]:
        before = script_calls(inspector)
        replies = await asyncio.gather(*(store.run(read(["a"])) for _ in range(30)))
        return list(replies), script_calls(inspector) - before

    replies, calls = on(backend, request, scenario)
    assert replies == [[0, b"7"]] * 30
    assert calls == 1  # 30 reads made in one step, in one batch (up to 32 calls): one script call


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_of_other_keys_are_not_shared(backend: str, request: pytest.FixtureRequest) -> None:
    async def scenario(store: Store, _: Any) -> list[Any]:
        return list(await asyncio.gather(store.run(read(["a"])), store.run(read(["b"])), store.run(read([]))))

    replies = on(backend, request, scenario)
    assert replies == [[0, b"7"], [0, None], [0, b"a", b"7"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_read_never_joins_one_already_sent(backend: str, request: pytest.FixtureRequest) -> None:
    """Made after an update was acknowledged, a read sees it, though an identical read
    made before the update may still be waiting for its reply."""

    async def scenario(store: Store, _: Any) -> tuple[Any, Any]:
        early = asyncio.ensure_future(store.run(read(["a"])))
        for _ in range(3):  # its batch is written
            await asyncio.sleep(0)
        await store.run(add(1))
        late = await store.run(read(["a"]))
        return await early, late

    early, late = on(backend, request, scenario)
    assert early in ([0, b"7"], [0, b"8"])
    assert late == [0, b"8"]


# Not on a Cluster: there the rate limit is counted by a script of its own, never in the read.
@pytest.mark.parametrize("backend", ["redis", "replicas"])
def test_reads_that_count_the_rate_limit_are_each_counted(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, _: Any) -> list[Any]:
        return list(await asyncio.gather(*(store.run(read(["a"], limit=5)) for _ in range(8))))

    replies = on(backend, request, scenario)
    assert sorted(reply[0] for reply in replies) == [0] * 5 + [60007] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_caller_that_leaves_takes_nothing_from_the_others(
    backend: str, request: pytest.FixtureRequest
) -> None:
    async def scenario(store: Store, _: Any) -> list[Any]:
        calls = [asyncio.ensure_future(store.run(read(["a"]))) for _ in range(3)]
        await asyncio.sleep(0)
        calls[0].cancel()
        return list(await asyncio.gather(*calls[1:]))

    replies = on(backend, request, scenario)
    assert replies == [[0, b"7"]] * 2


def shared_read(connection: PipelinedConnection) -> Awaitable[Any]:
    return connection.execute_shared("EVALSHA", "x", 0)


def test_every_caller_of_a_shared_read_hears_of_a_lost_connection() -> None:
    outcomes = asyncio.run(outcomes_on_fake(pings_then(b""), shared_read, 4))
    assert len(outcomes) == 4
    # Written, then the connection lost: each may have run, none hangs or gets another's reply.
    assert all(isinstance(o, redis.RedisError) and not certainly_not_run(o) for o in outcomes), outcomes


# Counts of one link; under ack = "replicas" a batch waiting for its replicas sends the
# next calls to another of the master's four links, which share nothing with it.
@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_shared_reads_are_written_in_slices_of_max_batch_calls(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Redis works on the first slice while the process makes the next (connection.py)."""

    async def scenario(store: Store, inspector: Any) -> int:
        before = script_calls(inspector)
        await asyncio.gather(*(store.run(read(["a"])) for _ in range(100)))
        return script_calls(inspector) - before

    assert on(backend, request, scenario) == 4  # 32 + 32 + 32 + 4


def test_max_pending_bounds_the_reads_that_joined_one_call_too() -> None:
    outcomes = asyncio.run(outcomes_on_fake(pings_then(None), shared_read, 20, max_pending=8))
    refused = [o for o in outcomes if isinstance(o, redis.RedisError) and certainly_not_run(o)]
    assert len(refused) == 12, outcomes
