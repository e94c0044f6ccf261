"""docs/API.md §2, get_appid_group_list: every group once across pages, Next, TotalCount,
GroupType, implicit mode, the once-a-second limit and the check order of its fields."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from service.config import Settings, parse_config
from service.storage import keys
from service.storage.keys import group_id_from_key, group_key, idempotency_key
from tests.support import CONFIG, IMPLICIT_APP, OTHER_APP, Api, assert_ok

LIST = "get_appid_group_list"
# GroupIds holding every escaped character, and one that looks like an escape already.
ODD_IDS = ["50%", "{x}", "a}b{c", "%7B", "a:b", " sp ace "]


@pytest.fixture
def settings() -> Settings:
    # Paging tests call the command many times a second: the registered and implicit
    # apps have no once-a-second limit here; OTHER_APP keeps the default (1).
    unlimited = CONFIG.replace('groups = "registered"', 'groups = "registered"\nlist_rate_limit = 0', 1)
    unlimited = unlimited.replace('groups = "implicit"', 'groups = "implicit"\nlist_rate_limit = 0', 1)
    return parse_config(unlimited, environ={})


def list_pages(api: Api, body: dict[str, Any], sdkappid: int = 1400000000) -> list[tuple[int, list[str]]]:
    """Every page from Next 0 until a reply's Next is 0: the Next it was asked from, its GroupIds."""
    pages: list[tuple[int, list[str]]] = []
    next_value = 0
    for _ in range(1000):
        reply = assert_ok(api.call(LIST, {**body, "Next": next_value}, sdkappid=sdkappid))
        pages.append((next_value, [item["GroupId"] for item in reply["GroupIdList"]]))
        next_value = reply["Next"]
        if next_value == 0:
            return pages
    raise AssertionError("the listing never ended")


def list_all(api: Api, body: dict[str, Any], sdkappid: int = 1400000000) -> tuple[list[str], list[int]]:
    """Every page's GroupIds, in order, and each page's size."""
    pages = list_pages(api, body, sdkappid)
    return [group_id for _, page in pages for group_id in page], [len(page) for _, page in pages]


def first_bucket_of_groups(api: Api, next_value: int, sdkappid: int = 1400000000) -> set[str]:
    """The app's GroupIds in the first SCAN step of COUNT 1 that holds any, from where
    `next_value` points: the one batch a page may not split (service/api/listing.py)."""
    master, cursor = next_value & ((1 << 10) - 1), next_value >> 10
    pattern = keys.group_pattern(sdkappid)
    inspector: Any = api.inspector
    node = None
    if not isinstance(inspector, redis.Redis):  # a Cluster: its masters by name, as the service numbers them
        node = sorted(inspector.get_primaries(), key=lambda primary: primary.name)[master]
    while True:
        if node is None:
            cursor, found = inspector.scan(cursor, match=pattern, count=1)
        else:
            reply = inspector.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1, target_nodes=node)
            cursor, found = next(iter(reply.values())) if isinstance(reply, dict) else reply
        ids = {group_id_from_key(sdkappid, key.decode()) for key in found} - {None}
        if ids or int(cursor) == 0:
            return {group_id for group_id in ids if group_id is not None}
        cursor = int(cursor)


def wait_for_redis_to_finish_rehashing(inspector: Any, seconds: float = 5.0) -> None:
    """Until no node's key table is being rehashed (DEBUG HTSTATS); fakeredis has none."""
    if isinstance(inspector, fakeredis.FakeRedis):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if isinstance(inspector, redis.Redis):
            stats = [inspector.execute_command("DEBUG", "HTSTATS", 0)]  # type: ignore[no-untyped-call]
        else:
            stats = list(
                inspector.execute_command("DEBUG", "HTSTATS", 0, target_nodes=inspector.PRIMARIES).values()
            )
        if not any(b"rehashing" in (s if isinstance(s, bytes) else str(s).encode()) for s in stats):
            return
        time.sleep(0.02)
    raise AssertionError("redis kept rehashing its key table")


def test_pages_list_every_group_once_and_end_with_next_0(api: Api) -> None:
    groups = [f"g{i:02d}" for i in range(23)] + ODD_IDS
    for group_id in groups:
        api.create(group_id)
    api.update("g00", {"a": 1})
    api.create("elsewhere", sdkappid=OTHER_APP)  # another app's group is not this app's
    # While Redis grows its key table, SCAN's smallest step reads a bucket of both tables,
    # which may hold more than Limit groups (the documented exception): wait it out.
    wait_for_redis_to_finish_rehashing(api.inspector)

    pages = list_pages(api, {"Limit": 4})
    assert sorted(group_id for _, page in pages for group_id in page) == sorted(groups)
    for next_value, page in pages:
        # At most Limit, but where one hash bucket holds more of the app's groups: a SCAN
        # batch cannot be split, and the page is then that bucket, whole.
        assert len(page) <= 4 or set(page) == first_bucket_of_groups(api, next_value), page


