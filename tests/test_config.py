"""Spec §7: the TOML config and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.api.auth import UsersigVerifier
from service.config import ConfigError, load_config, parse_config
from service.storage import urls
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
DEV_CONFIG = ROOT / "deploy" / "config" / "dev.toml"

EXAMPLE = """
redis_url = "redis://127.0.0.1:6379/0"

[[apps]]
sdkappid = 1400000000
secret_key = "..."              # or secret_key_env = "NAME_OF_ENV_VAR"
admins = ["administrator"]
groups = "registered"           # or "implicit"
rate_limit = 0                  # calls per second for the app across all replicas; 0 = none
"""

APP = """
[[apps]]
sdkappid = {sdkappid}
{key_line}
admins = ["administrator"]
{extra}
"""


def config_with(*apps: str, top: str = 'redis_url = "redis://127.0.0.1:6379/0"') -> str:
    return top + "\n" + "\n".join(apps)


def app(sdkappid: int = 1400000000, key_line: str = 'secret_key = "k"', extra: str = "") -> str:
    return APP.format(sdkappid=sdkappid, key_line=key_line, extra=extra)


def test_example_config_of_the_spec_parses_once_its_key_is_filled_in() -> None:
    settings = parse_config(EXAMPLE.replace('"..."', '"the-apps-real-key"'), environ={})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert list(settings.apps) == [1400000000]
    only = settings.apps[1400000000]
    assert only.secret_key == "the-apps-real-key"
    assert only.admins == frozenset({"administrator"})
    assert not only.implicit_groups


def test_unknown_top_level_key_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="redis_uri"):
        parse_config(config_with(app(), top='redis_uri = "redis://127.0.0.1:6379/0"'), environ={})


def test_unknown_key_in_an_app_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="secret_keys"):
        parse_config(config_with(app(key_line='secret_keys = "k"')), environ={})
    with pytest.raises(ConfigError, match="admin_list"):
        parse_config(config_with(app(extra='admin_list = ["x"]')), environ={})


def test_duplicate_sdkappid_is_an_error() -> None:
    with pytest.raises(ConfigError, match="1400000000"):
        parse_config(config_with(app(), app()), environ={})


def test_missing_secret_is_an_error() -> None:
    with pytest.raises(ConfigError, match="secret_key"):
        parse_config(config_with(app(key_line="")), environ={})
    with pytest.raises(ConfigError, match="secret_key"):
        parse_config(config_with(app(key_line='secret_key = ""')), environ={})


def test_both_secret_key_and_secret_key_env_is_an_error() -> None:
    both = 'secret_key = "k"\nsecret_key_env = "APP_SECRET"'
    with pytest.raises(ConfigError, match="secret_key_env"):
        parse_config(config_with(app(key_line=both)), environ={"APP_SECRET": "k"})


def test_secret_key_env_naming_an_unset_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="APP_SECRET"):
        parse_config(config_with(app(key_line='secret_key_env = "APP_SECRET"')), environ={})
    with pytest.raises(ConfigError, match="APP_SECRET"):
        parse_config(config_with(app(key_line='secret_key_env = "APP_SECRET"')), environ={"APP_SECRET": ""})


def test_secret_key_env_set_gives_the_secret() -> None:
    text = config_with(app(key_line='secret_key_env = "APP_SECRET"'))
    settings = parse_config(text, environ={"APP_SECRET": "from-the-environment"})
    assert settings.apps[1400000000].secret_key == "from-the-environment"


def test_bad_groups_mode_is_an_error() -> None:
    with pytest.raises(ConfigError, match="groups"):
        parse_config(config_with(app(extra='groups = "bad"')), environ={})


def test_implicit_groups_mode_is_read() -> None:
    settings = parse_config(config_with(app(extra='groups = "implicit"')), environ={})
    assert settings.apps[1400000000].implicit_groups


@pytest.mark.parametrize("rate_limit", [0, 100])
def test_rate_limit_is_accepted(rate_limit: int) -> None:
    settings = parse_config(config_with(app(extra=f"rate_limit = {rate_limit}")), environ={})
    assert 1400000000 in settings.apps


def test_redis_url_env_overrides_the_file() -> None:
    settings = parse_config(config_with(app()), environ={"REDIS_URL": "redis://other-host:6380/1"})
    assert settings.redis_url == "redis://other-host:6380/1"
    assert parse_config(config_with(app()), environ={}).redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "127.0.0.1:6379", "mysql://x"])
def test_bad_redis_url_scheme_is_an_error(url: str) -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        parse_config(config_with(app(), top=f'redis_url = "{url}"'), environ={})


def test_bad_redis_url_scheme_from_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        parse_config(config_with(app()), environ={"REDIS_URL": "http://127.0.0.1:6379/0"})


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380/0", "memory://"])
def test_supported_redis_url_schemes_are_accepted(url: str) -> None:
    assert parse_config(config_with(app(), top=f'redis_url = "{url}"'), environ={}).redis_url == url


def test_no_apps_is_an_error() -> None:
    with pytest.raises(ConfigError):
        parse_config('redis_url = "memory://"\n', environ={})
    with pytest.raises(ConfigError):
        parse_config('redis_url = "memory://"\napps = []\n', environ={})


def test_not_toml_is_an_error() -> None:
    with pytest.raises(ConfigError):
        parse_config("this is [not toml", environ={})


def test_dev_config_loads() -> None:
    settings = load_config(DEV_CONFIG, environ={})
    assert settings.apps


# The command line ----------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("REDIS_URL", "SERVICE_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(config_with(app(), top='redis_url = "memory://"\nbogus_setting = 1'), encoding="utf-8")
    return path


def test_check_config_with_a_bad_config_exits_2_naming_the_problem(bad_config: Path) -> None:
    result = run_cli("check-config", "--config", str(bad_config))
    assert result.returncode == 2, result
    assert "bogus_setting" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_with_a_good_config_exits_0() -> None:
    result = run_cli("check-config", "--config", str(DEV_CONFIG))
    assert result.returncode == 0, result


def test_usersig_command_prints_a_usersig_for_the_first_apps_admin() -> None:
    result = run_cli("usersig", "--config", str(DEV_CONFIG))
    assert result.returncode == 0, result
    usersig = result.stdout.strip()
    settings = load_config(DEV_CONFIG, environ={})
    first = next(iter(settings.apps.values()))
    verifier = UsersigVerifier({first.sdkappid: first.secret_key})
    assert (first.sdkappid, sorted(first.admins)[0]) == (1400000000, "administrator")
    verifier.verify(usersig, first.sdkappid, "administrator")


def test_serving_with_a_bad_config_exits_non_zero_quickly_with_the_message(bad_config: Path) -> None:
    result = run_cli("--config", str(bad_config), "--port", str(free_port()), timeout=20.0)
    assert result.returncode != 0, result
    assert "bogus_setting" in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379/0?ssl_cert_reqs=none",  # a TLS option without TLS
        "rediss://h:6380/0?ssl_cert_req=none",  # a typo that must not leave checks as they are
        "redis+cluster://h:7000?db=1",
        "unix:///tmp/redis.sock?timeout=3",
    ],
)
def test_an_unknown_redis_url_option_is_a_config_error_on_every_scheme(url: str) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        parse_config(config_with(app(), top=f'redis_url = "{url}"'), environ={})


def test_redis_url_credentials_are_percent_decoded() -> None:
    parsed = urls.parse("redis://us%3Aer:p%40ss@h:6379/2")
    assert (parsed.username, parsed.password, parsed.db) == ("us:er", "p@ss", 2)
    assert urls.parse("redis+sentinel://:p%40ss@h:26379/master").password == "p@ss"


def test_a_config_error_never_shows_the_redis_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(app(), top='redis_url = "redis://:hunter2@h:6379/0?bogus=1"'), environ={})
    assert "hunter2" not in str(caught.value)


def test_a_previous_secret_key_is_read_from_the_file_or_the_environment() -> None:
    text = config_with(app(extra='previous_secret_key_env = "OLD_KEY"'))
    settings = parse_config(text, environ={"OLD_KEY": "retiring"})
    assert next(iter(settings.apps.values())).previous_secret_key == "retiring"
    settings = parse_config(config_with(app(extra='previous_secret_key = "retiring"')), environ={})
    assert next(iter(settings.apps.values())).previous_secret_key == "retiring"
    assert next(iter(parse_config(config_with(app()), environ={}).apps.values())).previous_secret_key is None


@pytest.mark.parametrize(
    ("extra", "environ", "message"),
    [
        ('previous_secret_key = "a"\nprevious_secret_key_env = "B"', {"B": "b"}, "not both"),
        ('previous_secret_key_env = "MISSING"', {}, "not set or empty"),
        ('previous_secret_key = ""', {}, "previous_secret_key is empty"),
    ],
)
def test_a_bad_previous_secret_key_is_a_config_error(
    extra: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config_with(app(extra=extra)), environ=environ)


@pytest.mark.parametrize(
    "line",
    [
        "list_walk_seconds = 0",
        "list_walk_seconds = 61",
        "list_walk_scans = 0",
        "list_walks_in_flight = 0",
        'list_walk_scans = "10"',
    ],
)
def test_a_listing_bound_out_of_its_range_is_a_config_error_naming_it(line: str) -> None:
    with pytest.raises(ConfigError, match=line.split(" ")[0]):
        parse_config(config_with(app(), top=line), environ={})


def test_the_listing_bounds_have_their_documented_defaults() -> None:
    config = parse_config(config_with(app()), environ={}).config
    assert (config.list_walk_seconds, config.list_walk_scans, config.list_walks_in_flight) == (0.5, 1000, 1)


@pytest.mark.parametrize("line", ["demo_rate_limit = 0", 'demo_rate_limit = "5"'])
def test_a_demo_rate_limit_below_1_is_a_config_error_naming_it(line: str) -> None:
    with pytest.raises(ConfigError, match="demo_rate_limit"):
        parse_config(config_with(app(), top=line), environ={})


def test_the_demo_rate_limit_defaults_to_5_loads_a_second() -> None:
    assert parse_config(config_with(app()), environ={}).config.demo_rate_limit == 5


def test_the_watcher_bounds_have_their_documented_defaults() -> None:
    config = parse_config(config_with(app()), environ={}).config
    assert config.watch_send_buffer_bytes == 65536
    assert config.max_watch_joins == 1000
    assert config.max_watch_joins_per_end_user == 4
    assert config.max_watchers_per_end_user == 16


@pytest.mark.parametrize(
    "line",
    [
        "watch_send_buffer_bytes = 4096",
        "watch_send_buffer_bytes = 8388608",
        "max_watch_joins = 0",
        "max_watch_joins_per_end_user = 0",
        "max_watchers_per_end_user = 0",
        "max_watchers_per_end_user = -1",
    ],
)
def test_a_watcher_bound_out_of_its_range_is_an_error_naming_it(line: str) -> None:
    with pytest.raises(ConfigError, match=line.split(" = ")[0]):
        parse_config(config_with(app(), top=f'redis_url = "memory://"\n{line}'), environ={})


def test_idle_keep_alive_outlasts_the_load_balancers_in_front_by_default() -> None:
    """ingress-nginx's upstream-keepalive-timeout and AWS ALB's idle timeout are 60 s: the
    service must not be the one to close an idle connection first (a POST would get a 502)."""
    from service.http.protocol import HttpLimits

    config = parse_config(config_with(app()), environ={}).config
    assert config.keepalive_timeout == 75.0
    assert config.keepalive_timeout > 60.0
    assert HttpLimits().keepalive_timeout == config.keepalive_timeout, "one default for both"


def test_a_config_without_redis_url_is_refused_rather_than_silently_in_memory() -> None:
    with pytest.raises(ConfigError, match=r'redis_url is not set.*"memory://"'):
        parse_config(config_with(app(), top=""), environ={})


def test_redis_url_from_the_environment_is_enough() -> None:
    settings = parse_config(config_with(app(), top=""), environ={"REDIS_URL": "redis://10.0.0.1:6379/0"})
    assert settings.redis_url == "redis://10.0.0.1:6379/0"


def test_the_in_memory_store_is_had_by_asking_for_it() -> None:
    settings = parse_config(config_with(app(), top='redis_url = "memory://"'), environ={})
    assert settings.redis_url == "memory://"


@pytest.mark.parametrize(
    "placeholder",
    ["...", "…", "<your secret key>", "CHANGE_ME", "changeme", "xxxx", "your-secret-key", "{{ key }}"],
)
def test_a_placeholder_secret_key_is_refused(placeholder: str) -> None:
    with pytest.raises(ConfigError, match="is a placeholder"):
        parse_config(config_with(app(key_line=f'secret_key = "{placeholder}"')), environ={})


def test_every_mistake_is_reported_in_one_run() -> None:
    text = config_with(
        app(1, extra='groups = "sometimes"'),
        app(2, key_line='secret_key = "..."'),
        app(1),
        app(3, extra="rate_limt = 5"),
        top='redis_url = "redis+nothing://x"\nredis_timeout = -1',
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ={})
    message = str(raised.value)
    assert message.startswith("3 mistakes:"), message  # the type checks: top level, apps[0], apps[3]
    assert "redis_timeout" in message
    assert "apps[0]" in message
    assert "sometimes" in message
    assert "apps[3]" in message
    assert "did you mean `rate_limit`?" in message
    fixed_types = (
        text.replace('groups = "sometimes"', "")
        .replace("rate_limt = 5", "")
        .replace("redis_timeout = -1", "")
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(fixed_types, environ={})
    message = str(raised.value)
    assert message.startswith("3 mistakes:"), message  # then the rest: a placeholder, a duplicate, the URL
    assert "placeholder" in message
    assert "duplicate sdkappid 1" in message
    assert "redis+nothing" in message
