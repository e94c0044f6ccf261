"""Issue 11: hostile clients against a real service process (one worker, real redis-server).

Each attack of the issue runs for a few seconds (tests/hostile.py) while a well-behaved
client keeps calling the API and /healthz, and its latency and the worker's RSS are
watched. The bounds are generous on purpose (this is a shared 2-core machine): before
these limits the same attacks took the good client's p99 to seconds and the RSS to
gigabytes. Loopback only; limits are lowered (2 s timeouts) so the suite stays short.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import (
    ATTACKS,
    GOOD_BODY,
    GOOD_PATH,
    HOST,
    distinct_long_queries,
    rss_bytes,
    service_on_redis,
    under_attack,
)
from tests.support import ServiceProcess

ATTACK_SECONDS: Final = 2.5
P99_BOUND: Final = 0.2
RSS_CEILING: Final = 200 * 2**20  # before: 2.3 GB within 8 s for two of these attacks
RSS_RETURNED: Final = 32 * 2**20  # what may stay after the attackers left
TIMEOUT: Final = 2.0
LIMITS: Final = f"""
header_timeout = {TIMEOUT}
body_timeout = {TIMEOUT}
keepalive_timeout = {TIMEOUT}
send_timeout = {TIMEOUT}
"""
COMMAND: Final = "/v4/group_open_http_svc/get_group_counter"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with service_on_redis(tmp_path_factory.mktemp("hostile"), LIMITS) as started:
        yield started


def raw_exchange(
    port: int, request: bytes, *, method: str = "GET", timeout: float = 5.0
) -> tuple[int, bytes]:
    """Send `request` as is; the status and body of the one answer."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.read()


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):
            pass
    return True


def service_log(service: ServiceProcess) -> str:
    return service.log.read_text(errors="replace")


def assert_no_error_logged(service: ServiceProcess) -> None:
    text = service_log(service)
    assert "Traceback" not in text, text[-3000:]
    assert "Exception in ASGI application" not in text, text[-3000:]


# The attacks of the issue ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "how_they_end"),
    [
        ("huge-header-value", "closed by the server"),
        ("many-header-lines", "closed by the server"),
        ("pipeline-never-read", ""),
        ("idle-connections", "closed by the server"),
        ("slowloris", "answered b'HTTP/1.1 408'"),
    ],
)
def test_a_hostile_client_neither_stalls_others_nor_bloats_the_worker(
    service: ServiceProcess, attack: str, how_they_end: str
) -> None:
    outcome = under_attack(service, ATTACKS[attack], ATTACK_SECONDS + TIMEOUT, settle=1.5)
    watch = outcome.watch
    assert not watch.failures, watch.failures[:5]
    assert watch.p99 < P99_BOUND, watch.summary()
    assert watch.max_rss < RSS_CEILING, watch.summary()
    assert outcome.rss_after < outcome.rss_before + RSS_RETURNED, (outcome.rss_before, outcome.rss_after)
    if how_they_end:
        ended = [end for end in outcome.ends if end != "stopped"]
        assert ended, outcome.ends[:5]
        assert all(end.startswith(how_they_end) for end in ended), sorted(set(outcome.ends))


def test_long_distinct_query_strings_are_refused_414_and_cost_no_memory(service: ServiceProcess) -> None:
    outcome = under_attack(service, distinct_long_queries, ATTACK_SECONDS)
    assert not outcome.watch.failures, outcome.watch.failures[:5]
    assert outcome.watch.p99 < P99_BOUND, outcome.watch.summary()
    assert outcome.rss_after < outcome.rss_before + RSS_RETURNED
    assert not [end for end in outcome.ends if "HTTP 200" in end], outcome.ends


# Each limit, as a client sees it --------------------------------------------------------------


def request(target: str = GOOD_PATH, headers: bytes = b"", body: bytes = GOOD_BODY) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
    return head + headers + b"\r\n" + body


