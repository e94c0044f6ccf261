"""The soak: the service's worker under a long wrk run, its RSS sampled as it goes."""

from __future__ import annotations

import threading
import time
from typing import Any, Final

from tests.bench.drivers import WrkResult, run_wrk
from tests.bench.exactness import Ledger
from tests.bench.markdown import now_text
from tests.bench.servers import Server, rss_kib

SOAK_SAMPLE_SECONDS: Final = 10.0


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
