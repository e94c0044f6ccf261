"""Spec §6, the check order: for each adjacent pair, a request breaking both gets the earlier code.

path (60009), query string (60012, 60006, 60002), usersig (70002, 70003, 70014, 70013,
70009, 70001), admin (60010), body (60003), fields (10004, 10015, 10063), group (10010),
then the atomic script (10004 overflow, 10063 key count).
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import ADMIN, INCREASE_A, OTHER_APP, REGISTERED_APP, UPDATE, Api, post_query, usersig_for

INT64_MIN = -(2**63)
NON_ADMIN = "someone"


@pytest.fixture
def seeded(api: Api) -> Api:
    api.create("g")
    assert api.update("g", {"a": 10})["ErrorCode"] == 0
    return api


def post_params(api: Api, params: dict[str, str], path: str = UPDATE) -> dict[str, Any]:
    return post_query(api, urlencode(params), path=path)


def usersig_without(field: str, sdkappid: int, identifier: str) -> str:
    text = usersig_for(sdkappid, identifier).replace("*", "+").replace("-", "/").replace("_", "=")
    document = json.loads(zlib.decompress(base64.b64decode(text)))
    del document[field]
    encoded = base64.b64encode(zlib.compress(json.dumps(document).encode())).decode()
    return encoded.replace("+", "*").replace("/", "-").replace("=", "_")


def expired_usersig(identifier: str, **kwargs: Any) -> str:
    return usersig_for(REGISTERED_APP, identifier, now=int(time.time()) - 100, expire=10, **kwargs)


def assert_code_and_unchanged(api: Api, before: dict[Any, Any], reply: dict[str, Any], code: int) -> None:
    assert reply["ErrorCode"] == code, reply
    assert api.state() == before


def test_60009_unknown_path_before_60012_missing_sdkappid(seeded: Api) -> None:
    before = seeded.state()
    params = {"identifier": ADMIN, "usersig": usersig_for(), "random": "1", "contenttype": "json"}
    reply = post_params(seeded, params, path="/v4/group_open_http_svc/nope")
    assert_code_and_unchanged(seeded, before, reply, 60009)


def test_60012_missing_sdkappid_before_60002_bad_query(seeded: Api) -> None:
    before = seeded.state()
    params = {"identifier": ADMIN, "usersig": usersig_for(), "contenttype": "xml"}
    assert_code_and_unchanged(seeded, before, post_params(seeded, params), 60012)


def test_60006_bad_sdkappid_before_60002_bad_query(seeded: Api) -> None:
    before = seeded.state()
    for sdkappid in ("abc", "1400000099"):
        params = {"sdkappid": sdkappid, "identifier": ADMIN, "usersig": usersig_for(), "contenttype": "xml"}
        assert_code_and_unchanged(seeded, before, post_params(seeded, params), 60006)


def test_60002_bad_query_before_70002_missing_usersig(seeded: Api) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", INCREASE_A, random=None, usersig=None)
    assert_code_and_unchanged(seeded, before, reply, 60002)


def test_70002_missing_usersig_before_60010_not_admin(seeded: Api) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", INCREASE_A, identifier=NON_ADMIN, usersig="")
    assert_code_and_unchanged(seeded, before, reply, 70002)


def test_70003_undecodable_usersig_before_70014_other_sdkappid(seeded: Api) -> None:
    before = seeded.state()
    usersig = usersig_without("TLS.sig", OTHER_APP, ADMIN)
    reply = seeded.call("update_group_counter", INCREASE_A, usersig=usersig)
    assert_code_and_unchanged(seeded, before, reply, 70003)


def test_70014_other_sdkappid_before_70013_other_identifier(seeded: Api) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", INCREASE_A, usersig=usersig_for(OTHER_APP, "ops"))
    assert_code_and_unchanged(seeded, before, reply, 70014)


def test_70013_other_identifier_before_70009_bad_signature(seeded: Api) -> None:
    before = seeded.state()
    usersig = usersig_for(REGISTERED_APP, "ops", secret_key="not-the-key")
    reply = seeded.call("update_group_counter", INCREASE_A, usersig=usersig)
    assert_code_and_unchanged(seeded, before, reply, 70013)


def test_70009_bad_signature_before_70001_expired(seeded: Api) -> None:
    before = seeded.state()
    usersig = expired_usersig(ADMIN, secret_key="not-the-key")
    reply = seeded.call("update_group_counter", INCREASE_A, usersig=usersig)
    assert_code_and_unchanged(seeded, before, reply, 70009)


def test_70001_expired_before_60010_not_admin(seeded: Api) -> None:
    before = seeded.state()
    usersig = expired_usersig(NON_ADMIN)
    reply = seeded.call("update_group_counter", INCREASE_A, identifier=NON_ADMIN, usersig=usersig)
    assert_code_and_unchanged(seeded, before, reply, 70001)


def test_60010_not_admin_before_60003_bad_body(seeded: Api) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", raw=b"{not json", identifier=NON_ADMIN)
    assert_code_and_unchanged(seeded, before, reply, 60010)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"GroupId": 5, "GroupCounter": [{"Key": 1, "Value": "x"}], "Mode": 3',
        b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1.5}]}}',
        b'{"GroupId": null, "GroupCounter": "x"} trailing',
    ],
)
def test_60003_bad_body_before_10004_invalid_parameter(seeded: Api, raw: bytes) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", raw=raw)
    assert_code_and_unchanged(seeded, before, reply, 60003)


@pytest.mark.parametrize(
    "body",
    [
        {"GroupId": "", "GroupCounter": [{"Key": "a", "Value": "x"}]},
        {"GroupId": "x" * 49, "GroupCounter": [{"Key": "", "Value": 1}]},
        {"GroupId": "", "GroupCounter": [{"Key": "a", "Value": 1}, {"Key": "a", "Value": 2}]},
        {"GroupId": "", "Mode": "Add", "GroupCounter": [{"Key": "a", "Value": 1}]},
    ],
)
def test_10004_invalid_parameter_before_10015_bad_group_id(seeded: Api, body: dict[str, Any]) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", body)
    assert_code_and_unchanged(seeded, before, reply, 10004)


def test_10015_bad_group_id_before_10063_too_many_items(seeded: Api) -> None:
    before = seeded.state()
    items = [{"Key": f"k{n}", "Value": 1} for n in range(21)]
    for group_id in ("", "x" * 49, "caf\u00e9"):
        reply = seeded.call("update_group_counter", {"GroupId": group_id, "GroupCounter": items})
        assert_code_and_unchanged(seeded, before, reply, 10015)


def test_10063_too_many_items_before_10010_missing_group(seeded: Api) -> None:
    before = seeded.state()
    items = [{"Key": f"k{n}", "Value": 1} for n in range(21)]
    reply = seeded.call("update_group_counter", {"GroupId": "missing", "GroupCounter": items})
    assert_code_and_unchanged(seeded, before, reply, 10063)


def test_10010_missing_group_before_script_overflow(seeded: Api) -> None:
    # Decrease by INT64_MIN overflows even from 0: on an existing group the script refuses it.
    overflow = {"GroupId": "g", "Mode": "Decrease", "GroupCounter": [{"Key": "new", "Value": INT64_MIN}]}
    before = seeded.state()
    assert_code_and_unchanged(seeded, before, seeded.call("update_group_counter", overflow), 10004)
    reply = seeded.call("update_group_counter", {**overflow, "GroupId": "missing"})
    assert_code_and_unchanged(seeded, before, reply, 10010)
