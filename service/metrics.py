"""Prometheus metrics, correct with one or several worker processes.

With several workers, `__main__` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before the workers start; each worker writes its samples there and `/metrics`, in
whichever worker answers, aggregates all of them.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS: Final = Counter(
    "group_counter_requests_total", "Calls answered, by command and ErrorCode", ["command", "code"]
)
REQUEST_SECONDS: Final = Histogram(
    "group_counter_request_seconds",
    "Time to answer a call, by command",
    ["command"],
    buckets=_LATENCY_BUCKETS,
)
REDIS_SECONDS: Final = Histogram(
    "group_counter_redis_seconds", "Redis script round trip, by script", ["script"], buckets=_LATENCY_BUCKETS
)
REDIS_ERRORS: Final = Counter(
    "group_counter_redis_errors_total", "Redis calls that failed, by script", ["script"]
)
IN_FLIGHT: Final = Gauge(
    "group_counter_in_flight_requests", "Calls being answered now", multiprocess_mode="livesum"
)


def _registry() -> CollectorRegistry | None:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def metrics_endpoint(_: Request) -> Response:
    registry = _registry()
    payload = generate_latest(registry) if registry is not None else generate_latest()
    return Response(payload, media_type=CONTENT_TYPE_LATEST)


_call_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


def observe_call(command: str, code: int, seconds: float) -> None:
    """Count a call and its latency; label children are looked up once, not per call."""
    children = _call_children.get((command, code))
    if children is None:
        children = (REQUESTS.labels(command, str(code)), REQUEST_SECONDS.labels(command))
        _call_children[(command, code)] = children
    children[0].inc()
    children[1].observe(seconds)
