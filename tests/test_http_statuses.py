"""Every HTTP status the service can send is documented: docs/API.md §1 lists each with its
ErrorCode, docs/openapi.json declares each on the operations it can answer, and each is
driven here against a running service (raw sockets: the edge's refusals are about bytes
an HTTP client library would not send)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support import ADMIN, REGISTERED_APP, SECRET_KEYS, ServiceProcess, free_port, query

ROOT: Final = Path(__file__).resolve().parent.parent
API_MD: Final = ROOT / "docs" / "API.md"
OPENAPI: Final = ROOT / "docs" / "openapi.json"
PREFIX: Final = "/v4/group_open_http_svc/"
# Each answer within this; the timeouts below are 1 s, checked once a second.
READ_SECONDS: Final = 10.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> int:
        code: int = json.loads(self.body)["ErrorCode"]
        return code


def exchange(port: int, data: bytes) -> Answer:
    """Send `data` on a fresh connection, then nothing more (a slow client stops there),
    and read one answer: to the close, or its Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_SECONDS) as sock:
        sock.sendall(data)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> Answer:
    received = b""
    deadline = time.monotonic() + READ_SECONDS
    while time.monotonic() < deadline:
        if b"\r\n\r\n" in received:
            head, _, body = received.partition(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match and len(body) >= int(match.group(1)):
                break
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return Answer(int(status_line.split()[1]), headers, body)


def command_target(command: str = "get_group_counter") -> str:
    return f"{PREFIX}{command}?{query(REGISTERED_APP)}"


@dataclass(frozen=True)
class Case:
    """One way to make the service answer `status` (with `code`, on the API's paths)."""

    status: int
    code: int | None  # None: an operations endpoint's plain answer, not the envelope
    drive: Callable[[Services], Answer]
    said: str = ""  # for an operations endpoint: how docs/API.md §1 says it


@dataclass(frozen=True)
class Services:
    main: ServiceProcess  # timeouts of 1 s, a metrics port of its own
    full: ServiceProcess  # max_connections = 1
    metrics_port: int


def request(method: str, target: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def at_capacity(services: Services) -> Answer:
    with socket.create_connection(("127.0.0.1", services.full.port), timeout=READ_SECONDS) as held:
        held.sendall(request("POST", command_target(), b'{"GroupId":"g"}'))
        read_answer(held)  # the one connection the worker takes is open and answered
        return exchange(services.full.port, request("POST", command_target(), b"{}"))


CASES: Final = {
    "a command's answer": Case(
        200,
        0,
        lambda s: exchange(s.main.port, request("POST", command_target("get_appid_group_list"), b"{}")),
    ),
    "not HTTP/1.x": Case(400, 60002, lambda s: exchange(s.main.port, b"HELLO THERE\r\n\r\n")),
    "headers too slow": Case(
        408,
        60002,
        lambda s: exchange(s.main.port, f"POST {command_target()} HTTP/1.1\r\nHost: t\r\n".encode()),
    ),
    "body too slow": Case(
        408,
        60003,
        lambda s: exchange(
            s.main.port,
            f"POST {command_target()} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{{".encode(),
        ),
    ),
    "body too large": Case(
        413, 60003, lambda s: exchange(s.main.port, request("POST", command_target(), b" " * 70000))
    ),
    "request target too long": Case(
        414, 60002, lambda s: exchange(s.main.port, request("POST", command_target() + "&x=" + "a" * 9000))
    ),
    # Never ended: within one read of whole headers the edge does not count (a read is
    # bounded anyway); a client that keeps sending is refused as the count passes the cap.
    "headers too large": Case(
        431,
        60002,
        lambda s: exchange(
            s.main.port, f"POST {command_target()} HTTP/1.1\r\nX-Big: {'a' * 17000}\r\n".encode()
        ),
    ),
    "worker at max_connections": Case(503, 10002, at_capacity),
    "a method /openapi.json does not take": Case(
        405, None, lambda s: exchange(s.main.port, request("DELETE", "/openapi.json")), "plain-text HTTP 405"
    ),
    "the demo page with a malformed GroupId": Case(
        400, None, lambda s: exchange(s.main.port, request("GET", "/demo?GroupId=%01")), "plain-text HTTP 400"
    ),
    "the metrics port, not /metrics": Case(
        404, None, lambda s: exchange(s.metrics_port, request("GET", "/nope")), "plain-text HTTP 404"
    ),
}


def start(folder: Path, extra_config: str, *args: str) -> ServiceProcess:
    config = folder / f"config-{free_port()}.toml"
    config.write_text(
        'redis_url = "memory://"\nlog_format = "json"\n'
        + extra_config
        + f'[[apps]]\nsdkappid = {REGISTERED_APP}\nsecret_key = "{SECRET_KEYS[REGISTERED_APP]}"\n'
        f'admins = ["{ADMIN}"]\ngroups = "registered"\nend_users = true\nclient_keys = ["like"]\n'
    )
    process = ServiceProcess.start(config, *args)

    def answers() -> bool:
        with socket.create_connection(("127.0.0.1", process.port), timeout=1):
            return True

    process.wait_until(answers)
    return process


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    folder = tmp_path_factory.mktemp("statuses")
    metrics_port = free_port()
    main = start(
        folder, "header_timeout = 1.0\nbody_timeout = 1.0\ndemo = true\n", "--metrics-port", str(metrics_port)
    )
    try:
        full = start(folder, "max_connections = 1\n")
        try:
            yield Services(main, full, metrics_port)
        finally:
            full.stop()
    finally:
        main.stop()


def api_md_statuses() -> tuple[set[tuple[int, str]], str]:
    """docs/API.md §1: its table's (HTTP status, ErrorCode or "any") rows, and its text."""
    section = API_MD.read_text().split("## 1.", 1)[1].split("## 2.", 1)[0]
    rows = {(int(s), c) for s, c in re.findall(r"^\s*\| (\d{3}) \| (\d+|any) \|", section, re.MULTILINE)}
    return rows, " ".join(section.split())


def openapi_operations() -> dict[tuple[str, str], dict[str, Any]]:
    paths = json.loads(OPENAPI.read_text())["paths"]
    return {(path, method): operation for path, item in paths.items() for method, operation in item.items()}


def test_every_http_status_the_edge_can_send_has_a_case() -> None:
    """The canned answers of service/http/protocol.py and the 413 of the command endpoint:
    a new one without a case here (and so without its documentation checked) fails."""
    protocol = (ROOT / "service" / "http" / "protocol.py").read_text()
    canned = {int(status) for status in re.findall(r"_canned\(\s*(\d{3})", protocol)}
    assert canned, "no canned answers found"
    endpoint = (ROOT / "service" / "api" / "endpoint.py").read_text()
    assert "ErrorCode.BAD_BODY, 413" in endpoint
    assert canned | {200, 413} <= {case.status for case in CASES.values()}


@pytest.mark.parametrize("name", list(CASES))
def test_every_http_status_the_service_sends_is_documented(services: Services, name: str) -> None:
    case = CASES[name]
    answer = case.drive(services)
    assert answer.status == case.status, (answer.status, answer.body[:200])
    rows, text = api_md_statuses()
    if case.code is None:
        assert case.said in text, f"docs/API.md §1 does not say {case.said!r}"
        return
    assert answer.error_code() == case.code, answer.body
    assert rows & {(case.status, str(case.code)), (case.status, "any")}, (
        f"docs/API.md §1: no {case.status} / {case.code}"
    )
    if case.status not in (200, 413):
        assert answer.headers.get("connection") == "close", answer.headers
    for (path, method), operation in openapi_operations().items():
        if case.status == 413 and method != "post":
            continue  # a GET has no body to be too large
        assert str(case.status) in operation["responses"], (
            f"openapi.json: {method} {path} lacks {case.status}"
        )
