"""What `ack = "replicas"` adds to a call's latency, at the same offered load as `"primary"`.

    .venv/bin/python -m tests.bench.ack_latency [--fraction 0.5] [--rounds 5] [--duration 10]

`make bench`'s replica rows drive each service with wrk's 64 connections as fast as it
answers, so their p99 follows their throughput. This measures latency instead: one
master with one replica (pinned with the load, as in `make bench`), a service with each
`ack`, and the open-loop driver offering both the same rate (`--fraction` of what the
`"primary"` service answers under wrk), in rounds of alternating order. Meanwhile a
probe on its own connection to the master measures a replica round trip under that
load: `SET` then `WAIT 1` against `SET` then `PING`, back to back, the difference of the
medians. Prints each round, the medians, and the p99 added by `"replicas"` in replica
round trips (issue 24's target: at most 2). Writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from service.api.auth import mint_usersig
from tests.bench.client import create_groups, group_ids
from tests.bench.drivers import LoadPoint, run_openloop, run_wrk
from tests.bench.machine import BenchError, Cpus, pin, require_tools
from tests.bench.rounds import WARMUP_SECONDS
from tests.bench.servers import ADMIN, SDKAPPID, SECRET_KEY, Server, running, service_server, write_config
from tests.topologies import ReplicatedRedis


class RoundTrips:
    """`SET` + `WAIT 1` against `SET` + `PING` on the master, alternating, until stopped."""

    def __init__(self, port: int) -> None:
        self._client = redis.Redis(port=port, socket_timeout=5)
        self.wait_us: list[float] = []
        self.ping_us: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _timed(self, wait: bool) -> float:
        pipe = self._client.pipeline(transaction=False)
        pipe.set("ack-latency:probe", "x")
        if wait:
            pipe.wait(1, 1000)
        else:
            pipe.ping()
        started = time.perf_counter()
        pipe.execute()
        return (time.perf_counter() - started) * 1e6

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wait_us.append(self._timed(wait=True))
            self.ping_us.append(self._timed(wait=False))
            time.sleep(0.002)

    def __enter__(self) -> RoundTrips:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    @property
    def round_trip_ms(self) -> float:
        return (statistics.median(self.wait_us) - statistics.median(self.ping_us)) / 1000


def measure(fraction: float, rounds: int, duration: float, groups: int) -> None:
    cpus = Cpus.pick()
    workdir = Path(tempfile.mkdtemp(prefix="group-counter-ack-latency-"))
    topology = ReplicatedRedis().start()
    try:
        assert topology.master is not None
        for node in (topology.master, *topology.replicas):
            assert node.process is not None
            pin(node.process.pid, cpus.load)
        usersig = mint_usersig(SDKAPPID, SECRET_KEY, ADMIN, expire=86400)
        servers: dict[str, Server] = {}
        for ack in ("primary", "replicas"):
            config = workdir / f"{ack}.toml"
            write_config(config, topology.url, ack=None if ack == "primary" else ack)
            servers[ack] = service_server(config, workdir, tag=f"service-{ack}")
        with running(*servers.values()):
            for server in servers.values():
                server.start(cpus.server)
            create_groups(servers["primary"].port, usersig, group_ids(groups))
            for server in servers.values():
                run_wrk(server.port, WARMUP_SECONDS, usersig, groups, cpus.load)
            maximum = run_wrk(servers["primary"].port, 5, usersig, groups, cpus.load).rps
            rate = round(maximum * fraction)
            print(
                f'"primary" answers {maximum:,.0f} req/s under wrk; offering both {rate:,} req/s', flush=True
            )
            points: dict[str, list[LoadPoint]] = {"primary": [], "replicas": []}
            trips: list[float] = []
            for number in range(1, rounds + 1):
                order = ("primary", "replicas") if number % 2 else ("replicas", "primary")
                for ack in order:
                    with RoundTrips(topology.master.port) as probe:
                        point = run_openloop(
                            ack, servers[ack].port, usersig, groups, fraction, rate, duration, 1.0, cpus.load
                        )
                    points[ack].append(point)
                    if ack == "replicas":
                        trips.append(probe.round_trip_ms)
                    print(
                        f"round {number}/{rounds}, {ack}: {point.achieved:,.0f} req/s achieved, "
                        f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, errors {point.errors}, "
                        f"replica round trip {probe.round_trip_ms:.3f} ms",
                        flush=True,
                    )
    finally:
        topology.stop()
    p99 = {ack: statistics.median(p.p99_ms for p in runs) for ack, runs in points.items()}
    p50 = {ack: statistics.median(p.p50_ms for p in runs) for ack, runs in points.items()}
    trip = statistics.median(trips)
    added = p99["replicas"] - p99["primary"]
    print()
    print(f"offered {rate:,} req/s ({fraction:.0%} of primary's maximum), medians of {rounds} rounds:")
    for ack in ("primary", "replicas"):
        print(f'  "{ack}": p50 {p50[ack]:.2f} ms, p99 {p99[ack]:.2f} ms')
    print(f"  a replica round trip under this load: {trip:.3f} ms")
    print(
        f'  p99 added by "replicas": {added:.2f} ms = {added / trip if trip > 0 else float("inf"):.1f} '
        f"replica round trips (target: at most 2) ({cpus.note})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.ack_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--fraction", type=float, default=0.5, help="of primary's maximum rate (0.5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per open-loop run (10)")
    parser.add_argument("--groups", type=int, default=10000)
    args = parser.parse_args(argv)
    try:
        require_tools(need_node=True)
        measure(args.fraction, args.rounds, args.duration, args.groups)
    except BenchError as exc:
        print(f"ack_latency: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
