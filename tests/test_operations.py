"""Operations: probes, metrics, logs, TLS, Redis sanity at start, several workers."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.ops.lifecycle import LIFECYCLE
from service.storage.store import open_store
from tests.support import CONFIG, Api, RedisServer, ServiceProcess, access_lines, free_port, query


def _requests_total(client: TestClient | httpx2.Client) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").text
    totals: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "group_counter_requests":
            for sample in family.samples:
                if sample.name == "group_counter_requests_total":
                    totals[(sample.labels["command"], sample.labels["code"])] = sample.value
    return totals


@pytest.fixture
def dead_redis_app(settings: Settings) -> Iterator[TestClient]:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TestClient(create_app(settings, open_store(url, timeout=0.3))) as client:
        yield client


def test_healthz_answers_without_touching_redis(dead_redis_app: TestClient) -> None:
    response = dead_redis_app.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_after_a_script_round_trip(api: Api) -> None:
    assert api.client.get("/readyz").status_code == 200


def test_readyz_is_unready_when_redis_is_down(dead_redis_app: TestClient) -> None:
    response = dead_redis_app.get("/readyz")
    assert response.status_code == 503
    assert "redis" in response.json()["status"]


def test_readyz_recovers_after_the_script_cache_is_flushed(api: Api) -> None:
    api.inspector.script_flush()
    assert api.client.get("/readyz").status_code == 200


def test_readyz_is_unready_while_draining(api: Api) -> None:
    LIFECYCLE.draining = True
    try:
        assert api.client.get("/readyz").status_code == 503
    finally:
        LIFECYCLE.draining = False


def test_metrics_count_calls_by_command_and_error_code(api: Api) -> None:
    before = _requests_total(api.client)
    api.create("g")
    for _ in range(3):
        api.update("g", {"a": 1}, "Increase")
    api.get("nope")
    after = _requests_total(api.client)

    def delta(command: str, code: str) -> float:
        return after.get((command, code), 0.0) - before.get((command, code), 0.0)

    assert delta("update_group_counter", "0") == 3
    assert delta("create_group", "0") == 1
    assert delta("get_group_counter", "10010") == 1


def test_metrics_parse_with_the_prometheus_text_parser(api: Api) -> None:
    api.create("g")
    names = {family.name for family in text_string_to_metric_families(api.client.get("/metrics").text)}
    assert {
        "group_counter_requests",
        "group_counter_request_seconds",
        "group_counter_redis_seconds",
        "group_counter_in_flight_requests",
    } <= names


def test_access_log_has_the_call_fields_and_never_the_usersig(api: Api) -> None:
    with access_lines() as lines:
        response = api.post("create_group", {"Type": "Public", "Name": "n", "GroupId": "logged"})
        (line,) = lines()
    assert response.status_code == 200
    assert '"command":"create_group"' in line
    assert '"group_id":"logged"' in line
    assert '"sdkappid":1400000000' in line
    assert '"error_code":0' in line
    assert '"latency_ms":' in line
    assert json.loads(line)["request_id"] == response.headers["x-request-id"]
    usersig = dict(pair.split("=", 1) for pair in query().split("&"))["usersig"]
    assert usersig[:20] not in line
    assert "usersig" not in line


def test_request_id_from_the_caller_is_echoed(api: Api) -> None:
    response = api.client.post(
        "/v4/group_open_http_svc/get_group_counter?" + query(),
        content=b"{}",
        headers={"X-Request-Id": "abc-123"},
    )
    assert response.headers["x-request-id"] == "abc-123"


def test_start_warns_when_redis_keeps_nothing_on_disk(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    async def check() -> None:
        store = open_store(redis_server.url, timeout=1.0)
        await store.warn_if_unsafe()
        await store.close()

    asyncio.run(check())
    assert "KEEPS NOTHING ON DISK" in caplog.text


def test_start_warns_when_redis_can_evict_keys(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    server = RedisServer().start()
    try:
        import redis

        redis.Redis(port=server.port).config_set("maxmemory-policy", "allkeys-lru")

        async def check() -> None:
            store = open_store(server.url, timeout=1.0)
            await store.warn_if_unsafe()
            await store.close()

        asyncio.run(check())
    finally:
        server.stop()
    assert "REDIS CAN EVICT COUNTERS" in caplog.text


def _answers_health(client: httpx2.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx2.TransportError:
        return False


def test_metrics_are_correct_across_two_worker_processes(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace('redis_url = "memory://"', f'redis_url = "{redis_server.url}"'))
    service = ServiceProcess.start(config, "--workers", "2")
    try:
        # A new connection per call, so both workers answer some of them.
        with httpx2.Client(
            base_url=service.base_url, limits=httpx2.Limits(max_keepalive_connections=0)
        ) as client:
            service.wait_until(lambda: _answers_health(client))
            for _ in range(40):
                client.post(
                    "/v4/group_open_http_svc/get_group_counter?" + query(), content=b'{"GroupId": "w"}'
                )
            # Each worker pushes its tallies once a second; the answering one at the scrape.
            deadline = time.monotonic() + 3
            while _requests_total(client).get(("get_group_counter", "10010")) != 40:
                assert time.monotonic() < deadline, _requests_total(client)
                time.sleep(0.2)
    finally:
        assert service.stop() == 0


def test_serves_https_when_given_a_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    service = ServiceProcess.start(config, "--tls-cert", str(cert), "--tls-key", str(key), tls=True)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with httpx2.Client(base_url=service.base_url, verify=context) as client:
            service.wait_until(lambda: _answers_health(client))
            reply = client.post(
                "/v4/group_open_http_svc/get_group_counter?" + query(), content=b'{"GroupId": "x"}'
            )
            assert reply.json()["ErrorCode"] == 10010
    finally:
        assert service.stop() == 0