def test_total_count_is_every_group_of_the_app_whatever_limit_and_next_say(api: Api) -> None:
    for i in range(7):
        api.create(f"t{i}", "Private" if i % 2 else "Public")
    first = assert_ok(api.call(LIST, {"Limit": 2, "GroupType": "Public"}))
    later = assert_ok(api.call(LIST, {"Limit": 2, "Next": first["Next"]}))
    assert first["TotalCount"] == later["TotalCount"] == 7


def test_without_limit_one_page_holds_up_to_10000_groups(api: Api) -> None:
    for i in range(5):
        api.create(f"p{i}")
    reply = assert_ok(api.call(LIST, {}))
    assert sorted(item["GroupId"] for item in reply["GroupIdList"]) == [f"p{i}" for i in range(5)]
    assert reply["Next"] == 0


def test_group_type_lists_only_groups_of_that_type(api: Api) -> None:
    api.create("pub1", "Public")
    api.create("pub2", "Public")
    api.create("chat", "ChatRoom")
    api.create("@TGS#_community", "Community")
    ids, _ = list_all(api, {"Limit": 1, "GroupType": "Public"})
    assert sorted(ids) == ["pub1", "pub2"]
    assert list_all(api, {"GroupType": "Community"})[0] == ["@TGS#_community"]
    assert list_all(api, {"GroupType": "Work"})[0] == []


def test_implicit_mode_lists_groups_whose_hash_exists(api: Api) -> None:
    api.update("counted", {"a": 1}, sdkappid=IMPLICIT_APP)
    api.call(
        "create_group", {"Type": "Public", "Name": "n", "GroupId": "never-counted"}, sdkappid=IMPLICIT_APP
    )
    api.update("emptied", {"a": 1}, sdkappid=IMPLICIT_APP)
    api.call("delete_group_counter", {"GroupId": "emptied"}, sdkappid=IMPLICIT_APP)
    api.update("destroyed", {"a": 1}, sdkappid=IMPLICIT_APP)
    api.call("destroy_group", {"GroupId": "destroyed"}, sdkappid=IMPLICIT_APP)
    # An emptied group keeps its hash (its version, for watchers) until destroyed.
    assert sorted(list_all(api, {}, sdkappid=IMPLICIT_APP)[0]) == ["counted", "emptied"]
    # No type is stored in implicit mode: only Community is known (by its prefix).
    assert list_all(api, {"GroupType": "Public"}, sdkappid=IMPLICIT_APP)[0] == []


def test_idempotency_records_are_not_groups(api: Api) -> None:
    api.create("v")
    # A record whose key ends with `}` matches the app's SCAN pattern too.
    api.inspector.set(idempotency_key(group_key(1400000000, "v"), "r}"), "x")
    assert list_all(api, {})[0] == ["v"]


@pytest.mark.parametrize(
    "body",
    [
        {"Limit": 0},
        {"Limit": 10_001},
        {"Limit": "10"},
        {"Limit": 1.5},
        {"Next": -1},
        {"Next": "0"},
        {"Next": 2**63},
        {"GroupType": "Nope"},
        {"GroupType": 1},
    ],
)
def test_bad_fields_answer_10004_and_change_nothing(api: Api, body: dict[str, Any]) -> None:
    api.create("g")
    api.assert_fails(LIST, body, 10004)


def test_a_next_naming_no_master_answers_10004(api: Api) -> None:
    api.create("g")
    reply = api.assert_fails(LIST, {"Next": 1023}, 10004)
    assert "Next" in reply["ErrorInfo"]


def test_a_body_that_is_not_json_answers_60003(api: Api) -> None:
    api.assert_fails(LIST, None, 60003, raw=b"[1]")


def test_the_command_is_allowed_once_a_second_per_app(api: Api) -> None:
    time.sleep(1.0 - time.time() % 1.0 + 0.01)  # a fresh one-second window
    assert api.call(LIST, {}, sdkappid=OTHER_APP)["ErrorCode"] == 0
    refused = api.call(LIST, {}, sdkappid=OTHER_APP)
    assert refused["ErrorCode"] == 60007
    assert "once" in refused["ErrorInfo"] or "a second" in refused["ErrorInfo"]
    assert api.call(LIST, {})["ErrorCode"] == 0  # another app has its own window


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=48))
def test_a_group_id_is_recovered_from_its_key(group_id: str) -> None:
    assert group_id_from_key(1400000000, group_key(1400000000, group_id)) == group_id
    assert group_id_from_key(140000000, group_key(1400000000, group_id)) is None
    assert group_id_from_key(1400000000, idempotency_key(group_key(1400000000, group_id), "k}")) is None
