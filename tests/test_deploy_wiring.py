"""The dev Deployment's container, run as a local process exactly as the manifest says.

Its command, args and env come from `kubectl kustomize deploy/overlays/dev`; only what a
laptop cannot have is rewritten: `python` is this interpreter, the ConfigMap's mount
directory is a temp dir, the ports are free ones on 127.0.0.1, REDIS_URL names a
redis-server of our own. Then the probes the manifest declares must answer, readiness
must stay while Redis is away (plain /readyz reports it), /metrics must answer on the
metrics port, and SIGTERM must let every in-flight call finish before the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import pytest

from service.api.auth import mint_usersig
from service.config import parse_config
from tests.support import RedisServer, free_port
from tests.test_deploy import (
    DEFAULT_GRACEFUL_TIMEOUT,
    ROOT,
    arg_value,
    config_file,
    container,
    container_env,
    render,
)

PROBES: Final = ("startupProbe", "livenessProbe", "readinessProbe")
COMMAND_PATH: Final = "/v4/group_open_http_svc/"
BURST: Final = 24


@dataclass
class Pod:
    """The container as a local process."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    probe_paths: dict[str, str]
    environ: dict[str, str]
    config_text: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def http_get(port: int, path: str, timeout: float = 5.0) -> int | None:
    """The status, or None when nothing answers (refused, reset, timed out)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def wait_for(what: str, condition: Callable[[], bool], pod: Pod, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if pod.process.poll() is not None:
            pytest.fail(f"the service exited ({pod.process.returncode}) waiting for {what}:\n{pod.output()}")
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {seconds} s\n{pod.output()}")


def launch(tmp_path: Path, redis_url: str) -> Pod:
    objects = render("dev")
    c = container(objects)
    config = config_file(objects)
    # The ConfigMap's mount, under a temp root.
    root = tmp_path / "root"
    config_on_disk = root / config.path.lstrip("/")
    config_on_disk.parent.mkdir(parents=True)
    config_on_disk.write_text(config.text)
    port = free_port()
    metrics_port = free_port()

    args = list(c["args"])
    assert arg_value(args, "--port") is not None, "the manifest must say which port to listen on"
    assert arg_value(args, "--metrics-port") is not None, "the manifest must say where /metrics is"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--metrics-port") + 1] = str(metrics_port)
    args[args.index("--host") + 1] = "127.0.0.1"  # tests listen on loopback only
    args = [str(root) + arg if arg.startswith(config.mount_path + "/") else arg for arg in args]
    assert args.count(str(config_on_disk)) == 1
    command = [sys.executable if word == "python" else word for word in c["command"]]

    # The container's env (Secrets from the render), REDIS_URL rewritten to our redis-server.
    env = container_env(objects)
    assert "REDIS_URL" in env, "the dev Deployment must set REDIS_URL"
    env["REDIS_URL"] = redis_url
    (tmp_path / "tmp").mkdir()
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "TMPDIR": str(tmp_path / "tmp"),  # the pod's /tmp emptyDir
        "PYTHONPATH": str(ROOT),  # stands in for the wheel the image installs
        **env,
    }

    # Probe ports name the container port the process listens on.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probe_paths: dict[str, str] = {}
    for probe in PROBES:
        get = c[probe]["httpGet"]
        assert ports.get(get["port"], get["port"]) == int(c["args"][c["args"].index("--port") + 1])
        probe_paths[probe] = get["path"]

    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command + args, env=environ, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT
        )
    return Pod(process, port, metrics_port, probe_paths, environ, config.text, log)


def stop(pod: Pod) -> None:
    if pod.process.poll() is None:
        pod.process.kill()
        pod.process.wait(10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Our own (this test stops and restarts it), not the session's shared one."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def pod(tmp_path: Path, redis_server: RedisServer) -> Iterator[Pod]:
    started = launch(tmp_path, redis_server.url)
    yield started
    stop(started)


def test_probes_answer_and_readiness_stays_while_redis_is_down(pod: Pod, redis_server: RedisServer) -> None:
    startup = pod.probe_paths["startupProbe"]
    wait_for(f"startup probe {startup} to answer 200", lambda: http_get(pod.port, startup) == 200, pod)
    ready = pod.probe_paths["readinessProbe"]
    wait_for(f"readiness {ready} to answer 200", lambda: http_get(pod.port, ready) == 200, pod)
    for probe, path in pod.probe_paths.items():
        assert http_get(pod.port, path) == 200, f"{probe} {path}"

    port = redis_server.port
    redis_server.stop()
    # Plain /readyz reports Redis gone; the manifest's probes do not follow it: a shared
    # Redis's outage must neither empty the Service nor restart the pods.
    wait_for("/readyz to answer 503 with Redis stopped", lambda: http_get(pod.port, "/readyz") == 503, pod)
    for probe, path in pod.probe_paths.items():
        assert http_get(pod.port, path) == 200, f"{probe} {path} with Redis stopped"

    redis_server.start()
    assert redis_server.port == port, "redis-server came back on another port"
    wait_for("/readyz to answer 200 with Redis back", lambda: http_get(pod.port, "/readyz") == 200, pod)
    for probe, path in pod.probe_paths.items():
        assert http_get(pod.port, path) == 200, f"{probe} {path}"
    assert pod.process.poll() is None


def in_flight(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    match = re.search(r"^group_counter_in_flight_requests(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert match, "/metrics has no group_counter_in_flight_requests"
    return float(match.group(1))


def post(port: int, command: str, query: str, body: dict[str, Any]) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", f"{COMMAND_PATH}{command}?{query}", body=json.dumps(body).encode())
        response = connection.getresponse()
        assert response.status == 200
        reply: dict[str, Any] = json.loads(response.read())
        return reply
    finally:
        connection.close()


def test_sigterm_during_a_burst_answers_every_call_and_exits_zero(pod: Pod) -> None:
    ready = pod.probe_paths["readinessProbe"]
    wait_for(f"readiness {ready} to answer 200", lambda: http_get(pod.port, ready) == 200, pod)
    settings = parse_config(pod.config_text, environ=pod.environ)
    app = next(iter(settings.apps.values()))
    admin = sorted(app.admins)[0]
    query = urlencode(
        {
            "sdkappid": app.sdkappid,
            "identifier": admin,
            "usersig": mint_usersig(app.sdkappid, app.secret_key, admin),
            "random": 1,
            "contenttype": "json",
        }
    )
    if not app.implicit_groups:
        created = post(pod.port, "create_group", query, {"Type": "Public", "Name": "b", "GroupId": "burst"})
        assert created["ErrorCode"] == 0, created
    body = json.dumps(
        {"GroupId": "burst", "Mode": "Increase", "GroupCounter": [{"Key": "calls", "Value": 1}]}
    ).encode()
    head = (
        f"POST {COMMAND_PATH}update_group_counter?{query} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{pod.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    # A burst of calls, each in flight in the service: headers and half the body sent.
    sockets = [socket.create_connection(("127.0.0.1", pod.port), timeout=30) for _ in range(BURST)]
    try:
        for sock in sockets:
            sock.sendall(head + body[: len(body) // 2])
        wait_for(f"{BURST} calls in flight", lambda: in_flight(pod.metrics_port) == BURST, pod)

        pod.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert pod.process.poll() is None, "the service exited with calls in flight"

        # The rest of each body after the signal, all at once; every call must be answered.
        def finish(sock: socket.socket) -> tuple[int, dict[str, Any]]:
            sock.sendall(body[len(body) // 2 :])
            response = http.client.HTTPResponse(sock)
            response.begin()
            payload = response.read()  # raises IncompleteRead on a truncated answer
            return response.status, json.loads(payload)

        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(finish, sockets))
    finally:
        for sock in sockets:
            sock.close()

    assert [status for status, _ in answers] == [200] * BURST
    assert [reply["ErrorCode"] for _, reply in answers] == [0] * BURST, answers
    # Each increment applied once: the new values are 1..BURST, in some order.
    values = sorted(reply["GroupCounter"][0]["Value"] for _, reply in answers)
    assert values == list(range(1, BURST + 1))

    try:
        code = pod.process.wait(DEFAULT_GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {DEFAULT_GRACEFUL_TIMEOUT + 5} s after SIGTERM:\n{pod.output()}")
    assert code == 0, f"exit {code} after SIGTERM (Kubernetes reports non-zero as an error):\n{pod.output()}"
