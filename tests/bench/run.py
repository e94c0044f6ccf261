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

This module is the command line; the rest of tests/bench, by job: machine.py (CPUs, pinning,
tools), servers.py (the processes under test), client.py (API calls, groups), drivers.py (wrk,
the open-loop driver), rounds.py (paired runs and their medians), exactness.py, soak.py,
phases.py (one run, phase by phase), rows.py and live.py (their own phases and sections),
targets.py, report.py and markdown.py (BENCHMARKS.md and the summary).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Final

from tests.bench.drivers import LoadPoint
from tests.bench.exactness import exactness_overall
from tests.bench.machine import BenchError, require_tools
from tests.bench.phases import Options, measure
from tests.bench.report import draw_chart, previous_data, print_summary, render
from tests.bench.row_specs import OPTIONAL_ROWS
from tests.bench.servers import ROOT

LOAD_FRACTIONS: Final = (0.25, 0.5, 0.75, 0.9)


def parse_rows(text: str, known: tuple[str, ...]) -> tuple[str, ...] | None:
    """The rows `--rows` names, None when it names one that does not exist."""
    if text == "all":
        return known
    if text == "none":
        return ()
    rows = tuple(name.strip() for name in text.split(",") if name.strip())
    return rows if set(rows) <= set(known) else None


def parse_args(argv: list[str] | None) -> Options:

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
