"""`make bench`: the service against the ceiling app, side by side, on this machine.

python -m tests.bench.run [--duration S] [--rounds N] [--groups N] [--smoke] [--soak SECONDS]
                          [--soak-only] [--workers-check] [--rows all|none|KEY,...]
                          [--row-rounds N] [--row-duration S] [--out BENCHMARKS.md] [--chart PATH]

Starts its own redis-server on a free port, the service as shipped (`python -m service` on the
default config: uvicorn, uvloop, httptools, one JSON access line per call on stdout, which goes
to a log file; one worker) and the ceiling (tests/bench/ceiling.py under uvicorn with the same
server settings, no access log). Both servers are pinned to one CPU with `taskset`, wrk, the
rate-controlled driver and redis-server to another, so the two apps get the same core and the load generator
does not steal from it. Then:

1. creates the groups through the API and measures Redis `used_memory` per group holding two
   counters (metadata included), beside bare two-field hashes measured the same way, and
   Redis's cost of a bare HINCRBY pipeline (tests/bench/redis_cost.py);
2. runs wrk (64 connections, one thread) on the ceiling and the service, back to back in
   alternating order, for `--rounds` rounds after a warm-up of each, and reports medians of
   requests/s, p50, p99 and errors, and the ratio service/ceiling: the median of the rounds'
   ratios, robust to a machine whose speed drifts during the run;
3. sweeps offered rates (25, 50, 75, 90 % of the service's measured maximum) with the open-loop
   driver tests/bench/openloop.js on both apps, for p50/p99 against offered load and a chart;
4. measures every other command the same way, fewer rounds each (tests/bench/rows.py): update
   with log_level "warning", get, delete, create, destroy, update with an Idempotency-Key, on a
   rate-limited app and on a 3-master Redis Cluster; with Redis's cost per call beside each;
5. optionally, `--workers-check`: one worker against two (unpinned), and `--soak`: the worker's
   RSS under a long wrk run;
6. checks exactness: every counter's final value against the increments the load generators
   saw acknowledged (the main groups, the rate-limited app's and the Cluster's).

It writes the figures to `--out` (BENCHMARKS.md) and a PNG chart next to it. No target is
enforced here: the tool reports met / not met, and exits non-zero only when it could not
measure or when the exactness check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
import redis

from service.api.auth import mint_usersig
from tests.bench.redis_cost import (
    RedisMeter,
    bare_hash_memory,
    bare_key,
    delete_keys,
    hincrby_baseline,
)
from tests.support import RedisServer, free_port, stop_process

SDKAPPID: Final = 1400000000
SECRET_KEY: Final = "bench-secret-key-not-for-production"
ADMIN: Final = "administrator"
# A second app in the config, for the rate-limited row (tests/bench/rows.py).
RATE_LIMITED_SDKAPPID: Final = 1400000001
RATE_LIMITED_SECRET_KEY: Final = "bench-rate-limited-secret-key-not-for-production"
NEVER_REFUSES: Final = 1_000_000_000  # calls per second: every call is counted, none refused
CONNECTIONS: Final = 64
WARMUP_SECONDS: Final = 2
LOAD_FRACTIONS: Final = (0.25, 0.5, 0.75, 0.9)
SOAK_SAMPLE_SECONDS: Final = 10.0
API: Final = "/v4/group_open_http_svc"

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent.parent
WRK_SCRIPT: Final = HERE / "update.lua"
OPENLOOP_SCRIPT: Final = HERE / "openloop.js"
DATA_MARK: Final = "<!-- bench-data: "

TARGETS: Final = {
    "latency": "service p99 ≤ 2 x ceiling p99 at half the service's maximum rate",
    "workers": "2 worker processes ≥ 1.7 x one worker",
    "memory": "Redis ≤ 160 bytes per group with two counters (10,000+ groups)",
    "soak": "worker RSS growth < 10 % over a 5-minute load",
    "exactness": "final counters = sum of acknowledged increments (every set of groups)",
}


class BenchError(RuntimeError):
    """The benchmark could not measure something; the message says what to do."""


# --------------------------------------------------------------------------- the machine


@dataclass
class Cpus:
    """Where things run: the servers under test on `server`, the load and Redis on `load`."""

    server: int | None
    load: int | None
    note: str

    @staticmethod
    def pick() -> Cpus:
        allowed = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") is None:
            return Cpus(None, None, "taskset is missing (util-linux): nothing pinned")
        if len(allowed) < 2:
            return Cpus(None, None, f"only {len(allowed)} CPU available: nothing pinned")
        return Cpus(
            allowed[0],
            allowed[1],
            f"servers under test pinned to CPU {allowed[0]}; wrk, the open-loop driver and "
            f"redis-server pinned to CPU {allowed[1]} (taskset)",
        )

    @staticmethod
    def prefix(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def machine_facts() -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvicorn": importlib.metadata.version("uvicorn"),
        "starlette": importlib.metadata.version("starlette"),
        "redis-server": command_version(["redis-server", "--version"]).split(" sha=")[0],
        "wrk": command_version(["wrk", "--version"]).split(" Copyright")[0],
        "node": command_version(["node", "--version"]),
    }


def require_tools(need_node: bool) -> None:
    if shutil.which("wrk") is None:
        raise BenchError(
            "wrk is not installed: run `make bench` as root (it installs it) or `sudo apt-get install wrk`"
        )
    if shutil.which("redis-server") is None:
        raise BenchError(
            "redis-server is not installed: `make redis-server` or `sudo apt-get install redis-server`"
        )
    if need_node and shutil.which("node") is None:
        raise BenchError(
            "node is not installed (the open-loop driver tests/bench/openloop.js needs it): "
            "`sudo apt-get install nodejs`"
        )


# --------------------------------------------------------------------------- the servers


@dataclass
class Server:
    """A server under test: a child process answering HTTP on a loopback port."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    ready_method: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    cwd: Path = ROOT  # another checkout runs another version of the service

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, cpu: int | None) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*Cpus.prefix(cpu), *self.argv],
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()
        return self

    def _wait_ready(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                break
            request = urllib.request.Request(url, data=b"{}" if self.ready_method == "POST" else None)
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise BenchError(f"{self.name} did not answer on port {self.port}; its log ends:\n{tail}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15)
        self.process = None


def service_server(config: Path, workdir: Path, workers: int = 1, tag: str = "service") -> Server:
    port = free_port()
    return Server(
        name=f"{tag} (--workers {workers})",
        argv=[
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--config",
            str(config),
            "--workers",
            str(workers),
        ],
        port=port,
        ready_path="/readyz",
        ready_method="GET",
        log=workdir / f"{tag}-{workers}.log",
    )


def ceiling_server(workdir: Path) -> Server:
    port = free_port()
    return Server(
        name="ceiling",
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "tests.bench.ceiling:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            # as `python -m service` runs uvicorn: nothing reads the client address
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
        port=port,
        ready_path="/",
        ready_method="POST",
        log=workdir / "ceiling.log",
    )


def write_config(path: Path, redis_url: str, log_level: str | None = None) -> None:
    """The bench's apps on `redis_url`; everything else the service's defaults, unless
    `log_level` says otherwise (the default logs one JSON access line per call)."""
    path.write_text(
        f'redis_url = "{redis_url}"\n'
        + (f'log_level = "{log_level}"\n' if log_level else "")
        + "\n[[apps]]\n"
        f"sdkappid = {SDKAPPID}\n"
        f'secret_key = "{SECRET_KEY}"\n'
        f'admins = ["{ADMIN}"]\n'
        'groups = "registered"\n'
        "\n[[apps]]\n"
        f"sdkappid = {RATE_LIMITED_SDKAPPID}\n"
        f'secret_key = "{RATE_LIMITED_SECRET_KEY}"\n'
        f'admins = ["{ADMIN}"]\n'
        'groups = "registered"\n'
        f"rate_limit = {NEVER_REFUSES}\n"
    )


# --------------------------------------------------------------------------- the API client


def query_string(usersig: str, sdkappid: int = SDKAPPID) -> str:
    return f"sdkappid={sdkappid}&identifier={ADMIN}&usersig={usersig}&random=12345&contenttype=json"


async def _calls(
    port: int, usersig: str, command: str, bodies: list[dict[str, Any]], sdkappid: int
) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}{API}/{command}?{query_string(usersig, sdkappid)}"
    limits = httpx2.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    replies: list[dict[str, Any]] = [{} for _ in bodies]
    next_index = 0

    async def worker(client: httpx2.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            index = next_index
            next_index += 1
            response = await client.post(url, content=json.dumps(bodies[index]).encode())
            response.raise_for_status()
            replies[index] = response.json()

    async with httpx2.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONNECTIONS)))
    return replies


