"""The processes under test: the service as shipped and the ceiling app, each a child process
on a loopback port, their config, the bench's own redis-server, and a process's memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.bench.machine import BenchError, Cpus, pin
from tests.support import RedisServer, free_port, service_argv, stop_process

SDKAPPID: Final = 1400000000
SECRET_KEY: Final = "bench-secret-key-not-for-production"
ADMIN: Final = "administrator"
# A second app in the config, for the rate-limited row (tests/bench/rows.py).
RATE_LIMITED_SDKAPPID: Final = 1400000001
RATE_LIMITED_SECRET_KEY: Final = "bench-rate-limited-secret-key-not-for-production"
NEVER_REFUSES: Final = 1_000_000_000  # calls per second: every call is counted, none refused

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parent.parent


@dataclass
class Server:
    """A server under test: a child process answering HTTP on a loopback port."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    ready_method: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    cwd: Path = ROOT  # another checkout runs another version of the service

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, cpu: int | None) -> Server:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*Cpus.prefix(cpu), *self.argv],
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()
        return self

    def _wait_ready(self, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                break
            request = urllib.request.Request(url, data=b"{}" if self.ready_method == "POST" else None)
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise BenchError(f"{self.name} did not answer on port {self.port}; its log ends:\n{tail}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15)
        self.process = None


def service_server(config: Path, workdir: Path, workers: int = 1, tag: str = "service") -> Server:
    port = free_port()
    return Server(
        name=f"{tag} (--workers {workers})",
        argv=[*service_argv(port, config), "--workers", str(workers)],
        port=port,
        ready_path="/readyz",
        ready_method="GET",
        log=workdir / f"{tag}-{workers}.log",
    )


def ceiling_server(workdir: Path) -> Server:
    port = free_port()
    return Server(
        name="ceiling",
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "tests.bench.ceiling:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            # as `python -m service` runs uvicorn: nothing reads the client address
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
        port=port,
        ready_path="/",
        ready_method="POST",
        log=workdir / "ceiling.log",
    )


def write_config(path: Path, redis_url: str, log_level: str | None = None, ack: str | None = None) -> None:
    """The bench's apps on `redis_url`; everything else the service's defaults, unless
    `log_level` or `ack` say otherwise (the default logs one JSON access line per call)."""
    path.write_text(
        f'redis_url = "{redis_url}"\n'
        + (f'log_level = "{log_level}"\n' if log_level else "")
        + (f'ack = "{ack}"\n' if ack else "")
        + "\n[[apps]]\n"
        f"sdkappid = {SDKAPPID}\n"
        f'secret_key = "{SECRET_KEY}"\n'
        f'admins = ["{ADMIN}"]\n'
        'groups = "registered"\n'
        "\n[[apps]]\n"
        f"sdkappid = {RATE_LIMITED_SDKAPPID}\n"
        f'secret_key = "{RATE_LIMITED_SECRET_KEY}"\n'
        f'admins = ["{ADMIN}"]\n'
        'groups = "registered"\n'
        f"rate_limit = {NEVER_REFUSES}\n"
    )


def start_redis(cpus: Cpus) -> RedisServer:
    """The bench's own redis-server, pinned to the load generators' CPU."""
    server = RedisServer().start()
    assert server.process is not None
    pin(server.process.pid, cpus.load)
    return server


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")
