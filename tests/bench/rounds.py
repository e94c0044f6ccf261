"""Rounds: one workload on the ceiling and on the service, back to back in alternating order,
and their summary (medians, the median of the rounds' ratios, how noisy the machine was)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.bench.drivers import WRK_SCRIPT, WrkResult, run_wrk
from tests.bench.exactness import Ledger
from tests.bench.redis_cost import RedisMeter
from tests.bench.servers import Server

WARMUP_SECONDS: Final = 2


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


NOISY_SPREAD: Final = 1.2


def spread(runs: list[WrkResult]) -> float:
    """Fastest round over slowest: near 1 on a quiet machine."""
    rates = [r.rps for r in runs]
    return max(rates) / min(rates) if rates and min(rates) > 0 else 1.0


def summarise_rounds(runs: list[WrkResult]) -> dict[str, float]:
    return {
        "rps": median([r.rps for r in runs]),
        "p50_ms": median([r.p50_ms for r in runs]),
        "p99_ms": median([r.p99_ms for r in runs]),
        "errors": median([float(r.errors) for r in runs]),
    }


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
