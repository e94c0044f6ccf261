"""The load test kit (deploy/loadtest/): it passes on the real service and fails on a lossy target.

Each test runs Locust headless as a subprocess for a few seconds: against the service on
a real redis-server (locally and in distributed mode), and against a tiny in-memory fake
that silently drops every tenth Increase, which the verdict must catch. Locust and
kubernetes-validate come from the `loadtest` and `dev` extras.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.hostile import service_on_redis
from tests.support import (
    ADMIN,
    IMPLICIT_APP,
    REGISTERED_APP,
    SECRET_KEYS,
    free_port,
    stop_process,
)

ROOT: Final = Path(__file__).resolve().parent.parent
LOCUSTFILE: Final = ROOT / "deploy" / "loadtest" / "locustfile.py"


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service, as its own process, on a redis-server of the test's own."""
    with service_on_redis(tmp_path_factory.mktemp("service")) as service:
        yield service.base_url


class LoadtestRun:
    """One finished Locust run: exit code, output, the summary and the CSV totals."""

    def __init__(self, returncode: int, output: str, results: Path) -> None:
        self.returncode = returncode
        self.output = output
        summary = results / "summary.txt"
        self.summary_text = summary.read_text() if summary.exists() else ""
        self.summary = {
            name.strip(): value.strip()
            for name, sep, value in (line.partition(":") for line in self.summary_text.splitlines())
            if sep
        }
        self.totals: dict[str, str] = {}
        stats = results / "stats_stats.csv"
        if stats.exists():
            with stats.open(newline="") as file:
                self.totals = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")

    def count(self, name: str) -> int:
        return int(self.summary[name])

    def explain(self) -> str:
        return f"exit {self.returncode}\n{self.summary_text}\n{self.output[-4000:]}"


