"""Spec §5 and §6: an app's rate limit (60007), in fixed one-second windows shared in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.store import open_store
from tests.support import IMPLICIT_APP, RATE_LIMIT, RATE_LIMITED_APP, Api, RedisServer, query

UPDATE = "/v4/group_open_http_svc/update_group_counter"


def _start_of_a_second() -> None:
    """Wait until a fresh second begins, so a short burst stays inside one window."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def _increase(api: Api, sdkappid: int = RATE_LIMITED_APP) -> dict[str, Any]:
    body = {"GroupId": "g", "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]}
    return api.call("update_group_counter", body, sdkappid=sdkappid)


def test_calls_beyond_the_limit_in_one_second_answer_60007(api: Api) -> None:
    _start_of_a_second()
    codes = [_increase(api)["ErrorCode"] for _ in range(RATE_LIMIT + 2)]
    assert codes == [0] * RATE_LIMIT + [60007, 60007]


def test_a_refused_call_changes_nothing(api: Api) -> None:
    _start_of_a_second()
    for _ in range(RATE_LIMIT):
        _increase(api)
    before = api.state()
    reply = _increase(api)
    assert reply["ErrorCode"] == 60007
    assert "rate limit" in reply["ErrorInfo"]
    assert api.counters("g", sdkappid=IMPLICIT_APP) == {}  # other apps are not touched
    after = api.state()
    counters = {key: value for key, value in after.items() if not key.startswith(b"{ratelimit:")}
    assert counters == {key: value for key, value in before.items() if not key.startswith(b"{ratelimit:")}


def test_every_command_counts_against_the_limit(api: Api) -> None:
    _start_of_a_second()
    api.get("g", sdkappid=RATE_LIMITED_APP)
    api.call("delete_group_counter", {"GroupId": "g"}, sdkappid=RATE_LIMITED_APP)
    api.call("destroy_group", {"GroupId": "g"}, sdkappid=RATE_LIMITED_APP)
    api.call("create_group", {"Type": "Public", "Name": "n", "GroupId": "g"}, sdkappid=RATE_LIMITED_APP)
    assert _increase(api)["ErrorCode"] == 0
    assert _increase(api)["ErrorCode"] == 60007


def test_the_limit_is_checked_before_the_body(api: Api) -> None:
    _start_of_a_second()
    for _ in range(RATE_LIMIT):
        _increase(api)
    bad_json = api.client.post(UPDATE + "?" + query(RATE_LIMITED_APP), content=b"{not json")
    bad_field = api.call("update_group_counter", {"GroupId": 5}, sdkappid=RATE_LIMITED_APP)
    assert bad_json.json()["ErrorCode"] == 60007
    assert bad_field["ErrorCode"] == 60007


def test_calls_that_fail_before_their_script_still_count(api: Api) -> None:
    _start_of_a_second()
    for _ in range(RATE_LIMIT):
        assert (
            api.call("update_group_counter", {"GroupId": 5}, sdkappid=RATE_LIMITED_APP)["ErrorCode"] == 10004
        )
    assert _increase(api)["ErrorCode"] == 60007


def test_the_limit_is_checked_after_the_usersig_and_admin(api: Api) -> None:
    _start_of_a_second()
    for _ in range(RATE_LIMIT):
        _increase(api)
    not_admin = api.client.post(
        UPDATE + "?" + query(RATE_LIMITED_APP, identifier="someone"),
        content=json.dumps({"GroupId": "g"}).encode(),
    )
    assert not_admin.json()["ErrorCode"] == 60010  # not 60007: the admin check comes first


def test_a_new_window_allows_calls_again(api: Api) -> None:
    _start_of_a_second()
    for _ in range(RATE_LIMIT + 1):
        _increase(api)
    _start_of_a_second()
    assert _increase(api)["ErrorCode"] == 0


def test_rate_limit_zero_means_no_limit(api: Api) -> None:
    _start_of_a_second()
    codes = {_increase(api, sdkappid=IMPLICIT_APP)["ErrorCode"] for _ in range(RATE_LIMIT * 4)}
    assert codes == {0}
    assert not [key for key in api.state() if key.startswith(b"{ratelimit:")]


def test_the_window_lives_in_redis_under_the_apps_own_key(api: Api) -> None:
    _start_of_a_second()
    _increase(api)
    window = api.inspector.hgetall(f"{{ratelimit:{RATE_LIMITED_APP}}}")
    assert window[b"calls"] == b"1"
    assert 0 < api.inspector.ttl(f"{{ratelimit:{RATE_LIMITED_APP}}}") <= 2


def test_reads_keep_working_when_redis_refuses_writes(redis_server: RedisServer, settings: Settings) -> None:
    """maxmemory reached under noeviction: the window's count is refused, so the read
    goes on uncounted (documented); the write answers 10002 and changes nothing."""
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushall()
    store = open_store(redis_server.url, timeout=2.0)
    with TestClient(create_app(settings, store)) as client:
        api = Api(client=client, inspector=admin)
        assert api.update("g", {"a": 1}, "Set", sdkappid=RATE_LIMITED_APP)["ErrorCode"] == 0
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", used // 2)
        try:
            time.sleep(1.1)  # a new window: its first count is a write
            assert api.counters("g", sdkappid=RATE_LIMITED_APP) == {"a": 1}
            assert api.update("g", {"a": 2}, "Set", sdkappid=RATE_LIMITED_APP)["ErrorCode"] == 10002
        finally:
            admin.config_set("maxmemory", 0)
        assert api.counters("g", sdkappid=RATE_LIMITED_APP) == {"a": 1}
    admin.close()
