"""`make bench` keeps working: the benchmark tool end to end at tiny scale (under a minute).

No speed is asserted: the figures depend on the machine. What must hold is that the tool
starts everything, measures, writes its report, and that the counters are exact.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.ack_latency import RoundTrips
from tests.topologies import ReplicatedRedis

REPO = Path(__file__).resolve().parent.parent
ROWS = (
    "update_group_counter (default config: JSON access log)",
    'update_group_counter, log_level "warning"',
    "get_group_counter",
    "delete_group_counter",
    "create_group",
    "destroy_group",
    "update_group_counter with an Idempotency-Key",
    "update_group_counter, rate-limited app",
    "update_group_counter on a 3-master Redis Cluster",
    "update_group_counter, every call on one group",
    "get_group_counter, every call on one group",
    'update_group_counter, a master with one replica, ack = "primary"',
    'update_group_counter, a master with one replica, ack = "replicas"',
)


def test_bench_smoke_writes_the_report(tmp_path: Path) -> None:
    assert shutil.which("wrk"), (
        "wrk is not installed, and the benchmark needs it: `make redis-server` installs it when root, "
        "or `sudo apt-get install wrk`"
    )
    assert shutil.which("node"), (
        "node is not installed (tests/bench/openloop.js): `sudo apt-get install nodejs`"
    )
    out = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    assert "| app | requests/s | p50 (ms) | p99 (ms) | errors |" in text
    assert re.search(r"^\| ceiling \| [\d,]+ \| [\d.]+ \| [\d.]+ \| \d+ \|$", text, re.MULTILINE)
    assert re.search(r"^\| service \| [\d,]+ \| [\d.]+ \| [\d.]+ \| \d+ \|$", text, re.MULTILINE)
    assert re.search(r"ratio service / ceiling: \*\*\d+\.\d\dx\*\*", text)
    assert re.search(r"\*\*-?\d+\.\d bytes per group\*\*", text)
    assert "exactness: PASS" in text
    assert "## Latency against offered load" in text
    # live counters: 50 watchers of one group got every version, the service's mean pass over
    # them beside the machine's floor for 50 sockets, and publication on/off ran
    assert re.search(
        r"^\| 50 \| \d+ \| -?[\d.]+ \| -?[\d.]+ \| -?[\d.]+ \| 0 \| 0 \| [\d.]+ KiB \| [\d.]+ \| [\d.]+ \|$",
        text,
        re.MULTILINE,
    )
    assert re.search(r"ratio on / off: \*\*\d+\.\d\d\dx\*\*", text)
    # every command: a measured row each, against the ceiling, with Redis's cost per call
    assert "## Every command" in text
    number = r"[\d,.]+"
    for label in ROWS:
        # workload, ceiling, service, ratio, errors, target, verdict, Redis us, x bare, Redis CPU, scripts
        cells = [re.escape(label), number, number, r"\*\*\d+\.\d\dx\*\*", r"\d+ / \d+", r"≥ 0\.\d\dx"]
        cells += [r"met|\*\*not met\*\*", number, number + "x", number, number]
        row = r"^\| " + r" \| ".join(f"(?:{cell})" for cell in cells) + r" \|$"
        assert re.search(row, text, re.MULTILINE), label
    assert re.search(r"\*\*-?\d+\.\d bytes per hash\*\*", text)
    assert re.search(
        r"^\| 20 \| final counters = sum of acknowledged increments .* \| PASS \|$", text, re.MULTILINE
    )
    # the rows against each other: a hot group against spread groups, "replicas" against "primary"
    relative = r"\| \d+\.\d{3}x / \d+\.\d{3}x = \d+\.\d{3} — (?:met|\*\*not met\*\*) \|$"
    assert re.search(r"^\| 14 \| update_group_counter on one hot group .*" + relative, text, re.MULTILINE)
    assert re.search(r'^\| 15 \| ack = "replicas" ≥ 0\.80 x .*' + relative, text, re.MULTILINE)
    data = json.loads(text.split("<!-- bench-data: ", 1)[1].split(" -->", 1)[0])
    rows = {"update": data["throughput"], **data["rows"]}
    assert len(rows) == len(ROWS)
    for key, measured in rows.items():
        # Every reply of every workload was ErrorCode 0: each call did what it was meant to.
        assert measured["failed"] == 0, key
        # Every call reached Redis; reads and updates of one group may share a script call.
        assert measured["redis"]["commands_per_call"] > 0, key
    for key in ("rate_limited", "cluster", "ack_replicas"):
        assert data["rows"][key]["exactness"]["verdict"] == "PASS", key


def test_the_ack_latency_probe_times_a_round_trip_to_the_replica() -> None:
    """tests.bench.ack_latency's probe: WAIT 1 against PING measures the replica; with the
    replica gone the same probe waits out WAIT's 1 s timeout."""
    topology = ReplicatedRedis().start()
    try:
        assert topology.master is not None
        with RoundTrips(topology.master.port) as probe:
            time.sleep(0.3)
        linked = probe.round_trip_ms
        assert len(probe.wait_us) > 10
        topology.replicas[0].stop()
        with RoundTrips(topology.master.port) as probe:
            time.sleep(0.1)
        gone = probe.round_trip_ms
    finally:
        topology.stop()
    assert linked < 50
    assert gone > 900
