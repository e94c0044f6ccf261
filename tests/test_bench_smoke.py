"""`make bench` keeps working: the benchmark tool end to end at tiny scale (a few seconds).

No speed is asserted: the figures depend on the machine. What must hold is that the tool
starts everything, measures, writes its report, and that the counters are exact.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
        timeout=150,
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
    # live counters: 50 watchers of one group got every version, and publication on/off ran
    assert re.search(
        r"^\| 50 \| \d+ \| -?[\d.]+ \| -?[\d.]+ \| -?[\d.]+ \| 0 \| 0 \| [\d.]+ KiB \|$", text, re.MULTILINE
    )
    assert re.search(r"ratio on / off: \*\*\d+\.\d\d\dx\*\*", text)
