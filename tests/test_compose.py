"""docker-compose.yml, checked offline (no Docker engine here): the service runs the image
`make image` builds with a production-like config it accepts (JSON logs, no demo, keys
from the environment), on a Redis that keeps an append-only file on a volume and never
evicts counters, publishing no port a Prometheus on the same host uses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import pytest
import yaml

from service.config import parse_config
from tests.test_deploy import ROOT, arg_value, dockerfile_stages, exec_form

COMPOSE: Final = ROOT / "docker-compose.yml"
# The Prometheus ecosystem's default ports: Prometheus, Pushgateway, Alertmanager (and its
# cluster port), node exporter.
PROMETHEUS_PORTS: Final = {9090, 9091, 9093, 9094, 9100}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (an error when unset or
    empty), as `docker compose` applies them to the file."""

    def one(match: re.Match[str]) -> str:
        name, op, word = match.group(1), match.group(2), match.group(3)
        found = environ.get(name, "")
        if op == ":?" and not found:
            raise LookupError(f"{name}: {word}")
        return found or (word if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def service_env(environ: Mapping[str, str]) -> dict[str, str]:
    environment = compose()["services"]["group-counter"]["environment"]
    return {name: interpolate(str(value), environ) for name, value in environment.items()}


def mounted_config() -> str:
    service = compose()["services"]["group-counter"]
    config_path = arg_value(exec_form("CMD", dockerfile_stages()[-1].last("CMD")), "--config")
    mounts: dict[str, str] = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    assert config_path in mounts, f"nothing mounted at the image's --config {config_path}"
    return (ROOT / mounts[config_path]).read_text()


def test_compose_runs_a_production_like_config_with_keys_from_the_environment() -> None:
    text = mounted_config()
    settings = parse_config(text, environ=service_env({"APP_SECRET_KEY": "the operator's key"}))
    assert settings.config.log_format == "json"
    assert settings.config.log_level == "info"
    assert settings.config.demo is False, "/demo embeds an end user's usersig"
    assert [app.secret_key for app in settings.apps.values()] == ["the operator's key"]
    assert "secret_key =" not in text, "a key in a file the repository holds"
    # Without the key in the environment, compose itself refuses to start.
    with pytest.raises(LookupError, match="APP_SECRET_KEY"):
        service_env({})


def test_compose_publishes_no_port_a_prometheus_on_the_host_uses() -> None:
    ports = compose()["services"]["group-counter"]["ports"]
    host_ports = {int(port.split(":")[1]) for port in ports}
    assert host_ports.isdisjoint(PROMETHEUS_PORTS), host_ports & PROMETHEUS_PORTS


def test_compose_serves_the_image_with_a_config_it_accepts_on_the_compose_redis() -> None:
    services = compose()["services"]
    service = services["group-counter"]
    version = (ROOT / "pyproject.toml").read_text().split('version = "', 1)[1].split('"', 1)[0]
    assert service["image"] == f"group-counter:{version}", "the tag `make image` builds"
    assert service["build"] == "."
    cmd = exec_form("CMD", dockerfile_stages()[-1].last("CMD"))
    settings = parse_config(mounted_config(), environ=service_env({"APP_SECRET_KEY": "k"}))
    assert settings.redis_url == "redis://redis:6379/0"
    assert "redis" in services
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # Published on loopback only, the API and the metrics port the image serves.
    published = {p.rsplit(":", 1)[1]: p for p in service["ports"]}
    assert len(published) == len(service["ports"])
    assert set(published) == {arg_value(cmd, "--port"), arg_value(cmd, "--metrics-port")}
    assert all(p.startswith("127.0.0.1:") for p in published.values())
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]


def test_compose_redis_keeps_an_append_only_file_on_a_volume_and_never_evicts() -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    args = redis["command"]
    assert args[0] == "redis-server"
    assert arg_value(args, "--appendonly") == "yes"
    assert arg_value(args, "--appendfsync") == "everysec"
    assert arg_value(args, "--maxmemory-policy") == "noeviction"
    data_dir = arg_value(args, "--dir")
    [volume] = [v for v in redis["volumes"] if v.split(":")[1] == data_dir]
    assert volume.split(":")[0] in spec["volumes"], "a named volume: the AOF outlives the container"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
