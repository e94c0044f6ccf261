"""`make run`: installs only what serving needs, refuses a busy port before printing anything,
and serves what its printed curl lines call."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from tests.support import free_port, make_run

ROOT: Final = Path(__file__).resolve().parent.parent
DEV_CONFIG: Final = str(ROOT / "deploy" / "config" / "dev.toml")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def curl_example(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "service", "curl-example", "--config", DEV_CONFIG),
            *("--host", "127.0.0.1", "--port", str(port), "--require-free-port"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_curl_example_on_a_busy_port_prints_no_curl_line_and_fails(busy_port: int) -> None:
    result = curl_example(busy_port)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"127.0.0.1:{busy_port} is already in use" in result.stderr


def test_curl_example_on_a_free_port_prints_curl_lines_for_that_port() -> None:
    port = free_port()
    result = curl_example(port)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("curl ")]
    assert lines
    assert all(f"http://127.0.0.1:{port}/v4/group_open_http_svc/" in line for line in lines)


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_make_run_on_a_busy_port_stops_before_printing_or_serving(busy_port: int) -> None:
    # -o: take the runtime venv as installed (this interpreter), so the test installs nothing.
    result = make("-o", ".venv/.installed-run", "run", f"PORT={busy_port}", f"PY={sys.executable}")
    assert result.returncode != 0
    assert "curl" not in result.stdout
    assert "-m service --host" not in result.stdout, "it went on to start the server"
    assert f"127.0.0.1:{busy_port} is already in use" in result.stderr


def test_make_run_installs_only_the_service_not_the_dev_or_loadtest_tools() -> None:
    # -W: as if pyproject.toml had just changed, so the install steps are printed (-n runs nothing).
    result = make("-n", "-W", "pyproject.toml", "run")
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if " sync " in line]
    assert installs, result.stdout
    # Exactly the lock (--frozen), the runtime only (no --extra), keeping what else is installed.
    assert all("sync --frozen" in line and line.rstrip().endswith("--inexact") for line in installs), installs
    assert "pytest" not in result.stdout
    assert "locust" not in result.stdout


def test_make_run_serves_and_its_printed_curl_lines_answer(tmp_path: Path) -> None:
    log = tmp_path / "make-run.log"
    with make_run(log):
        lines = [line for line in log.read_text().splitlines() if line.startswith("curl ")]
        assert lines, log.read_text()
        for line in lines:
            words = shlex.split(line)
            url, body = words[words.index("-s") + 1], words[words.index("-d") + 1]
            reply = _post(url, body)
            assert (reply["ActionStatus"], reply["ErrorCode"]) == ("OK", 0), (line, reply)


def _post(url: str, body: str) -> dict[str, Any]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("POST", f"{parts.path}?{parts.query}", body=body.encode())
        reply: dict[str, Any] = json.loads(connection.getresponse().read())
        return reply
    finally:
        connection.close()
