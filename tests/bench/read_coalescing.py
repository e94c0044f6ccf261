"""What read coalescing saves on one hot group, side by side in one run: get_counters
through the store (no HTTP), `--clients` reads in flight on one group, with sharing on
and off (off: every call its own script call), `--rounds` interleaved rounds of
`--seconds`; medians of calls per second and of Redis's µs per call (INFO commandstats).

    python -m tests.bench.read_coalescing [--clients 64] [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from unittest import mock

import redis

from service.storage import scripts
from service.storage.store import open_store
from service.storage.transports import pipelined
from tests.support import RedisServer
from tests.test_read_coalescing import add, read


def redis_usec(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(stats.get(name, {}).get("calls", 0))
        usec += int(stats.get(name, {}).get("usec", 0))
    return calls, usec


async def one_round(
    url: str, client: redis.Redis, clients: int, seconds: float
) -> tuple[float, float, float]:
    """Reads per second, Redis µs per read, and script calls per read."""
    store = open_store(url, timeout=5.0)
    await store.run(add(1))
    await store.run(read(["a"]))
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await store.run(read(["a"]))
            done += 1

    calls_before, usec_before = redis_usec(client)
    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    calls_after, usec_after = redis_usec(client)
    await store.close()
    return done / elapsed, (usec_after - usec_before) / done, (calls_after - calls_before) / done


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
    results: dict[str, list[tuple[float, float, float]]] = {"shared": [], "not shared": []}
    try:
        for _ in range(args.rounds):
            results["shared"].append(asyncio.run(one_round(server.url, client, args.clients, args.seconds)))
            with mock.patch.object(pipelined, "shareable", return_value=False):
                assert scripts.shareable(read(["a"]))  # off only here, in the transport
                results["not shared"].append(
                    asyncio.run(one_round(server.url, client, args.clients, args.seconds))
                )
    finally:
        server.stop()
    print(f"one group, {args.clients} reads in flight, {args.rounds} rounds of {args.seconds} s (medians)")
    print("| get_counters | calls/s | Redis µs per call | script calls per call |\n|---|---|---|---|")
    for name, runs in results.items():
        rate, usec, per = (statistics.median(run[i] for run in runs) for i in range(3))
        print(f"| {name} | {rate:,.0f} | {usec:.2f} | {per:.3f} |")


if __name__ == "__main__":
    main()