def test_headers_up_to_max_header_bytes_are_served(service: ServiceProcess) -> None:
    padding = b"X-Padding: " + b"p" * 12_000 + b"\r\n"
    status, body = raw_exchange(service.port, request(headers=padding))
    assert status == 200
    assert json.loads(body)["ErrorCode"] == 0


def test_headers_over_max_header_bytes_are_answered_431_and_closed(service: ServiceProcess) -> None:
    padding = b"X-Padding: " + b"p" * 20_000 + b"\r\n"
    with socket.create_connection((HOST, service.port), timeout=5) as sock:
        sock.sendall(request(headers=padding))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 431
        assert json.loads(response.read())["ErrorCode"] == 60002
        assert closed_by_server(sock)


def test_a_request_target_over_max_url_bytes_is_answered_414(service: ServiceProcess) -> None:
    status, body = raw_exchange(service.port, request(target=GOOD_PATH + "&pad=" + "x" * 9000))
    assert status == 414
    assert json.loads(body)["ErrorCode"] == 60002


def test_a_body_slower_than_body_timeout_is_answered_408_with_60003(service: ServiceProcess) -> None:
    with socket.create_connection((HOST, service.port), timeout=TIMEOUT + 5) as sock:
        started = time.monotonic()
        sock.sendall(request()[:-5])
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408
        assert json.loads(response.read())["ErrorCode"] == 60003
        assert time.monotonic() - started < TIMEOUT + 2


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
    ],
    ids=["header-without-colon", "tls-hello", "nul-in-target"],
)
def test_malformed_http_is_answered_400_with_the_envelope_and_not_logged(
    service: ServiceProcess, raw: bytes
) -> None:
    before = service_log(service)
    status, body = raw_exchange(service.port, raw)
    assert status == 400
    assert json.loads(body)["ErrorCode"] == 60002
    assert service_log(service) == before


def test_connections_beyond_max_connections_are_refused_503_and_counted(tmp_path: Path) -> None:
    with service_on_redis(tmp_path, "max_connections = 20\n") as small:
        held = [socket.create_connection((HOST, small.port), timeout=5) for _ in range(20)]
        try:
            time.sleep(0.3)
            refused = []
            for _ in range(5):
                sock = socket.create_connection((HOST, small.port), timeout=5)
                held.append(sock)
                response = http.client.HTTPResponse(sock)
                response.begin()
                refused.append((response.status, json.loads(response.read())["ErrorCode"]))
            assert refused == [(503, 10002)] * 5, refused
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        connection = http.client.HTTPConnection(HOST, small.port, timeout=5)
        connection.request("POST", GOOD_PATH, body=GOOD_BODY)
        assert connection.getresponse().status == 200
        connection.close()
        time.sleep(1.1)  # the worker's tallies reach /metrics at least once a second
        connection = http.client.HTTPConnection(HOST, small.port, timeout=5)
        connection.request("GET", "/metrics")
        metrics = connection.getresponse().read().decode()
        connection.close()
        assert 'group_counter_http_rejections_total{reason="max_connections"}' in metrics


# SIGTERM and disconnects (point 7) -------------------------------------------------------------


def test_sigterm_while_a_client_stalls_its_body_answers_503_json_not_a_plain_500(tmp_path: Path) -> None:
    with service_on_redis(tmp_path, "body_timeout = 60.0\n", extra_args=("--graceful-timeout", "3")) as one:
        with socket.create_connection((HOST, one.port), timeout=10) as sock:
            sock.sendall(request()[:-5])
            time.sleep(0.3)
            one.process.send_signal(signal.SIGTERM)
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 503
            assert response.getheader("content-type") == "application/json"
            assert json.loads(response.read())["ErrorCode"] == 10002
        assert one.process.wait(10) == 0
        assert_no_error_logged(one)


