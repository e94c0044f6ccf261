"""`make release VERSION=x.y.z`: one commit and one tag for a release.

It bumps the version everywhere it is written (pyproject.toml, the one source of truth;
uv.lock's entry for the project; the Dockerfile's default VERSION label; the OpenAPI
document; the image tag the overlays, docker-compose and the README name), turns the
CHANGELOG's Unreleased section into the release's, commits, and tags vX.Y.Z. Then
`make image` builds group-counter:X.Y.Z where Docker is available.

    python deploy/release.py X.Y.Z [--uv PATH] [--date YYYY-MM-DD]

It refuses a dirty work tree, a version that is not X.Y.Z or not above the current one,
and an empty Unreleased section.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path.cwd()
SEMVER: Final = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
IMAGE: Final = "group-counter"


class ReleaseError(Exception):
    pass


def _parts(version: str) -> tuple[int, int, int]:
    match = SEMVER.fullmatch(version)
    if match is None:
        raise ReleaseError(f"{version!r} is not a version X.Y.Z")
    return int(match[1]), int(match[2]), int(match[3])


def current_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if found is None:
        raise ReleaseError("pyproject.toml has no version")
    return found[1]


def _replace(path: str, pattern: str, replacement: str, *, count: int = 0) -> None:
    file = ROOT / path
    text = file.read_text()
    new, made = re.subn(pattern, replacement, text, count=count, flags=re.MULTILINE)
    if made == 0:
        raise ReleaseError(f"{path}: found nothing to bump ({pattern})")
    file.write_text(new)


def bump(old: str, new: str) -> None:
    _replace("pyproject.toml", r'^version = "[^"]+"', f'version = "{new}"', count=1)
    _replace("Dockerfile", r"^ARG VERSION=\S+", f"ARG VERSION={new}")
    # uv.lock: only the project's own entry changes. Edited in place rather than by
    # `uv lock --offline`, which re-resolves every platform's split and needs the package
    # index for wheels this machine never downloaded (it failed on a fresh cache).
    _replace("uv.lock", r'^(name = "group-counter-service"\nversion = )"[^"]+"', rf'\g<1>"{new}"', count=1)
    _replace("deploy/base/kustomization.yaml", r"^(\s+newTag:) \S+", rf"\g<1> {new}")
    tag = re.escape(f"{IMAGE}:{old}")
    for path in ("docker-compose.yml", "README.md", "deploy/overlays/dev/kustomization.yaml"):
        _replace(path, tag, f"{IMAGE}:{new}")
    document_path = ROOT / "docs" / "openapi.json"
    text = document_path.read_text()
    document = json.loads(text)
    document["info"]["version"] = new
    # Written in the file's own style (its non-ASCII as \u escapes), so the diff is the version.
    document_path.write_text(json.dumps(document, ensure_ascii=text.isascii(), indent=2) + "\n")


def changelog(new: str, day: str) -> None:
    path = ROOT / "CHANGELOG.md"
    text = path.read_text()
    head = "## [Unreleased]\n"
    if head not in text:
        raise ReleaseError("CHANGELOG.md has no '## [Unreleased]' section")
    after = text.split(head, 1)[1]
    unreleased = after.split("\n## [", 1)[0]
    if not unreleased.strip():
        raise ReleaseError("CHANGELOG.md's Unreleased section is empty: say what the release changes")
    path.write_text(text.replace(head, f"{head}\n## [{new}] - {day}\n", 1))


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def release(new: str, uv: str, day: str) -> None:
    old = current_version()
    if _parts(new) <= _parts(old):
        raise ReleaseError(f"{new} is not above the current version {old}")
    if git("status", "--porcelain").strip():
        raise ReleaseError("the work tree has uncommitted changes: commit or stash them first")
    if git("tag", "--list", f"v{new}").strip():
        raise ReleaseError(f"the tag v{new} exists already")
    try:
        changelog(new, day)
        bump(old, new)
        # The lock still matches pyproject.toml (what `uv sync --frozen` installs from).
        checked = subprocess.run(
            [uv, "lock", "--check", "--offline", "--python", sys.executable],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if checked.returncode != 0:
            raise ReleaseError(f"uv lock --check: {checked.stderr.strip()}")
    except (ReleaseError, OSError):
        git("checkout", "--", ".")  # the tree was clean: leave it as it was
        raise
    git("commit", "--quiet", "--all", "--message", f"Release {new}")
    git("tag", "--annotate", f"v{new}", "--message", f"Release {new}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python deploy/release.py")
    parser.add_argument("version", help="the new version, X.Y.Z")
    parser.add_argument("--uv", default=str(ROOT / ".tools" / "bin" / "uv"), help="the pinned uv")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="the release date")
    args = parser.parse_args()
    try:
        release(args.version, args.uv, args.date)
    except ReleaseError as exc:
        print(f"release refused: {exc}", file=sys.stderr)
        return 1
    print(f"released {args.version}: commit 'Release {args.version}', tag v{args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
