"""What each acknowledgment costs, side by side on one Valkey master with one replica:
update_counters through the store (no HTTP), `--clients` calls in flight, each setting
run for `--seconds` in turn, `--rounds` times interleaved; medians of calls per second
and of each round's p99 latency.

    python -m tests.bench.ack_cost [--fsync everysec,always] [--rounds 3] [--seconds 3]

Valkey (Redis 7.2's fork) because `ack_fsync` needs WAITAOF; the Makefile fetches it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from typing import Final

from service.storage.store import Store, open_store
from service.storage.transports.acks import Ack
from tests.test_ack_replicas import increase
from tests.topologies import ReplicatedRedis

SETTINGS: Final = {
    'ack = "primary"': None,
    'ack = "primary", ack_fsync': Ack(replicas=False, fsync=True, wait=2.0),
    'ack = "replicas"': Ack(replicas=True, fsync=False, wait=2.0),
    'ack = "replicas", ack_fsync': Ack(replicas=True, fsync=True, wait=2.0),
}


async def one_round(url: str, ack: Ack | None, clients: int, seconds: float) -> tuple[float, float]:
    """Calls per second and p99 latency (ms) of `clients` loops for `seconds`."""
    store: Store = open_store(url, timeout=5.0, ack=ack)
    await store.run(increase(store, "warm"))
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    groups = itertools.count()

    async def loop() -> None:
        while (started := time.perf_counter()) < deadline:
            await store.run(increase(store, f"g{next(groups) % 1000}"))
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    await store.close()
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(len(latencies) * 0.99)] * 1000


def measure(fsync: str, rounds: int, seconds: float, clients: int) -> None:
    persistence = ("--save", "", "--appendonly", "yes", "--appendfsync", fsync)
    topology = ReplicatedRedis(binary="valkey-server", persistence=persistence).start()
    try:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
        for _ in range(rounds):
            for name, ack in SETTINGS.items():
                results[name].append(asyncio.run(one_round(topology.url, ack, clients, seconds)))
        base = statistics.median(rate for rate, _ in results['ack = "primary"'])
        print(f"\nappendfsync {fsync}, {clients} calls in flight, {rounds} rounds of {seconds} s (medians)")
        print("| setting | calls/s | ratio to primary | p99 ms |\n|---|---|---|---|")
        for name, runs in results.items():
            rate = statistics.median(r for r, _ in runs)
            p99 = statistics.median(p for _, p in runs)
            print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {p99:.1f} |")
    finally:
        topology.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fsync", default="everysec,always", help="appendfsync values, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    for fsync in args.fsync.split(","):
        measure(fsync, args.rounds, args.seconds, args.clients)


if __name__ == "__main__":
    main()
