"""The load generators: wrk (closed loop, tests/bench/update.lua unless said) and the
open-loop driver tests/bench/openloop.js, each run once and parsed into a result."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.bench.client import API, CONNECTIONS, query_string
from tests.bench.machine import BenchError, Cpus
from tests.bench.servers import ADMIN, HERE, SDKAPPID

WRK_SCRIPT: Final = HERE / "update.lua"
OPENLOOP_SCRIPT: Final = HERE / "openloop.js"


@dataclass
class WrkResult:
    rps: float
    requests: int
    acked: int
    failed: int
    socket_errors: int
    sent: int
    p50_ms: float
    p99_ms: float

    @property
    def errors(self) -> int:
        return self.failed + self.socket_errors

    @property
    def answered(self) -> int:
        return self.acked + self.failed

    @property
    def unanswered(self) -> int:
        """Calls written whose answer wrk never read: in flight at its deadline, or lost to an error."""
        return max(0, self.sent - self.acked - self.failed)


_BENCH_LINE: Final = re.compile(r"^BENCH (.*)$", re.MULTILINE)
_RPS_LINE: Final = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)


def run_wrk(
    port: int,
    seconds: int,
    usersig: str,
    groups: int,
    cpu: int | None,
    threads: int = 1,
    *,
    script: Path = WRK_SCRIPT,
    env: dict[str, str] | None = None,
) -> WrkResult:
    """wrk with `script` (update.lua unless said), set up by BENCH_* variables; `env` adds or overrides."""
    argv = [
        *Cpus.prefix(cpu),
        "wrk",
        f"-t{threads}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    environment = {
        **os.environ,
        "BENCH_GROUPS": str(groups),
        "BENCH_SDKAPPID": str(SDKAPPID),
        "BENCH_IDENTIFIER": ADMIN,
        "BENCH_USERSIG": usersig,
        **(env or {}),
    }
    done = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    bench = _BENCH_LINE.search(done.stdout)
    rps = _RPS_LINE.search(done.stdout)
    if done.returncode != 0 or bench is None or rps is None:
        raise BenchError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    fields = dict(item.split("=", 1) for item in bench.group(1).split())
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(fields["requests"]),
        acked=int(fields["acked"]),
        failed=int(fields["failed"]),
        socket_errors=int(fields["socket_errors"]),
        sent=int(fields.get("sent", fields["requests"])),
        p50_ms=int(fields["p50_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
    )


@dataclass
class LoadPoint:
    app: str
    fraction: float
    offered: float
    achieved: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    acked: int
    failed: int
    errors: int
    unanswered: int


def run_openloop(
    app: str,
    port: int,
    usersig: str,
    groups: int,
    fraction: float,
    rate: float,
    seconds: float,
    warmup: float,
    cpu: int | None,
) -> LoadPoint:
    config = {
        "port": port,
        "path": f"{API}/update_group_counter?{query_string(usersig)}",
        "rate": rate,
        "duration": seconds,
        "warmup": warmup,
        "groups": groups,
        "connections": CONNECTIONS,
    }
    argv = [*Cpus.prefix(cpu), "node", str(OPENLOOP_SCRIPT), json.dumps(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(
            f"the open-loop driver failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadPoint(
        app=app,
        fraction=fraction,
        offered=float(result["offered"]),
        achieved=float(result["achieved"]),
        p50_ms=float(result["p50_ms"]),
        p90_ms=float(result["p90_ms"]),
        p99_ms=float(result["p99_ms"]),
        max_ms=float(result["max_ms"]),
        acked=int(result["acked"]),
        failed=int(result["failed"]),
        errors=int(result["errors"]) + int(result.get("not_sent", 0)),
        unanswered=int(result["unanswered"]),
    )
