"""Spec §6: every client-triggerable error gets its code and changes nothing; bad input never crashes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.store import open_store
from tests.support import (
    ADMIN,
    IMPLICIT_APP,
    INCREASE_A,
    OTHER_APP,
    REGISTERED_APP,
    UPDATE,
    Api,
    free_port,
    post_query,
    usersig_for,
)

COMMUNITY = "@TGS#_community"


@pytest.fixture
def seeded(api: Api) -> Api:
    """A registered app with a Public group "g" holding counters, and a Community group."""
    api.create("g")
    assert api.update("g", {"a": 10, "b": 20})["ErrorCode"] == 0
    api.create(COMMUNITY, "Community")
    assert api.update("g", {"x": 1}, sdkappid=IMPLICIT_APP)["ErrorCode"] == 0
    return api


def post_params(api: Api, params: dict[str, str]) -> dict[str, Any]:
    return post_query(api, urlencode(params))


def _params(**changes: str) -> dict[str, str]:
    params = {
        "sdkappid": str(REGISTERED_APP),
        "identifier": ADMIN,
        "usersig": usersig_for(),
        "random": "1",
        "contenttype": "json",
    }
    params.update(changes)
    return params


def _unknown_path(api: Api) -> dict[str, Any]:
    response = api.post("update_group_counter", INCREASE_A, path="/v4/group_open_http_svc/nope")
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def _missing_sdkappid(api: Api) -> dict[str, Any]:
    params = _params()
    del params["sdkappid"]
    return post_params(api, params)


def _update(body: dict[str, Any], **overrides: Any) -> Callable[[Api], dict[str, Any]]:
    def call(api: Api) -> dict[str, Any]:
        return api.call("update_group_counter", body, **overrides)

    return call


def _old() -> int:
    return int(time.time()) - 100


ERROR_TABLE: list[tuple[int, str, Callable[[Api], dict[str, Any]]]] = [
    (10004, "bad Value", _update({**INCREASE_A, "GroupCounter": [{"Key": "a", "Value": "1"}]})),
    (10004, "overflow", _update({**INCREASE_A, "GroupCounter": [{"Key": "a", "Value": 2**63 - 1}]})),
    (10004, "missing GroupCounter", _update({"GroupId": "g"})),
    (10007, "Community group", _update({**INCREASE_A, "GroupId": COMMUNITY})),
    (10007, "implicit Community", _update({**INCREASE_A, "GroupId": "@TGS#_x"}, sdkappid=IMPLICIT_APP)),
    (10010, "no such group", _update({**INCREASE_A, "GroupId": "missing"})),
    (10015, "GroupId too long", _update({**INCREASE_A, "GroupId": "x" * 49})),
    (
        10021,
        "GroupId taken",
        lambda api: api.call("create_group", {"Type": "Public", "Name": "n", "GroupId": "g"}),
    ),
    (
        10063,
        "21 items",
        _update({"GroupId": "g", "GroupCounter": [{"Key": f"k{n}", "Value": 1} for n in range(21)]}),
    ),
    (
        10063,
        "21 keys after the update",
        # "g" holds a and b: 19 new keys would leave 21.
        _update({"GroupId": "g", "GroupCounter": [{"Key": f"k{n}", "Value": 1} for n in range(19)]}),
    ),
    (60002, "random missing", _update(INCREASE_A, random=None)),
    (60003, "not JSON", lambda api: api.call("update_group_counter", raw=b"{not json")),
    (60003, "not an object", lambda api: api.call("update_group_counter", raw=b"[1, 2]")),
    (60006, "unknown sdkappid", lambda api: post_params(api, _params(sdkappid="1400000099"))),
    (60009, "unknown command", _unknown_path),
    (60010, "not an admin", _update(INCREASE_A, identifier="someone")),
    (60012, "sdkappid missing", _missing_sdkappid),
    (70001, "usersig expired", _update(INCREASE_A, usersig=usersig_for(now=_old(), expire=10))),
    (70002, "usersig empty", _update(INCREASE_A, usersig="")),
    (70003, "usersig undecodable", _update(INCREASE_A, usersig="garbage")),
    (70009, "usersig forged", _update(INCREASE_A, usersig=usersig_for(secret_key="not-the-key"))),
    (70013, "usersig other identifier", _update(INCREASE_A, usersig=usersig_for(identifier="ops"))),
    (70014, "usersig other sdkappid", _update(INCREASE_A, usersig=usersig_for(OTHER_APP))),
]


@pytest.mark.parametrize(
    ("code", "call"),
    [pytest.param(code, call, id=f"{code}-{what}") for code, what, call in ERROR_TABLE],
)
def test_every_client_error_gets_its_code_and_changes_nothing(
    seeded: Api, code: int, call: Callable[[Api], dict[str, Any]]
) -> None:
    before = seeded.state()
    reply = call(seeded)
    assert reply["ErrorCode"] == code, reply
    assert reply["ActionStatus"] == "FAIL"
    assert reply["ErrorInfo"], reply
    assert seeded.state() == before


# Wrong JSON types --------------------------------------------------------------------

UPDATE_BODY: dict[str, Any] = INCREASE_A
KEYS_BODY: dict[str, Any] = {"GroupId": "g", "GroupCounterKeys": ["a"]}
CREATE_BODY: dict[str, Any] = {"Type": "Public", "Name": "n", "GroupId": "new", "Owner_Account": ADMIN}
DESTROY_BODY: dict[str, Any] = {"GroupId": "g"}
GROUP_IDS: list[Any] = [5, None, ["g"], {"g": "g"}]


def _with(body: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {**body, field: value}


def _item(field: str, value: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"Key": "a", "Value": 1}
    item[field] = value
    return {**UPDATE_BODY, "GroupCounter": [item]}


WRONG_TYPES: list[tuple[str, str, dict[str, Any]]] = [
    *[("update_group_counter", f"GroupId={v!r}", _with(UPDATE_BODY, "GroupId", v)) for v in GROUP_IDS],
    ("update_group_counter", "GroupCounter=object", _with(UPDATE_BODY, "GroupCounter", {"Key": "a"})),
    ("update_group_counter", "GroupCounter=string", _with(UPDATE_BODY, "GroupCounter", "a")),
    ("update_group_counter", "GroupCounter=null", _with(UPDATE_BODY, "GroupCounter", None)),
    ("update_group_counter", "item=list", _with(UPDATE_BODY, "GroupCounter", [["a", 1]])),
    ("update_group_counter", "item=string", _with(UPDATE_BODY, "GroupCounter", ["a"])),
    ("update_group_counter", "Key=number", _item("Key", 1)),
    ("update_group_counter", "Key=null", _item("Key", None)),
    ("update_group_counter", "Value=string", _item("Value", "1")),
    ("update_group_counter", "Value=float", _item("Value", 1.5)),
    ("update_group_counter", "Value=integral float", _item("Value", 1.0)),
    ("update_group_counter", "Value=bool", _item("Value", True)),
    ("update_group_counter", "Value=null", _item("Value", None)),
    ("update_group_counter", "Value=2**63", _item("Value", 2**63)),
    ("update_group_counter", "Mode=number", _with(UPDATE_BODY, "Mode", 1)),
    ("update_group_counter", "Mode=increase", _with(UPDATE_BODY, "Mode", "increase")),
    ("update_group_counter", "Mode=Add", _with(UPDATE_BODY, "Mode", "Add")),
    *[
        (command, f"GroupId={v!r}", _with(KEYS_BODY, "GroupId", v))
        for command in ("get_group_counter", "delete_group_counter")
        for v in GROUP_IDS
    ],
    *[
        (command, f"GroupCounterKeys={v!r}", _with(KEYS_BODY, "GroupCounterKeys", v))
        for command in ("get_group_counter", "delete_group_counter")
        for v in ["a", [1, 2], ["a", 1], {"a": 1}]
    ],
    # In create_group GroupId is optional, so null reads as absent: only the other wrong types.
    *[("create_group", f"GroupId={v!r}", _with(CREATE_BODY, "GroupId", v)) for v in [5, ["g"], {"g": 1}]],
    ("create_group", "Type=number", _with(CREATE_BODY, "Type", 1)),
    ("create_group", "Type=unknown", _with(CREATE_BODY, "Type", "Club")),
    ("create_group", "Name=number", _with(CREATE_BODY, "Name", 1)),
    ("create_group", "Owner_Account=number", _with(CREATE_BODY, "Owner_Account", 1)),
    *[("destroy_group", f"GroupId={v!r}", _with(DESTROY_BODY, "GroupId", v)) for v in GROUP_IDS],
]


@pytest.mark.parametrize(
    ("command", "body"),
    [pytest.param(command, body, id=f"{command}-{what}") for command, what, body in WRONG_TYPES],
)
def test_wrong_json_type_is_10004_and_changes_nothing(
    seeded: Api, command: str, body: dict[str, Any]
) -> None:
    before = seeded.state()
    reply = seeded.call(command, body)
    assert reply["ErrorCode"] == 10004, reply
    assert reply["ErrorInfo"], reply
    assert seeded.state() == before


# Hostile bodies ------------------------------------------------------------------------

_DEPTH = 30000
_PREFIX = b'{"GroupId": "g", "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}], "x": '


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_PREFIX + b"[" * _DEPTH + b"]" * _DEPTH + b"}", id="deep-unknown-field"),
        pytest.param(_PREFIX + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}", id="deep-objects"),
        pytest.param(b"[" * 65000, id="deep-unclosed-array"),
        pytest.param(b'{"GroupId": ' + b"[" * 60000, id="deep-in-field"),
    ],
)
def test_deeply_nested_json_is_not_an_internal_error(seeded: Api, raw: bytes) -> None:
    before = seeded.state()
    response = seeded.post("update_group_counter", raw=raw)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["ErrorCode"] not in (10002,), reply
    if reply["ErrorCode"] != 0:
        assert seeded.state() == before


def test_body_of_64_kib_whitespace_is_not_an_internal_error(seeded: Api) -> None:
    before = seeded.state()
    response = seeded.post("update_group_counter", raw=b" \n\t\r" * (65536 // 4))
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["ErrorCode"] != 10002, reply
    assert reply["ErrorCode"] != 0, reply
    assert seeded.state() == before


def test_body_over_the_cap_is_http_413(seeded: Api) -> None:
    before = seeded.state()
    raw = json.dumps({**INCREASE_A, "pad": "x" * 70000}).encode()
    response = seeded.post("update_group_counter", raw=raw)
    assert response.status_code == 413, response.text
    assert response.json()["ActionStatus"] == "FAIL"
    assert seeded.state() == before


def test_chunked_body_over_the_cap_is_http_413(seeded: Api) -> None:
    before = seeded.state()

    def chunks() -> Any:
        yield json.dumps(INCREASE_A)[:-1].encode() + b', "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    url = UPDATE + "?" + urlencode(_params())
    response = seeded.client.post(url, content=chunks())
    assert response.status_code == 413, response.text
    assert seeded.state() == before


HOSTILE: list[bytes] = [
    b"\xff\xfe\x00garbage",
    b"null",
    b'"just a string"',
    b"12",
    b"{}",
    b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 123456789012345678901234567890}]}',
    b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": NaN}]}',
    b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1e400}]}',
    b'{"GroupId": "g\\ud800", "GroupCounter": [{"Key": "a", "Value": 1}]}',
    b'{"GroupId": "g", "GroupCounter": [{"Key": "\\ud800", "Value": 1}]}',
    b'{"GroupId": "g", "GroupCounter": [{"Key": "a\\u0000", "Value": 1}]}',
    b'{"GroupId": "g\\u0000", "GroupCounter": [{"Key": "a", "Value": 1}]}',
    b'{"GroupId": "g", "GroupId": 5, "GroupCounter": [{"Key": "a", "Value": 1}]}',
    b'{"GroupId": "g", "GroupCounter": []}',
    b'{"GroupId": "g", "GroupCounter": [{}]}',
    b"\xef\xbb\xbf{}",
]


@pytest.mark.parametrize("command", ["update_group_counter", "get_group_counter", "create_group"])
@pytest.mark.parametrize("raw", HOSTILE)
def test_never_a_500_nor_a_traceback(seeded: Api, command: str, raw: bytes) -> None:
    response = seeded.post(command, raw=raw)
    assert response.status_code != 500, response.text
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    reply = response.json()
    assert "Traceback" not in reply["ErrorInfo"]
    assert reply["ErrorCode"] != 10002, reply


# The store down --------------------------------------------------------------------------


def test_store_down_is_10002_with_http_200_quickly(settings: Settings) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = open_store(url, timeout=0.5)
    with TestClient(create_app(settings, store)) as client:
        query = urlencode(_params())
        started = time.monotonic()
        response = client.post(UPDATE + "?" + query, content=json.dumps(INCREASE_A).encode())
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["ErrorCode"] == 10002, reply
    assert reply["ActionStatus"] == "FAIL"
    assert "Traceback" not in reply["ErrorInfo"]
    assert elapsed < 2.0
