"""Prometheus metrics, correct with one or several worker processes, cheap on the hot path.

A call updates plain per-process tallies (`TALLY`): one event loop runs the calls, so
no lock is needed. prometheus_client's own objects take a lock per increment and
search buckets in Python; at thousands of calls a second that was a fifth of our
per-call work. The tallies are pushed into prometheus_client's objects once a second
and right before every scrape (`Tally.flush`).

With several workers, `__main__` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before the workers start; each worker's flush writes its samples there and
`/metrics`, in whichever worker answers, aggregates all of them (other workers'
figures are then at most a second old).
"""

from __future__ import annotations

import asyncio
import bisect
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
_BOUNDS: Final = (*_LATENCY_BUCKETS, float("inf"))

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
    "group_counter_redis_seconds",
    "Redis script round trip, by script",
    ["script"],
    buckets=_LATENCY_BUCKETS,
)
REDIS_ERRORS: Final = Counter(
    "group_counter_redis_errors_total", "Redis calls that failed, by script", ["script"]
)
IN_FLIGHT: Final = Gauge(
    "group_counter_in_flight_requests", "Calls being answered now", multiprocess_mode="livesum"
)
REDIS_BATCH_CALLS: Final = Histogram(
    "group_counter_redis_batch_calls",
    "Redis commands written together in one flush of the pipelined connection",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

HTTP_REJECTIONS: Final = Counter(
    "group_counter_http_rejections_total",
    "Connections or requests refused or closed at the HTTP edge, by the limit that tripped",
    ["reason"],
)
OPEN_CONNECTIONS: Final = Gauge(
    "group_counter_open_connections", "Client connections open now", multiprocess_mode="livesum"
)

BUILD_INFO: Final = Gauge(
    "group_counter_build_info",
    "Always 1: the version and source revision of the build serving",
    ["version", "revision"],
    multiprocess_mode="max",
)

WATCHERS: Final = Gauge(
    "group_counter_watchers", "watch_group_counter streams open now", multiprocess_mode="livesum"
)
WATCHED_GROUPS: Final = Gauge(
    "group_counter_watched_groups",
    "Groups with watchers in a process, each one subscription to its channel (summed over processes)",
    multiprocess_mode="livesum",
)
WATCHERS_CUT_OFF: Final = Counter(
    "group_counter_watchers_cut_off_total",
    "Watchers disconnected for not reading: their unsent events passed the bound",
)
DELIVERY_PASS_SECONDS: Final = Histogram(
    "group_counter_delivery_pass_seconds",
    "One pass over a watched group's watchers in a process, each written every event it lacks: "
    "about the longest a change waits to reach all of them",
    buckets=_LATENCY_BUCKETS,
)
RESYNC_SNAPSHOTS: Final = Counter(
    "group_counter_resync_snapshots_total",
    "Snapshots flagged Resync sent to watchers, by why the stream could not go on version by version",
    ["reason"],
)


class _Latencies:
    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(_BOUNDS)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self.total += seconds

    def push(self, histogram: Histogram) -> None:
        # prometheus_client keeps per-bucket (not cumulative) values in `_buckets`, in the
        # order of `_upper_bounds`, which equals _BOUNDS; tests/test_metrics.py checks
        # the exported histogram against what was observed.
        for index, count in enumerate(self.buckets):
            if count:
                histogram._buckets[index].inc(count)
        histogram._sum.inc(self.total)


class Tally:
    """Everything a worker counted since its last flush."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.open_connections = 0
        self.watchers = 0
        self.watched_groups = 0
        self._watchers_cut_off = 0
        self._delivery_passes = _Latencies()
        self._resync_snapshots: dict[str, int] = {}
        self._rejections: dict[str, int] = {}
        self._calls: dict[tuple[str, int], int] = {}
        self._call_seconds: dict[str, _Latencies] = {}
        self._redis_seconds: dict[str, _Latencies] = {}
        self._redis_errors: dict[str, int] = {}
        self._batches: list[int] = []

    def call(self, command: str, code: int, seconds: float) -> None:
        key = (command, code)
        self._calls[key] = self._calls.get(key, 0) + 1
        latencies = self._call_seconds.get(command)
        if latencies is None:
            latencies = self._call_seconds[command] = _Latencies()
        latencies.add(seconds)

    def redis_call(self, script: str, seconds: float) -> None:
        latencies = self._redis_seconds.get(script)
        if latencies is None:
            latencies = self._redis_seconds[script] = _Latencies()
        latencies.add(seconds)

    def redis_error(self, script: str) -> None:
        self._redis_errors[script] = self._redis_errors.get(script, 0) + 1

    def rejection(self, reason: str) -> None:
        self._rejections[reason] = self._rejections.get(reason, 0) + 1

    def batch(self, size: int) -> None:
        self._batches.append(size)

    def watcher_left(self, *, cut_off: bool) -> None:
        self.watchers -= 1
        self._watchers_cut_off += cut_off

    def delivery_pass(self, seconds: float) -> None:
        self._delivery_passes.add(seconds)

    def resync_snapshots(self, reason: str, count: int) -> None:
        """`reason`: "gap" (notices may have been missed: a version skipped, another
        incarnation, the subscription renewed after a Redis fault; every watcher of the
        group gets one) or "reconnect" (a watcher came back with a Last-Event-ID the
        group has moved on from)."""
        self._resync_snapshots[reason] = self._resync_snapshots.get(reason, 0) + count

    def flush(self) -> None:
        calls, self._calls = self._calls, {}
        call_seconds, self._call_seconds = self._call_seconds, {}
        redis_seconds, self._redis_seconds = self._redis_seconds, {}
        redis_errors, self._redis_errors = self._redis_errors, {}
        batches, self._batches = self._batches, []
        rejections, self._rejections = self._rejections, {}
        resync_snapshots, self._resync_snapshots = self._resync_snapshots, {}
        cut_off, self._watchers_cut_off = self._watchers_cut_off, 0
        passes, self._delivery_passes = self._delivery_passes, _Latencies()
        for (command, code), count in calls.items():
            REQUESTS.labels(command, str(code)).inc(count)
        for command, latencies in call_seconds.items():
            latencies.push(REQUEST_SECONDS.labels(command))
        for script, latencies in redis_seconds.items():
            latencies.push(REDIS_SECONDS.labels(script))
        for script, count in redis_errors.items():
            REDIS_ERRORS.labels(script).inc(count)
        for size in batches:
            REDIS_BATCH_CALLS.observe(size)
        for reason, count in rejections.items():
            HTTP_REJECTIONS.labels(reason).inc(count)
        for reason, count in resync_snapshots.items():
            RESYNC_SNAPSHOTS.labels(reason).inc(count)
        if cut_off:
            WATCHERS_CUT_OFF.inc(cut_off)
        passes.push(DELIVERY_PASS_SECONDS)
        IN_FLIGHT.set(self.in_flight)
        OPEN_CONNECTIONS.set(self.open_connections)
        WATCHERS.set(self.watchers)
        WATCHED_GROUPS.set(self.watched_groups)


# One per worker process: the call path writes here, the flusher and /metrics read it.
TALLY: Final = Tally()


async def flush_every_second() -> None:
    while True:
        await asyncio.sleep(1.0)
        TALLY.flush()


def _registry() -> CollectorRegistry | None:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def publish_build_info(version: str, revision: str) -> None:
    BUILD_INFO.labels(version=version, revision=revision).set(1)


def render() -> tuple[bytes, str]:
    """The exposition text (every worker's, in multiprocess mode) and its content type."""
    TALLY.flush()
    registry = _registry()
    payload = generate_latest(registry) if registry is not None else generate_latest()
    return payload, CONTENT_TYPE_LATEST


async def metrics_endpoint(_: Request) -> Response:
    payload, content_type = render()
    return Response(payload, media_type=content_type)