def test_sigterm_while_a_client_stalls_its_headers_closes_it_without_a_500(tmp_path: Path) -> None:
    with service_on_redis(tmp_path, "header_timeout = 60.0\n", extra_args=("--graceful-timeout", "3")) as one:
        with socket.create_connection((HOST, one.port), timeout=10) as sock:
            sock.sendall(request()[:30])
            time.sleep(0.3)
            one.process.send_signal(signal.SIGTERM)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            assert b" 500 " not in answer
        assert one.process.wait(10) == 0
        assert_no_error_logged(one)


def test_a_client_that_resets_with_calls_in_flight_logs_no_error(
    service: ServiceProcess, tmp_path: Path
) -> None:
    redis_url = (service.log.parent / "config.toml").read_text().split('redis_url = "')[1].split('"')[0]
    client = redis.Redis.from_url(redis_url)
    stall = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", "0.5"))
    stall.start()
    time.sleep(0.05)
    sockets = []
    for _ in range(20):
        sock = socket.create_connection((HOST, service.port))
        sock.sendall(request() * 3)
        sockets.append(sock)
    time.sleep(0.1)
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        sock.close()
    stall.join()
    client.close()
    time.sleep(0.5)
    assert_no_error_logged(service)


# Fuzzing the raw request ----------------------------------------------------------------------

METHODS: Final = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "BREW", "get", ""]
TARGETS: Final = [
    GOOD_PATH,
    COMMAND + "?sdkappid=1",
    "/v4/group_open_http_svc/update_group_counter?" + GOOD_PATH.split("?")[1],
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "*",
    "/%ff%00?%zz",
]
ALLOWED_STATUS: Final = {200, 400, 408, 413, 414, 431}

header_name = st.one_of(
    st.sampled_from(["X-A", "Content-Type", "Idempotency-Key", "X-Request-Id", "Expect", "Connection"]),
    st.binary(min_size=0, max_size=12).map(lambda b: b.decode("latin-1")),
)
header_value = st.one_of(
    st.sampled_from(["", "json", "100-continue", "keep-alive", "close", "a" * 300]),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
json_body = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
).map(lambda doc: json.dumps(doc).encode())
body_bytes = st.one_of(
    json_body,
    st.binary(max_size=300),
    st.just(b'{"GroupId": "g\xff", "GroupCounter": [{"Key": "a", "Value": 1e400}]}'),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=5))
    body = draw(body_bytes)
    framing = draw(st.sampled_from(["length", "chunked", "bad-chunk", "none"]))
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing in ("chunked", "bad-chunk"):
        lines.append("Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
        if framing == "bad-chunk":
            payload = b"zz\r\n" + payload
    else:
        payload = b""
    lines.append("Connection: close")
    return method, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def fuzz_one(service: ServiceProcess, method: str, raw: bytes) -> None:
    try:
        status, body = raw_exchange(service.port, raw, method=method, timeout=TIMEOUT + 3)
    except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
        return  # closed without an answer: allowed for what cannot be parsed at all
    assert status in ALLOWED_STATUS, (status, body[:200])
    if method != "HEAD" and not (status == 200 and raw.split(b" ", 2)[1].startswith(b"/metrics")):
        reply: Any = json.loads(body)
        if "ErrorCode" in reply:
            assert reply["ErrorCode"] != 10002, reply


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=raw_requests())
def test_fuzzed_raw_requests_get_a_documented_answer_and_no_traceback(
    service: ServiceProcess, case: tuple[str, bytes]
) -> None:
    fuzz_one(service, *case)
    assert_no_error_logged(service)


@pytest.mark.slow
@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=raw_requests())
def test_fuzzed_raw_requests_long_run(service: ServiceProcess, case: tuple[str, bytes]) -> None:
    fuzz_one(service, *case)
    assert_no_error_logged(service)


def test_the_worker_is_still_small_after_everything(service: ServiceProcess) -> None:
    assert rss_bytes(service.pid) < RSS_CEILING
