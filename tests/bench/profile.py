"""`make profile`: where a worker's time goes under one of `make bench`'s loads.

python -m tests.bench.profile [--workload W]  (update, update-warning, get, idempotent,
                                             hot-update, cluster, live)
                              [--seconds S] [--watchers N]

The service runs as in `make bench` (one worker pinned to one CPU; redis-server and the
load on the other), and while the load runs this samples the worker three ways:

- /proc: the worker's user and system CPU time over the window (system time is the
  kernel working for it: sockets, writes);
- py-spy (from the bench extra): the share of samples in each source file and the
  lines most often on top of the stack;
- perf, when the machine has it and lets us use it: the share of each shared object
  (the interpreter, the kernel, uvloop, httptools...).

`update` is the headline load (the default config: an access line per call),
`update-warning` the same with log_level = "warning", `get` get_group_counter,
`idempotent` the update load with a fresh Idempotency-Key per call, `hot-update`
the update load with every call on one group (write combining),
`cluster` the update load on a 3-master Redis Cluster started here, and
`live` the live-counter delivery run with --watchers watchers of one group. Prints a
report; writes nothing. BENCHMARKS.md's gaps are explained from its output
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.api.auth import mint_usersig
from tests.bench.client import create_groups, group_ids
from tests.bench.drivers import run_wrk
from tests.bench.live import delivery
from tests.bench.machine import Cpus, pin
from tests.bench.rounds import WARMUP_SECONDS
from tests.bench.rows import COMMANDS_SCRIPT
from tests.bench.servers import (
    ADMIN,
    SDKAPPID,
    SECRET_KEY,
    Server,
    running,
    service_server,
    start_redis,
    write_config,
)

GROUPS = 10_000
TOP_LINES = 15


def cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


class Sampler:
    """/proc, py-spy and perf on one process for `seconds`, all at once."""

    def __init__(self, pid: int, seconds: float, workdir: Path) -> None:
        self.pid = pid
        self.seconds = seconds
        self.spy_out = workdir / "py-spy.txt"
        self.perf_out = workdir / "perf.data"
        self.report: dict[str, Any] = {}

    def run(self, after: float = 0.0) -> None:
        time.sleep(after)
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        processes = []
        if Path(spy).exists():
            processes.append(
                subprocess.Popen(
                    [
                        *(spy, "record", "--nonblocking", "-p", str(self.pid), "-d", str(int(self.seconds))),
                        *("-r", "250", "-f", "raw", "-o", str(self.spy_out)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if shutil.which("perf"):
            processes.append(
                subprocess.Popen(
                    [
                        *("perf", "record", "-F", "999", "-p", str(self.pid), "-o", str(self.perf_out)),
                        *("--", "sleep", str(self.seconds)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        user, system = cpu_ticks(self.pid)
        started = time.monotonic()
        time.sleep(self.seconds)
        user_after, system_after = cpu_ticks(self.pid)
        elapsed = time.monotonic() - started
        for process in processes:
            process.wait(timeout=60)
        hertz = os.sysconf("SC_CLK_TCK")
        self.report["user"] = (user_after - user) / hertz / elapsed
        self.report["system"] = (system_after - system) / hertz / elapsed

    @contextmanager
    def in_background(self, after: float) -> Iterator[None]:
        thread = threading.Thread(target=self.run, kwargs={"after": after}, daemon=True)
        thread.start()
        yield
        thread.join(timeout=self.seconds + after + 60)


def py_spy_shares(path: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(share of samples with each file on the stack, share of each line on top)."""
    files: collections.Counter[str] = collections.Counter()
    tops: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        tops[frames[-1]] += samples
        for name in {_file_of(frame) for frame in frames}:
            files[name] += samples
    if not total:
        return [], []
    return (
        [(name, n / total) for name, n in files.most_common() if n / total >= 0.01],
        [(name, n / total) for name, n in tops.most_common(TOP_LINES)],
    )


def _file_of(frame: str) -> str:
    # "function (path/to/file.py:123)": the file, shortened to what tells it apart.
    location = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "python3.11/", "/work/", "/service/"):
        if marker in location:
            location = location.split(marker, 1)[1]
    return location


def perf_shares(path: Path) -> list[tuple[str, float]]:
    result = subprocess.run(
        ["perf", "report", "-i", str(path), "--sort", "dso", "--stdio"],
        capture_output=True,
        text=True,
        check=False,
    )
    shares = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%") and not line.startswith("#"):
            shares.append((parts[1], float(parts[0].rstrip("%")) / 100))
    return shares


