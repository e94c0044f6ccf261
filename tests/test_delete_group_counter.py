"""Spec §2 delete_group_counter: listed keys, or every counter; the group itself stays."""

from __future__ import annotations

import functools
from typing import Any, Final

import pytest

from tests.support import Api, assert_ok, group_of_three, keys_body

GROUP: Final = "g"
COMMAND: Final = "delete_group_counter"


def assert_fails(api: Api, request: Any, code: int) -> dict[str, Any]:
    return api.assert_fails(COMMAND, request, code)


delete_body = functools.partial(keys_body, GROUP)


@pytest.fixture
def group(api: Api) -> Api:
    return group_of_three(api, GROUP)


def test_delete_removes_listed_keys(group: Api) -> None:
    assert_ok(group.call(COMMAND, delete_body(["a", "c"])))
    assert group.counters(GROUP) == {"b": 2}


@pytest.mark.parametrize("keys", ["absent", None, []], ids=["absent", "null", "empty"])
def test_delete_without_keys_deletes_every_counter(group: Api, keys: Any) -> None:
    assert_ok(group.call(COMMAND, delete_body(keys)))
    assert group.get(GROUP)["GroupCounter"] == []


@pytest.mark.parametrize("keys", ["absent", None, []], ids=["absent", "null", "empty"])
def test_delete_all_keeps_the_registered_group(group: Api, keys: Any) -> None:
    assert_ok(group.call(COMMAND, delete_body(keys)))
    assert assert_ok(group.get(GROUP))["GroupCounter"] == []
    assert assert_ok(group.update(GROUP, {"a": 5}, "Increase"))["GroupCounter"] == [{"Key": "a", "Value": 5}]
    assert group.call("create_group", {"Type": "Public", "Name": "g", "GroupId": GROUP})["ErrorCode"] == 10021


def test_delete_ignores_missing_keys(group: Api) -> None:
    assert_ok(group.call(COMMAND, delete_body(["nope", "b", "gone"])))
    assert group.counters(GROUP) == {"a": 1, "c": 3}
    before = group.state()
    assert_ok(group.call(COMMAND, delete_body(["nope"])))
    assert group.state() == before


def test_delete_all_frees_the_20_key_limit(group: Api) -> None:
    assert_ok(group.update(GROUP, {f"old{i}": i for i in range(17)}))
    assert len(group.counters(GROUP)) == 20
    assert_ok(group.call(COMMAND, delete_body("absent")))
    assert_ok(group.update(GROUP, {f"new{i}": i for i in range(20)}))
    assert group.counters(GROUP) == {f"new{i}": i for i in range(20)}


def test_delete_of_every_key_by_name_keeps_the_group(group: Api) -> None:
    assert_ok(group.call(COMMAND, delete_body(["a", "b", "c"])))
    assert assert_ok(group.get(GROUP))["GroupCounter"] == []
    assert_ok(group.update(GROUP, {"d": 4}))


def test_delete_duplicate_key_is_invalid(group: Api) -> None:
    assert_fails(group, delete_body(["a", "a"]), 10004)


def test_delete_more_than_20_keys_fails(group: Api) -> None:
    assert_fails(group, delete_body(["a", *(f"k{i}" for i in range(20))]), 10063)


@pytest.mark.parametrize("key", ["", "k" * 129], ids=["empty", "129-bytes"])
def test_delete_key_must_be_1_to_128_bytes(group: Api, key: str) -> None:
    assert_fails(group, delete_body(["a", key]), 10004)


@pytest.mark.parametrize("keys", ["a", 1, [1]], ids=["string", "number", "list-of-number"])
def test_delete_keys_must_be_a_list_of_strings(group: Api, keys: Any) -> None:
    assert_fails(group, delete_body(keys), 10004)
