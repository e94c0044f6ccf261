"""One `make bench` run: its servers, then each phase in turn, into the figures the report shows."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from service.api.auth import mint_usersig
from tests.bench.client import Memory, create_groups, group_ids, redis_memory
from tests.bench.drivers import LoadPoint, run_openloop, run_wrk
from tests.bench.exactness import Ledger, exactness_verdict, read_counters
from tests.bench.live import live_phase
from tests.bench.machine import Cpus, load_average, machine_facts
from tests.bench.markdown import now_text
from tests.bench.redis_cost import (
    RedisMeter,
    bare_hash_memory,
    bare_key,
    delete_keys,
    hincrby_baseline,
)
from tests.bench.rounds import WARMUP_SECONDS, Workload, paired_rounds, row_summary
from tests.bench.rows import RowBench, rows_phase
from tests.bench.servers import (
    ADMIN,
    SDKAPPID,
    SECRET_KEY,
    Server,
    ceiling_server,
    running,
    service_server,
    start_redis,
    write_config,
)
from tests.bench.soak import soak
from tests.support import RedisServer


@dataclass
class Options:
    duration: int
    rounds: int
    groups: int
    load_duration: float
    fractions: tuple[float, ...]
    smoke: bool
    soak: int
    soak_only: bool
    workers_check: bool
    out: Path
    chart: Path
    live_watchers: tuple[int, ...] = ()
    rows: tuple[str, ...] = ()  # the "Every command" rows besides the headline (tests/bench/rows.py)
    row_rounds: int = 3
    row_duration: int = 5


@dataclass
class Pair:
    """What the side-by-side phases work with: the options, the figures so far, the service and
    the ceiling (both running), the usersig, the CPUs, and the ledger of the service's calls."""

    options: Options
    data: dict[str, Any]
    service: Server
    ceiling: Server
    usersig: str
    cpus: Cpus
    ledger: Ledger


