"""The report: BENCHMARKS.md from a run's figures (which it also carries, as JSON, for the next
run to keep what that run did not measure), its chart, and the summary on the terminal."""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from typing import Any, Final

from tests.bench.drivers import LoadPoint
from tests.bench.exactness import exactness_overall, exactness_verdicts
from tests.bench.live import render as render_live
from tests.bench.markdown import table
from tests.bench.rounds import NOISY_SPREAD
from tests.bench.rows import render as render_rows
from tests.bench.rows import summary_lines
from tests.bench.soak import SOAK_SAMPLE_SECONDS
from tests.bench.targets import noisy, target_rows

DATA_MARK: Final = "<!-- bench-data: "


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
        "headline update, the log_level warning row, the Idempotency-Key row and the one-group update row.",
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
