"""Idempotent retries: the Idempotency-Key header on update_group_counter and delete_group_counter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.config import ConfigError, parse_config
from tests.backends import empty_store
from tests.support import CONFIG, OTHER_APP, REGISTERED_APP, Api, group_key, query

UPDATE = "update_group_counter"
DELETE = "delete_group_counter"


def _post(
    api: Api, command: str, body: dict[str, Any], key: str | None, sdkappid: int = REGISTERED_APP
) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = api.client.post(
        f"/v4/group_open_http_svc/{command}?" + query(sdkappid),
        content=json.dumps(body).encode(),
        headers=headers,
    )
    assert response.status_code == 200
    return response.json()


def _increase(group: str, value: int) -> dict[str, Any]:
    return {"GroupId": group, "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": value}]}


@pytest.fixture
def group(api: Api) -> str:
    api.create("g")
    api.create("h")
    return "g"


def test_a_repeated_key_returns_the_first_reply_and_applies_nothing(api: Api, group: str) -> None:
    first = _post(api, UPDATE, _increase(group, 5), "retry-1")
    api.update(group, {"a": 100}, "Increase")  # another client moves the counter meanwhile
    again = _post(api, UPDATE, _increase(group, 5), "retry-1")
    assert first["ErrorCode"] == 0
    assert again == first
    assert api.counters(group) == {"a": 105}


def test_a_repeated_key_with_another_body_is_10004_and_changes_nothing(api: Api, group: str) -> None:
    _post(api, UPDATE, _increase(group, 5), "retry-1")
    before = api.state()
    reply = _post(api, UPDATE, _increase(group, 6), "retry-1")
    assert reply["ErrorCode"] == 10004
    assert "Idempotency-Key" in reply["ErrorInfo"]
    assert api.state() == before


def test_the_same_key_in_another_mode_is_another_request(api: Api, group: str) -> None:
    _post(api, UPDATE, _increase(group, 5), "retry-1")
    body = {"GroupId": group, "Mode": "Set", "GroupCounter": [{"Key": "a", "Value": 5}]}
    assert _post(api, UPDATE, body, "retry-1")["ErrorCode"] == 10004


def test_keys_are_per_group_and_per_app(api: Api, group: str) -> None:
    api.create("g", sdkappid=OTHER_APP)
    _post(api, UPDATE, _increase("g", 1), "k")
    _post(api, UPDATE, _increase("h", 1), "k")
    _post(api, UPDATE, _increase("g", 1), "k", sdkappid=OTHER_APP)
    assert api.counters("g") == {"a": 1}
    assert api.counters("h") == {"a": 1}
    assert api.counters("g", sdkappid=OTHER_APP) == {"a": 1}


def test_without_the_header_a_retry_applies_again(api: Api, group: str) -> None:
    _post(api, UPDATE, _increase(group, 5), None)
    _post(api, UPDATE, _increase(group, 5), None)
    assert api.counters(group) == {"a": 10}


def test_the_record_lives_in_the_groups_slot_for_24_hours(api: Api, group: str) -> None:
    _post(api, UPDATE, _increase(group, 5), "retry-1")
    record = group_key(REGISTERED_APP, group) + b":idempotency:retry-1"
    assert api.inspector.exists(record)
    assert 86_390 <= api.inspector.ttl(record) <= 86_400


def test_a_failed_first_attempt_records_nothing(api: Api, group: str) -> None:
    api.update(group, {"a": 2**63 - 1})
    assert _post(api, UPDATE, _increase(group, 1), "retry-1")["ErrorCode"] == 10004  # overflow
    api.update(group, {"a": 0})
    assert _post(api, UPDATE, _increase(group, 1), "retry-1")["ErrorCode"] == 0
    assert api.counters(group) == {"a": 1}


def test_a_repeated_delete_does_not_delete_keys_created_since(api: Api, group: str) -> None:
    api.update(group, {"a": 1, "b": 2})
    assert _post(api, DELETE, {"GroupId": group}, "clear-1")["ErrorCode"] == 0
    api.update(group, {"c": 3})
    assert _post(api, DELETE, {"GroupId": group}, "clear-1")["ErrorCode"] == 0
    assert api.counters(group) == {"c": 3}


def test_a_repeated_delete_with_other_keys_is_10004(api: Api, group: str) -> None:
    api.update(group, {"a": 1, "b": 2})
    _post(api, DELETE, {"GroupId": group, "GroupCounterKeys": ["a"]}, "clear-1")
    before = api.state()
    assert _post(api, DELETE, {"GroupId": group, "GroupCounterKeys": ["b"]}, "clear-1")["ErrorCode"] == 10004
    assert api.state() == before


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_10004_and_changes_nothing(api: Api, group: str, key: str) -> None:
    before = api.state()
    headers = {b"Idempotency-Key": key.encode("utf-8")}
    response = api.client.post(
        f"/v4/group_open_http_svc/{UPDATE}?" + query(),
        content=json.dumps(_increase(group, 1)).encode(),
        headers=headers,
    )
    assert response.json()["ErrorCode"] == 10004
    assert api.state() == before


def test_a_key_of_128_printable_characters_is_accepted(api: Api, group: str) -> None:
    assert _post(api, UPDATE, _increase(group, 1), "k" * 127 + "~")["ErrorCode"] == 0


def test_a_record_holds_a_digest_of_the_request_and_the_reply_not_the_request(api: Api, group: str) -> None:
    """What a record costs stays small whatever the request holds (README, the key table)."""
    body = {
        "GroupId": group,
        "Mode": "Increase",
        "GroupCounter": [{"Key": "a-long-key-name" * 8, "Value": 5}],
    }
    assert _post(api, UPDATE, body, "retry-digest")["ErrorCode"] == 0
    record = api.inspector.get(group_key(REGISTERED_APP, group) + b":idempotency:retry-digest")
    assert isinstance(record, bytes)
    epoch, digest, reply = record.split(b"\n")
    assert len(epoch) == 16
    assert len(digest) == 32
    int(digest, 16)  # hex
    assert reply == b"5"
    assert b"a-long-key-name" not in record


def test_the_record_lives_idempotency_ttl_seconds(backend: str, request: pytest.FixtureRequest) -> None:
    settings = parse_config("idempotency_ttl = 120\n" + CONFIG, environ={})
    store, inspector = empty_store(backend, request)
    with TestClient(create_app(settings, store)) as client:
        api = Api(client=client, inspector=inspector)
        api.create("g")
        assert _post(api, UPDATE, _increase("g", 5), "short-1")["ErrorCode"] == 0
        assert _post(api, DELETE, {"GroupId": "g", "GroupCounterKeys": ["zz"]}, "short-2")["ErrorCode"] == 0
        for key in (b"short-1", b"short-2"):
            assert 110 <= inspector.ttl(group_key(REGISTERED_APP, "g") + b":idempotency:" + key) <= 120
    inspector.close()


@pytest.mark.parametrize("seconds", [59, 604_801, 0])
def test_idempotency_ttl_outside_a_minute_to_a_week_is_refused(seconds: int) -> None:
    with pytest.raises(ConfigError, match="idempotency_ttl"):
        parse_config(f"idempotency_ttl = {seconds}\n" + CONFIG, environ={})
