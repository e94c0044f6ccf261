"""What read coalescing and write combining save on one hot group, side by side in one
run: get_counters and update_counters (Increase 1) through the store (no HTTP),
`--clients` calls in flight on one group, each with sharing on and off (off: every call
its own script call), `--rounds` interleaved rounds of `--seconds`; medians of calls per
second and of Redis's µs per call (INFO commandstats), beside a bare HINCRBY pair.

    python -m tests.bench.hot_group [--clients 64] [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any
from unittest import mock

import redis

from service.storage.scripts import ScriptCall
from service.storage.store import open_store
from service.storage.transports import pipelined
from tests.support import RedisServer
from tests.test_read_coalescing import add, read
from tests.test_write_combining import update


def redis_usec(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(stats.get(name, {}).get("calls", 0))
        usec += int(stats.get(name, {}).get("usec", 0))
    return calls, usec


async def one_round(
    url: str, client: redis.Redis, clients: int, seconds: float, call: ScriptCall
) -> tuple[float, float, float]:
    """Calls per second, Redis µs per call, and script calls per call."""
    store = open_store(url, timeout=5.0)
    await store.run(add(1))
    await store.run(read(["a"]))
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await store.run(call)
            done += 1

    calls_before, usec_before = redis_usec(client)
    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    calls_after, usec_after = redis_usec(client)
    await store.close()
    return done / elapsed, (usec_after - usec_before) / done, (calls_after - calls_before) / done


def bare_pair_usec(client: redis.Redis, calls: int = 20_000) -> float:
    """Redis µs of a bare HINCRBY pair (two fields of one hash), pipelined."""
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for n in range(calls):
        pipe.hincrby("{1:bare}", "a", 1)
        pipe.hincrby("{1:bare}", "b", 1)
        if n % 500 == 499:
            pipe.execute()
    pipe.execute()
    return int(client.info("commandstats")["cmdstat_hincrby"]["usec"]) / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    server = RedisServer().start()
    client = server.client()
    calls = {"get_counters": read(["a"]), "update_counters": update([("a", 1)])}
    results: dict[str, list[tuple[float, float, float]]] = {}
    off: dict[str, Any] = {
        "get_counters": mock.patch.object(pipelined, "shareable", return_value=False),
        "update_counters": mock.patch.object(pipelined, "CombinableScript", type(None)),
    }
    try:
        bare = bare_pair_usec(client)
        for _ in range(args.rounds):
            for name, call in calls.items():
                results.setdefault(f"{name}, shared", []).append(
                    asyncio.run(one_round(server.url, client, args.clients, args.seconds, call))
                )
                with off[name]:
                    results.setdefault(f"{name}, one script call each", []).append(
                        asyncio.run(one_round(server.url, client, args.clients, args.seconds, call))
                    )
    finally:
        server.stop()
    print(f"one group, {args.clients} calls in flight, {args.rounds} rounds of {args.seconds} s (medians)")
    print(f"a bare HINCRBY pair: {bare:.2f} µs of Redis time")
    print("| call | calls/s | Redis µs per call | ratio to a HINCRBY pair | script calls per call |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        rate, usec, per = (statistics.median(run[i] for run in runs) for i in range(3))
        print(f"| {name} | {rate:,.0f} | {usec:.2f} | {usec / bare:.1f} | {per:.3f} |")


if __name__ == "__main__":
    main()
