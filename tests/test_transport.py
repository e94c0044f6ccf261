"""Spec §1 transport: HTTP 200 and the envelope, the body as JSON, its size cap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

import pytest

from tests.support import REGISTERED_APP, Api, query

GROUP: Final = "g"
CAP: Final = 64 * 1024
UPDATE: Final = "update_group_counter"
ENVELOPE: Final = {"ActionStatus", "ErrorCode", "ErrorInfo"}


def url(command: str) -> str:
    return f"/v4/group_open_http_svc/{command}?{query(REGISTERED_APP)}"


def update_body(value: int = 1) -> dict[str, Any]:
    return {"GroupId": GROUP, "Mode": "Set", "GroupCounter": [{"Key": "a", "Value": value}]}


def padded(size: int, value: int) -> bytes:
    """A valid update body of exactly `size` bytes, padded with an unknown field."""
    request = {**update_body(value), "Padding": ""}
    base = len(json.dumps(request).encode())
    request["Padding"] = "x" * (size - base)
    raw = json.dumps(request).encode()
    assert len(raw) == size
    return raw


def assert_fails(api: Api, command: str, code: int, *, raw: bytes) -> dict[str, Any]:
    """The call fails with `code` and the store is exactly as before."""
    before = api.state()
    reply = api.call(command, raw=raw)
    assert reply["ErrorCode"] == code, reply
    assert api.state() == before
    return reply


@pytest.fixture
def group(api: Api) -> Api:
    api.create(GROUP)
    assert api.update(GROUP, {"a": 1, "b": 2})["ErrorCode"] == 0
    return api


def test_http_status_is_200_on_success(group: Api) -> None:
    response = group.post(UPDATE, update_body(5))
    assert response.status_code == 200
    assert response.json()["ErrorCode"] == 0


@pytest.mark.parametrize(
    ("command", "raw", "code"),
    [
        (UPDATE, b"not json", 60003),
        (UPDATE, b'{"GroupId": "g", "GroupCounter": []}', 10004),
        (UPDATE, b'{"GroupId": "caf\\u00e9", "GroupCounter": [{"Key": "a", "Value": 1}]}', 10015),
        ("get_group_counter", b'{"GroupId": "never"}', 10010),
        ("create_group", b'{"Type": "Public", "Name": "n", "GroupId": "g"}', 10021),
        ("no_such_command", b"{}", 60009),
    ],
    ids=["60003", "10004", "10015", "10010", "10021", "60009"],
)
def test_http_status_is_200_on_failure(group: Api, command: str, raw: bytes, code: int) -> None:
    before = group.state()
    response = group.post(command, raw=raw)
    assert response.status_code == 200
    assert response.json()["ErrorCode"] == code
    assert group.state() == before


def test_reply_envelope_on_success(group: Api) -> None:
    reply = group.call(UPDATE, update_body(5))
    assert set(reply) >= ENVELOPE
    assert reply["ActionStatus"] == "OK"
    assert reply["ErrorCode"] == 0
    assert isinstance(reply["ErrorInfo"], str)


@pytest.mark.parametrize(
    ("command", "raw", "code"),
    [
        (UPDATE, b"[]", 60003),
        (UPDATE, b'{"GroupId": "g"}', 10004),
        ("get_group_counter", b'{"GroupId": "never"}', 10010),
    ],
    ids=["60003", "10004", "10010"],
)
def test_reply_envelope_on_failure_has_non_empty_error_info(
    group: Api, command: str, raw: bytes, code: int
) -> None:
    reply = assert_fails(group, command, code, raw=raw)
    assert set(reply) >= ENVELOPE
    assert reply["ActionStatus"] == "FAIL"
    assert isinstance(reply["ErrorInfo"], str)
    assert reply["ErrorInfo"].strip()


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        (UPDATE, ("GroupId", "GroupCounter")),
        ("get_group_counter", ("GroupId",)),
        ("delete_group_counter", ("GroupId",)),
        ("destroy_group", ("GroupId",)),
        ("create_group", ("Type", "Name")),
    ],
)
def test_empty_body_is_read_as_empty_object(group: Api, command: str, fields: tuple[str, ...]) -> None:
    reply = assert_fails(group, command, 10004, raw=b"")
    assert any(field in reply["ErrorInfo"] for field in fields), reply


def test_missing_content_type_is_tolerated(group: Api) -> None:
    response = group.client.post(url(UPDATE), content=json.dumps(update_body(7)).encode())
    assert "content-type" not in response.request.headers
    assert response.status_code == 200
    assert response.json()["ErrorCode"] == 0
    assert group.counters(GROUP)["a"] == 7


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "garbage"]
)
def test_wrong_content_type_is_tolerated(group: Api, content_type: str) -> None:
    response = group.client.post(
        url(UPDATE), content=json.dumps(update_body(7)).encode(), headers={"Content-Type": content_type}
    )
    assert response.status_code == 200
    assert response.json()["ErrorCode"] == 0
    assert group.counters(GROUP)["a"] == 7


def test_unknown_json_fields_are_ignored(group: Api) -> None:
    request: dict[str, Any] = {
        "GroupId": GROUP,
        "Mode": "Increase",
        "GroupCounter": [{"Key": "a", "Value": 2, "Extra": [1, {"x": None}]}],
        "Unknown": {"nested": [1, 2, "three"]},
        "Random": 1.5,
    }
    reply = group.call(UPDATE, request)
    assert reply["ErrorCode"] == 0, reply
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 3}]
    reply = group.call("get_group_counter", {"GroupId": GROUP, "GroupCounterKeys": ["b"], "X": True})
    assert reply["GroupCounter"] == [{"Key": "b", "Value": 2}]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{",
        b"{'GroupId': 'g'}",
        b'{"GroupId": "g",}',
        b'{"GroupId": "g"} x',
        b"\xff\xfe{}",
        b" ",
    ],
    ids=["text", "open-brace", "single-quotes", "trailing-comma", "trailing-text", "bad-utf8", "blank"],
)
def test_body_not_json_is_refused(group: Api, raw: bytes) -> None:
    assert_fails(group, UPDATE, 60003, raw=raw)


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'[{"GroupId": "g"}]', b'"g"', b"5", b"null", b"true"],
    ids=["empty-array", "array", "string", "number", "null", "true"],
)
def test_body_not_a_json_object_is_refused(group: Api, raw: bytes) -> None:
    assert_fails(group, UPDATE, 60003, raw=raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"GroupId": 5',
        b'{"GroupId": "g", "GroupCounter": 5',
        b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1.5}',
        b'{"GroupId": "g", "Mode": "nope", ',
        b'[{"GroupId": 5',
    ],
    ids=["group-id", "group-counter", "value", "mode", "array"],
)
def test_truncated_json_with_a_wrong_field_type_is_refused_as_not_json(group: Api, raw: bytes) -> None:
    assert_fails(group, UPDATE, 60003, raw=raw)


def test_body_over_the_cap_is_refused_with_413(group: Api) -> None:
    before = group.state()
    response = group.post(UPDATE, raw=padded(CAP + 1, 9))
    assert response.status_code == 413
    assert group.state() == before


def test_body_over_the_cap_without_content_length_is_refused_with_413(group: Api) -> None:
    raw = padded(4 * CAP, 9)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]

    before = group.state()
    response = group.client.post(url(UPDATE), content=chunks())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert group.state() == before


@pytest.mark.parametrize("size", [CAP - 1, CAP])
def test_body_up_to_the_cap_is_processed(group: Api, size: int) -> None:
    reply = group.call(UPDATE, raw=padded(size, 9))
    assert reply["ErrorCode"] == 0, reply
    assert group.counters(GROUP)["a"] == 9