def _locust(
    results: Path,
    target: str,
    *args: str,
    users: int = 4,
    seconds: int = 5,
    sdkappid: int = REGISTERED_APP,
    workers: int = 0,
    secret_key: str | None = None,
) -> LoadtestRun:
    """Runs the kit headless (with `workers` local worker processes) and waits for it."""
    key = SECRET_KEYS[sdkappid] if secret_key is None else secret_key
    environ = {**os.environ, "LOADTEST_SECRET_KEY": key, "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    master_port = free_port()
    worker_processes = [
        subprocess.Popen(
            [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    distributed = ["--master", "--master-bind-port", str(master_port), "--expect-workers", str(workers)]
    command = [
        *base,
        *(distributed if workers else []),
        "--headless",
        "--only-summary",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--host",
        target,
        "--sdkappid",
        str(sdkappid),
        "--identifier",
        ADMIN,
        "--csv",
        str(results / "stats"),
        "--html",
        str(results / "report.html"),
        "--summary-file",
        str(results / "summary.txt"),
        *args,
    ]
    try:
        finished = subprocess.run(
            command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    finally:
        for worker in worker_processes:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                stop_process(worker, 10)
    return LoadtestRun(finished.returncode, finished.stdout + finished.stderr, results)


def _assert_passed(run: LoadtestRun) -> None:
    assert run.returncode == 0, run.explain()
    assert int(run.totals["Request Count"]) > 100, run.explain()
    assert run.totals["Failure Count"] == "0", run.explain()
    assert run.summary["verdict"] == "PASSED", run.explain()
    assert run.count("lost updates") == 0, run.explain()
    assert run.count("unexpected values") == 0, run.explain()
    assert run.summary["errors by ErrorCode"] == "none", run.explain()
    # one watcher per group saw every version in order and ended at the group's final state
    assert run.count("watcher disorder") == 0, run.explain()
    assert run.count("watchers behind") == 0, run.explain()
    assert run.summary["watchers"].startswith("16 ("), run.explain()


def test_a_short_run_on_the_real_service_passes(service_url: str, tmp_path: Path) -> None:
    run = _locust(tmp_path, service_url, "--group-mode", "registered")
    _assert_passed(run)
    # The HTML report carries the verdict and the summary, not only summary.txt.
    report = (tmp_path / "report.html").read_text()
    assert '<section id="group-counter-verdict"' in report
    assert "Exactness verdict: PASSED" in report
    assert "lost updates:        0" in report
    # Every mode and command was driven, and the groups were really read back.
    assert "update_group_counter Set" in run.output
    assert "update_group_counter Decrease" in run.output
    assert "delete_group_counter" in run.output
    assert run.summary["groups verified"].startswith("16 (128 keys checked")


def test_a_distributed_run_on_implicit_groups_passes(service_url: str, tmp_path: Path) -> None:
    run = _locust(
        tmp_path,
        service_url,
        "--group-mode",
        "implicit",
        sdkappid=IMPLICIT_APP,
        users=4,
        seconds=3,
        workers=2,
    )
    _assert_passed(run)
    assert "2 worker(s)" in run.summary["target"], run.explain()
    assert run.summary["groups verified"].startswith("16 ("), run.explain()


class LossyFake:
    """A naive in-memory target that acknowledges every tenth Increase without applying it."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, int]] = {}
        self.increases = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def handle(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        ok: dict[str, Any] = {"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""}
        group_id = body.get("GroupId", "")
        if command == "create_group":
            if group_id in self.groups:
                return {"ActionStatus": "FAIL", "ErrorCode": 10021, "ErrorInfo": "taken"}
            self.groups[group_id] = {}
            return {**ok, "GroupId": group_id}
        if command == "destroy_group":
            self.groups.pop(group_id, None)
            return ok
        counters = self.groups.setdefault(group_id, {})
        keys = body.get("GroupCounterKeys") or list(counters)
        if command == "get_group_counter":
            return {**ok, "GroupCounter": [{"Key": k, "Value": counters[k]} for k in keys if k in counters]}
        if command == "delete_group_counter":
            for key in keys:
                counters.pop(key, None)
            return ok
        mode = body.get("Mode") or "Set"
        after = []
        for item in body["GroupCounter"]:
            key, value = item["Key"], item["Value"]
            old = counters.get(key, 0)
            new = value if mode == "Set" else old + value if mode == "Increase" else old - value
            if mode == "Increase":
                self.increases += 1
                if self.increases % 10 == 0:  # the lost update: answered, never stored
                    self.dropped += 1
                    after.append({"Key": key, "Value": new})
                    continue
            counters[key] = new
            after.append({"Key": key, "Value": new})
        return {**ok, "GroupCounter": after}


@pytest.fixture
def lossy_fake() -> Iterator[tuple[str, LossyFake]]:
    fake = LossyFake()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            command = urlsplit(self.path).path.rsplit("/", 1)[-1]
            with fake.lock:
                reply = json.dumps(fake.handle(command, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_target_that_loses_increments_fails_the_verdict(
    lossy_fake: tuple[str, LossyFake], tmp_path: Path
) -> None:
    url, fake = lossy_fake
    # No Set and no delete: nothing can paper over a dropped increment before the final read.
    run = _locust(tmp_path, url, "--mix", "increase=3,decrease=1,get=1", seconds=3)
    assert fake.dropped > 0
    assert run.returncode != 0, run.explain()
    assert run.summary["verdict"].startswith("FAILED"), run.explain()
    assert run.count("lost updates") > 0, run.explain()
    # The requests themselves all looked fine: only the verdict can catch this.
    assert run.totals["Failure Count"] == "0", run.explain()


def test_the_kubernetes_manifests_render_and_validate() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "loadtest")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    documents: list[dict[str, Any]] = [document for document in yaml.safe_load_all(rendered) if document]
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    found = {(document["kind"], document["metadata"]["name"]): document for document in documents}
    names = sorted((kind, name.rsplit("-", 1)[0] if kind == "ConfigMap" else name) for kind, name in found)
    assert names == [
        ("ConfigMap", "loadtest-locustfile"),
        ("ConfigMap", "loadtest-settings"),
        ("Deployment", "locust-master"),
        ("Deployment", "locust-worker"),
        ("Service", "locust-master"),
    ]
    # The ConfigMap holds the locustfile and every module it imports themselves, not copies
    # that could drift, and none is missing: the pod mounts them side by side.
    locustfile = next(d for (kind, name), d in found.items() if name.startswith("loadtest-locustfile"))
    kit = {path.name: path.read_text() for path in LOCUSTFILE.parent.glob("*.py")}
    assert locustfile["data"] == kit
    # Only the workers call the target; their key comes from a Secret, never a literal.
    worker = found["Deployment", "locust-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert [env["valueFrom"]["secretKeyRef"]["key"] for env in worker["env"]] == ["secret-key"]
    assert "--worker" in worker["args"]
    master = found["Deployment", "locust-master"]["spec"]["template"]["spec"]["containers"][0]
    assert "env" not in master
    assert {port["port"] for port in found["Service", "locust-master"]["spec"]["ports"]} == {5557, 8089}


@pytest.mark.parametrize("mode", ["registered", "implicit"])
def test_a_wrong_secret_key_stops_the_run_at_once_saying_so(
    service_url: str, tmp_path: Path, mode: str
) -> None:
    started = time.monotonic()
    sdkappid = REGISTERED_APP if mode == "registered" else IMPLICIT_APP
    run = _locust(
        tmp_path, service_url, "--group-mode", mode, seconds=60, sdkappid=sdkappid, secret_key="wrong"
    )
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"ran {elapsed:.0f} s of its 60 s after every call was refused"
    assert run.returncode == 2, run.explain()
    assert run.summary["verdict"].startswith("FAILED: stopped at the first call: 70009"), run.explain()
    assert "wrong secret key?" in run.summary_text
    assert run.output.count("wrong secret key?") == 1, "said once, not once per user"
    assert "Traceback" not in run.output, run.explain()
    report = (tmp_path / "report.html").read_text()
    assert "Exactness verdict: FAILED" in report
    assert "wrong secret key?" in report
