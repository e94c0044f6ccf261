"""`check-config`: names what would have been accepted, and with --connect proves Redis answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import redis

from service.config import ConfigError, parse_config
from tests.support import REPO, RedisServer, free_port

APP: Final = '[[apps]]\nsdkappid = 1\nsecret_key = "k"\nadmins = ["a"]\n'


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('redis_ur = "redis://x:6379/0"\n' + APP, "did you mean `redis_url`?"),
        ('log_levle = "info"\n' + APP, "did you mean `log_level`?"),
        (APP + 'group = "implicit"\n', "did you mean `groups`?"),
        (APP + "ratelimit = 5\n", "did you mean `rate_limit`?"),
        (APP + 'secret_key_evn = "X"\n', "did you mean `secret_key_env`?"),
    ],
)
def test_a_misspelt_key_gets_a_did_you_mean(text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ={})
    assert hint in str(raised.value)


def test_an_unknown_key_like_no_other_lists_the_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"known keys: apps, redis_url, .*log_format"):
        parse_config("zzz = 1\n" + APP, environ={})


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        (APP + 'groups = "implict"\n', "allowed: 'registered', 'implicit'"),
        ('log_level = "verbose"\n' + APP, "allowed: 'debug', 'info', 'warning', 'error'"),
        ('log_format = "yaml"\n' + APP, "allowed: 'json', 'text'"),
    ],
)
def test_a_bad_enum_value_lists_the_allowed_values(text: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ={})
    assert allowed in str(raised.value)


def check_config(config: Path, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--connect", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('redis_url = "memory://"\nredis_timeout = 0.5\n' + APP)
    return path


def test_check_config_connect_runs_a_script_on_the_configured_redis(
    config: Path, redis_server: RedisServer
) -> None:
    redis.Redis.from_url(redis_server.url).flushall()  # other tests' groups would be data of no format
    result = check_config(config, redis_server.url)
    assert result.returncode == 0, result.stderr
    assert f"redis: redis://127.0.0.1:{redis_server.port}/0 ran a script in" in result.stdout


def test_check_config_connect_fails_when_redis_does_not_answer(config: Path) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    result = check_config(config, url)
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr, "the password is redacted"


def test_check_config_connect_on_the_embedded_store_says_there_is_nothing_to_connect(config: Path) -> None:
    result = check_config(config, "memory://")
    assert result.returncode == 0, result.stderr
    assert "nothing to connect to" in result.stdout


def test_check_config_refuses_a_config_that_names_no_store(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(APP)
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert "redis_url is not set" in result.stderr
    assert "Traceback" not in result.stderr
