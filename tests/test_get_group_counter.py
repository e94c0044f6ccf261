"""Spec §2 get_group_counter: every counter in byte order, or the asked keys in request order."""

from __future__ import annotations

import functools
from typing import Any, Final

import pytest

from tests.support import Api, assert_ok, group_of_three, keys_body

GROUP: Final = "g"
COMMAND: Final = "get_group_counter"

# Inserted in this order, which is neither byte order nor a locale's collation.
UNSORTED: Final = {
    "\u00e9": 1,
    "a": 2,
    "\U0001f600": 3,
    "B": 4,
    "aa": 5,
    "\u4e2d": 6,
    "Z": 7,
    "_": 8,
    "0": 9,
    "z": 10,
    "A": 11,
    "\uff5e": 12,
}
# Byte order of the UTF-8 encodings: digits, upper case, "_", lower case, then 2-, 3-, 4-byte forms.
BYTE_ORDER: Final = ["0", "A", "B", "Z", "_", "a", "aa", "z", "\u00e9", "\u4e2d", "\uff5e", "\U0001f600"]


def assert_fails(api: Api, request: Any, code: int) -> dict[str, Any]:
    return api.assert_fails(COMMAND, request, code)


get_body = functools.partial(keys_body, GROUP)


@pytest.fixture
def group(api: Api) -> Api:
    return group_of_three(api, GROUP)


@pytest.mark.parametrize("keys", ["absent", None, []], ids=["absent", "null", "empty"])
def test_get_without_keys_returns_every_counter_in_byte_order(api: Api, keys: Any) -> None:
    api.create(GROUP)
    for key, value in UNSORTED.items():
        assert_ok(api.update(GROUP, {key: value}))
    reply = assert_ok(api.call(COMMAND, get_body(keys)))
    assert [item["Key"] for item in reply["GroupCounter"]] == BYTE_ORDER
    assert {item["Key"]: item["Value"] for item in reply["GroupCounter"]} == UNSORTED


def test_get_with_keys_returns_them_in_request_order(group: Api) -> None:
    reply = assert_ok(group.get(GROUP, ["c", "a", "b"]))
    assert reply["GroupCounter"] == [
        {"Key": "c", "Value": 3},
        {"Key": "a", "Value": 1},
        {"Key": "b", "Value": 2},
    ]


def test_get_with_keys_leaves_out_missing_keys(group: Api) -> None:
    reply = assert_ok(group.get(GROUP, ["nope", "c", "gone", "a"]))
    assert reply["GroupCounter"] == [{"Key": "c", "Value": 3}, {"Key": "a", "Value": 1}]
    assert assert_ok(group.get(GROUP, ["nope"]))["GroupCounter"] == []


def test_get_duplicate_key_is_invalid(group: Api) -> None:
    assert_fails(group, get_body(["a", "b", "a"]), 10004)


@pytest.mark.parametrize("keys", ["absent", ["a"]], ids=["all", "some"])
def test_get_of_empty_group_returns_empty_list(api: Api, keys: Any) -> None:
    api.create(GROUP)
    reply = assert_ok(api.call(COMMAND, get_body(keys)))
    assert reply["GroupCounter"] == []


def test_get_more_than_20_keys_fails(group: Api) -> None:
    assert_fails(group, get_body([f"k{i}" for i in range(21)]), 10063)


def test_get_20_keys_succeeds(group: Api) -> None:
    keys = ["a", *(f"k{i}" for i in range(18)), "c"]
    reply = assert_ok(group.get(GROUP, keys))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 1}, {"Key": "c", "Value": 3}]


@pytest.mark.parametrize("key", ["", "k" * 129, "\u20ac" * 43], ids=["empty", "129-ascii", "129-utf8"])
def test_get_key_must_be_1_to_128_bytes(group: Api, key: str) -> None:
    assert_fails(group, get_body(["a", key]), 10004)


@pytest.mark.parametrize(
    "keys",
    ["a", 1, {"a": 1}, [1], [None]],
    ids=["string", "number", "object", "list-of-number", "list-of-null"],
)
def test_get_keys_must_be_a_list_of_strings(group: Api, keys: Any) -> None:
    assert_fails(group, get_body(keys), 10004)