def print_report(title: str, sampler: Sampler, outcome: str) -> None:
    report = sampler.report
    print(f"\n## {title}\n\n{outcome}\n")
    if "user" in report:
        print(
            f"worker CPU over {sampler.seconds:.0f} s: {report['user']:.0%} user, "
            f"{report['system']:.0%} system (kernel)"
        )
    if sampler.perf_out.exists():
        print("\nperf, share of the worker's samples by shared object:")
        for name, share in perf_shares(sampler.perf_out)[:8]:
            print(f"  {share:6.1%}  {name}")
    if sampler.spy_out.exists():
        files, tops = py_spy_shares(sampler.spy_out)
        print("\npy-spy, share of samples with each file on the stack (1% or more):")
        for name, share in files:
            print(f"  {share:6.1%}  {name}")
        print("\npy-spy, lines most often on top of the stack:")
        for name, share in tops:
            print(f"  {share:6.1%}  {name}")


@contextmanager
def redis_for(workload: str, cpus: Cpus) -> Iterator[str]:
    """The Redis URL the workload runs on: the bench's redis-server, or a 3-master Cluster."""
    if workload != "cluster":
        server = start_redis(cpus)
        try:
            yield server.url
        finally:
            server.stop()
        return
    from tests.topologies import Cluster

    cluster = Cluster().start()
    try:
        for node in cluster.nodes:
            assert node.process is not None
            pin(node.process.pid, cpus.load)
        yield cluster.url
    finally:
        cluster.stop()


def profile_wrk(workload: str, seconds: float, workdir: Path, cpus: Cpus) -> None:
    with redis_for(workload, cpus) as redis_url:
        config = workdir / "bench.toml"
        write_config(config, redis_url, log_level="warning" if workload == "update-warning" else None)
        usersig = mint_usersig(SDKAPPID, SECRET_KEY, ADMIN, expire=86400)
        service = service_server(config, workdir)
        with running(service):
            service.start(cpus.server)
            create_groups(service.port, usersig, group_ids(GROUPS))
            script = workload if workload in ("get", "idempotent") else "update"
            # hot-update: every call on one group, as make bench's hot row (write combining).
            groups = 1 if workload == "hot-update" else GROUPS
            run_wrk(service.port, WARMUP_SECONDS, usersig, groups, cpus.load, **_script(script, "warm-up-"))
            sampler = Sampler(service.pid, seconds, workdir)
            with sampler.in_background(after=1.0):
                result = run_wrk(
                    service.port, int(seconds) + 2, usersig, groups, cpus.load, **_script(script, "run-")
                )
            print_report(
                f"{workload}: {result.rps:,.0f} requests/s",
                sampler,
                f"wrk, 64 connections, {groups:,} group{'s' if groups > 1 else ''}",
            )


def _script(name: str, prefix: str) -> dict[str, Any]:
    """wrk's script and environment; `prefix` starts each Idempotency-Key (a run's own)."""
    if name == "update":
        return {}
    return {"script": COMMANDS_SCRIPT, "env": {"BENCH_WORKLOAD": name, "BENCH_PREFIX": prefix}}


def profile_live(watchers: int, seconds: float, workdir: Path, cpus: Cpus) -> None:
    redis_server = start_redis(cpus)
    samplers: list[Sampler] = []
    threads: list[threading.Thread] = []

    def sample_when_updating(service: Server) -> None:
        # Connecting the watchers takes a few seconds (10,000: about 4); the updates follow.
        sampler = Sampler(service.pid, seconds, workdir)
        samplers.append(sampler)
        thread = threading.Thread(target=sampler.run, kwargs={"after": 3.0 + watchers / 2500})
        thread.start()
        threads.append(thread)

    try:
        usersig = mint_usersig(SDKAPPID, SECRET_KEY, ADMIN, expire=86400)
        result = delivery(
            redis_server.url,
            workdir,
            usersig,
            cpus,
            watchers,
            100.0,
            seconds + 8.0,
            on_start=sample_when_updating,
        )
        for thread in threads:
            thread.join(timeout=120)
        outcome = (
            f"{watchers:,} watchers of one group, 100 updates/s: delivery p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, {result['achieved_rate']:.0f} updates/s achieved"
        )
        print_report(f"live: {watchers:,} watchers", samplers[0], outcome)
    finally:
        redis_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--workload",
        default="update",
        choices=["update", "update-warning", "get", "idempotent", "hot-update", "cluster", "live"],
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="the sampling window")
    parser.add_argument("--watchers", type=int, default=10_000, help="watchers, for --workload live")
    args = parser.parse_args(argv)
    cpus = Cpus.pick()
    workdir = Path(tempfile.mkdtemp(prefix="group-counter-profile-"))
    try:
        if args.workload == "live":
            profile_live(args.watchers, args.seconds, workdir, cpus)
        else:
            profile_wrk(args.workload, args.seconds, workdir, cpus)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n({cpus.note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
