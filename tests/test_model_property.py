"""Random command sequences against a small pure-Python model of the spec (§2, §3).

The model is a dict of groups, each a dict of Key -> int. Every reply (ErrorCode and
GroupCounter) must equal the model's, and at the end the whole store must hold exactly
the model's counters. Keys come from a 25-key alphabet so the 20-key limit is hit;
values sit near 0, ±2**53 and ±2**63 so overflows happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import IMPLICIT_APP, Api, group_key

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_KEYS: Final = 20
KEYS: Final = [f"k{i:02d}" for i in range(25)]  # fixed width: no Key is a substring of another
GROUPS: Final = ["g1", "g2"]
COMMUNITY: Final = "@TGS#_community"  # implicit mode: the prefix makes it a Community group
MODES: Final = ["Set", "Increase", "Decrease", None]  # None: Mode absent, which means Set

Model = dict[str, dict[str, int]]


def _window(centre: int, width: int) -> st.SearchStrategy[int]:
    return st.integers(max(INT64_MIN, centre - width), min(INT64_MAX, centre + width))


VALUES: Final = st.one_of(
    _window(0, 5),
    _window(2**53, 3),
    _window(-(2**53), 3),
    _window(INT64_MAX, 5),
    _window(INT64_MIN, 5),
    _window(2**62, 2),
    st.sampled_from([INT64_MIN, INT64_MAX]),
)


@dataclass(frozen=True)
class Update:
    group: str
    mode: str | None
    items: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Get:
    group: str
    keys: tuple[str, ...] | None  # None: the field is absent; (): an empty list (both: all)


@dataclass(frozen=True)
class Delete:
    group: str
    keys: tuple[str, ...] | None


Op = Update | Get | Delete

GROUP_IDS: Final = st.sampled_from([*GROUPS, GROUPS[0], GROUPS[0], COMMUNITY])  # g1 most often
SOME_KEYS: Final = st.lists(st.sampled_from(KEYS), min_size=1, max_size=6, unique=True).map(tuple)
KEY_LISTS: Final = st.one_of(st.none(), st.just(()), SOME_KEYS, SOME_KEYS)  # None, () and [] mean all
OPS: Final = st.one_of(
    st.builds(
        Update,  # one of the Keys a prefill leaves out: likely a new one
        GROUP_IDS,
        st.sampled_from(MODES),
        st.tuples(st.tuples(st.sampled_from(KEYS[MAX_KEYS:]), VALUES)),
    ),
    st.builds(
        Update,
        GROUP_IDS,
        st.sampled_from(MODES),
        st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Update,  # distinct Keys, the common case, weighted up
        GROUP_IDS,
        st.sampled_from(MODES),
        st.lists(
            st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4, unique_by=lambda i: i[0]
        ).map(tuple),
    ),
    st.builds(Get, GROUP_IDS, KEY_LISTS),
    st.builds(Delete, GROUP_IDS, st.one_of(SOME_KEYS, SOME_KEYS, SOME_KEYS, KEY_LISTS)),  # rarely all
)


def _prefill(values: list[int]) -> list[Op]:
    """Set the first len(values) Keys of g1 in updates of 4, so the 20-key limit is near."""
    items = list(zip(KEYS, values, strict=False))
    return [Update(GROUPS[0], "Set", tuple(items[i : i + 4])) for i in range(0, len(items), 4)]


PREFILLS: Final = st.sampled_from([20, 19, 18, 12, 0]).flatmap(
    lambda size: st.lists(VALUES, min_size=size, max_size=size).map(_prefill)
)
SEQUENCES: Final = st.builds(
    lambda prefix, rest: prefix + rest, PREFILLS, st.lists(OPS, min_size=3, max_size=25)
)


@dataclass
class Expected:
    code: int
    counters: list[dict[str, Any]] | None = None  # the reply's GroupCounter, when it has one
    overflowing: tuple[str, ...] = ()  # on an overflow, the Keys ErrorInfo may name


def model_update(model: Model, op: Update) -> Expected:
    keys = [key for key, _ in op.items]
    if len(set(keys)) != len(keys):
        return Expected(10004)  # the same Key twice in one request; fields before the group
    if op.group == COMMUNITY:
        return Expected(10007)
    counters = model.setdefault(op.group, {})
    new: dict[str, int] = {}
    overflowing = []
    for key, value in op.items:
        if op.mode in ("Set", None):
            result = value
        elif op.mode == "Increase":
            result = counters.get(key, 0) + value
        else:
            result = counters.get(key, 0) - value
        if not INT64_MIN <= result <= INT64_MAX:
            overflowing.append(key)
        new[key] = result
    if overflowing:  # overflow is checked before the key count
        return Expected(10004, overflowing=tuple(overflowing))
    if len(counters.keys() | new.keys()) > MAX_KEYS:
        return Expected(10063)
    counters.update(new)
    return Expected(0, [{"Key": key, "Value": new[key]} for key in keys])


def model_get(model: Model, op: Get) -> Expected:
    if op.group == COMMUNITY:
        return Expected(10007)
    counters = model.get(op.group, {})
    if not op.keys:
        return Expected(0, [{"Key": k, "Value": v} for k, v in sorted(counters.items())])
    return Expected(0, [{"Key": k, "Value": counters[k]} for k in op.keys if k in counters])


def model_delete(model: Model, op: Delete) -> Expected:
    if op.group == COMMUNITY:
        return Expected(10007)
    counters = model.get(op.group, {})
    if not op.keys:
        counters.clear()
    for key in op.keys or ():
        counters.pop(key, None)
    return Expected(0)


def send(api: Api, op: Op) -> dict[str, Any]:
    body: dict[str, Any] = {"GroupId": op.group}
    match op:
        case Update():
            body["GroupCounter"] = [{"Key": key, "Value": value} for key, value in op.items]
            if op.mode is not None:
                body["Mode"] = op.mode
            return api.call("update_group_counter", body, sdkappid=IMPLICIT_APP)
        case Get():
            if op.keys is not None:
                body["GroupCounterKeys"] = list(op.keys)
            return api.call("get_group_counter", body, sdkappid=IMPLICIT_APP)
        case Delete():
            if op.keys is not None:
                body["GroupCounterKeys"] = list(op.keys)
            return api.call("delete_group_counter", body, sdkappid=IMPLICIT_APP)


def expect(model: Model, op: Op) -> Expected:
    match op:
        case Update():
            return model_update(model, op)
        case Get():
            return model_get(model, op)
        case Delete():
            return model_delete(model, op)


def service_counters(api: Api, group: str) -> dict[str, int]:
    return api.counters(group, sdkappid=IMPLICIT_APP)


def run_against_model(api: Api, ops: list[Op]) -> None:
    api.inspector.flushall()  # one store per example: the fixture outlives the examples
    model: Model = {}
    for step, op in enumerate(ops):
        reply = send(api, op)
        expected = expect(model, op)
        where = f"step {step}: {op}"
        assert reply["ErrorCode"] == expected.code, f"{where}: {reply}"
        if expected.counters is not None:
            assert reply["GroupCounter"] == expected.counters, where
        if expected.overflowing:
            assert any(key in reply["ErrorInfo"] for key in expected.overflowing), f"{where}: {reply}"
        if expected.code != 0 and op.group != COMMUNITY:  # a failed update changed nothing
            assert service_counters(api, op.group) == model.get(op.group, {}), where

    for group in GROUPS:
        assert service_counters(api, group) == model.get(group, {}), f"final state of {group}"
    # and underneath: one hash per non-empty group, each value its exact decimal string
    # (beside the group's version, field 0xFD, kept once the group has changed)
    stored = {key: api.inspector.hgetall(key) for key in api.inspector.keys("*")}
    for fields in stored.values():
        fields.pop(b"\xfd", None)
    stored = {key: fields for key, fields in stored.items() if fields}
    assert stored == {
        group_key(IMPLICIT_APP, group): {k.encode(): str(v).encode() for k, v in counters.items()}
        for group, counters in model.items()
        if counters
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=SEQUENCES)
def test_every_reply_and_the_final_state_match_the_spec_model(api: Api, ops: list[Op]) -> None:
    run_against_model(api, ops)


@pytest.mark.slow
@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=SEQUENCES)
def test_every_reply_and_the_final_state_match_the_spec_model_many_examples(api: Api, ops: list[Op]) -> None:
    run_against_model(api, ops)


def test_model_hits_the_key_limit_and_overflow_in_short_sequences() -> None:
    """The model itself: 10063 and 10004 are reachable, so the property test exercises them."""
    model: Model = {}
    for i in range(MAX_KEYS):
        assert model_update(model, Update("g1", "Set", ((KEYS[i], 1),))).code == 0
    assert model_update(model, Update("g1", "Increase", ((KEYS[20], 1),))).code == 10063
    assert model_update(model, Update("g1", "Set", ((KEYS[0], INT64_MAX),))).code == 0
    overflow = model_update(model, Update("g1", "Increase", ((KEYS[21], 1), (KEYS[0], 1))))
    assert (overflow.code, overflow.overflowing) == (10004, (KEYS[0],))  # overflow before key count
    assert model_update(model, Update("g1", "Decrease", ((KEYS[1], INT64_MIN),))).code == 10004
    assert model_update(model, Update("g1", "Decrease", ((KEYS[5], INT64_MIN), (KEYS[5], 1)))).code == 10004
    assert model["g1"][KEYS[1]] == 1
