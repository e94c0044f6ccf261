"""Which build is running: the version (pyproject.toml's, the one source of truth, read
from the installed package's metadata) and the source revision.

The revision comes from GROUP_COUNTER_REVISION (the image sets it from `make image`'s
build argument), else from git when running from a checkout, else "unknown".
"""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Final

DISTRIBUTION: Final = "group-counter-service"
REVISION_ENV: Final = "GROUP_COUNTER_REVISION"


@functools.cache
def version() -> str:
    return metadata.version(DISTRIBUTION)


@functools.cache
def revision() -> str:
    given = os.environ.get(REVISION_ENV, "").strip()
    if given:
        return given[:40]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        try:
            found = subprocess.run(
                ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    return "unknown"


def describe() -> str:
    """`group-counter-service 0.2.0 (revision 1a2b3c4d5e6f)`: what --version and the start log say."""
    return f"{DISTRIBUTION} {version()} (revision {revision()})"