def call_each(
    port: int, usersig: str, command: str, bodies: list[dict[str, Any]], sdkappid: int = SDKAPPID
) -> list[dict[str, Any]]:
    """One call per body, 64 at a time; the replies in the bodies' order, whatever they say."""
    return asyncio.run(_calls(port, usersig, command, bodies, sdkappid))


def call_all(
    port: int, usersig: str, command: str, bodies: list[dict[str, Any]], sdkappid: int = SDKAPPID
) -> list[dict[str, Any]]:
    replies = call_each(port, usersig, command, bodies, sdkappid)
    bad = [reply for reply in replies if reply.get("ErrorCode") != 0]
    if bad:
        raise BenchError(f"{command}: {len(bad)} of {len(replies)} calls failed, the first: {bad[0]}")
    return replies


def group_ids(groups: int) -> list[str]:
    return [f"bench-{n}" for n in range(groups)]


def create_groups(port: int, usersig: str, ids: list[str], sdkappid: int = SDKAPPID) -> None:
    bodies = [{"Type": "Public", "Name": "bench", "GroupId": g} for g in ids]
    call_all(port, usersig, "create_group", bodies, sdkappid)
    zero = [{"Key": "a", "Value": 0}, {"Key": "b", "Value": 0}]
    call_all(
        port,
        usersig,
        "update_group_counter",
        [{"GroupId": g, "Mode": "Set", "GroupCounter": zero} for g in ids],
        sdkappid,
    )


# --------------------------------------------------------------------------- Redis memory


@dataclass
class Memory:
    groups: int
    used_before: int
    used_after: int
    keys_before: int
    keys_after: int

    @property
    def bytes_per_group(self) -> float:
        return (self.used_after - self.used_before) / self.groups

    @property
    def keys_per_group(self) -> float:
        return (self.keys_after - self.keys_before) / self.groups


def redis_memory(client: redis.Redis) -> tuple[int, int]:
    info: dict[str, Any] = client.info("memory")
    keys: int = client.dbsize()
    return int(info["used_memory"]), keys


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    requests: int
    acked: int
    failed: int
    socket_errors: int
    sent: int
    p50_ms: float
    p99_ms: float

    @property
    def errors(self) -> int:
        return self.failed + self.socket_errors

    @property
    def answered(self) -> int:
        return self.acked + self.failed

    @property
    def unanswered(self) -> int:
        """Calls written whose answer wrk never read: in flight at its deadline, or lost to an error."""
        return max(0, self.sent - self.acked - self.failed)


_BENCH_LINE: Final = re.compile(r"^BENCH (.*)$", re.MULTILINE)
_RPS_LINE: Final = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)


