"""`make bench`'s "Every command" table: one row per workload, each a ratio to the ceiling
(labels and targets in row_specs.py).

Every row is `--row-rounds` pairs of wrk runs of `--row-duration` seconds, the ceiling and
a service back to back in alternating order (as the headline throughput), with Redis's
cost per call from INFO commandstats around each service run:

  update_warning  update.lua on a second service instance whose config says log_level = "warning"
  get, delete     commands.lua on the main service, over the main groups
  idempotent      update with a fresh Idempotency-Key per call, on the main groups (their ledger)
  rate_limited    update.lua on the config's second app, whose rate_limit never refuses: its
                  own groups, their own exactness check
  create          create_group of a fresh name per call (GroupPool)
  destroy         destroy_group of groups the create runs made before (GroupPool)
  cluster         update.lua on a service on a 3-master Redis Cluster started here, pinned
                  like the bench's own redis-server, its own groups and exactness check
  hot_update      update.lua with every call on one GroupId (a viral stream's like button)
  hot_get         commands.lua's get, every call on that one GroupId
  replicated      update.lua on a service on a master with one replica started here (pinned
                  likewise), the default ack = "primary"
  ack_replicas    the same master, replica and groups, on a service with ack = "replicas"

The headline row, update on the default config, is the throughput phase's (phases.py).
`make bench` calls `rows_phase` (phases.py); the report renders the rows (report.py).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis

from service.api.auth import mint_usersig
from service.storage.keys import group_key
from tests.bench.client import CONNECTIONS, call_each, create_groups, group_ids
from tests.bench.drivers import WrkResult
from tests.bench.exactness import Ledger, exactness_verdict, read_counters
from tests.bench.machine import BenchError, Cpus, pin
from tests.bench.markdown import met, table
from tests.bench.redis_cost import RedisMeter
from tests.bench.rounds import NOISY_SPREAD, Workload, paired_rounds, row_summary, service_run
from tests.bench.row_specs import OPTIONAL_ROWS, ROWS, RowSpec
from tests.bench.servers import (
    ADMIN,
    RATE_LIMITED_SDKAPPID,
    RATE_LIMITED_SECRET_KEY,
    SDKAPPID,
    Server,
    running,
    service_server,
    write_config,
)
from tests.topologies import Cluster, ReplicatedRedis

HERE: Final = Path(__file__).resolve().parent
COMMANDS_SCRIPT: Final = HERE / "commands.lua"
# Destroy runs may go faster than the create runs before them: the pool is topped up first.
POOL_MARGIN: Final = 1.25
GROUP_TAKEN: Final = 10021


@dataclass
class RowBench:
    """What every row needs from the run."""

    service: Server
    ceiling: Server
    redis_port: int
    redis_url: str
    usersig: str
    cpus: Cpus
    workdir: Path
    groups: int
    rounds: int
    duration: int
    warmup: int
    ledger: Ledger  # the main groups'


# --------------------------------------------------------------------------- workloads


@dataclass(kw_only=True)
class IdempotentUpdates(Workload):
    token: str
    runs: int = 0

    def environment(self) -> dict[str, str]:
        # Keys are unique per run: a repeat would be a replay, not the first attempt measured.
        self.runs += 1
        return {"BENCH_WORKLOAD": "idempotent", "BENCH_PREFIX": f"bench-{self.token}-{self.runs}-"}


@dataclass
class GroupPool:
    """The groups create_group makes and destroy_group takes: `prefix` + n, made in order.

    Names below `created` exist (`settle` made sure of it) unless below `destroyed`.
    """

    prefix: str
    service: Server
    usersig: str
    redis_port: int
    created: int = 0
    destroyed: int = 0

    def settle(self, end: int) -> None:
        """Every name up to `end` exists: the calls wrk had in flight at its deadline may or
        may not have been applied, and its first request() only checks the script."""
        names = [f"{self.prefix}{n}" for n in range(self.created, end)]
        client = redis.Redis(port=self.redis_port, socket_timeout=30.0)
        try:
            missing: list[str] = []
            for start in range(0, len(names), 10_000):
                chunk = names[start : start + 10_000]
                pipe = client.pipeline(transaction=False)
                for name in chunk:
                    pipe.exists(group_key(SDKAPPID, name))
                missing += [name for name, found in zip(chunk, pipe.execute(), strict=True) if not found]
        finally:
            client.close()
        bodies: list[dict[str, Any]] = [{"Type": "Public", "Name": "bench", "GroupId": g} for g in missing]
        replies = call_each(self.service.port, self.usersig, "create_group", bodies)
        # A late call of wrk's may have made it meanwhile: taken is as good as made.
        bad = [reply for reply in replies if reply.get("ErrorCode") not in (0, GROUP_TAKEN)]
        if bad:
            raise BenchError(f"create_group of the pool's missing names failed: {bad[0]}")
        self.created = end


@dataclass(kw_only=True)
class CreateGroups(Workload):
    pool: GroupPool
    rate: float = 0.0  # the service's, in its last run

    def environment(self) -> dict[str, str]:
        start = str(self.pool.created)
        return {"BENCH_WORKLOAD": "create", "BENCH_PREFIX": self.pool.prefix, "BENCH_START": start}

    def finish(self, result: WrkResult) -> None:
        self.pool.settle(self.pool.created + result.sent)
        self.rate = result.rps


@dataclass(kw_only=True)
class DestroyGroups(Workload):
    creator: CreateGroups
    fastest: float = 0.0  # the fastest destroy run so far, either app's

    def environment(self) -> dict[str, str]:
        pool = self.creator.pool
        return {"BENCH_WORKLOAD": "destroy", "BENCH_PREFIX": pool.prefix, "BENCH_START": str(pool.destroyed)}

    def run(self, port: int, seconds: int) -> WrkResult:
        result = super().run(port, seconds)
        self.fastest = max(self.fastest, result.rps)
        return result

    def finish(self, result: WrkResult) -> None:
        # Sent is taken, answered or not: a name is never destroyed twice.
        self.creator.pool.destroyed += result.sent

    def prepare(self, seconds: int) -> None:
        """Enough groups for a run as fast as the fastest seen (the ceiling's, as a rule)."""
        pool = self.creator.pool
        needed = math.ceil(max(self.fastest, 1000.0) * seconds * POOL_MARGIN) + 2 * CONNECTIONS
        for _ in range(5):
            deficit = needed - (pool.created - pool.destroyed)
            if deficit <= 0:
                return
            # No create run yet: one second of it tells how fast the service creates.
            fill = math.ceil(deficit / self.creator.rate) if self.creator.rate else 1
            print(f"destroy: {deficit:,} more groups wanted, {fill} s of create_group first", flush=True)
            service_run(pool.service, self.creator, fill)
        raise BenchError(f"destroy: could not create {needed:,} groups to destroy")


# --------------------------------------------------------------------------- rows


def measure_row(
    bench: RowBench, key: str, service: Server, workload: Workload, meter: RedisMeter
) -> dict[str, Any]:
    rounds = paired_rounds(
        bench.ceiling,
        service,
        workload,
        rounds=bench.rounds,
        duration=bench.duration,
        warmup=bench.warmup,
        meter=meter,
        label=f"{key}: ",
    )
    return row_summary(rounds)


def warning_row(bench: RowBench, meter: RedisMeter) -> dict[str, Any]:
    config = bench.workdir / "bench-warning.toml"
    write_config(config, bench.redis_url, log_level="warning")
    server = service_server(config, bench.workdir, tag="service-warning")
    with running(server):
        server.start(bench.cpus.server)
        workload = Workload(
            usersig=bench.usersig, groups=bench.groups, cpu=bench.cpus.load, ledger=bench.ledger
        )
        return measure_row(bench, "update_warning", server, workload, meter)


def rate_limited_row(bench: RowBench, meter: RedisMeter) -> dict[str, Any]:
    usersig = mint_usersig(RATE_LIMITED_SDKAPPID, RATE_LIMITED_SECRET_KEY, ADMIN, expire=86400)
    ids = group_ids(bench.groups)
    create_groups(bench.service.port, usersig, ids, sdkappid=RATE_LIMITED_SDKAPPID)
    ledger = Ledger()
    workload = Workload(
        usersig=usersig,
        groups=bench.groups,
        cpu=bench.cpus.load,
        env={"BENCH_SDKAPPID": str(RATE_LIMITED_SDKAPPID)},
        ledger=ledger,
    )
    row = measure_row(bench, "rate_limited", bench.service, workload, meter)
    totals = read_counters(bench.service.port, usersig, ids, sdkappid=RATE_LIMITED_SDKAPPID)
    row["exactness"] = exactness_verdict(ledger, *totals)
    return row


def cluster_row(bench: RowBench) -> dict[str, Any]:
    print("cluster: starting 3 masters", flush=True)
    cluster = Cluster().start()
    try:
        for node in cluster.nodes:
            assert node.process is not None
            pin(node.process.pid, bench.cpus.load)
        config = bench.workdir / "bench-cluster.toml"
        write_config(config, cluster.url)
        server = service_server(config, bench.workdir, tag="service-cluster")
        meter = RedisMeter([node.port for node in cluster.nodes])
        with running(server):
            server.start(bench.cpus.server)
            ids = group_ids(bench.groups)
            create_groups(server.port, bench.usersig, ids)
            ledger = Ledger()
            workload = Workload(
                usersig=bench.usersig, groups=bench.groups, cpu=bench.cpus.load, ledger=ledger
            )
            row = measure_row(bench, "cluster", server, workload, meter)
            row["exactness"] = exactness_verdict(ledger, *read_counters(server.port, bench.usersig, ids))
        meter.close()
    finally:
        cluster.stop()
    return row


def replicated_rows(bench: RowBench, selected: tuple[str, ...]) -> dict[str, Any]:
    """The replicated and ack_replicas rows, on one master with one replica."""
    print("replicated: starting a master and a replica", flush=True)
    topology = ReplicatedRedis().start()
    rows: dict[str, Any] = {}
    try:
        for node in (topology.master, *topology.replicas):
            assert node is not None
            assert node.process is not None
            pin(node.process.pid, bench.cpus.load)
        meter = RedisMeter([topology.master.port])  # type: ignore[union-attr]
        ids = group_ids(bench.groups)
        ledger = Ledger()  # the two rows share the groups: one check after both
        key = ""
        for key, ack in (("replicated", None), ("ack_replicas", "replicas")):
            if key not in selected:
                continue
            config = bench.workdir / f"bench-{key}.toml"
            write_config(config, topology.url, ack=ack)
            server = service_server(config, bench.workdir, tag=f"service-{key}")
            with running(server):
                server.start(bench.cpus.server)
                if not rows:
                    create_groups(server.port, bench.usersig, ids)
                workload = Workload(
                    usersig=bench.usersig, groups=bench.groups, cpu=bench.cpus.load, ledger=ledger
                )
                rows[key] = measure_row(bench, key, server, workload, meter)
                if key == "ack_replicas" or "ack_replicas" not in selected:
                    rows[key]["exactness"] = exactness_verdict(
                        ledger, *read_counters(server.port, bench.usersig, ids)
                    )
        meter.close()
    finally:
        topology.stop()
    return rows


def command_workloads(bench: RowBench) -> dict[str, Workload]:
    """The rows that drive the main service with commands.lua."""

    def command(name: str) -> Workload:
        return Workload(
            usersig=bench.usersig,
            groups=bench.groups,
            cpu=bench.cpus.load,
            script=COMMANDS_SCRIPT,
            env={"BENCH_WORKLOAD": name},
        )

    pool = GroupPool(f"cd-{secrets.token_hex(4)}-", bench.service, bench.usersig, bench.redis_port)
    creator = CreateGroups(
        usersig=bench.usersig, groups=bench.groups, cpu=bench.cpus.load, script=COMMANDS_SCRIPT, pool=pool
    )
    return {
        "hot_update": Workload(usersig=bench.usersig, groups=1, cpu=bench.cpus.load, ledger=bench.ledger),
        "hot_get": Workload(
            usersig=bench.usersig,
            groups=1,
            cpu=bench.cpus.load,
            script=COMMANDS_SCRIPT,
            env={"BENCH_WORKLOAD": "get"},
        ),
        "get": command("get"),
        "delete": command("delete"),
        "idempotent": IdempotentUpdates(
            usersig=bench.usersig,
            groups=bench.groups,
            cpu=bench.cpus.load,
            script=COMMANDS_SCRIPT,
            ledger=bench.ledger,
            token=secrets.token_hex(4),
        ),
        "create": creator,
        "destroy": DestroyGroups(
            usersig=bench.usersig,
            groups=bench.groups,
            cpu=bench.cpus.load,
            script=COMMANDS_SCRIPT,
            creator=creator,
        ),
    }


def rows_phase(bench: RowBench, selected: tuple[str, ...]) -> dict[str, Any]:
    """Every selected row but the headline (the throughput phase's), in ROWS order."""
    meter = RedisMeter([bench.redis_port])
    workloads = command_workloads(bench)
    rows: dict[str, Any] = {}
    try:
        for key in (key for key in OPTIONAL_ROWS if key in selected):
            if key == "update_warning":
                rows[key] = warning_row(bench, meter)
            elif key == "rate_limited":
                rows[key] = rate_limited_row(bench, meter)
            elif key == "cluster":
                rows[key] = cluster_row(bench)
            elif key in ("replicated", "ack_replicas"):
                if key not in rows:
                    rows.update(replicated_rows(bench, selected))
            else:
                rows[key] = measure_row(bench, key, bench.service, workloads[key], meter)
    finally:
        meter.close()
    return rows


# --------------------------------------------------------------------------- the report


def all_rows(data: dict[str, Any]) -> dict[str, Any]:
    """Every row measured, the headline (the throughput phase's) first."""
    rows: dict[str, Any] = {}
    if data.get("throughput"):
        rows["update"] = data["throughput"]
    rows.update(data.get("rows") or {})
    return rows


def verdict(spec: RowSpec, row: dict[str, Any]) -> str:
    caveat = " (noisy: not conclusive)" if row.get("spread", 1.0) > NOISY_SPREAD else ""
    return f"{row['ratio']:.2f}x — {met(row['ratio'] >= spec.target)}{caveat}"


# (row, against row, least ratio, what): a row's throughput against another's, each as
# its ratio to the ceiling it was measured beside, so the machine's drift between the
# two rows' rounds cancels out.
RELATIVE_TARGETS: Final = (
    ("hot_update", "update", 0.95, "update_group_counter on one hot group ≥ 0.95 x on spread groups"),
    ("ack_replicas", "replicated", 0.80, 'ack = "replicas" ≥ 0.80 x ack = "primary" (update, one replica)'),
)


def target_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, this run) for every row, measured or not, then the rows against each other."""
    rows = all_rows(data)
    out = []
    for spec in ROWS:
        target = f"{spec.label}: service ≥ {spec.target:.2f} x ceiling requests/s"
        row = rows.get(spec.key)
        out.append((target, verdict(spec, row) if row else "not run (`--rows`)"))
    for key, against, least, target in RELATIVE_TARGETS:
        if key in rows and against in rows:
            ratio = rows[key]["ratio"] / rows[against]["ratio"]
            out.append(
                (
                    target + " (each row's ratio to its ceiling)",
                    f"{rows[key]['ratio']:.3f}x / {rows[against]['ratio']:.3f}x = {ratio:.3f} — "
                    f"{met(ratio >= least)}",
                )
            )
        else:
            out.append((target, "not run (`--rows`)"))
    return out


def row_cells(spec: RowSpec, row: dict[str, Any] | None, baseline: dict[str, Any] | None) -> list[str]:
    if not row:
        return [spec.label, "", "", "not run", "", f"≥ {spec.target:.2f}x", "", "", "", "", ""]
    cells = [
        spec.label,
        f"{row['ceiling']['rps']:,.0f}",
        f"{row['service']['rps']:,.0f}",
        f"**{row['ratio']:.2f}x**",
        f"{row.get('errors', row['service']['errors']):.0f} / {row.get('ceiling_errors', 0):.0f}",
        f"≥ {spec.target:.2f}x",
        met(row["ratio"] >= spec.target),
    ]
    cost = row.get("redis")
    if not cost:  # a report from before Redis was metered
        return [*cells, "", "", "", ""]
    return [
        *cells,
        f"{cost['us_per_call']:.1f}",
        f"{cost['us_per_call'] / baseline['us_per_call']:.1f}x" if baseline else "",
        f"{cost['cpu_us_per_call']:.1f}",
        f"{cost['commands_per_call']:.2f}",
    ]


def intro(data: dict[str, Any]) -> list[str]:
    settings = data.get("row_settings") or {}
    baseline = data.get("redis_baseline")
    bare = (
        f": **{baseline['us_per_call']:.2f} µs** of commandstats time and "
        f"{baseline['cpu_us_per_call']:.2f} µs of Redis CPU per equivalent call, "
        f"over {baseline['calls']:,} calls"
        if baseline
        else ""
    )
    return [
        "One row per workload, each against the ceiling measured in the same run, the ceiling "
        "getting the very same requests (wrk, 64 connections, 1 thread; tests/bench/update.lua "
        "and tests/bench/commands.lua). The ratio is the median of the rounds' ratios, each round "
        "a ceiling run and a service run back to back in alternating order. The headline row is the "
        f"throughput above ({data['rounds']} rounds of {data['duration']} s); the others are "
        f"{settings.get('rounds', '?')} rounds of {settings.get('duration', '?')} s after a "
        f"{settings.get('warmup', '?')} s warm-up of each (`--row-rounds`, `--row-duration`). "
        "Errors: replies other than ErrorCode 0 plus socket errors, over the measured rounds, "
        "service / ceiling.",
        "",
        "**Redis cost per call**: `CONFIG RESETSTAT` before each service run, then `INFO commandstats`: "
        "the `usec` of the script commands the service sent (EVALSHA, EVAL and their kin; the "
        "commands a script runs are inside that time, not added again) over the calls answered, "
        "the median of the rounds; on the Cluster, summed over the masters. *x bare* compares it "
        "with a pipeline of bare `HINCRBY` (a += 1 and b += 2 on two-field hashes, sent with "
        f"redis-py, measured the same way){bare}. *Redis CPU* is the process's user + system CPU "
        "(INFO cpu) per call: it adds reading, parsing and answering, which commandstats leaves out. "
        "Both are taken while wrk shares Redis's CPU, so both include some of Redis being "
        "interrupted. *Scripts/call* is how many script commands each call cost (a little over 1 "
        "when wrk's last calls, in flight at its deadline, ran but were never answered).",
        "",
    ]


def render(data: dict[str, Any]) -> list[str]:
    out = ["## Every command", ""]
    rows = all_rows(data)
    if not rows:
        return [*out, "Not run.", ""]
    out += intro(data)
    headers = ["workload", "ceiling req/s", "service req/s", "ratio", "errors", "target", "verdict"]
    headers += ["Redis µs/call", "x bare", "Redis CPU µs/call", "scripts/call"]
    baseline = data.get("redis_baseline")
    out += table(headers, [row_cells(spec, rows.get(spec.key), baseline) for spec in ROWS])
    out += ["", "How each row calls:", ""]
    out += [f"- **{spec.label}**: {spec.how}." for spec in ROWS]
    noisy = [spec.label for spec in ROWS if rows.get(spec.key, {}).get("spread", 1.0) > NOISY_SPREAD]
    if noisy:
        out += [
            "",
            f"Noisy rows (an app's fastest round over {NOISY_SPREAD:.1f}x its slowest): "
            + ", ".join(noisy)
            + ". Their ratios are what was measured, not conclusive.",
        ]
    return [*out, ""]


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The table for the console, after the headline's."""
    rows = all_rows(data)
    if not rows:
        return []
    baseline = data.get("redis_baseline")
    lines = [
        "",
        f"{'workload':54} {'ceiling':>9} {'service':>9} {'ratio':>6} {'target':>6} "
        f"{'errors':>9} {'redis us':>9} {'x bare':>7}",
    ]
    for spec in ROWS:
        row = rows.get(spec.key)
        if not row:
            lines.append(f"{spec.label:54} not run")
            continue
        cost = row.get("redis") or {}
        us = cost.get("us_per_call")
        times = f"{us / baseline['us_per_call']:.1f}x" if us is not None and baseline else ""
        errors = f"{row.get('errors', 0):.0f}/{row.get('ceiling_errors', 0):.0f}"
        lines.append(
            f"{spec.label:54} {row['ceiling']['rps']:>9,.0f} {row['service']['rps']:>9,.0f} "
            f"{row['ratio']:>5.2f}x {spec.target:>5.2f}x {errors:>9} "
            f"{'' if us is None else f'{us:.1f}':>9} {times:>7}"
        )
    if baseline:
        lines.append(
            f"bare HINCRBY pipeline (a += 1, b += 2): {baseline['us_per_call']:.2f} us of Redis per call "
            f"(commandstats), {baseline['cpu_us_per_call']:.2f} us of Redis CPU"
        )
    return lines
