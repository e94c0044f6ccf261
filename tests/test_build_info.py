"""Which build is serving: one version (pyproject.toml's) shown by --version, at start in
the log, on /metrics as group_counter_build_info, and in /openapi.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Final

from service.ops.build import describe, revision, version
from tests.support import CONFIG, Api, ServiceProcess

ROOT: Final = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION: Final = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_pyprojects() -> None:
    assert version() == PYPROJECT_VERSION


def test_version_flag_needs_no_config_and_names_version_and_revision() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"group-counter-service {PYPROJECT_VERSION} (revision {revision()})"
    # A checkout has a git revision; the image passes its own (GROUP_COUNTER_REVISION).
    assert re.fullmatch(r"[0-9a-f]{12}", revision())


def test_the_revision_comes_from_the_environment_when_given() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"GROUP_COUNTER_REVISION": "abc123def456", "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip().endswith("(revision abc123def456)"), result


def test_metrics_carry_build_info_with_the_version(api: Api) -> None:
    text = api.client.get("/metrics").text
    line = f'group_counter_build_info{{revision="{revision()}",version="{PYPROJECT_VERSION}"}} 1.0'
    assert line in text.splitlines()


def test_the_served_openapi_document_names_the_running_version(api: Api) -> None:
    assert api.client.get("/openapi.json").json()["info"]["version"] == PYPROJECT_VERSION


def test_the_openapi_file_names_the_version_too() -> None:
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert document["info"]["version"] == PYPROJECT_VERSION, "make release bumps it with pyproject"


def test_the_start_log_names_the_build(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    service = ServiceProcess.start(config)
    try:
        service.wait_until(lambda: service.post("get_group_counter", {"GroupId": "g"})["ErrorCode"] == 10010)
        assert f"{describe()} starting" in service.log.read_text()
    finally:
        service.stop()
