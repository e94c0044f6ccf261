"""The targets: what the service should reach, and whether this run met each."""

from __future__ import annotations

from typing import Any, Final

from tests.bench.exactness import exactness_overall
from tests.bench.markdown import met
from tests.bench.rounds import NOISY_SPREAD
from tests.bench.rows import target_rows as command_targets

TARGETS: Final = {
    "latency": "service p99 ≤ 2 x ceiling p99 at half the service's maximum rate",
    "workers": "2 worker processes ≥ 1.7 x one worker",
    "memory": "Redis ≤ 160 bytes per group with two counters (10,000+ groups)",
    "soak": "worker RSS growth < 10 % over a 5-minute load",
    "exactness": "final counters = sum of acknowledged increments (every set of groups)",
}


def noisy(data: dict[str, Any]) -> bool:
    throughput = data.get("throughput") or {}
    return bool(throughput.get("spread", 1.0) > NOISY_SPREAD)


def target_rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(number, target, this run): every command's ratio (tests/bench/rows.py), then the rest."""

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
