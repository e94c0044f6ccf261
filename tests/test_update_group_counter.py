"""Spec §2 update_group_counter and §3 counter semantics: modes, int64, key count, Key and Value rules."""

from __future__ import annotations

from typing import Any, Final

import pytest

from tests.support import Api, assert_ok

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
GROUP: Final = "g"
COMMAND: Final = "update_group_counter"


def body(items: list[dict[str, Any]], mode: str | None = "Set", group_id: str = GROUP) -> dict[str, Any]:
    request: dict[str, Any] = {"GroupId": group_id, "GroupCounter": items}
    if mode is not None:
        request["Mode"] = mode
    return request


def items(counters: dict[str, int]) -> list[dict[str, Any]]:
    return [{"Key": key, "Value": value} for key, value in counters.items()]


def assert_fails(api: Api, request: Any, code: int, *, raw: bytes | None = None) -> dict[str, Any]:
    return api.assert_fails(COMMAND, request, code, raw=raw)


@pytest.fixture
def group(api: Api) -> Api:
    """A registered group "g" holding one counter, so a failed call has a store to leave alone."""
    api.create(GROUP)
    assert_ok(api.update(GROUP, {"seed": 1}))
    return api


def full_group(api: Api, count: int) -> dict[str, int]:
    counters = {f"k{i:02}": i for i in range(count)}
    assert_ok(api.update(GROUP, counters))
    return counters


# Modes ------------------------------------------------------------------------------


