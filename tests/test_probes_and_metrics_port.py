"""Readiness that ignores the shared Redis on request, and /metrics on a port of its own.

`/readyz?exclude=redis` is the Deployment's readiness probe: a Redis outage must not take
every pod out of the Service at once (README, "Probes"). `--metrics-port` moves /metrics
off the API port, so only the API is exposed where the API is.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.ops.lifecycle import LIFECYCLE
from service.storage.store import open_store
from tests.support import CONFIG, REPO, ServiceProcess, free_port, query


@pytest.fixture
def dead_redis_app(settings: Settings) -> Iterator[TestClient]:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TestClient(create_app(settings, open_store(url, timeout=0.3))) as client:
        yield client


def test_readyz_excluding_redis_is_ready_while_redis_is_down(dead_redis_app: TestClient) -> None:
    assert dead_redis_app.get("/readyz").status_code == 503, "plain /readyz still reports Redis"
    response = dead_redis_app.get("/readyz?exclude=redis")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_excluding_redis_is_unready_while_draining(dead_redis_app: TestClient) -> None:
    LIFECYCLE.draining = True
    try:
        assert dead_redis_app.get("/readyz?exclude=redis").status_code == 503
    finally:
        LIFECYCLE.draining = False


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture
def metrics_service(tmp_path: Path) -> Iterator[tuple[ServiceProcess, int]]:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    metrics_port = free_port()
    service = ServiceProcess.start(config, "--metrics-port", str(metrics_port))
    try:
        service.wait_until(lambda: answers(service.port))
        yield service, metrics_port
    finally:
        service.stop()


def test_metrics_port_serves_metrics_and_the_api_port_does_not(
    metrics_service: tuple[ServiceProcess, int],
) -> None:
    service, metrics_port = metrics_service
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    connection.request(
        "POST", f"/v4/group_open_http_svc/get_group_counter?{query()}", body=b'{"GroupId":"g"}'
    )
    assert json.loads(connection.getresponse().read())["ErrorCode"] == 10010
    connection.close()

    status, content_type, body = get(metrics_port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert 'group_counter_requests_total{code="10010",command="get_group_counter"} 1.0' in body.decode()

    status, _, body = get(service.port, "/metrics")
    assert status == 200
    assert json.loads(body)["ErrorCode"] == 60009, "the API port no longer serves /metrics"

    assert get(metrics_port, "/v4/group_open_http_svc/get_group_counter")[0] == 404
    assert get(metrics_port, "/metrics", method="HEAD")[0] == 200


def test_metrics_port_equal_to_the_api_port_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    port = str(free_port())
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", port, "--metrics-port", port, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "--metrics-port must differ from --port" in result.stderr
