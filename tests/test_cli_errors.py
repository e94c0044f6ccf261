"""The command line answers a mistake with a one-line message and an exit code, never a
traceback: bad flags, missing or wrong files (issue 21, point 7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from tests.support import CONFIG, REPO

FRESH: Final = "a usersig must be valid for at least 1 s"


def service(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("expire", ["-5", "0"])
def test_usersig_refuses_an_expiry_that_is_not_in_the_future(config: Path, expire: str) -> None:
    result = service("usersig", "--config", str(config), "--expire", expire)
    assert result.returncode == 2
    assert FRESH in result.stderr
    assert result.stdout == "", "no usersig minted"
    assert "Traceback" not in result.stderr


def test_usersig_refuses_an_expiry_that_is_no_number(config: Path) -> None:
    result = service("usersig", "--config", str(config), "--expire", "soon")
    assert result.returncode == 2
    assert "'soon' is not a whole number of seconds" in result.stderr


def test_a_missing_tls_certificate_is_named_not_a_traceback(config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = service("--config", str(config), "--tls-cert", str(missing), "--tls-key", str(missing))
    assert result.returncode == 2
    assert f"--tls-cert {missing}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_that_is_no_certificate_is_named_not_a_traceback(config: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    result = service("--config", str(config), "--tls-cert", str(junk), "--tls-key", str(junk))
    assert result.returncode == 2
    assert "not a PEM certificate and its key" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_cert_run_again_keeps_the_ca_clients_trust(tmp_path: Path) -> None:
    def make_cert(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", "cert", f"CERT_DIR={tmp_path}", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert make_cert().returncode == 0
    ca = (tmp_path / "ca.pem").read_bytes()
    first_cert = (tmp_path / "cert.pem").read_bytes()
    again = make_cert()
    assert again.returncode == 0, again.stderr
    assert "keeping the existing CA" in again.stdout
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert (tmp_path / "cert.pem").read_bytes() != first_cert, "a new server certificate"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert make_cert("FORCE=1").returncode == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca, "FORCE=1 makes a new CA"
