"""README "Moving counters", migrate: every group and its counters pulled off a
platform-compatible API (a second instance of this service stands in for the
platform), resumed after an interruption, retried under the source's rate limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support import REPO, RedisServer, ServiceProcess, query, usersig_for

APP: Final = 1400000000
LIMITED_APP: Final = 1400000003
SECRET: Final = "secret-of-the-source-app"
LIMITED_SECRET: Final = "secret-of-the-limited-source-app"
SOURCE_CONFIG: Final = f"""
redis_url = "memory://"

[[apps]]
sdkappid = {APP}
secret_key = "{SECRET}"
admins = ["administrator"]
list_rate_limit = 0

[[apps]]
sdkappid = {LIMITED_APP}
secret_key = "{LIMITED_SECRET}"
admins = ["administrator"]
rate_limit = 10
list_rate_limit = 0
"""
TYPES: Final = ["Private", "Public", "ChatRoom", "AVChatRoom", "Work", "Meeting"]

Groups = dict[str, tuple[str, dict[str, int]]]


def call(source: ServiceProcess, command: str, body: dict[str, Any], sdkappid: int = APP) -> dict[str, Any]:
    secret = SECRET if sdkappid == APP else LIMITED_SECRET
    signed = query(sdkappid, usersig=usersig_for(sdkappid, secret_key=secret))
    url = f"{source.base_url}/v4/group_open_http_svc/{command}?{signed}"
    for _ in range(100):
        # Our own service on loopback, http.
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            reply: dict[str, Any] = json.loads(response.read())
        if reply["ErrorCode"] != 60007:  # the rate-limited app: wait for the next second
            assert reply["ErrorCode"] == 0, reply
            return reply
        time.sleep(0.1)
    raise AssertionError("always over the rate limit")


def populate(source: ServiceProcess, count: int, sdkappid: int = APP) -> Groups:
    groups: Groups = {}
    for i in range(count):
        group_id, group_type = f"group-{i:03d}", TYPES[i % len(TYPES)]
        counters = {"like": i, "点赞": -i, "max": 2**63 - 1, "min": -(2**63)} if i % 3 else {}
        call(source, "create_group", {"Type": group_type, "Name": "n", "GroupId": group_id}, sdkappid)
        if counters:
            items = [{"Key": key, "Value": value} for key, value in counters.items()]
            call(source, "update_group_counter", {"GroupId": group_id, "GroupCounter": items}, sdkappid)
        groups[group_id] = (group_type, counters)
    call(source, "create_group", {"Type": "Community", "Name": "n", "GroupId": "@TGS#_c"}, sdkappid)
    groups["@TGS#_c"] = ("Community", {})
    return groups


def read_lines(data: bytes) -> Groups:
    found: Groups = {}
    for raw in data.splitlines():
        line = json.loads(raw)
        assert line["GroupId"] not in found, f"{line['GroupId']} twice"
        found[line["GroupId"]] = (line["Type"], {c["Key"]: c["Value"] for c in line["GroupCounter"]})
    return found


@pytest.fixture
def source(tmp_path: Path) -> Iterator[ServiceProcess]:
    config = tmp_path / "source.toml"
    config.write_text(SOURCE_CONFIG)
    service = ServiceProcess.start(config)
    service.wait_until(lambda: urllib.request.urlopen(f"{service.base_url}/healthz").status == 200)  # noqa: S310
    yield service
    service.stop()


def migrate_argv(source: ServiceProcess, out: Path, *extra: str, sdkappid: int = APP) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "migrate",
        "--from",
        source.base_url,
        "--sdkappid",
        str(sdkappid),
        "--identifier",
        "administrator",
        "--secret-key-env",
        "SOURCE_SECRET",
        "--out",
        str(out),
        "--list-rate",
        "100",
        *extra,
    ]


def environ(sdkappid: int = APP) -> dict[str, str]:
    base = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    return {**base, "SOURCE_SECRET": SECRET if sdkappid == APP else LIMITED_SECRET}


def test_migrate_pulls_every_group_with_its_type_and_imports_it(
    source: ServiceProcess, tmp_path: Path
) -> None:
    groups = populate(source, 13)
    target_redis = RedisServer().start()
    try:
        target = tmp_path / "target.toml"
        target.write_text(
            f'redis_url = "{target_redis.url}"\n\n'
            f'[[apps]]\nsdkappid = {APP}\nsecret_key = "t"\nadmins = ["a"]\n'
        )
        out = tmp_path / "moved.jsonl"
        result = subprocess.run(
            [*migrate_argv(source, out), "--to", str(target)],
            cwd=REPO,
            env=environ(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert read_lines(out.read_bytes()) == groups
        assert b"imported: 14 lines: 14 groups created" in result.stderr

        exported = subprocess.run(
            [sys.executable, "-m", "service", "export", "--config", str(target)],
            cwd=REPO,
            env=environ(),
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert read_lines(exported.stdout) == groups
    finally:
        target_redis.stop()


def test_an_interrupted_migration_resumes_where_it_stopped(source: ServiceProcess, tmp_path: Path) -> None:
    groups = populate(source, 150)
    out = tmp_path / "moved.jsonl"
    checkpoint = tmp_path / "moved.jsonl.checkpoint"
    argv = migrate_argv(source, out, "--rate", "60")
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(argv, cwd=REPO, env=environ(), stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            saved = json.loads(checkpoint.read_text()) if checkpoint.exists() else {}
            if saved.get("groups_done", 0) >= 50:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"no first checkpoint: {log.read_text()}")
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    interrupted = json.loads(checkpoint.read_text())
    assert interrupted["step"] == "counters"
    assert interrupted["groups_done"] < len(groups)

    resumed = subprocess.run(argv, cwd=REPO, env=environ(), capture_output=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert read_lines(out.read_bytes()) == groups
    assert json.loads(checkpoint.read_text())["step"] == "done"


def test_a_source_that_rate_limits_is_paced_and_retried(source: ServiceProcess, tmp_path: Path) -> None:
    groups = populate(source, 12, LIMITED_APP)
    time.sleep(1.0)  # a fresh window: the migration meets the limit itself
    out = tmp_path / "moved.jsonl"
    result = subprocess.run(
        migrate_argv(source, out, "--backoff", "0.1", sdkappid=LIMITED_APP),
        cwd=REPO,
        env=environ(LIMITED_APP),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"60007" in result.stderr
    assert read_lines(out.read_bytes()) == groups


def test_a_source_that_keeps_failing_stops_with_a_checkpoint_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "moved.jsonl"
    dead = ServiceProcess(subprocess.Popen(["true"]), 9, tmp_path / "log")  # nothing listens on port 9
    dead.process.wait()
    result = subprocess.run(
        migrate_argv(dead, out, "--retries", "1", "--backoff", "0.01"),
        cwd=REPO,
        env=environ(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"rerun the same command to resume" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_source_that_refuses_the_credentials_says_rerunning_cannot_help(
    source: ServiceProcess, tmp_path: Path
) -> None:
    result = subprocess.run(
        migrate_argv(source, tmp_path / "moved.jsonl"),
        cwd=REPO,
        env={**environ(), "SOURCE_SECRET": "not-the-apps-key"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert "70009" in stderr
    assert "rerunning the same command cannot help" in stderr
    assert "rerun the same command to resume" not in stderr
    assert "Traceback" not in stderr
