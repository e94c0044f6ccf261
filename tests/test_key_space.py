"""The key space: no GroupId or Idempotency-Key can name another's key, and an
Idempotency-Key's record lives and dies with its group (on every backend)."""

from __future__ import annotations

from typing import Any

import pytest

from service.storage.keys import group_key, idempotency_key, rate_limit_key
from tests.support import IMPLICIT_APP, REGISTERED_APP, Api
from tests.test_idempotency import UPDATE, _increase, _post

DESTROY = "destroy_group"


def test_a_group_id_with_braces_and_colons_gets_its_own_hash_in_its_own_slot() -> None:
    victim = group_key(REGISTERED_APP, "v")
    record = idempotency_key(victim, "r}")
    collider = group_key(REGISTERED_APP, "v}:idempotency:r")
    assert collider != record
    assert collider == "{1400000000:v%7D:idempotency:r}"
    # The hash tag is the text between the first { and the first } after it.
    assert collider[1 : collider.index("}")] == "1400000000:v%7D:idempotency:r"


@pytest.mark.parametrize(("first", "second"), [("a%7Db", "a}b"), ("a{b", "a%7Bb"), ("%", "%25"), ("{", "}")])
def test_the_escape_is_one_to_one(first: str, second: str) -> None:
    assert group_key(REGISTERED_APP, first) != group_key(REGISTERED_APP, second)


def test_no_group_key_is_a_rate_limit_window_or_the_readiness_key() -> None:
    assert group_key(1, "ratelimit:1") != rate_limit_key(1)
    assert not group_key(1, "x").startswith("{ratelimit:")


def test_a_record_never_answers_for_a_group_whose_id_spells_it(api: Api) -> None:
    """Once: the record of group `v` with key `r}` was the hash of GroupId
    `v}:idempotency:r`: create_group answered 10021, and later calls WRONGTYPE (10002)."""
    api.create("v")
    assert _post(api, UPDATE, _increase("v", 1), "r}")["ErrorCode"] == 0
    api.create("v}:idempotency:r")  # not taken
    assert api.update("v}:idempotency:r", {"a": 7}, "Increase")["GroupCounter"] == [{"Key": "a", "Value": 7}]
    assert _post(api, UPDATE, _increase("v", 1), "r}")["GroupCounter"] == [{"Key": "a", "Value": 1}]
    assert api.counters("v") == {"a": 1}


def test_destroying_a_colliding_name_does_not_make_a_retry_apply_twice(api: Api) -> None:
    api.create("v")
    api.create("v}:idempotency:r")
    assert _post(api, UPDATE, _increase("v", 5), "r}")["ErrorCode"] == 0
    assert api.call(DESTROY, {"GroupId": "v}:idempotency:r"})["ErrorCode"] == 0
    assert _post(api, UPDATE, _increase("v", 5), "r}")["ErrorCode"] == 0  # the retry
    assert api.counters("v") == {"a": 5}


def _retry(api: Api, group: str, sdkappid: int = REGISTERED_APP) -> dict[str, Any]:
    reply: dict[str, Any] = _post(api, UPDATE, _increase(group, 3), "once", sdkappid)
    return reply


def test_a_retry_after_destroy_group_is_not_answered_from_the_old_group(api: Api) -> None:
    api.create("g")
    assert _retry(api, "g")["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert api.call(DESTROY, {"GroupId": "g"})["ErrorCode"] == 0
    assert _retry(api, "g")["ErrorCode"] == 10010  # the group is gone: not an OK with old values


def test_a_retry_into_a_re_created_group_applies_afresh(api: Api) -> None:
    api.create("g")
    api.update("g", {"a": 100}, "Set")
    assert _retry(api, "g")["GroupCounter"] == [{"Key": "a", "Value": 103}]
    assert api.call(DESTROY, {"GroupId": "g"})["ErrorCode"] == 0
    api.create("g")
    assert _retry(api, "g")["GroupCounter"] == [{"Key": "a", "Value": 3}]  # not the old 103
    assert _retry(api, "g")["GroupCounter"] == [{"Key": "a", "Value": 3}]  # and now recorded
    assert api.counters("g") == {"a": 3}


def test_in_implicit_mode_a_retry_after_destroy_applies_to_the_emptied_group(api: Api) -> None:
    assert _retry(api, "g", IMPLICIT_APP)["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert api.call(DESTROY, {"GroupId": "g"}, sdkappid=IMPLICIT_APP)["ErrorCode"] == 0
    assert _retry(api, "g", IMPLICIT_APP)["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert api.counters("g", sdkappid=IMPLICIT_APP) == {"a": 3}


def test_deleting_every_counter_keeps_the_groups_records(api: Api) -> None:
    api.create("g")
    assert _retry(api, "g")["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert api.call("delete_group_counter", {"GroupId": "g"})["ErrorCode"] == 0
    assert _retry(api, "g")["GroupCounter"] == [{"Key": "a", "Value": 3}]  # replayed, not applied
    assert api.counters("g") == {}


def test_the_epoch_is_not_a_counter_and_does_not_count_toward_20_keys(api: Api) -> None:
    api.create("g")
    assert _retry(api, "g")["ErrorCode"] == 0
    assert api.update("g", {f"k{i:02}": i for i in range(19)}, "Set")["ErrorCode"] == 0
    assert set(api.counters("g")) == {"a", *(f"k{i:02}" for i in range(19))}
    assert api.update("g", {"one-more": 1}, "Set")["ErrorCode"] == 10063
