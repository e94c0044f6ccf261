"""Spec §4 groups: IDs, create and destroy, registered and implicit apps, Community, check order."""

from __future__ import annotations

import re
from typing import Any, Final

import pytest

from tests.support import IMPLICIT_APP, OTHER_APP, REGISTERED_APP, Api, assert_ok, group_key

GROUP_TYPES: Final = ["Private", "Work", "Public", "ChatRoom", "Meeting", "AVChatRoom", "Community"]
NON_COMMUNITY_TYPES: Final = [t for t in GROUP_TYPES if t != "Community"]
COUNTER_COMMANDS: Final = ["update_group_counter", "get_group_counter", "delete_group_counter"]
ALL_COMMANDS: Final = [*COUNTER_COMMANDS, "create_group", "destroy_group"]
GENERATED: Final = re.compile(r"^@TGS#[A-Za-z0-9]{10}$")
GENERATED_COMMUNITY: Final = re.compile(r"^@TGS#_@TGS#[A-Za-z0-9]{10}$")
# 48 bytes of printable ASCII with spaces, braces and colons (which also appear in the Redis key).
ID_48: Final = "{1400000000:x} a:b {c} ~!\"#$%&'()*+,-./;<=>?@[\\]"
MALFORMED_IDS: Final = ["", "g" * 49, "a\x7fb", "a\tb", "a\nb", "\x00", "caf\u00e9", "\u4e2d\u6587", "\x1f"]
MALFORMED_ID_NAMES: Final = ["0-bytes", "49-bytes", "DEL", "tab", "newline", "NUL", "latin1", "cjk", "US"]


