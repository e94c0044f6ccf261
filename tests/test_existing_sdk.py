"""An existing SDK, unchanged, over https: the real `timsdk` client from PyPI.

timsdk fixes `https://console.tim.qq.com` with no option to change it, as most server
SDKs of the platform do. What the README's "Use your existing SDK" prescribes is what
this test does: `make cert` makes a CA and a certificate whose subjectAltName covers
the platform's host, the service serves it, the client trusts the CA, and the
platform's host resolves to the service. Only name resolution is changed (here:
`socket.getaddrinfo` for that one host, to our loopback port); the SDK's URLs, query
string, usersig (the official TLSSigAPIv2 generator) and TLS verification are its own.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import requests
import timsdk  # type: ignore[import-untyped]

from tests.support import ADMIN, CONFIG, REGISTERED_APP, REPO, SECRET_KEYS, ServiceProcess

PLATFORM_HOST: Final = "console.tim.qq.com"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    result = subprocess.run(
        ["make", "--no-print-directory", "cert", f"CERT_DIR={folder}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


@pytest.fixture(scope="module")
def https_service(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    config = tmp_path_factory.mktemp("sdk") / "config.toml"
    config.write_text(CONFIG)
    service = ServiceProcess.start(
        config, "--tls-cert", str(certs / "cert.pem"), "--tls-key", str(certs / "key.pem"), tls=True
    )
    try:
        service.wait_until(lambda: _answers(service.port))
        yield service
    finally:
        service.stop()


def _answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@pytest.fixture
def platform_host_is_the_service(https_service: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DNS override: the platform's host (port 443) is our service; nothing else goes out."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == PLATFORM_HOST:
            assert int(port) == 443, "timsdk calls https on the default port"
            return real("127.0.0.1", https_service.port, *args, **kwargs)
        if host in ("127.0.0.1", "localhost", "::1"):
            return real(host, port, *args, **kwargs)
        raise OSError(f"this test reaches no host but loopback, not {host!r}")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def client(certs: Path, platform_host_is_the_service: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs / "ca.pem"))
    return timsdk.TimClient(REGISTERED_APP, SECRET_KEYS[REGISTERED_APP], ADMIN)


def test_timsdk_unchanged_runs_every_command_over_https_against_the_service(client: Any) -> None:
    groups = client.group_open_http_svc
    created = groups.create_group("sdk", owner_account=ADMIN)
    assert (created["ActionStatus"], created["ErrorCode"]) == ("OK", 0), created
    group_id = created["GroupId"]
    assert group_id.startswith("@TGS#")

    # The counter commands are not wrapped by timsdk: its own HTTP client (URL, query
    # string, usersig, TLS) sends them.
    http = groups.get_client()
    counters = [{"Key": "like", "Value": 5}, {"Key": "unlike", "Value": 1}]
    updated = http.post(
        "group_open_http_svc/update_group_counter",
        data={"GroupId": group_id, "Mode": "Increase", "GroupCounter": counters},
    )
    assert updated["ErrorCode"] == 0, updated
    assert updated["GroupCounter"] == counters
    read = http.post("group_open_http_svc/get_group_counter", data={"GroupId": group_id})
    assert read["GroupCounter"] == counters
    deleted = http.post(
        "group_open_http_svc/delete_group_counter", data={"GroupId": group_id, "GroupCounterKeys": ["unlike"]}
    )
    assert deleted["ErrorCode"] == 0, deleted
    read = http.post("group_open_http_svc/get_group_counter", data={"GroupId": group_id})
    assert read["GroupCounter"] == [{"Key": "like", "Value": 5}]

    destroyed = groups.destroy_group(group_id)
    assert destroyed["ErrorCode"] == 0, destroyed
    gone = http.post("group_open_http_svc/get_group_counter", data={"GroupId": group_id})
    assert gone["ErrorCode"] == 10010


def test_timsdk_lists_the_apps_groups_with_the_get_it_sends(client: Any) -> None:
    """timsdk sends get_appid_group_list as a GET without a body: answered as `{}` would be."""
    groups = client.group_open_http_svc
    created = groups.create_group("listed", owner_account=ADMIN)
    assert created["ErrorCode"] == 0, created
    listed = groups.get_app_id_group_list()
    assert (listed["ActionStatus"], listed["ErrorCode"]) == ("OK", 0), listed
    assert {"GroupId": created["GroupId"]} in listed["GroupIdList"]
    assert listed["TotalCount"] >= 1


def test_timsdk_refuses_the_service_when_it_does_not_trust_the_certificate(
    platform_host_is_the_service: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its default trust store, not our CA: the verification above was real.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    client = timsdk.TimClient(REGISTERED_APP, SECRET_KEYS[REGISTERED_APP], ADMIN)
    with pytest.raises(requests.exceptions.SSLError):
        client.group_open_http_svc.create_group("sdk")


def test_make_cert_covers_the_platform_host_localhost_and_loopback(certs: Path) -> None:
    result = subprocess.run(
        ["openssl", "x509", "-in", str(certs / "cert.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"DNS:{PLATFORM_HOST}" in result.stdout
    assert "DNS:localhost" in result.stdout
    assert "IP Address:127.0.0.1" in result.stdout
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), str(certs / "cert.pem")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert (certs / "key.pem").stat().st_mode & 0o077 == 0, "the private key is readable by others"


def test_make_cert_writes_where_git_ignores_by_default() -> None:
    for name in ("certs/cert.pem", "certs/key.pem", "certs/ca.pem", "certs/ca.key", "key.pem", "cert.pem"):
        result = subprocess.run(
            ["git", "check-ignore", "-q", name], cwd=REPO, capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, f"{name} is not git-ignored"
