"""`make bench-compare REF=<git ref>`: the service at REF against the service now, side by side.

python -m tests.bench.compare --ref REF [--duration S] [--rounds N] [--groups N]

A change that must not cost throughput (a safer Redis connection, an HTTP limit) is
measured against the code before it in one run, on one machine, in one Redis: REF is
checked out in a temporary git worktree and served by the same interpreter (`python -m
service` from that tree), both servers pinned to one CPU, wrk and Redis to another, as in
`make bench`. Pairs of wrk runs alternate their order; the ratio is the median of the
pairs' ratios. The update workload is `make bench`'s (Increase of two keys over --groups
registered groups), on the default config (access log on) unless --log-level says
otherwise. Prints the rounds and the ratio; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from service.api.auth import mint_usersig
from tests.bench.client import create_groups, group_ids
from tests.bench.drivers import run_wrk
from tests.bench.machine import BenchError, Cpus, require_tools
from tests.bench.rounds import WARMUP_SECONDS, summarise_rounds
from tests.bench.servers import (
    ADMIN,
    ROOT,
    SDKAPPID,
    SECRET_KEY,
    running,
    service_server,
    start_redis,
    write_config,
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare(ref: str, duration: int, rounds: int, groups: int, log_level: str = "info") -> float:
    cpus = Cpus.pick()
    workdir = Path(tempfile.mkdtemp(prefix="group-counter-compare-"))
    tree = workdir / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
        check=True,
        capture_output=True,
    )
    redis_server = start_redis(cpus)
    try:
        config = workdir / "bench.toml"
        write_config(config, redis_server.url, log_level=log_level)
        usersig = mint_usersig(SDKAPPID, SECRET_KEY, ADMIN, expire=86400)
        now = service_server(config, workdir, tag="now")
        before = service_server(config, workdir, tag="before")
        before.cwd = tree
        with running(now, before):
            now.start(cpus.server)
            before.start(cpus.server)
            create_groups(now.port, usersig, group_ids(groups))
            for server in (before, now):
                run_wrk(server.port, WARMUP_SECONDS, usersig, groups, cpus.load)
            before_runs, now_runs = [], []
            # CPU time per answered call: steadier than req/s on a machine shared with other work.
            cpu: dict[int, list[float]] = {before.port: [], now.port: []}
            for round_number in range(1, rounds + 1):
                order = (before, now) if round_number % 2 else (now, before)
                runs = {}
                for server in order:
                    spent = cpu_seconds(server.pid)
                    runs[server.port] = run_wrk(server.port, duration, usersig, groups, cpus.load)
                    spent = cpu_seconds(server.pid) - spent
                    cpu[server.port].append(spent / max(runs[server.port].requests, 1) * 1e6)
                before_runs.append(runs[before.port])
                now_runs.append(runs[now.port])
                then, current = runs[before.port], runs[now.port]
                print(
                    f"round {round_number}/{rounds}: {ref} {then.rps:,.0f} req/s "
                    f"({cpu[before.port][-1]:.1f} us CPU/call), now {current.rps:,.0f} req/s "
                    f"({cpu[now.port][-1]:.1f} us CPU/call), ratio {current.rps / then.rps:.3f}",
                    flush=True,
                )
    finally:
        redis_server.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = statistics.median(n.rps / b.rps for b, n in zip(before_runs, now_runs, strict=True))
    b, n = summarise_rounds(before_runs), summarise_rounds(now_runs)
    print(f"{ref}: {b['rps']:,.0f} req/s (p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms)")
    print(f"now: {n['rps']:,.0f} req/s (p50 {n['p50_ms']:.2f} ms, p99 {n['p99_ms']:.2f} ms)")
    print(f"ratio now/{ref}, median of {rounds} paired rounds: {ratio:.3f} ({cpus.note})")
    cpu_ratio = statistics.median(n / b for b, n in zip(cpu[before.port], cpu[now.port], strict=True))
    print(
        f"CPU per call: {ref} {statistics.median(cpu[before.port]):.1f} us, "
        f"now {statistics.median(cpu[now.port]):.1f} us; now/{ref}, median of paired rounds: {cpu_ratio:.3f}"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--ref", required=True, help="the git ref to compare with (a commit, a tag)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (5)")
    parser.add_argument("--rounds", type=int, default=7, help="pairs of runs (7)")
    parser.add_argument("--groups", type=int, default=10000, help="registered groups to spread calls over")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="both services' log_level (info: the default, an access line per call)",
    )
    args = parser.parse_args(argv)
    try:
        require_tools(need_node=False)
        compare(args.ref, args.duration, args.rounds, args.groups, args.log_level)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench-compare: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