def request_for(command: str, group_id: Any, **fields: Any) -> dict[str, Any]:
    """A well-formed request of `command` on `group_id`, with `fields` overriding."""
    match command:
        case "update_group_counter":
            body: dict[str, Any] = {"Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]}
        case "get_group_counter" | "delete_group_counter":
            body = {"GroupCounterKeys": ["a"]}
        case "create_group":
            body = {"Type": "Public", "Name": "n"}
        case _:
            body = {}
    body["GroupId"] = group_id
    body.update(fields)
    return body


def assert_fails(
    api: Api, command: str, request: Any, code: int, *, sdkappid: int = REGISTERED_APP
) -> dict[str, Any]:
    return api.assert_fails(command, request, code, sdkappid=sdkappid)


@pytest.fixture
def seeded(api: Api) -> Api:
    """A registered group "seed" with a counter, so "nothing changed" is a real claim."""
    api.create("seed")
    assert_ok(api.update("seed", {"s": 1}))
    return api


# create_group -----------------------------------------------------------------------


def test_create_group_with_custom_group_id_returns_it(api: Api) -> None:
    reply = assert_ok(api.call("create_group", {"Type": "Public", "Name": "n", "GroupId": "my-group"}))
    assert reply["GroupId"] == "my-group"
    assert assert_ok(api.get("my-group"))["GroupCounter"] == []


@pytest.mark.parametrize("group_type", NON_COMMUNITY_TYPES)
def test_generated_group_id_is_tgs_and_10_alphanumerics(api: Api, group_type: str) -> None:
    reply = assert_ok(api.call("create_group", {"Type": group_type, "Name": "n"}))
    assert GENERATED.match(reply["GroupId"]), reply
    assert_ok(api.update(reply["GroupId"], {"a": 1}))
    assert api.counters(reply["GroupId"]) == {"a": 1}


def test_generated_community_group_id_is_tgs_underscore_tgs_and_10_alphanumerics(api: Api) -> None:
    reply = assert_ok(api.call("create_group", {"Type": "Community", "Name": "n"}))
    assert GENERATED_COMMUNITY.match(reply["GroupId"]), reply
    assert api.get(reply["GroupId"])["ErrorCode"] == 10007  # it exists, as a Community group


def test_generated_group_ids_differ(api: Api) -> None:
    ids = {assert_ok(api.call("create_group", {"Type": "Public", "Name": "n"}))["GroupId"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("group_type", GROUP_TYPES)
def test_every_group_type_is_accepted(api: Api, group_type: str) -> None:
    group_id = "@TGS#_t" if group_type == "Community" else "t"
    reply = assert_ok(api.call("create_group", {"Type": group_type, "Name": "n", "GroupId": group_id}))
    assert reply["GroupId"] == group_id
    assert api.inspector.exists(group_key(REGISTERED_APP, group_id)) == 1


@pytest.mark.parametrize("group_type", ["absent", "public", "PUBLIC", "Unknown", "", None, 1], ids=str)
def test_create_group_type_must_be_one_of_the_list(seeded: Api, group_type: Any) -> None:
    request: dict[str, Any] = {"Name": "n", "GroupId": "t"}
    if group_type != "absent":
        request["Type"] = group_type
    assert_fails(seeded, "create_group", request, 10004)


@pytest.mark.parametrize("name", ["absent", None, 5], ids=str)
def test_create_group_name_is_a_required_string(seeded: Api, name: Any) -> None:
    request: dict[str, Any] = {"Type": "Public", "GroupId": "t"}
    if name != "absent":
        request["Name"] = name
    assert_fails(seeded, "create_group", request, 10004)


@pytest.mark.parametrize("group_type", NON_COMMUNITY_TYPES)
@pytest.mark.parametrize("group_id", ["@TGS#abc", "@TGS#_abc", "@TGS#"])
def test_custom_group_id_must_not_start_with_tgs(seeded: Api, group_type: str, group_id: str) -> None:
    assert_fails(seeded, "create_group", {"Type": group_type, "Name": "n", "GroupId": group_id}, 10015)


@pytest.mark.parametrize("group_id", ["abc", "@TGS#abc", "_@TGS#abc", "@tgs#_abc"])
def test_community_custom_group_id_must_start_with_tgs_underscore(seeded: Api, group_id: str) -> None:
    assert_fails(seeded, "create_group", {"Type": "Community", "Name": "n", "GroupId": group_id}, 10015)


def test_community_custom_group_id_with_tgs_underscore_is_accepted(api: Api) -> None:
    request = {"Type": "Community", "Name": "n", "GroupId": "@TGS#_club"}
    assert assert_ok(api.call("create_group", request))["GroupId"] == "@TGS#_club"
    assert api.inspector.exists(group_key(REGISTERED_APP, "@TGS#_club")) == 1


@pytest.mark.parametrize("group_type", ["Public", "Private"])
def test_create_group_with_taken_group_id_fails(seeded: Api, group_type: str) -> None:
    assert_fails(seeded, "create_group", {"Type": group_type, "Name": "n", "GroupId": "seed"}, 10021)
    assert seeded.counters("seed") == {"s": 1}


# Group ID syntax --------------------------------------------------------------------


@pytest.mark.parametrize("command", ALL_COMMANDS)
@pytest.mark.parametrize("group_id", MALFORMED_IDS, ids=MALFORMED_ID_NAMES)
def test_malformed_group_id_fails_for_every_command(seeded: Api, command: str, group_id: str) -> None:
    assert_fails(seeded, command, request_for(command, group_id), 10015)


@pytest.mark.parametrize(
    ("command", "group_id"),
    [
        *((command, group_id) for command in ALL_COMMANDS for group_id in (5, ["g"])),
        # GroupId is optional only for create_group.
        *(
            (command, group_id)
            for command in [*COUNTER_COMMANDS, "destroy_group"]
            for group_id in ("absent", None)
        ),
    ],
    ids=str,
)
def test_group_id_must_be_a_string(seeded: Api, command: str, group_id: Any) -> None:
    request = request_for(command, group_id)
    if group_id == "absent":
        del request["GroupId"]
    assert_fails(seeded, command, request, 10004)


@pytest.mark.parametrize(
    "group_id", [ID_48, "x", " ", "~", "a b"], ids=["48-bytes", "x", "space", "tilde", "a-b"]
)
def test_group_id_of_printable_ascii_works_for_every_command(api: Api, group_id: str) -> None:
    assert len(group_id.encode()) <= 48
    assert len(ID_48.encode()) == 48
    assert assert_ok(api.call("create_group", request_for("create_group", group_id)))["GroupId"] == group_id
    assert_ok(api.update(group_id, {"a": 1, "b": 2}))
    assert api.counters(group_id) == {"a": 1, "b": 2}
    assert {b"a", b"b"} <= set(api.inspector.hkeys(group_key(REGISTERED_APP, group_id)))
    assert_ok(api.call("delete_group_counter", request_for("delete_group_counter", group_id)))
    assert api.counters(group_id) == {"b": 2}
    assert_ok(api.call("destroy_group", {"GroupId": group_id}))
    assert api.state() == {}


# Registered mode --------------------------------------------------------------------


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
def test_counter_commands_on_never_created_group_fail(seeded: Api, command: str) -> None:
    assert_fails(seeded, command, request_for(command, "never"), 10010)
    assert seeded.inspector.exists(group_key(REGISTERED_APP, "never")) == 0


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
def test_counter_commands_on_destroyed_group_fail(seeded: Api, command: str) -> None:
    seeded.create("g")
    assert_ok(seeded.update("g", {"a": 1}))
    assert_ok(seeded.call("destroy_group", {"GroupId": "g"}))
    assert_fails(seeded, command, request_for(command, "g"), 10010)


def test_destroy_removes_group_and_counters(seeded: Api) -> None:
    seeded.create("g")
    assert_ok(seeded.update("g", {"a": 1, "b": 2}))
    assert seeded.inspector.exists(group_key(REGISTERED_APP, "g")) == 1
    assert_ok(seeded.call("destroy_group", {"GroupId": "g"}))
    assert seeded.inspector.exists(group_key(REGISTERED_APP, "g")) == 0
    assert seeded.get("g")["ErrorCode"] == 10010
    assert seeded.counters("seed") == {"s": 1}


def test_destroy_of_unknown_group_fails(seeded: Api) -> None:
    assert_fails(seeded, "destroy_group", {"GroupId": "never"}, 10010)


def test_destroy_twice_fails_the_second_time(seeded: Api) -> None:
    assert_ok(seeded.call("destroy_group", {"GroupId": "seed"}))
    assert_fails(seeded, "destroy_group", {"GroupId": "seed"}, 10010)


def test_create_after_destroy_starts_empty(api: Api) -> None:
    api.create("g")
    assert_ok(api.update("g", {"a": 1, "b": 2}))
    assert_ok(api.call("destroy_group", {"GroupId": "g"}))
    api.create("g", "Private")
    assert assert_ok(api.get("g"))["GroupCounter"] == []
    assert_ok(api.update("g", {f"k{i}": i for i in range(20)}))


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
def test_community_group_has_no_counters(seeded: Api, command: str) -> None:
    seeded.create("@TGS#_club", "Community")
    assert_fails(seeded, command, request_for(command, "@TGS#_club"), 10007)


@pytest.mark.parametrize("command", ["get_group_counter", "delete_group_counter"])
def test_community_group_has_no_counters_when_no_keys_given(seeded: Api, command: str) -> None:
    seeded.create("@TGS#_club", "Community")
    assert_fails(seeded, command, {"GroupId": "@TGS#_club"}, 10007)


def test_community_group_can_be_destroyed(seeded: Api) -> None:
    seeded.create("@TGS#_club", "Community")
    assert_ok(seeded.call("destroy_group", {"GroupId": "@TGS#_club"}))
    assert seeded.inspector.exists(group_key(REGISTERED_APP, "@TGS#_club")) == 0
    assert seeded.call("destroy_group", {"GroupId": "@TGS#_club"})["ErrorCode"] == 10010


# Implicit mode ----------------------------------------------------------------------


def test_implicit_counters_work_without_create_group(api: Api) -> None:
    reply = assert_ok(api.update("g", {"a": 3}, "Increase", sdkappid=IMPLICIT_APP))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert api.counters("g", sdkappid=IMPLICIT_APP) == {"a": 3}
    assert api.counters("other", sdkappid=IMPLICIT_APP) == {}
    request = request_for("delete_group_counter", "g")
    assert_ok(api.call("delete_group_counter", request, sdkappid=IMPLICIT_APP))
    assert api.counters("g", sdkappid=IMPLICIT_APP) == {}


def test_implicit_group_id_starting_with_tgs_has_counters(api: Api) -> None:
    assert_ok(api.update("@TGS#abc", {"a": 1}, sdkappid=IMPLICIT_APP))
    assert api.counters("@TGS#abc", sdkappid=IMPLICIT_APP) == {"a": 1}


def test_implicit_destroy_deletes_counters(api: Api) -> None:
    assert_ok(api.update("g", {"a": 1, "b": 2}, sdkappid=IMPLICIT_APP))
    assert_ok(api.update("h", {"a": 9}, sdkappid=IMPLICIT_APP))
    assert_ok(api.call("destroy_group", {"GroupId": "g"}, sdkappid=IMPLICIT_APP))
    assert api.inspector.exists(group_key(IMPLICIT_APP, "g")) == 0
    assert api.counters("g", sdkappid=IMPLICIT_APP) == {}
    assert api.counters("h", sdkappid=IMPLICIT_APP) == {"a": 9}


def test_implicit_destroy_of_group_without_counters_succeeds(api: Api) -> None:
    assert_ok(api.call("destroy_group", {"GroupId": "empty"}, sdkappid=IMPLICIT_APP))
    assert api.state() == {}


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
@pytest.mark.parametrize("group_id", ["@TGS#_club", "@TGS#_@TGS#abcdefghij"])
def test_implicit_community_group_id_has_no_counters(api: Api, command: str, group_id: str) -> None:
    assert_ok(api.update("g", {"a": 1}, sdkappid=IMPLICIT_APP))
    assert_fails(api, command, request_for(command, group_id), 10007, sdkappid=IMPLICIT_APP)


# Apps and storage -------------------------------------------------------------------


def test_same_group_id_in_two_apps_is_two_groups(api: Api) -> None:
    api.create("g")
    assert api.get("g", sdkappid=OTHER_APP)["ErrorCode"] == 10010
    api.create("g", sdkappid=OTHER_APP)
    assert_ok(api.update("g", {"a": 1}))
    assert_ok(api.update("g", {"a": 2, "b": 3}, sdkappid=OTHER_APP))
    assert api.counters("g") == {"a": 1}
    assert api.counters("g", sdkappid=OTHER_APP) == {"a": 2, "b": 3}
    assert_ok(api.call("destroy_group", {"GroupId": "g"}, sdkappid=OTHER_APP))
    assert api.counters("g") == {"a": 1}


def test_group_is_one_hash_named_by_app_and_group_id(api: Api) -> None:
    api.create("g")
    assert_ok(api.update("g", {"a": 5, "\u00e9": -7}))
    assert_ok(api.update("h", {"x": 1}, sdkappid=IMPLICIT_APP))
    key = group_key(REGISTERED_APP, "g")
    assert key == b"{1400000000:g}"
    assert set(api.inspector.keys("*")) == {key, group_key(IMPLICIT_APP, "h")}
    assert api.inspector.type(key) == b"hash"
    assert int(api.inspector.hget(key, "a") or b"") == 5
    assert int(api.inspector.hget(key, "\u00e9".encode()) or b"") == -7
    fields: dict[bytes, bytes] = api.inspector.hgetall(group_key(IMPLICIT_APP, "h"))  # type: ignore[assignment]
    # Beside the counter, the group's version (0xFD, never a Key): its first change.
    assert fields.pop(b"\xfd").startswith(b"1 ")
    assert fields == {b"x": b"1"}


# Check order: fields (10004, 10015, 10063) before the group (10010, 10007) ----------


@pytest.mark.parametrize(
    "bad_field",
    [
        {"GroupCounter": [{"Key": "a", "Value": 1.5}]},
        {"GroupCounter": [{"Key": "a", "Value": "1"}]},
        {"GroupCounter": [{"Key": "", "Value": 1}]},
        {"GroupCounter": [{"Key": "a", "Value": 1}, {"Key": "a", "Value": 2}]},
        {"Mode": "increase"},
    ],
    ids=["float", "string", "empty-key", "duplicate-key", "mode"],
)
@pytest.mark.parametrize("group_id", ["", "caf\u00e9", "g" * 49], ids=["empty", "non-ascii", "49-bytes"])
def test_bad_field_is_reported_before_malformed_group_id(
    seeded: Api, bad_field: dict[str, Any], group_id: str
) -> None:
    request = request_for("update_group_counter", group_id, **bad_field)
    assert_fails(seeded, "update_group_counter", request, 10004)


def too_many_items(command: str, group_id: str) -> dict[str, Any]:
    """A counter command on `group_id` naming 21 keys: one more than a call may."""
    keys = [f"k{i}" for i in range(21)]
    if command == "update_group_counter":
        return request_for(command, group_id, GroupCounter=[{"Key": k, "Value": 1} for k in keys])
    return request_for(command, group_id, GroupCounterKeys=keys)


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
def test_malformed_group_id_is_reported_before_too_many_items(seeded: Api, command: str) -> None:
    request = too_many_items(command, "caf\u00e9")
    assert_fails(seeded, command, request, 10015)


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
def test_bad_field_is_reported_before_unknown_group(seeded: Api, command: str) -> None:
    if command == "update_group_counter":
        request = request_for(command, "never", GroupCounter=[{"Key": "a", "Value": True}])
    else:
        request = request_for(command, "never", GroupCounterKeys=["a", "a"])
    assert_fails(seeded, command, request, 10004)


@pytest.mark.parametrize("command", COUNTER_COMMANDS)
def test_too_many_items_is_reported_before_unknown_group(seeded: Api, command: str) -> None:
    request = too_many_items(command, "never")
    assert_fails(seeded, command, request, 10063)


def test_bad_field_is_reported_before_community_group(seeded: Api) -> None:
    seeded.create("@TGS#_club", "Community")
    request = request_for("update_group_counter", "@TGS#_club", Mode="INCREASE")
    assert_fails(seeded, "update_group_counter", request, 10004)


def test_bad_field_is_reported_before_taken_group_id(seeded: Api) -> None:
    assert_fails(seeded, "create_group", {"Type": "Public", "Name": "", "GroupId": "seed"}, 10004)
