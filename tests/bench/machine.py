"""The machine the bench runs on: its CPUs and where each process is pinned, its facts for the
report, and the tools the bench needs on it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class BenchError(RuntimeError):
    """The benchmark could not measure something; the message says what to do."""


@dataclass
class Cpus:
    """Where things run: the servers under test on `server`, the load and Redis on `load`."""

    server: int | None
    load: int | None
    note: str

    @staticmethod
    def pick() -> Cpus:
        allowed = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") is None:
            return Cpus(None, None, "taskset is missing (util-linux): nothing pinned")
        if len(allowed) < 2:
            return Cpus(None, None, f"only {len(allowed)} CPU available: nothing pinned")
        return Cpus(
            allowed[0],
            allowed[1],
            f"servers under test pinned to CPU {allowed[0]}; wrk, the open-loop driver and "
            f"redis-server pinned to CPU {allowed[1]} (taskset)",
        )

    @staticmethod
    def prefix(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def machine_facts() -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvicorn": importlib.metadata.version("uvicorn"),
        "starlette": importlib.metadata.version("starlette"),
        "redis-server": command_version(["redis-server", "--version"]).split(" sha=")[0],
        "wrk": command_version(["wrk", "--version"]).split(" Copyright")[0],
        "node": command_version(["node", "--version"]),
    }


def require_tools(need_node: bool) -> None:
    if shutil.which("wrk") is None:
        raise BenchError(
            "wrk is not installed: run `make bench` as root (it installs it) or `sudo apt-get install wrk`"
        )
    if shutil.which("redis-server") is None:
        raise BenchError(
            "redis-server is not installed: `make redis-server` or `sudo apt-get install redis-server`"
        )
    if need_node and shutil.which("node") is None:
        raise BenchError(
            "node is not installed (the open-loop driver tests/bench/openloop.js needs it): "
            "`sudo apt-get install nodejs`"
        )


def pin(pid: int, cpu: int | None) -> None:
    """Every thread of a running process onto `cpu` (a redis-server: with the load generators)."""
    if cpu is not None:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)
