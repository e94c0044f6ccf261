"""`make release VERSION=x.y.z` (deploy/release.py): the version bumped everywhere it is
written, the CHANGELOG dated, one commit and one tag; refusals that leave the tree as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
FILES: Final = (
    "pyproject.toml",
    "uv.lock",
    "Dockerfile",
    "CHANGELOG.md",
    "README.md",
    "docker-compose.yml",
    "deploy/base/kustomization.yaml",
    "deploy/overlays/dev/kustomization.yaml",
    "docs/openapi.json",
    "deploy/release.py",
)
CURRENT: Final = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The files a release touches, in a repository of their own."""
    for name in FILES:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # Something to release, whatever the repository's own Unreleased section holds today.
    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(
        changelog.read_text().replace("## [Unreleased]\n", "## [Unreleased]\n\n### Fixed\n- A change.\n", 1)
    )
    git(tmp_path, "init", "--quiet")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "add", ".")
    git(
        tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "base"
    )
    return tmp_path


def release(repo: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "deploy/release.py",
            version,
            "--uv",
            str(ROOT / ".tools" / "bin" / "uv"),
            "--date",
            "2026-12-05",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.invalid",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.invalid",
            "PATH": "/usr/bin:/bin",
            "UV_PYTHON_DOWNLOADS": "never",
            "HOME": str(Path.home()),
        },
    )


def test_a_release_bumps_every_place_the_version_is_written_commits_and_tags(repo: Path) -> None:
    result = release(repo, "9.8.7")
    assert result.returncode == 0, result.stderr
    assert tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"] == "9.8.7"
    assert 'name = "group-counter-service"\nversion = "9.8.7"' in (repo / "uv.lock").read_text()
    assert "ARG VERSION=9.8.7" in (repo / "Dockerfile").read_text()
    assert "newTag: 9.8.7" in (repo / "deploy/base/kustomization.yaml").read_text()
    assert json.loads((repo / "docs/openapi.json").read_text())["info"]["version"] == "9.8.7"
    for name in ("docker-compose.yml", "README.md", "deploy/overlays/dev/kustomization.yaml"):
        text = (repo / name).read_text()
        assert "group-counter:9.8.7" in text, name
        assert f"group-counter:{CURRENT}" not in text, name
    changelog = (repo / "CHANGELOG.md").read_text()
    assert "## [Unreleased]\n\n## [9.8.7] - 2026-12-05\n" in changelog
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "log", "-1", "--format=%s").strip() == "Release 9.8.7"
    assert git(repo, "tag", "--list").split() == ["v9.8.7"]


@pytest.mark.parametrize("version", ["1.2", "v1.2.3", "1.2.3-rc1", "01.2.3", CURRENT, "0.0.1"])
def test_a_version_that_is_not_a_new_x_y_z_is_refused_and_nothing_changes(repo: Path, version: str) -> None:
    result = release(repo, version)
    assert result.returncode == 1
    assert "release refused" in result.stderr
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "tag", "--list") == ""


def test_a_dirty_tree_is_refused(repo: Path) -> None:
    (repo / "README.md").write_text("changed\n")
    result = release(repo, "9.8.7")
    assert result.returncode == 1
    assert "uncommitted changes" in result.stderr


def test_an_empty_unreleased_section_is_refused_and_the_tree_left_as_it_was(repo: Path) -> None:
    changelog = repo / "CHANGELOG.md"
    text = changelog.read_text()
    head, rest = text.split("## [Unreleased]\n", 1)
    changelog.write_text(head + "## [Unreleased]\n\n## [" + rest.split("\n## [", 1)[1])
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-am", "empty")
    result = release(repo, "9.8.7")
    assert result.returncode == 1
    assert "Unreleased section is empty" in result.stderr
    assert git(repo, "status", "--porcelain") == ""