def run_wrk(
    port: int,
    seconds: int,
    usersig: str,
    groups: int,
    cpu: int | None,
    threads: int = 1,
    *,
    script: Path = WRK_SCRIPT,
    env: dict[str, str] | None = None,
) -> WrkResult:
    """wrk with `script` (update.lua unless said), set up by BENCH_* variables; `env` adds or overrides."""
    argv = [
        *Cpus.prefix(cpu),
        "wrk",
        f"-t{threads}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    environment = {
        **os.environ,
        "BENCH_GROUPS": str(groups),
        "BENCH_SDKAPPID": str(SDKAPPID),
        "BENCH_IDENTIFIER": ADMIN,
        "BENCH_USERSIG": usersig,
        **(env or {}),
    }
    done = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    bench = _BENCH_LINE.search(done.stdout)
    rps = _RPS_LINE.search(done.stdout)
    if done.returncode != 0 or bench is None or rps is None:
        raise BenchError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    fields = dict(item.split("=", 1) for item in bench.group(1).split())
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(fields["requests"]),
        acked=int(fields["acked"]),
        failed=int(fields["failed"]),
        socket_errors=int(fields["socket_errors"]),
        sent=int(fields.get("sent", fields["requests"])),
        p50_ms=int(fields["p50_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
    )


# --------------------------------------------------------------------------- open loop


@dataclass
class LoadPoint:
    app: str
    fraction: float
    offered: float
    achieved: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    acked: int
    failed: int
    errors: int
    unanswered: int


def run_openloop(
    app: str,
    port: int,
    usersig: str,
    groups: int,
    fraction: float,
    rate: float,
    seconds: float,
    warmup: float,
    cpu: int | None,
) -> LoadPoint:
    config = {
        "port": port,
        "path": f"{API}/update_group_counter?{query_string(usersig)}",
        "rate": rate,
        "duration": seconds,
        "warmup": warmup,
        "groups": groups,
        "connections": CONNECTIONS,
    }
    argv = [*Cpus.prefix(cpu), "node", str(OPENLOOP_SCRIPT), json.dumps(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(
            f"the open-loop driver failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadPoint(
        app=app,
        fraction=fraction,
        offered=float(result["offered"]),
        achieved=float(result["achieved"]),
        p50_ms=float(result["p50_ms"]),
        p90_ms=float(result["p90_ms"]),
        p99_ms=float(result["p99_ms"]),
        max_ms=float(result["max_ms"]),
        acked=int(result["acked"]),
        failed=int(result["failed"]),
        errors=int(result["errors"]) + int(result.get("not_sent", 0)),
        unanswered=int(result["unanswered"]),
    )


# --------------------------------------------------------------------------- exactness


@dataclass
class Ledger:
    """What the load generators saw of the service's Increase calls (a += 1, b += 2)."""

    acked: int = 0
    unanswered: int = 0

    def add(self, acked: int, unanswered: int) -> None:
        self.acked += acked
        self.unanswered += unanswered


def read_counters(port: int, usersig: str, ids: list[str], sdkappid: int = SDKAPPID) -> tuple[int, int, int]:
    """Sum of a, sum of b, and how many groups break b == 2a (each call moves both or neither)."""
    replies = call_all(port, usersig, "get_group_counter", [{"GroupId": g} for g in ids], sdkappid)
    total_a = total_b = torn = 0
    for reply in replies:
        values = {item["Key"]: int(item["Value"]) for item in reply.get("GroupCounter") or []}
        a, b = values.get("a", 0), values.get("b", 0)
        total_a += a
        total_b += b
        torn += b != 2 * a
    return total_a, total_b, torn


def exactness_verdict(ledger: Ledger, total_a: int, total_b: int, torn: int) -> dict[str, Any]:
    """PASS when a's total is the acknowledged calls plus at most the calls whose answer was never read.

    wrk stops at its deadline with up to one call per connection in flight: the service may
    have applied it, but no client saw the answer. Those are counted (`unanswered`) and allowed,
    nothing more: a lost acknowledged increment, a double increment or a torn update fails.
    """
    applied_unanswered = total_a - ledger.acked
    ok = 0 <= applied_unanswered <= ledger.unanswered and total_b == 2 * total_a and torn == 0
    return {
        "verdict": "PASS" if ok else "FAIL",
        "acked": ledger.acked,
        "unanswered": ledger.unanswered,
        "sum_a": total_a,
        "sum_b": total_b,
        "torn_groups": torn,
        "applied_unanswered": applied_unanswered,
    }


# --------------------------------------------------------------------------- soak


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def soak(
    server: Server, seconds: int, usersig: str, groups: int, cpu: int | None, ledger: Ledger
) -> dict[str, Any]:
    """wrk for `seconds`; the worker's RSS every 10 s; growth from the end of the warm-up."""
    warmup = min(30.0, seconds / 5)
    samples: list[tuple[float, int]] = [(0.0, rss_kib(server.pid))]
    result: list[WrkResult] = []
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            result.append(run_wrk(server.port, seconds, usersig, groups, cpu))
        except BaseException as exc:  # reported below, in the main thread
            failure.append(exc)

    thread = threading.Thread(target=drive, daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(SOAK_SAMPLE_SECONDS)
        elapsed = time.monotonic() - started
        if thread.is_alive() or elapsed <= seconds + 1:
            samples.append((round(elapsed, 1), rss_kib(server.pid)))
    if failure:
        raise failure[0]
    run = result[0]
    ledger.add(run.acked, run.unanswered)
    after_warmup = [s for s in samples if s[0] >= warmup] or samples[-1:]
    base = after_warmup[0][1]
    last = samples[-1][1]
    return {
        "seconds": seconds,
        "warmup_seconds": warmup,
        "rps": run.rps,
        "errors": run.errors,
        "rss_start_kib": samples[0][1],
        "rss_after_warmup_kib": base,
        "rss_last_kib": last,
        "rss_max_kib": max(s[1] for s in samples),
        "growth_pct": (last - base) / base * 100,
        "samples": samples,
        "date": now_text(),
    }


# --------------------------------------------------------------------------- chart


def draw_chart(points: list[LoadPoint], path: Path) -> str | None:
    """p50/p99 against offered load, ceiling and service; None when drawn, else why not."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return "matplotlib is not installed (`pip install -e '.[bench]'`): no chart"
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    styles = {"ceiling": "tab:blue", "service": "tab:red"}
    for app, colour in styles.items():
        mine = sorted((p for p in points if p.app == app), key=lambda p: p.offered)
        if not mine:
            continue
        offered = [p.offered for p in mine]
        axes.plot(offered, [p.p99_ms for p in mine], "o-", color=colour, label=f"{app} p99")
        axes.plot(offered, [p.p50_ms for p in mine], "s--", color=colour, alpha=0.7, label=f"{app} p50")
    axes.set_xlabel("offered load (requests/s, open loop)")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.set_title("update_group_counter (Increase, 2 keys) vs the ceiling app, one process")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return None


# --------------------------------------------------------------------------- the report


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


NOISY_SPREAD: Final = 1.2


def spread(runs: list[WrkResult]) -> float:
    """Fastest round over slowest: near 1 on a quiet machine."""
    rates = [r.rps for r in runs]
    return max(rates) / min(rates) if rates and min(rates) > 0 else 1.0


def noisy(data: dict[str, Any]) -> bool:
    throughput = data.get("throughput") or {}
    return bool(throughput.get("spread", 1.0) > NOISY_SPREAD)


def summarise_rounds(runs: list[WrkResult]) -> dict[str, float]:
    return {
        "rps": median([r.rps for r in runs]),
        "p50_ms": median([r.p50_ms for r in runs]),
        "p99_ms": median([r.p99_ms for r in runs]),
        "errors": median([float(r.errors) for r in runs]),
    }


def target_rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(number, target, this run): every command's ratio (tests/bench/rows.py), then the rest."""
    from tests.bench.rows import target_rows as command_targets  # it builds on this module

    rows: list[tuple[str, str]] = command_targets(data)
    caveat = " (noisy run: not conclusive)" if noisy(data) else ""
    latency = data.get("latency_target")
    if latency:
        text = (
            f"service {latency['service_p99_ms']:.2f} ms vs ceiling {latency['ceiling_p99_ms']:.2f} ms "
            f"at {latency['rate']:.0f} req/s: {latency['ratio']:.2f}x — "
            f"{met(latency['ratio'] <= 2.0)}{caveat}"
        )
        rows.append((TARGETS["latency"], text))
    workers = data.get("workers")
    if workers:
        ratio = workers["ratio"]
        verdict = "met" if ratio >= 1.7 else "not shown on this machine (see *Workers*)"
        rows.append((TARGETS["workers"], f"{ratio:.2f}x — {verdict}"))
    else:
        rows.append((TARGETS["workers"], "not run (`--workers-check`)"))
    memory = data.get("memory")
    if memory:
        rows.append((TARGETS["memory"], memory_result(memory)))
    soak_data = data.get("soak")
    if soak_data:
        growth = soak_data["growth_pct"]
        long_enough = "" if soak_data["seconds"] >= 300 else f" (only {soak_data['seconds']} s)"
        rows.append((TARGETS["soak"], f"{growth:+.1f} % — {met(growth < 10)}{long_enough}"))
    else:
        rows.append((TARGETS["soak"], "not run (`make bench-soak`)"))
    if data.get("exactness"):
        rows.append((TARGETS["exactness"], exactness_overall(data)))
    return [(str(number), target, result) for number, (target, result) in enumerate(rows, 1)]


def memory_result(memory: dict[str, Any]) -> str:
    per_group = memory["bytes_per_group"]
    scale = "" if memory["groups"] >= 10000 else f" (only {memory['groups']} groups: not the target's scale)"
    bare = memory.get("bare")
    beside = f" (a bare two-field hash: {bare['bytes_per_key']:.0f} B)" if bare else ""
    return f"{per_group:.0f} B/group{beside} — {met(per_group <= 160)}{scale}"


def exactness_verdicts(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every set of groups checked: the main groups, and those of the rows with their own."""
    verdicts = {"main groups": data["exactness"]}
    for key, row in (data.get("rows") or {}).items():
        if row.get("exactness"):
            verdicts[f"{key} groups"] = row["exactness"]
    return verdicts


def exactness_overall(data: dict[str, Any]) -> str:
    verdicts = exactness_verdicts(data)
    return "PASS" if all(v["verdict"] == "PASS" for v in verdicts.values()) else "FAIL"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(data: dict[str, Any], chart_link: str | None) -> str:
    facts = data["machine"]
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (tests/bench/run.py); do not edit by hand. The service and the "
        "ceiling app (tests/bench/ceiling.py: the simplest Starlette route that reads the body and "
        "returns a fixed JSON reply) run with the same server settings (uvicorn, uvloop, httptools, "
        "one process), side by side in one run, so the ratios are what count: the "
        "absolute numbers depend on the machine and on whatever else it was doing. The service runs "
        "as shipped: its config sets only its Redis and its apps, so the defaults apply, "
        '`log_level = "info"` and `log_format = "json"`: one JSON access line per call on stdout '
        "(into a log file); the ceiling logs nothing.",
        "",
        f"- date: {data['date']}",
        f"- CPU: {facts['cpu']}, {facts['cores']} cores; kernel {facts['kernel']}",
        f"- Python {facts['python']}, uvicorn {facts['uvicorn']}, Starlette {facts['starlette']}, "
        f"{facts['redis-server']}, {facts['wrk']}, node {facts['node']}",
        f"- pinning: {data['cpus']}",
        f"- command: `{data['command']}`",
        "",
        "## Throughput (wrk, 64 connections, 1 thread)",
        "",
        f"update_group_counter, Mode Increase on two keys (a += 1, b += 2), a valid usersig, groups drawn "
        f"at random from {data['groups']:,} registered groups, the service on its default config "
        "(JSON access log); the ceiling gets the same requests. "
        f"Medians of {data['rounds']} rounds of {data['duration']} s (a ceiling run and a service run "
        "back to back, the order alternating), after a "
        f"{data['warmup']} s warm-up of each.",
        "",
    ]
    throughput = data["throughput"]
    ceiling, service = throughput["ceiling"], throughput["service"]
    out += table(
        ["app", "requests/s", "p50 (ms)", "p99 (ms)", "errors"],
        [
            [
                name,
                f"{row['rps']:,.0f}",
                f"{row['p50_ms']:.2f}",
                f"{row['p99_ms']:.2f}",
                f"{row['errors']:.0f}",
            ]
            for name, row in (("ceiling", ceiling), ("service", service))
        ],
    )
    out += [
        "",
        f"ratio service / ceiling: **{throughput['ratio']:.2f}x** (the median of the rounds' ratios; "
        f"the ratio of the medians above is {throughput.get('ratio_of_medians', throughput['ratio']):.2f}x)",
        "",
        "Every round:",
        "",
    ]
    out += table(
        ["round", "ceiling req/s", "service req/s", "ratio"],
        [
            [str(i + 1), f"{c:,.0f}", f"{s:,.0f}", f"{s / c:.2f}"]
            for i, (c, s) in enumerate(
                zip(throughput["ceiling_rounds"], throughput["service_rounds"], strict=True)
            )
        ],
    )
    out += [
        "",
        f"Load average (1, 5, 15 min) at the start: {data.get('loadavg_start', '?')}, "
        f"at the end: {data.get('loadavg_end', '?')}.",
    ]
    if noisy(data):
        out += [
            "",
            f"**This run was noisy**: the fastest round of an app was {throughput['spread']:.2f}x its "
            "slowest, so something else on the machine competed for the cores (on a quiet machine the "
            f"rounds agree within a few per cent; above {NOISY_SPREAD:.1f}x a run is flagged). The ratios "
            "and latencies below are what was measured, but not conclusive: rerun `make bench` on a "
            "quiet machine.",
        ]
    from tests.bench.rows import render as render_rows  # it builds on this module

    out += ["", *render_rows(data)]
    out += ["## Targets", ""]
    targets = target_rows(data)
    out += table(["#", "target", "this run"], [list(row) for row in targets])
    missed = [number for number, _, verdict in targets if "not met" in verdict]
    if missed:
        out += [
            "",
            f"Not met in this run: {', '.join(f'#{number}' for number in missed)}. "
            "[docs/performance.md](docs/performance.md) explains each gap with a profile "
            "(`make profile`: where the worker's time goes under that load).",
        ]
    out += ["", *render_memory(data["memory"])]
    exact = data["exactness"]
    out += [
        "## Exactness",
        "",
        f"**exactness: {exactness_overall(data)}** (main groups: {exact['verdict']}). Every Increase call "
        "the load generators sent to the service "
        "(warm-ups, measured rounds, the latency sweep, the workers check and the soak) is accounted for: "
        f"{exact['acked']:,} acknowledged; sum of a over the {data['groups']:,} groups = {exact['sum_a']:,}, "
        f"sum of b = {exact['sum_b']:,} "
        f"(= 2 x a: {'yes' if exact['sum_b'] == 2 * exact['sum_a'] else 'NO'}); "
        f"groups where b ≠ 2a: {exact['torn_groups']}. wrk stops at its deadline with up to one call per "
        f"connection in flight and never reads those answers: {exact['unanswered']:,} such calls, of which "
        f"the counters show {exact['applied_unanswered']:,} applied (each may or may not be: the service "
        "received it whole). PASS means a = acknowledged + applied-but-unanswered with the latter "
        "between 0 and the unanswered count, b = 2a in every group; the open-loop driver waits for every "
        "answer, so its calls are all acknowledged or failed. The main groups' ledger holds the "
        "headline update, the log_level warning row and the Idempotency-Key row.",
        "",
    ]
    out += render_other_sets(data)
    points = [LoadPoint(**p) for p in data["load"]]
    out += [
        "## Latency against offered load (open loop)",
        "",
        "tests/bench/openloop.js (Node.js, standard library only) sends calls evenly spaced at a fixed "
        "rate on up to 64 keep-alive connections and measures each from the time it was due, so queueing "
        "counts (no coordinated omission); offered rates are fractions of the service's wrk maximum "
        f"above, the same absolute rates for both apps, {data['load_duration']:g} s each after a 1 s "
        "warm-up. (autocannon's `overallRate` was not used: it sends each connection's per-second "
        "quota back to back at every one-second tick, so the server sees bursts at full speed, not a "
        "steady rate.)",
        "",
    ]
    rows = []
    for point in sorted(points, key=lambda p: (p.offered, p.app)):
        rows.append(
            [
                f"{point.fraction:.0%}",
                point.app,
                f"{point.offered:,.0f}",
                f"{point.achieved:,.0f}",
                f"{point.p50_ms:.2f}",
                f"{point.p99_ms:.2f}",
                f"{point.max_ms:.1f}",
                str(point.failed + point.errors),
            ]
        )
    out += table(
        ["load", "app", "offered req/s", "achieved req/s", "p50 (ms)", "p99 (ms)", "max (ms)", "errors"],
        rows,
    )
    latency = data.get("latency_target")
    if latency:
        out += [
            "",
            f"p99 at half the service's maximum ({latency['rate']:,.0f} req/s): service "
            f"{latency['service_p99_ms']:.2f} ms, ceiling {latency['ceiling_p99_ms']:.2f} ms, "
            f"ratio **{latency['ratio']:.2f}x** (target ≤ 2x).",
        ]
    out += [""]
    if chart_link:
        out += [f"![p50 and p99 latency against offered load]({chart_link})", ""]
    elif data.get("chart_note"):
        out += [f"Chart: {data['chart_note']}", ""]
    workers = data.get("workers")
    out += ["## Workers", ""]
    if workers:
        out += table(
            ["workers", "requests/s", "p50 (ms)", "p99 (ms)", "errors"],
            [
                [
                    str(n),
                    f"{workers[key]['rps']:,.0f}",
                    f"{workers[key]['p50_ms']:.2f}",
                    f"{workers[key]['p99_ms']:.2f}",
                    f"{workers[key]['errors']:.0f}",
                ]
                for n, key in ((1, "one"), (2, "two"))
            ],
        )
        out += [
            "",
            f"two workers / one worker: **{workers['ratio']:.2f}x** (target ≥ 1.7x where cores allow).",
            "",
        ]
    else:
        out += ["Not run: `python -m tests.bench.run --workers-check`.", ""]
    out += [
        f"The workers check pins nothing, and this machine has {facts['cores']} cores: wrk (2 threads), "
        "redis-server and the workers all share them, so a second worker mostly takes CPU from the "
        "load generator and Redis, and the 1.7x target cannot be shown on it. To show it: run the "
        "service with `--workers 2` on a host with at least 2 cores of its own (pin it with "
        "`taskset -c 0,1`), redis-server on other cores or another host, and wrk on another host "
        "(`wrk -t4 -c128 -s tests/bench/update.lua http://SERVICE:PORT` with the BENCH_* environment "
        "the tool sets), then compare with `--workers 1` under the same load.",
        "",
    ]
    soak_data = data.get("soak")
    out += ["## Soak: worker memory under load", ""]
    if soak_data:
        out += [
            f"{soak_data['date']}: wrk on the service (one worker, pinned) for {soak_data['seconds']} s "
            f"at {soak_data['rps']:,.0f} requests/s ({soak_data['errors']} errors); VmRSS of the worker "
            f"every {SOAK_SAMPLE_SECONDS:.0f} s: {soak_data['rss_start_kib']:,} KiB before the load, "
            f"{soak_data['rss_after_warmup_kib']:,} KiB after the {soak_data['warmup_seconds']:.0f} s "
            f"warm-up, {soak_data['rss_last_kib']:,} KiB at the end, {soak_data['rss_max_kib']:,} KiB at "
            f"most: growth **{soak_data['growth_pct']:+.1f} %** (target < 10 %). Command: "
            f"`{soak_data.get('command', '')}`.",
            "",
        ]
    else:
        out += ["Not run: `make bench-soak` (300 s).", ""]
    from tests.bench.live import render as render_live  # it builds on this module

    out += render_live(data.get("live") or {})
    out += [DATA_MARK + json.dumps(data, sort_keys=True) + " -->", ""]
    return "\n".join(out)


def render_memory(memory: dict[str, Any]) -> list[str]:
    out = [
        "## Redis memory",
        "",
        f"`INFO memory` used_memory before and after creating {memory['groups']:,} groups through the API "
        "(create_group, then a Set of a = 0 and b = 0: group metadata and two counters each): "
        f"{memory['used_before']:,} → {memory['used_after']:,} bytes, "
        f"**{memory['bytes_per_group']:.1f} bytes per group** "
        f"({memory['keys_per_group']:.2f} keys per group; "
        "the figure includes Redis's own per-key overhead and its main hash table's growth).",
        "",
    ]
    bare = memory.get("bare")
    if bare:
        out += [
            f"Beside it, {bare['keys']:,} bare two-field hashes (`HSET key a 0 b 0`, key names of "
            f"{bare['key_length']} bytes, as long as the groups' keys) measured the same way in the same "
            "Redis, in a database of their own so that its main hash table grows from empty as the "
            f"groups' did, then deleted: {bare['used_before']:,} → {bare['used_after']:,} bytes, "
            f"**{bare['bytes_per_key']:.1f} bytes per hash**. The difference, "
            f"{memory['bytes_per_group'] - bare['bytes_per_key']:.1f} bytes per group, is what the "
            "service keeps beyond the two counters, in the same hash: the group's type (what makes "
            "it a registered group) and its version for live counters (docs/API.md §8).",
            "",
        ]
    return out


def render_other_sets(data: dict[str, Any]) -> list[str]:
    others = {name: v for name, v in exactness_verdicts(data).items() if name != "main groups"}
    if not others:
        return []
    out = [
        "Rows on groups of their own, checked the same way right after their rounds:",
        "",
    ]
    for name, exact in others.items():
        out.append(
            f"- {name}: **{exact['verdict']}**, {exact['acked']:,} acknowledged, sum of a "
            f"{exact['sum_a']:,}, sum of b {exact['sum_b']:,}, {exact['torn_groups']} groups with b ≠ 2a, "
            f"{exact['applied_unanswered']:,} of {exact['unanswered']:,} unanswered calls applied."
        )
    return [*out, ""]


def previous_data(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            if line.startswith(DATA_MARK) and line.endswith(" -->"):
                data: dict[str, Any] = json.loads(line[len(DATA_MARK) : -len(" -->")])
                return data
    return None


def print_summary(data: dict[str, Any]) -> None:
    throughput = data.get("throughput")
    if throughput:
        print()
        print(f"{'':10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name in ("ceiling", "service"):
            row = throughput[name]
            print(
                f"{name:10} {row['rps']:>10,.0f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
                f"{row['errors']:>7.0f}"
            )
        print(
            f"ratio service/ceiling: {throughput['ratio']:.2f}x (median of the rounds' ratios; "
            f"ratio of the medians {throughput.get('ratio_of_medians', throughput['ratio']):.2f}x)"
        )
    from tests.bench.rows import summary_lines  # it builds on this module

    for line in summary_lines(data):
        print(line)
    memory = data.get("memory")
    if memory:
        bare = memory.get("bare")
        beside = f"; a bare two-field hash {bare['bytes_per_key']:.1f} bytes" if bare else ""
        print(f"redis: {memory['bytes_per_group']:.1f} bytes/group over {memory['groups']:,} groups{beside}")
    for point in data.get("load", []):
        print(
            f"open loop {point['app']:8} {point['offered']:>9,.0f} req/s offered, {point['achieved']:>9,.0f} "
            f"achieved: p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms"
        )
    latency = data.get("latency_target")
    if latency:
        print(f"p99 at half the maximum: service/ceiling {latency['ratio']:.2f}x")
    workers = data.get("workers")
    if workers:
        print(f"workers: 2 vs 1: {workers['ratio']:.2f}x (unpinned, shared cores)")
    soak_data = data.get("soak")
    if soak_data:
        print(f"soak: RSS growth {soak_data['growth_pct']:+.1f} % over {soak_data['seconds']} s")
    if data.get("exactness"):
        for name, exact in exactness_verdicts(data).items():
            print(
                f"exactness, {name}: {exact['verdict']} (acked {exact['acked']:,}, sum a {exact['sum_a']:,}, "
                f"sum b {exact['sum_b']:,}, unanswered {exact['unanswered']:,})"
            )
    for number, target, result in target_rows(data):
        print(f"target {number}: {target}: {result}")


# --------------------------------------------------------------------------- the run


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


def pin(pid: int, cpu: int | None) -> None:
    """Every thread of a running process onto `cpu` (a redis-server: with the load generators)."""
    if cpu is not None:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


def start_redis(cpus: Cpus) -> RedisServer:
    """The bench's own redis-server, pinned to the load generators' CPU."""
    server = RedisServer().start()
    assert server.process is not None
    pin(server.process.pid, cpus.load)
    return server


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


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
                throughput_phase(options, data, service, ceiling, usersig, cpus, ledger, meter)
                openloop_phase(options, data, service, ceiling, usersig, cpus, ledger)
                if options.rows:
                    every_command_phase(
                        options, data, service, ceiling, redis_server, usersig, cpus, ledger, workdir
                    )
                if options.live_watchers:
                    from tests.bench.live import live_phase  # it builds on this module

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


def every_command_phase(
    options: Options,
    data: dict[str, Any],
    service: Server,
    ceiling: Server,
    redis_server: RedisServer,
    usersig: str,
    cpus: Cpus,
    ledger: Ledger,
    workdir: Path,
) -> None:
    """The "Every command" rows besides the headline, fewer rounds each (tests/bench/rows.py)."""
    from tests.bench.rows import RowBench, rows_phase  # it builds on this module

    bench = RowBench(
        service=service,
        ceiling=ceiling,
        redis_port=redis_server.port,
        redis_url=redis_server.url,
        usersig=usersig,
        cpus=cpus,
        workdir=workdir,
        groups=options.groups,
        rounds=options.row_rounds,
        duration=options.row_duration,
        warmup=0 if options.smoke else WARMUP_SECONDS,
        ledger=ledger,
    )
    data["row_settings"] = {"rounds": bench.rounds, "duration": bench.duration, "warmup": bench.warmup}
    data["rows"] = rows_phase(bench, options.rows)


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


def throughput_phase(
    options: Options,
    data: dict[str, Any],
    service: Server,
    ceiling: Server,
    usersig: str,
    cpus: Cpus,
    ledger: Ledger,
    meter: RedisMeter,
) -> None:
    warmup = 1 if options.smoke else WARMUP_SECONDS
    data["warmup"] = warmup
    workload = Workload(usersig=usersig, groups=options.groups, cpu=cpus.load, ledger=ledger)
    rounds = paired_rounds(
        ceiling,
        service,
        workload,
        rounds=options.rounds,
        duration=options.duration,
        warmup=warmup,
        meter=meter,
    )
    data["throughput"] = row_summary(rounds)


@dataclass(kw_only=True)
class Workload:
    """wrk with one script (update.lua unless said) and its BENCH_* settings (`env`).

    The service's runs go to `ledger` when they move the counters. `prepare` runs before a
    service run and `finish` after it, both outside what is measured of it.
    """

    usersig: str
    groups: int
    cpu: int | None
    script: Path = WRK_SCRIPT
    env: dict[str, str] = field(default_factory=dict)
    ledger: Ledger | None = None

    def environment(self) -> dict[str, str]:
        return self.env

    def run(self, port: int, seconds: int) -> WrkResult:
        return run_wrk(
            port, seconds, self.usersig, self.groups, self.cpu, script=self.script, env=self.environment()
        )

    def prepare(self, seconds: int) -> None:
        """Before a service run of `seconds`."""

    def finish(self, result: WrkResult) -> None:
        """After a service run."""
        if self.ledger is not None:
            self.ledger.add(result.acked, result.unanswered)


@dataclass
class Round:
    ceiling: WrkResult
    service: WrkResult
    redis: dict[str, float]  # Redis's cost per call of the service's run (RedisCost.per_call)


def paired_rounds(
    ceiling: Server,
    service: Server,
    workload: Workload,
    *,
    rounds: int,
    duration: int,
    warmup: int,
    meter: RedisMeter,
    label: str = "",
) -> list[Round]:
    """`workload` on each app, after a warm-up of each, `rounds` times; Redis's cost of the service's runs."""
    if warmup:
        print(f"{label}warm-up: {warmup} s of wrk on each", flush=True)
        workload.run(ceiling.port, warmup)
        service_run(service, workload, warmup)
    results: list[Round] = []
    for number in range(1, rounds + 1):
        # Each round is a pair run back to back, in alternating order, so that a machine
        # drifting faster or slower during the run favours neither app.
        ceiling_first = number % 2 == 1
        if ceiling_first:
            ceiling_run = workload.run(ceiling.port, duration)
        service_result, cost = service_run(service, workload, duration, meter)
        if not ceiling_first:
            ceiling_run = workload.run(ceiling.port, duration)
        results.append(Round(ceiling_run, service_result, cost))
        print(
            f"{label}round {number}/{rounds}: ceiling {ceiling_run.rps:,.0f} req/s "
            f"(p99 {ceiling_run.p99_ms:.2f} ms), service {service_result.rps:,.0f} req/s "
            f"(p99 {service_result.p99_ms:.2f} ms, {service_result.errors} errors, "
            f"Redis {cost['us_per_call']:.1f} us/call)",
            flush=True,
        )
    return results


def service_run(
    service: Server, workload: Workload, seconds: int, meter: RedisMeter | None = None
) -> tuple[WrkResult, dict[str, float]]:
    """One run on the service; with `meter`, Redis's cost per call answered, of this run alone."""
    workload.prepare(seconds)
    if meter is not None:
        meter.reset()
    result = workload.run(service.port, seconds)
    cost = meter.read().per_call(result.answered) if meter is not None else {}
    workload.finish(result)
    return result, cost


def row_summary(rounds: list[Round]) -> dict[str, Any]:
    ceiling_runs = [r.ceiling for r in rounds]
    service_runs = [r.service for r in rounds]
    ceiling_summary = summarise_rounds(ceiling_runs)
    service_summary = summarise_rounds(service_runs)
    return {
        "ceiling": ceiling_summary,
        "service": service_summary,
        # The median of the rounds' ratios: each compares two runs seconds apart.
        "ratio": statistics.median(r.service.rps / r.ceiling.rps for r in rounds),
        "ratio_of_medians": service_summary["rps"] / ceiling_summary["rps"],
        "ceiling_rounds": [r.rps for r in ceiling_runs],
        "service_rounds": [r.rps for r in service_runs],
        "spread": max(spread(ceiling_runs), spread(service_runs)),
        "errors": sum(r.errors for r in service_runs),
        "failed": sum(r.failed for r in service_runs),
        "ceiling_errors": sum(r.errors for r in ceiling_runs),
        "redis": {name: median([r.redis[name] for r in rounds]) for name in rounds[0].redis},
    }


def openloop_phase(
    options: Options,
    data: dict[str, Any],
    service: Server,
    ceiling: Server,
    usersig: str,
    cpus: Cpus,
    ledger: Ledger,
) -> None:
    maximum = data["throughput"]["service"]["rps"]
    points: list[LoadPoint] = []
    for fraction in options.fractions:
        rate = round(maximum * fraction)
        for app, server in (("ceiling", ceiling), ("service", service)):
            point = run_openloop(
                app,
                server.port,
                usersig,
                options.groups,
                fraction,
                rate,
                options.load_duration,
                1.0,
                cpus.load,
            )
            if app == "service":
                ledger.add(point.acked, point.unanswered)
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


def parse_rows(text: str, known: tuple[str, ...]) -> tuple[str, ...] | None:
    """The rows `--rows` names, None when it names one that does not exist."""
    if text == "all":
        return known
    if text == "none":
        return ()
    rows = tuple(name.strip() for name in text.split(",") if name.strip())
    return rows if set(rows) <= set(known) else None


def parse_args(argv: list[str] | None) -> Options:
    from tests.bench.rows import OPTIONAL_ROWS  # it builds on this module

    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run (5)")
    parser.add_argument("--rounds", type=int, default=7, help="ceiling/service pairs of runs (7)")
    parser.add_argument("--groups", type=int, default=10000, help="registered groups to spread calls over")
    parser.add_argument("--load-duration", type=float, default=None, help="seconds per open-loop point")
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds at tiny scale: proves the tool works"
    )
    parser.add_argument("--soak", type=int, default=0, help="also a soak of this many seconds (RSS growth)")
    parser.add_argument("--soak-only", action="store_true", help="only the soak; update its section of --out")
    parser.add_argument("--workers-check", action="store_true", help="also one worker against two")
    parser.add_argument(
        "--live-watchers",
        default="1000,10000",
        help="watcher counts for the live-counter delivery runs, comma-separated; 0: skip live counters",
    )
    parser.add_argument(
        "--rows",
        default="all",
        help="the 'Every command' rows to measure besides the headline: all, none, or some of "
        + ",".join(OPTIONAL_ROWS),
    )
    parser.add_argument("--row-rounds", type=int, default=3, help="ceiling/service pairs per row (3)")
    parser.add_argument("--row-duration", type=int, default=5, help="seconds per wrk run of a row (5)")
    parser.add_argument(
        "--out", type=Path, default=None, help="the report (BENCHMARKS.md; a temp file with --smoke)"
    )
    parser.add_argument(
        "--chart", type=Path, default=None, help="the PNG (default: docs/bench-latency.png by --out)"
    )
    args = parser.parse_args(argv)
    if args.soak_only and not args.soak:
        parser.error("--soak-only needs --soak SECONDS")
    fractions: tuple[float, ...] = LOAD_FRACTIONS
    if args.smoke:
        args.groups, args.rounds, args.duration, args.soak, args.soak_only = 200, 1, 1, 0, False
        args.row_rounds, args.row_duration = 1, 1
        fractions = (0.5,)
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) / "BENCHMARKS.md"
    out: Path = (args.out or ROOT / "BENCHMARKS.md").resolve()
    chart: Path = (args.chart or out.parent / "docs" / "bench-latency.png").resolve()
    load_duration = args.load_duration if args.load_duration is not None else (1.0 if args.smoke else 10.0)
    if min(args.duration, args.rounds, args.groups, args.row_rounds, args.row_duration) < 1:
        parser.error("--duration, --rounds, --groups, --row-rounds and --row-duration must be at least 1")
    rows = parse_rows(args.rows, OPTIONAL_ROWS)
    if rows is None:
        parser.error(f"--rows: all, none, or some of {','.join(OPTIONAL_ROWS)}")
    live_watchers = tuple(int(n) for n in args.live_watchers.split(",") if int(n) > 0)
    if args.smoke:
        live_watchers = (50,) if live_watchers else ()
    return Options(
        live_watchers=live_watchers,
        rows=rows,
        row_rounds=args.row_rounds,
        row_duration=args.row_duration,
        duration=args.duration,
        rounds=args.rounds,
        groups=args.groups,
        load_duration=load_duration,
        fractions=fractions,
        smoke=args.smoke,
        soak=args.soak,
        soak_only=args.soak_only,
        workers_check=args.workers_check,
        out=out,
        chart=chart,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    command = "python -m tests.bench.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        require_tools(need_node=not options.soak_only)
        data = measure(options, command.strip())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    previous = previous_data(options.out) if options.out.exists() else None
    if options.soak_only:
        if previous is None:
            print(
                f"bench: no earlier `make bench` report in {options.out} to add the soak to: "
                "run `make bench` first",
                file=sys.stderr,
            )
            return 2
        previous["soak"] = {**data["soak"], "exactness": data["exactness"]}
        data = previous
    elif "soak" not in data and previous is not None and "soak" in previous:
        data["soak"] = previous["soak"]  # an earlier `make bench-soak`: kept, with its own date
    if "live" not in data and previous is not None and "live" in previous:
        data["live"] = previous["live"]
    chart_link = None
    if data.get("load") and not options.soak_only:
        note = draw_chart([LoadPoint(**p) for p in data["load"]], options.chart)
        data["chart_note"] = note
    if data.get("chart_note") is None and options.chart.exists():
        chart_link = os.path.relpath(options.chart, options.out.parent)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(render(data, chart_link))
    print_summary(data)
    print(f"\nwritten: {options.out}" + (f" and {options.chart}" if chart_link else ""))
    return 0 if exactness_overall(data) == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
