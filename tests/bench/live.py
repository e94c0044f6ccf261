"""Live counters in `make bench`: delivery to watchers, memory per watcher, the cost of publication.

python -m tests.bench.live [--watchers 1000,10000] [--rate 100] [--seconds 10] [--rounds 5]

Three measurements, each side by side in one run, the service pinned to one CPU and
everything else (redis-server, wrk, the watcher client) to the other, as `make bench`:

1. delivery: for each watcher count, one service (one worker) with that many watchers of
   one group (tests/bench/watchers.py), updated at `--rate` calls/s for `--seconds`:
   latency from each update's acknowledgement to its arrival at 100 probe watchers, p50
   and p99, and every version each probe missed (must be none); then, beside it, the
   machine's floor for that many watchers (tests/bench/floor.py): the median time of
   one bare write to each of as many loopback sockets, the least a pass can take;
2. memory: the worker's VmRSS with the watchers connected and idle, against before they
   connected, per watcher;
3. publication: wrk's update workload (`make bench`'s) on a service with
   `live_counters = true` and no watchers against one with `live_counters = false`,
   pairs of runs in alternating order; the ratio is the median of the pairs' ratios.

`make bench` calls `live_phase`; run alone, this prints its figures and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from service.api.auth import mint_usersig
from tests.bench.client import create_groups, group_ids
from tests.bench.drivers import WrkResult, run_wrk
from tests.bench.exactness import Ledger
from tests.bench.floor import floor_pass
from tests.bench.machine import BenchError, Cpus
from tests.bench.rounds import NOISY_SPREAD, spread, summarise_rounds
from tests.bench.servers import (
    ADMIN,
    SDKAPPID,
    SECRET_KEY,
    Server,
    rss_kib,
    running,
    service_server,
    write_config,
)
from tests.support import RedisServer

LIVE_GROUP: Final = "bench-live"
TARGETS: Final = {
    "watchers": "10,000 watchers on one worker at ≤ 32 KB RSS each",
    "delivery": "delivery p99 ≤ 100 ms at 100 updates/s to one group with 10,000 watchers",
    "publication": "update throughput with publication on, no watchers ≥ 0.97 x publication off",
}


def _live_config(path: Path, redis_url: str, live: bool) -> None:
    # As measured since live counters came: without access lines, which would weigh on
    # publication on and off alike and blur their ratio.
    write_config(path, redis_url, log_level="warning")
    text = path.read_text()
    path.write_text(f"live_counters = {'true' if live else 'false'}\n" + text)


def delivery(
    redis_url: str,
    workdir: Path,
    usersig: str,
    cpus: Cpus,
    watchers: int,
    rate: float,
    seconds: float,
    on_start: Callable[[Server], None] | None = None,
) -> dict[str, Any]:
    """`on_start` is told the service once it runs (`make profile` samples it)."""
    config = workdir / f"live-{watchers}.toml"
    _live_config(config, redis_url, live=True)
    service = service_server(config, workdir, tag=f"live-{watchers}")
    with running(service):
        service.start(cpus.server)
        if on_start is not None:
            on_start(service)
        group = f"{LIVE_GROUP}-{watchers}"
        create_groups(service.port, usersig, [group])
        time.sleep(0.5)
        rss_before = rss_kib(service.pid)
        client = subprocess.Popen(
            [
                *Cpus.prefix(cpus.load),
                sys.executable,
                "-m",
                "tests.bench.watchers",
                *("--port", str(service.port), "--usersig", usersig, "--group", group),
                *("--watchers", str(watchers), "--rate", str(rate), "--seconds", str(seconds), "--hold"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None
        assert client.stdout is not None
        connected = client.stdout.readline()
        if not connected:
            client.wait(30)
            raise BenchError(f"the watcher client failed (exit {client.returncode})")
        time.sleep(1.0)  # let the allocator settle
        rss_with = rss_kib(service.pid)
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        client.wait(60)
        if client.returncode != 0 or not line:
            raise BenchError(f"the watcher client failed (exit {client.returncode})")
    result: dict[str, Any] = json.loads(line)
    result["rss_before_kib"] = rss_before
    result["rss_with_kib"] = rss_with
    result["rss_per_watcher_bytes"] = (rss_with - rss_before) * 1024 / watchers
    return result


def publication(
    redis_url: str,
    workdir: Path,
    usersig: str,
    cpus: Cpus,
    rounds: int,
    duration: int,
    groups: int,
    ledger: Ledger,
) -> dict[str, Any]:
    servers = {}
    for live in (True, False):
        config = workdir / f"publication-{live}.toml"
        _live_config(config, redis_url, live)
        servers[live] = service_server(config, workdir, tag=f"publication-{'on' if live else 'off'}")
    on, off = servers[True], servers[False]
    with running(on, off):
        on.start(cpus.server)
        off.start(cpus.server)
        for server in (on, off):
            ledger.add(*_warm(run_wrk(server.port, 2, usersig, groups, cpus.load)))
        on_runs: list[WrkResult] = []
        off_runs: list[WrkResult] = []
        for number in range(1, rounds + 1):
            order = (on, off) if number % 2 else (off, on)
            runs = {
                server.port: run_wrk(server.port, duration, usersig, groups, cpus.load) for server in order
            }
            on_run, off_run = runs[on.port], runs[off.port]
            for run in (on_run, off_run):
                ledger.add(run.acked, run.unanswered)
            on_runs.append(on_run)
            off_runs.append(off_run)
            print(
                f"publication round {number}/{rounds}: "
                f"on {on_run.rps:,.0f} req/s, off {off_run.rps:,.0f} req/s",
                flush=True,
            )
    return {
        "on": summarise_rounds(on_runs),
        "off": summarise_rounds(off_runs),
        "ratio": statistics.median(a.rps / b.rps for a, b in zip(on_runs, off_runs, strict=True)),
        "on_rounds": [r.rps for r in on_runs],
        "off_rounds": [r.rps for r in off_runs],
        "spread": max(spread(on_runs), spread(off_runs)),
        "rounds": rounds,
        "duration": duration,
    }


def _warm(run: WrkResult) -> tuple[int, int]:
    return run.acked, run.unanswered


def live_phase(
    redis_url: str,
    workdir: Path,
    usersig: str,
    cpus: Cpus,
    ledger: Ledger,
    *,
    watcher_counts: tuple[int, ...],
    rate: float,
    seconds: float,
    rounds: int,
    duration: int,
    groups: int,
    floor_seconds: float = 5.0,
) -> dict[str, Any]:
    data: dict[str, Any] = {"delivery": []}
    for count in watcher_counts:
        print(f"live: {count:,} watchers, {rate:.0f} updates/s for {seconds:.0f} s", flush=True)
        point = delivery(redis_url, workdir, usersig, cpus, count, rate, seconds)
        point["floor"] = floor_pass(cpus, count, seconds=floor_seconds)
        print(
            f"live: {count:,} watchers: p50 {point['p50_ms']:.1f} ms, p99 {point['p99_ms']:.1f} ms, "
            f"missing {point['missing']}, cut off {point['cut_off']}, "
            f"{point['rss_per_watcher_bytes'] / 1024:.1f} KiB RSS per watcher; "
            f"its mean pass over them {point['pass_ms_mean']:.1f} ms, "
            f"the machine's floor (a bare pass over {count:,} sockets) {point['floor']['pass_ms']:.1f} ms",
            flush=True,
        )
        data["delivery"].append(point)
    data["publication"] = publication(redis_url, workdir, usersig, cpus, rounds, duration, groups, ledger)
    print(f"live: publication on/off {data['publication']['ratio']:.3f}x", flush=True)
    return data


def target_rows(live: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    points = {point["watchers"]: point for point in live.get("delivery", [])}
    largest = points.get(max(points)) if points else None
    if largest is not None:
        per = largest["rss_per_watcher_bytes"] / 1024
        rows.append(
            (
                TARGETS["watchers"],
                f"{largest['watchers']:,} watchers: {per:.1f} KiB each — "
                + ("met" if largest["watchers"] >= 10_000 and per <= 32 else "**not met**"),
            )
        )
        ok = largest["watchers"] >= 10_000 and largest["p99_ms"] <= 100 and not largest["missing"]
        floor = largest.get("floor")
        below = (
            f"; this machine's floor, one bare write to each of {largest['watchers']:,} sockets, "
            f"is {floor['pass_ms']:.1f} ms a pass"
            + (" (over the target itself)" if floor["pass_ms"] > 100 else "")
            if floor
            else ""
        )
        rows.append(
            (
                TARGETS["delivery"],
                f"p99 {largest['p99_ms']:.1f} ms, {largest['missing']} missed — "
                + ("met" if ok else "**not met**")
                + below,
            )
        )
    publication_data = live.get("publication")
    if publication_data:
        ratio = publication_data["ratio"]
        caveat = " (noisy run: not conclusive)" if publication_data["spread"] > NOISY_SPREAD else ""
        rows.append(
            (
                TARGETS["publication"],
                f"{ratio:.3f}x — " + ("met" if ratio >= 0.97 else "**not met**") + caveat,
            )
        )
    return rows


def render(live: dict[str, Any]) -> list[str]:
    out = ["## Live counters", ""]
    if not live:
        return [*out, "Not run.", ""]
    out += [
        "tests/bench/live.py. **Delivery**: one service worker (pinned) with N watchers of one group "
        "(tests/bench/watchers.py, one uvloop process pinned with redis-server on the other CPU); one "
        "writer sends Increase to that group on a fixed schedule; latency is from each update's "
        "acknowledgement (the writer's reply) to the arrival of its version at each of 100 probe "
        "watchers (a notice can arrive before the writer reads its own reply: such latencies count as "
        "negative). **RSS per watcher**: the worker's VmRSS with the watchers connected and idle, minus "
        "before they connected, over N. **Publication**: `make bench`'s wrk update workload on a service "
        "with `live_counters = true` (no watchers) and one with `false`, pairs of runs in alternating order. "
        "**Floor**: right after each delivery run, tests/bench/floor.py: a bare loop of one 2 KiB "
        "os.write to each of as many loopback sockets, pinned like the service, read like the "
        "watchers; its median pass is the least time in which any one process can write once to "
        "every watcher, so the least p99 a server that delivers within one pass can show. "
        "**Service: mean pass**: the service's own group_counter_delivery_pass_seconds over the "
        "run (sum / count, from its /metrics).",
        "",
        "| watchers | updates/s | p50 (ms) | p99 (ms) | max (ms) | missed versions | cut off "
        "| RSS per watcher | service: mean pass (ms) | floor: bare pass (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point in live.get("delivery", []):
        floor = point.get("floor")
        floor_ms = f"{floor['pass_ms']:.1f}" if floor else "—"
        pass_ms = f"{point['pass_ms_mean']:.1f}" if point.get("passes") else "—"
        out.append(
            f"| {point['watchers']:,} | {point['achieved_rate']:.0f} | {point['p50_ms']:.1f} "
            f"| {point['p99_ms']:.1f} "
            f"| {point['max_ms']:.1f} | {point['missing']} | {point['cut_off']} "
            f"| {point['rss_per_watcher_bytes'] / 1024:.1f} KiB "
            f"| {pass_ms} | {floor_ms} |"
        )
    publication_data = live.get("publication")
    if publication_data:
        out += [
            "",
            "| publication | requests/s | p50 (ms) | p99 (ms) | errors |",
            "|---|---|---|---|---|",
        ]
        for name in ("on", "off"):
            row = publication_data[name]
            out.append(
                f"| {name} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['errors']:.0f} |"
            )
        rounds = ", ".join(
            f"{a:,.0f}/{b:,.0f}"
            for a, b in zip(publication_data["on_rounds"], publication_data["off_rounds"], strict=True)
        )
        out += [
            "",
            f"ratio on / off: **{publication_data['ratio']:.3f}x** "
            f"(median of {publication_data['rounds']} pairs "
            f"of {publication_data['duration']} s; on/off per round: {rounds}; spread "
            f"{publication_data['spread']:.2f}).",
        ]
    out += ["", "| target | this run |", "|---|---|"]
    rows = target_rows(live)
    out += [f"| {target} | {result} |" for target, result in rows]
    if any("not met" in result for _, result in rows):
        out += [
            "",
            "[docs/performance.md](docs/performance.md) explains the gap with a profile (`make profile`).",
        ]
    out.append("")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.live", description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", default="1000,10000", help="watcher counts, comma-separated")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--groups", type=int, default=1000)
    args = parser.parse_args()
    cpus = Cpus.pick()
    workdir = Path(tempfile.mkdtemp(prefix="group-counter-live-"))
    usersig = mint_usersig(SDKAPPID, SECRET_KEY, ADMIN, expire=86400)
    redis_server = RedisServer().start()
    try:
        assert redis_server.process is not None
        if cpus.load is not None:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(cpus.load), str(redis_server.process.pid)],
                check=True,
                capture_output=True,
            )
        config = workdir / "setup.toml"
        write_config(config, redis_server.url)
        setup = service_server(config, workdir, tag="setup")
        with running(setup):
            setup.start(None)
            create_groups(setup.port, usersig, group_ids(args.groups))
        live = live_phase(
            redis_server.url,
            workdir,
            usersig,
            cpus,
            Ledger(),
            watcher_counts=tuple(int(n) for n in args.watchers.split(",")),
            rate=args.rate,
            seconds=args.seconds,
            rounds=args.rounds,
            duration=args.duration,
            groups=args.groups,
        )
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    finally:
        redis_server.stop()
    print("\n".join(render(live)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
