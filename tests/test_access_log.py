"""Issue 14: the access log costs little and still says everything, on time, whole."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest

from service.ops.access_log import ACCESS, FLUSH_SECONDS
from service.ops.logs import JsonFormatter, TextFormatter
from tests.support import (
    CONFIG,
    REPO,
    Api,
    RedisServer,
    ServiceProcess,
    access_lines,
    free_port,
    query,
    stop_process,
)

FIELDS: Final = ("request_id", "command", "sdkappid", "identifier", "group_id", "error_code", "latency_ms")
# The text line's timestamp, in local time as `logging` writes asctime.
TEXT_TIME: Final = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def ready(base_url: str) -> bool:
    try:
        return httpx2.get(f"{base_url}/readyz", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


def record_like(line: dict[str, Any]) -> logging.LogRecord:
    """The LogRecord that `logging` made for a call before: the same fields as `extra`."""
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "call", None, None)
    for name in FIELDS:
        setattr(record, name, line[name])
    return record


def test_the_json_line_is_the_line_logging_wrote_field_for_field(api: Api) -> None:
    with access_lines("json") as lines:
        api.call("get_group_counter", {"GroupId": "g-1"})
        (line,) = lines()
    ours = json.loads(line)
    theirs = json.loads(JsonFormatter().format(record_like(ours)))
    assert list(ours) == list(theirs)
    assert {**ours, "time": None} == {**theirs, "time": None}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ours["time"])


def test_the_text_line_is_the_line_logging_wrote(api: Api) -> None:
    with access_lines("json") as json_lines:
        api.call("get_group_counter", {"GroupId": "g-2"})
        (as_json,) = json_lines()
    with access_lines("text") as lines:
        api.call("get_group_counter", {"GroupId": "g-2"})
        (line,) = lines()
    fields = json.loads(as_json)
    fields["request_id"] = re.search(r"request_id=(\S+)", line).group(1)  # type: ignore[union-attr]
    ours = line.split(" ", 2)[2].split(" latency_ms=")[0]
    theirs = TextFormatter().format(record_like(fields)).split(" ", 2)[2].split(" latency_ms=")[0]
    assert TEXT_TIME.match(line)
    assert ours == theirs


def test_lines_are_written_together_within_the_flush_interval() -> None:
    writes: list[bytes] = []

    async def calls_then_wait() -> tuple[int, int]:
        for n in range(10):  # about 1.6 KB: under PIPE_BUF
            ACCESS.call(b"r-%d" % n, "get_group_counter", 1, "g", 0, 0.001)
        await asyncio.sleep(0)
        before = len(writes)
        await asyncio.sleep(FLUSH_SECONDS + 0.05)
        return before, len(writes)

    with access_lines() as lines:
        ACCESS.write = writes.append
        before, after = asyncio.run(calls_then_wait())
        assert lines() == []  # nothing left behind
    assert (before, after) == (0, 1)
    assert writes[0].count(b"\n") == 10


def test_a_line_reaches_stdout_within_a_second_of_its_answer(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    service = ServiceProcess.start(config)
    try:
        service.wait_until(lambda: ready(service.base_url))
        url = f"{service.base_url}/v4/group_open_http_svc/get_group_counter?{query()}"
        response = httpx2.post(url, json={"GroupId": "g"}, headers={"X-Request-Id": "on-time"})
        answered = time.monotonic()
        assert response.status_code == 200
        while b'"request_id":"on-time"' not in service.log.read_bytes():
            assert time.monotonic() - answered < 1.0, "the access line did not reach stdout within 1 s"
            time.sleep(0.01)
    finally:
        service.stop()


def test_a_line_logged_outside_an_event_loop_is_written_at_once() -> None:
    writes: list[bytes] = []
    with access_lines():
        ACCESS.write = writes.append
        ACCESS.call(b"r", "get_group_counter", 1, "g", 0, 0.001)
        assert len(writes) == 1


def test_no_write_is_over_pipe_buf_and_every_write_is_whole_lines() -> None:
    writes: list[bytes] = []

    async def many_calls() -> None:
        for n in range(2000):
            ACCESS.call(b"r-%d" % n, "update_group_counter", 1400000000, "g" * (n % 300), 0, 0.001)
        ACCESS.flush()

    with access_lines():
        ACCESS.write = writes.append
        asyncio.run(many_calls())
    assert len(writes) > 1
    assert all(len(write) <= select.PIPE_BUF and write.endswith(b"\n") for write in writes)
    lines = b"".join(writes).decode().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r-{n}" for n in range(2000)]


def test_log_level_warning_writes_no_access_line(api: Api) -> None:
    with access_lines() as lines:
        logging.getLogger("service.access").setLevel(logging.WARNING)
        api.call("get_group_counter", {"GroupId": "quiet"})
        assert lines() == []


@pytest.fixture
def redis_for_workers() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_every_answered_call_has_one_whole_line_after_sigterm_with_two_workers(
    redis_for_workers: RedisServer, tmp_path: Path
) -> None:
    """Two workers share one stdout pipe, calls are in flight at SIGTERM: no line is torn or lost."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace("memory://", redis_for_workers.url), encoding="utf-8")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--config", str(config), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v4/group_open_http_svc/get_group_counter?{query()}"
    try:
        deadline = time.monotonic() + 30
        while not ready(base) and time.monotonic() < deadline:
            time.sleep(0.1)

        async def calls_then_sigterm() -> list[str]:
            answered: list[str] = []
            limits = httpx2.Limits(max_connections=64)
            async with httpx2.AsyncClient(timeout=10.0, limits=limits) as client:

                async def one(n: int) -> None:
                    request_id = f"call-{n}"
                    try:
                        response = await client.post(
                            url, json={"GroupId": f"g{'x' * (n % 200)}"}, headers={"X-Request-Id": request_id}
                        )
                    except httpx2.TransportError:
                        return  # refused or cut by the shutdown: it may or may not have a line
                    if response.status_code == 200:
                        answered.append(request_id)

                tasks = [asyncio.create_task(one(n)) for n in range(4000)]
                await asyncio.sleep(1.0)
                process.send_signal(signal.SIGTERM)
                await asyncio.gather(*tasks)
            return answered

        answered = asyncio.run(calls_then_sigterm())
        assert process.wait(timeout=30) == 0
    finally:
        stop_process(process, 5)
    reader.join(timeout=10)
    process.stdout.close()
    lines = [json.loads(line) for line in b"".join(output).splitlines()]  # a torn line fails here
    logged = [line["request_id"] for line in lines if line["logger"] == "service.access"]
    assert len(answered) > 100  # calls were in flight at SIGTERM, not all refused
    assert len(logged) == len(set(logged))
    assert set(answered) <= set(logged)