def test_set_replaces_the_value(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": 5}))
    reply = assert_ok(group.update(GROUP, {"a": 3}, "Set"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert group.counters(GROUP) == {"seed": 1, "a": 3}


def test_increase_adds_value(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": 5}))
    reply = assert_ok(group.update(GROUP, {"a": 3}, "Increase"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 8}]
    assert group.counters(GROUP)["a"] == 8


def test_decrease_subtracts_value(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": 5}))
    reply = assert_ok(group.update(GROUP, {"a": 3}, "Decrease"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 2}]
    assert group.counters(GROUP)["a"] == 2


@pytest.mark.parametrize(("mode", "expected"), [("Increase", 7), ("Decrease", -7)])
def test_missing_key_is_created_at_zero(group: Api, mode: str, expected: int) -> None:
    reply = assert_ok(group.update(GROUP, {"new": 7}, mode))
    assert reply["GroupCounter"] == [{"Key": "new", "Value": expected}]
    assert group.counters(GROUP) == {"seed": 1, "new": expected}


@pytest.mark.parametrize(("mode", "expected"), [("Set", -4), ("Increase", 6), ("Decrease", 14)])
def test_negative_value_is_allowed_in_every_mode(group: Api, mode: str, expected: int) -> None:
    assert_ok(group.update(GROUP, {"a": 10}))
    reply = assert_ok(group.update(GROUP, {"a": -4}, mode))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": expected}]
    assert group.counters(GROUP)["a"] == expected


@pytest.mark.parametrize("mode_field", ["absent", "null"])
def test_mode_defaults_to_set(group: Api, mode_field: str) -> None:
    assert_ok(group.update(GROUP, {"a": 10}))
    request = body(items({"a": 3}), mode=None)
    if mode_field == "null":
        request["Mode"] = None
    reply = assert_ok(group.call(COMMAND, request))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 3}]
    assert group.counters(GROUP)["a"] == 3


@pytest.mark.parametrize(
    "mode", ["set", "INCREASE", "increase", "decrease", "Add", "", " Set", "Set ", 1, True]
)
def test_mode_must_be_spelled_exactly(group: Api, mode: Any) -> None:
    request = body(items({"seed": 5}))
    request["Mode"] = mode
    assert_fails(group, request, 10004)


def test_reply_has_one_value_after_update_per_item_in_request_order(group: Api) -> None:
    assert_ok(group.update(GROUP, {"b": 1, "a": 10}))
    reply = assert_ok(group.update(GROUP, {"c": 5, "a": 2, "b": 3}, "Increase"))
    assert reply["GroupCounter"] == [
        {"Key": "c", "Value": 5},
        {"Key": "a", "Value": 12},
        {"Key": "b", "Value": 4},
    ]


# Exact int64 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [2**53 + 1, -(2**53 + 1), 2**62 + 1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, 0],
)
def test_set_is_exact_over_int64(group: Api, value: int) -> None:
    reply = assert_ok(group.update(GROUP, {"a": value}))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": value}]
    assert group.counters(GROUP)["a"] == value


def test_set_int64_max(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": INT64_MAX}))
    assert group.get(GROUP, ["a"])["GroupCounter"] == [{"Key": "a", "Value": INT64_MAX}]


def test_set_int64_min(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": INT64_MIN}))
    assert group.get(GROUP, ["a"])["GroupCounter"] == [{"Key": "a", "Value": INT64_MIN}]


def test_increase_crossing_2_pow_53_is_exact(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": 2**53 - 1}))
    reply = assert_ok(group.update(GROUP, {"a": 2}, "Increase"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 2**53 + 1}]
    assert_ok(group.update(GROUP, {"a": 2}, "Increase"))
    assert group.counters(GROUP)["a"] == 2**53 + 3


@pytest.mark.parametrize(
    ("start", "mode", "value", "expected"),
    [
        (999_999_999, "Increase", 1, 1_000_000_000),
        (1_000_000_000, "Decrease", 1, 999_999_999),
        (-1_000_000_000, "Increase", 1, -999_999_999),
        (1, "Increase", -1_000_000_001, -1_000_000_000),
        (-(2**53 - 1), "Decrease", 2, -(2**53 + 1)),
        (2**62, "Increase", 2**62 - 1, INT64_MAX),
        (INT64_MIN, "Increase", INT64_MAX, -1),
        (INT64_MAX, "Decrease", INT64_MAX, 0),
        (INT64_MAX, "Increase", INT64_MIN, -1),
        (5, "Decrease", 123_456_789_012, -123_456_789_007),
        (-123_456_789_012_345_678, "Increase", 123_456_789_012_345_679, 1),
        (9_007_199_254_740_993, "Increase", 9_007_199_254_740_993, 18_014_398_509_481_986),
        (4_611_686_018_427_387_903, "Decrease", -4_611_686_018_427_387_904, INT64_MAX),
        (-4_611_686_018_427_387_904, "Decrease", 4_611_686_018_427_387_904, INT64_MIN),
    ],
)
def test_increase_and_decrease_are_exact_over_int64(
    group: Api, start: int, mode: str, value: int, expected: int
) -> None:
    assert_ok(group.update(GROUP, {"a": start}))
    reply = assert_ok(group.update(GROUP, {"a": value}, mode))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": expected}]
    assert group.counters(GROUP)["a"] == expected


def test_increase_to_exactly_int64_max_succeeds(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": INT64_MAX - 5}))
    reply = assert_ok(group.update(GROUP, {"a": 5}, "Increase"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": INT64_MAX}]


def test_increase_past_int64_max_overflows(group: Api) -> None:
    assert_ok(group.update(GROUP, {"big": INT64_MAX}))
    reply = assert_fails(group, body(items({"big": 1}), "Increase"), 10004)
    assert "big" in reply["ErrorInfo"]


def test_decrease_past_int64_min_overflows(group: Api) -> None:
    assert_ok(group.update(GROUP, {"small": INT64_MIN}))
    reply = assert_fails(group, body(items({"small": 1}), "Decrease"), 10004)
    assert "small" in reply["ErrorInfo"]


@pytest.mark.parametrize(
    ("start", "mode", "value"),
    [
        (4_611_686_018_427_387_904, "Decrease", -4_611_686_018_427_387_904),
        (-4_611_686_018_427_387_905, "Increase", -4_611_686_018_427_387_904),
        (1, "Increase", INT64_MAX),
        (-2, "Decrease", INT64_MAX),
        (INT64_MAX, "Decrease", -1),
        (INT64_MIN, "Increase", -1),
        (INT64_MIN, "Increase", INT64_MIN),
        (INT64_MAX, "Increase", INT64_MAX),
    ],
)
def test_any_result_outside_int64_overflows(group: Api, start: int, mode: str, value: int) -> None:
    assert_ok(group.update(GROUP, {"edge": start}))
    reply = assert_fails(group, body(items({"edge": value}), mode), 10004)
    assert "edge" in reply["ErrorInfo"]


@pytest.mark.parametrize("existing", [True, False], ids=["zero", "missing"])
def test_decrease_by_int64_min_from_zero_overflows(group: Api, existing: bool) -> None:
    if existing:
        assert_ok(group.update(GROUP, {"zero": 0}))
    reply = assert_fails(group, body(items({"zero": INT64_MIN}), "Decrease"), 10004)
    assert "zero" in reply["ErrorInfo"]


@pytest.mark.parametrize(("start", "expected"), [(-1, INT64_MAX), (-5, INT64_MAX - 4), (INT64_MIN, 0)])
def test_decrease_by_int64_min_from_negative_value(group: Api, start: int, expected: int) -> None:
    assert_ok(group.update(GROUP, {"a": start}))
    reply = assert_ok(group.update(GROUP, {"a": INT64_MIN}, "Decrease"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": expected}]
    assert group.counters(GROUP)["a"] == expected


@pytest.mark.parametrize("existing", [True, False], ids=["zero", "missing"])
def test_increase_by_int64_min_from_zero_gives_int64_min(group: Api, existing: bool) -> None:
    if existing:
        assert_ok(group.update(GROUP, {"a": 0}))
    reply = assert_ok(group.update(GROUP, {"a": INT64_MIN}, "Increase"))
    assert reply["GroupCounter"] == [{"Key": "a", "Value": INT64_MIN}]
    assert group.counters(GROUP)["a"] == INT64_MIN


def test_overflow_on_second_of_three_keys_changes_nothing(group: Api) -> None:
    assert_ok(group.update(GROUP, {"a": 1, "b": INT64_MAX}))
    reply = assert_fails(group, body(items({"a": 1, "b": 1, "c": 1}), "Increase"), 10004)
    assert "b" in reply["ErrorInfo"]
    assert group.counters(GROUP) == {"seed": 1, "a": 1, "b": INT64_MAX}


# At most 20 keys --------------------------------------------------------------------


def test_update_leaving_more_than_20_keys_fails(group: Api) -> None:
    full_group(group, 18)  # with "seed": 19 keys
    assert_fails(group, body(items({"new1": 1, "new2": 2})), 10063)


def test_update_leaving_exactly_20_keys_succeeds(group: Api) -> None:
    full_group(group, 18)
    assert_ok(group.update(GROUP, {"new1": 1}, "Increase"))
    assert len(group.counters(GROUP)) == 20


@pytest.mark.parametrize("mode", ["Set", "Increase", "Decrease"])
def test_update_of_existing_keys_in_a_full_group_succeeds(group: Api, mode: str) -> None:
    counters = full_group(group, 19)
    every_key = {"seed": 1, **counters}
    reply = assert_ok(group.update(GROUP, dict.fromkeys(every_key, 100), mode))
    assert len(reply["GroupCounter"]) == 20
    assert set(group.counters(GROUP)) == set(every_key)


def test_request_with_more_than_20_items_fails(group: Api) -> None:
    assert_fails(group, body(items({f"k{i}": i for i in range(21)})), 10063)


def test_overflow_is_reported_before_too_many_keys(group: Api) -> None:
    full_group(group, 17)
    assert_ok(group.update(GROUP, {"big": INT64_MAX}))  # 19 keys
    reply = assert_fails(group, body(items({"new1": 1, "big": 1, "new2": 1}), "Increase"), 10004)
    assert "big" in reply["ErrorInfo"]


# Key rules --------------------------------------------------------------------------


def test_empty_key_is_invalid(group: Api) -> None:
    assert_fails(group, body(items({"": 1})), 10004)


@pytest.mark.parametrize(
    "key",
    ["k" * 129, "\u20ac" * 43, "\u00e9" * 64 + "a", "\U0001f600" * 32 + "a"],
    ids=["ascii", "3-byte", "2-byte", "4-byte"],
)
def test_key_over_128_bytes_is_invalid(group: Api, key: str) -> None:
    assert len(key.encode()) == 129
    assert_fails(group, body(items({key: 1})), 10004)


@pytest.mark.parametrize(
    "key",
    ["k" * 128, "\u00e9" * 64, "\u20ac" * 42 + "ab", "\U0001f600" * 32, "\u4e2d" * 42 + "ab"],
    ids=["ascii", "2-byte", "3-byte", "4-byte", "cjk"],
)
def test_key_of_128_bytes_is_valid(group: Api, key: str) -> None:
    assert len(key.encode()) == 128
    reply = assert_ok(group.update(GROUP, {key: 7}, "Increase"))
    assert reply["GroupCounter"] == [{"Key": key, "Value": 7}]
    assert group.counters(GROUP)[key] == 7


@pytest.mark.parametrize("key", [5, None, ["a"]], ids=["number", "null", "list"])
def test_key_must_be_a_string(group: Api, key: Any) -> None:
    assert_fails(group, body([{"Key": key, "Value": 1}]), 10004)


@pytest.mark.parametrize("mode", ["Set", "Increase", "Decrease"])
def test_duplicate_key_in_one_request_is_invalid(group: Api, mode: str) -> None:
    request = body([{"Key": "a", "Value": 1}, {"Key": "b", "Value": 2}, {"Key": "a", "Value": 3}], mode)
    assert_fails(group, request, 10004)


# Value rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "1.0",
        "1e3",
        "1E3",
        "1.5",
        "-0.0",
        '"1"',
        "true",
        "false",
        "null",
        "[1]",
        '{"n": 1}',
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
    ],
)
def test_value_must_be_an_int64_json_integer(group: Api, value: str) -> None:
    raw = (
        b'{"GroupId": "g", "Mode": "Set", "GroupCounter": [{"Key": "seed", "Value": '
        + value.encode()
        + b"}]}"
    )
    assert_fails(group, None, 10004, raw=raw)


def test_missing_value_is_invalid(group: Api) -> None:
    assert_fails(group, body([{"Key": "seed"}]), 10004)


@pytest.mark.parametrize(
    "group_counter",
    ["absent", [], None, {"Key": "a", "Value": 1}, "a", 1, [1], [["a", 1]]],
    ids=["absent", "empty", "null", "object", "string", "number", "list-of-number", "list-of-list"],
)
def test_group_counter_must_be_a_non_empty_list_of_items(group: Api, group_counter: Any) -> None:
    request: dict[str, Any] = {"GroupId": GROUP, "Mode": "Set"}
    if group_counter != "absent":
        request["GroupCounter"] = group_counter
    assert_fails(group, request, 10004)
