"""The per-process tallies reach Prometheus exactly as observed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from service.ops.metrics import _BOUNDS, _LATENCY_BUCKETS, REQUEST_SECONDS, _Latencies


def _exported(histogram: Histogram) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(histogram)
    return {
        f"{sample.name}{sample.labels.get('le', '')}": sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_pushed_latencies_equal_observing_each_one() -> None:
    observations = [0.0, 0.0004, 0.0005, 0.0006, 0.003, 0.02, 0.6, 2.5, 3.0, 100.0]
    by_observe = Histogram("by_observe", "x", buckets=_LATENCY_BUCKETS, registry=None)
    by_tally = Histogram("by_tally", "x", buckets=_LATENCY_BUCKETS, registry=None)
    tally = _Latencies()
    for seconds in observations:
        by_observe.observe(seconds)
        tally.add(seconds)
    tally.push(by_tally)
    expected = {
        name.replace("by_observe", "by_tally"): value for name, value in _exported(by_observe).items()
    }
    assert _exported(by_tally) == expected


def test_tally_bounds_match_the_histograms() -> None:
    assert list(_BOUNDS) == REQUEST_SECONDS.labels("any")._upper_bounds