def measure(options: Options, command: str) -> dict[str, Any]:
    cpus = Cpus.pick()
    workdir = Path(tempfile.mkdtemp(prefix="group-counter-bench-"))
    usersig = mint_usersig(SDKAPPID, SECRET_KEY, ADMIN, expire=86400)
    ids = group_ids(options.groups)
    data: dict[str, Any] = {
        "date": now_text(),
        "machine": machine_facts(),
        "cpus": cpus.note,
        "command": command,
        "groups": options.groups,
        "rounds": options.rounds,
        "duration": options.duration,
        "warmup": WARMUP_SECONDS,
        "load_duration": options.load_duration,
        "loadavg_start": load_average(),
    }
    ledger = Ledger()
    redis_server = start_redis(cpus)
    try:
        config = workdir / "bench.toml"
        write_config(config, redis_server.url)
        service = service_server(config, workdir)
        ceiling = ceiling_server(workdir)
        with running(service, ceiling):
            service.start(cpus.server)
            ceiling.start(cpus.server)
            print(
                f"service pid {service.pid} on port {service.port}, ceiling on port {ceiling.port}",
                flush=True,
            )

            memory_phase(options, data, service, usersig, ids, redis_server.port)
            meter = RedisMeter([redis_server.port])
            if not options.soak_only:
                pair = Pair(options, data, service, ceiling, usersig, cpus, ledger)
                throughput_phase(pair, meter)
                openloop_phase(pair)
                if options.rows:
                    every_command_phase(pair, redis_server, workdir)
                if options.live_watchers:
                    data["live"] = live_phase(
                        redis_server.url,
                        workdir,
                        usersig,
                        cpus,
                        ledger,
                        watcher_counts=options.live_watchers,
                        rate=20.0 if options.smoke else 100.0,
                        seconds=1.0 if options.smoke else 10.0,
                        floor_seconds=0.5 if options.smoke else 5.0,
                        rounds=options.rounds,
                        duration=options.duration,
                        groups=options.groups,
                    )
            meter.close()
            if options.soak:
                print(f"soak: {options.soak} s of wrk on the service", flush=True)
                data["soak"] = soak(service, options.soak, usersig, options.groups, cpus.load, ledger)
                data["soak"]["command"] = command
            ceiling.stop()
            if options.workers_check and not options.soak_only:
                service.stop()
                data["workers"] = workers_phase(options, config, workdir, usersig, ledger)
                service = service_server(config, workdir, tag="service-check").start(cpus.server)
            total_a, total_b, torn = read_counters(service.port, usersig, ids)
            data["exactness"] = exactness_verdict(ledger, total_a, total_b, torn)
            data["loadavg_end"] = load_average()
            service.stop()
    finally:
        redis_server.stop()
        shutil.rmtree(redis_server.workdir, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return data


def every_command_phase(pair: Pair, redis_server: RedisServer, workdir: Path) -> None:
    """The "Every command" rows besides the headline, fewer rounds each (tests/bench/rows.py)."""
    options = pair.options
    bench = RowBench(
        service=pair.service,
        ceiling=pair.ceiling,
        redis_port=redis_server.port,
        redis_url=redis_server.url,
        usersig=pair.usersig,
        cpus=pair.cpus,
        workdir=workdir,
        groups=options.groups,
        rounds=options.row_rounds,
        duration=options.row_duration,
        warmup=0 if options.smoke else WARMUP_SECONDS,
        ledger=pair.ledger,
    )
    pair.data["row_settings"] = {"rounds": bench.rounds, "duration": bench.duration, "warmup": bench.warmup}
    pair.data["rows"] = rows_phase(bench, options.rows)


def memory_phase(
    options: Options, data: dict[str, Any], service: Server, usersig: str, ids: list[str], redis_port: int
) -> None:
    """Redis memory per group made through the API, then per bare hash; Redis's cost of bare HINCRBY."""
    inspector = redis.Redis(port=redis_port)
    # Load the scripts and warm the connection before the baseline.
    create_groups(service.port, usersig, ["bench-probe"])
    used_before, keys_before = redis_memory(inspector)
    started = time.monotonic()
    create_groups(service.port, usersig, ids)
    used_after, keys_after = redis_memory(inspector)
    inspector.close()
    memory = Memory(options.groups, used_before, used_after, keys_before, keys_after)
    data["memory"] = {**asdict(memory), "bytes_per_group": memory.bytes_per_group}
    data["memory"]["keys_per_group"] = memory.keys_per_group
    print(
        f"{options.groups:,} groups created in {time.monotonic() - started:.1f} s: "
        f"{memory.bytes_per_group:.1f} bytes/group",
        flush=True,
    )
    bare = [bare_key(SDKAPPID, g) for g in ids]
    data["memory"]["bare"] = bare_hash_memory(redis_port, bare)
    calls = 2_000 if options.smoke else 100_000
    data["redis_baseline"] = hincrby_baseline(redis_port, bare, calls)
    delete_keys(redis_port, bare)
    print(
        f"bare two-field hashes: {data['memory']['bare']['bytes_per_key']:.1f} bytes each; bare HINCRBY "
        f"pipeline: {data['redis_baseline']['us_per_call']:.2f} us of Redis per call",
        flush=True,
    )


def throughput_phase(pair: Pair, meter: RedisMeter) -> None:
    options = pair.options
    warmup = 1 if options.smoke else WARMUP_SECONDS
    pair.data["warmup"] = warmup
    workload = Workload(usersig=pair.usersig, groups=options.groups, cpu=pair.cpus.load, ledger=pair.ledger)
    rounds = paired_rounds(
        pair.ceiling,
        pair.service,
        workload,
        rounds=options.rounds,
        duration=options.duration,
        warmup=warmup,
        meter=meter,
    )
    pair.data["throughput"] = row_summary(rounds)


def openloop_phase(pair: Pair) -> None:
    options, data = pair.options, pair.data
    maximum = data["throughput"]["service"]["rps"]
    points: list[LoadPoint] = []
    for fraction in options.fractions:
        rate = round(maximum * fraction)
        for app, server in (("ceiling", pair.ceiling), ("service", pair.service)):
            point = run_openloop(
                app,
                server.port,
                pair.usersig,
                options.groups,
                fraction,
                rate,
                options.load_duration,
                1.0,
                pair.cpus.load,
            )
            if app == "service":
                pair.ledger.add(point.acked, point.unanswered)
            points.append(point)
            print(
                f"open loop {app}: {rate:,} req/s offered, {point.achieved:,.0f} achieved, "
                f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms",
                flush=True,
            )
    data["load"] = [asdict(p) for p in points]
    half = {p.app: p for p in points if p.fraction == 0.5}
    if "ceiling" in half and "service" in half:
        data["latency_target"] = {
            "rate": half["service"].offered,
            "service_p99_ms": half["service"].p99_ms,
            "ceiling_p99_ms": half["ceiling"].p99_ms,
            "ratio": half["service"].p99_ms / half["ceiling"].p99_ms if half["ceiling"].p99_ms else 0.0,
        }


def workers_phase(
    options: Options, config: Path, workdir: Path, usersig: str, ledger: Ledger
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for workers, key in ((1, "one"), (2, "two")):
        server = service_server(config, workdir, workers=workers, tag="workers-check")
        with running(server):
            server.start(None)
            warm = run_wrk(
                server.port, 1 if options.smoke else WARMUP_SECONDS, usersig, options.groups, None, 2
            )
            run = run_wrk(server.port, options.duration, usersig, options.groups, None, threads=2)
            ledger.add(warm.acked + run.acked, warm.unanswered + run.unanswered)
        results[key] = {"rps": run.rps, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms, "errors": run.errors}
        print(f"workers check: --workers {workers}: {run.rps:,.0f} req/s", flush=True)
    results["ratio"] = results["two"]["rps"] / results["one"]["rps"]
    return results
