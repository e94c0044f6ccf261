"""docs/API.md §1: `null` for an optional field reads as absent, in every command.

Each test sends every optional field of its command as `null` and checks the answer is
the one the same body without those fields gets. destroy_group has no optional field.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.config import Settings, parse_config
from tests.support import CONFIG, Api, assert_ok


@pytest.fixture
def settings() -> Settings:
    # Two listings in the same second: no once-a-second limit for the registered app here.
    unlimited = CONFIG.replace('groups = "registered"', 'groups = "registered"\nlist_rate_limit = 0', 1)
    return parse_config(unlimited, environ={})


def test_update_group_counter_reads_a_null_mode_as_set(api: Api) -> None:
    api.create("g")
    assert_ok(api.update("g", {"a": 5}))
    body: dict[str, Any] = {"GroupId": "g", "Mode": None, "GroupCounter": [{"Key": "a", "Value": 2}]}
    reply = assert_ok(api.call("update_group_counter", body))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 2}]  # Set, the default: not 7


def test_get_group_counter_reads_null_keys_as_every_counter(api: Api) -> None:
    api.create("g")
    assert_ok(api.update("g", {"b": 2, "a": 1}))
    reply = assert_ok(api.call("get_group_counter", {"GroupId": "g", "GroupCounterKeys": None}))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 1}, {"Key": "b", "Value": 2}]


def test_delete_group_counter_reads_null_keys_as_every_counter(api: Api) -> None:
    api.create("g")
    assert_ok(api.update("g", {"a": 1, "b": 2}))
    assert_ok(api.call("delete_group_counter", {"GroupId": "g", "GroupCounterKeys": None}))
    assert api.counters("g") == {}


def test_create_group_reads_null_group_id_and_owner_as_absent(api: Api) -> None:
    body = {"Type": "Public", "Name": "n", "GroupId": None, "Owner_Account": None}
    reply = assert_ok(api.call("create_group", body))
    assert reply["GroupId"].startswith("@TGS#")  # generated, as without a GroupId


def test_get_appid_group_list_reads_null_limit_next_and_type_as_absent(api: Api) -> None:
    for group_id in ("a", "b", "c"):
        api.create(group_id, "Private" if group_id == "a" else "Public")
    absent = assert_ok(api.call("get_appid_group_list", {}))
    nulls = assert_ok(api.call("get_appid_group_list", {"Limit": None, "Next": None, "GroupType": None}))
    assert sorted(item["GroupId"] for item in nulls["GroupIdList"]) == ["a", "b", "c"]
    assert (nulls["TotalCount"], nulls["Next"]) == (absent["TotalCount"], absent["Next"]) == (3, 0)
