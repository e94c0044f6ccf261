"""docker-compose.yml, checked offline (no Docker engine here): the service runs the image
`make image` builds with a config it accepts, on a Redis that keeps an append-only file
on a volume and never evicts counters."""

from __future__ import annotations

from typing import Any, Final

import yaml

from service.config import parse_config
from tests.test_deploy import ROOT, arg_value, dockerfile_stages, exec_form

COMPOSE: Final = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_serves_the_image_with_a_config_it_accepts_on_the_compose_redis() -> None:
    services = compose()["services"]
    service = services["group-counter"]
    version = (ROOT / "pyproject.toml").read_text().split('version = "', 1)[1].split('"', 1)[0]
    assert service["image"] == f"group-counter:{version}", "the tag `make image` builds"
    assert service["build"] == "."
    cmd = exec_form("CMD", dockerfile_stages()[-1].last("CMD"))
    config_path = arg_value(cmd, "--config")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    assert config_path in mounts, f"nothing mounted at the image's --config {config_path}"
    env = {name: str(value) for name, value in service["environment"].items()}
    settings = parse_config((ROOT / mounts[config_path]).read_text(), environ=env)
    assert settings.redis_url == "redis://redis:6379/0"
    assert "redis" in services
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # Published on loopback only, the API and the metrics port the image serves.
    published = {p.rsplit(":", 1)[1]: p for p in service["ports"]}
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
