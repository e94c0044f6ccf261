"""Spec §1 and §6: the command path and the query string (60009, 60012, 60006, 60002)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from tests import support
from tests.support import ADMIN, INCREASE_A, REGISTERED_APP, UPDATE, Api, usersig_for

# The registered app's sdkappid in fullwidth digits (U+FF10..U+FF19): str.isdigit() is True.
FULLWIDTH_APP = "".join(chr(ord(c) + 0xFEE0) for c in str(REGISTERED_APP))


def default_params() -> dict[str, str]:
    return {
        "sdkappid": str(REGISTERED_APP),
        "identifier": ADMIN,
        "usersig": usersig_for(REGISTERED_APP, ADMIN),
        "random": "12345",
        "contenttype": "json",
    }


def post_query(api: Api, query_string: str, body: Any = INCREASE_A, path: str = UPDATE) -> dict[str, Any]:
    """`support.post_query`, and its ActionStatus agrees with its ErrorCode."""
    reply = support.post_query(api, query_string, body, path)
    assert reply["ActionStatus"] == ("OK" if reply["ErrorCode"] == 0 else "FAIL")
    return reply


def with_params(**changes: str | None) -> str:
    params = default_params()
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return urlencode(params)


def assert_fails_unchanged(api: Api, reply: dict[str, Any], code: int, before: dict[Any, Any]) -> None:
    assert reply["ErrorCode"] == code, reply
    assert reply["ErrorInfo"], reply
    assert api.state() == before


@pytest.fixture
def seeded(api: Api) -> Api:
    api.create("g")
    assert api.update("g", {"a": 10})["ErrorCode"] == 0
    return api


@pytest.mark.parametrize(
    "path",
    [
        "/v4/group_open_http_svc/nope",
        "/v4/other/update_group_counter",
        "/",
        "/v4/group_open_http_svc/",
        "/v4/group_open_http_svc/Update_Group_Counter",
        "/v4/group_open_http_svc/update_group_counter/",
        "/v4/group_open_http_svc/update_group_counter/extra",
        "/v4/group_open_http_svc//update_group_counter",
        "/v4/group_open_http_svcupdate_group_counter",
    ],
)
def test_unknown_command_path_is_60009_with_http_200(seeded: Api, path: str) -> None:
    before = seeded.state()
    response = seeded.post("update_group_counter", INCREASE_A, path=path)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["ActionStatus"] == "FAIL"
    assert_fails_unchanged(seeded, reply, 60009, before)


def test_get_on_a_command_path_is_60009(seeded: Api) -> None:
    before = seeded.state()
    response = seeded.client.get(UPDATE + "?" + with_params())
    assert response.status_code == 200, response.text
    assert_fails_unchanged(seeded, response.json(), 60009, before)


def test_get_on_get_appid_group_list_lists_as_a_post_of_an_empty_object_would(seeded: Api) -> None:
    url = "/v4/group_open_http_svc/get_appid_group_list?" + with_params()
    by_get = seeded.client.get(url).json()
    assert by_get["ErrorCode"] == 0, by_get
    # Every group on one page, as `{}` (no Limit) asks; the seeded group among them.
    assert by_get["Next"] == 0
    assert by_get["TotalCount"] == len(by_get["GroupIdList"]) >= 1


def test_get_on_get_appid_group_list_with_a_body_reads_it_as_the_post_would(seeded: Api) -> None:
    url = "/v4/group_open_http_svc/get_appid_group_list?" + with_params()
    reply = seeded.client.request("GET", url, content=b'{"Limit": "many"}').json()
    assert reply["ErrorCode"] == 10004, reply


def test_missing_sdkappid_is_60012(seeded: Api) -> None:
    before = seeded.state()
    assert_fails_unchanged(seeded, post_query(seeded, with_params(sdkappid=None)), 60012, before)


def test_empty_sdkappid_is_60012(seeded: Api) -> None:
    before = seeded.state()
    assert_fails_unchanged(seeded, post_query(seeded, with_params(sdkappid="")), 60012, before)


@pytest.mark.parametrize("sdkappid", ["abc", "-1", "1.5", FULLWIDTH_APP, "\uff11\uff12", "+1"])
def test_sdkappid_not_a_number_is_60006(seeded: Api, sdkappid: str) -> None:
    before = seeded.state()
    assert_fails_unchanged(seeded, post_query(seeded, with_params(sdkappid=sdkappid)), 60006, before)


@pytest.mark.parametrize("sdkappid", ["1400000099", "0", "99999999999999999999999"])
def test_unknown_sdkappid_is_60006(seeded: Api, sdkappid: str) -> None:
    before = seeded.state()
    assert_fails_unchanged(seeded, post_query(seeded, with_params(sdkappid=sdkappid)), 60006, before)


def test_missing_identifier_is_60002(seeded: Api) -> None:
    before = seeded.state()
    assert_fails_unchanged(seeded, post_query(seeded, with_params(identifier=None)), 60002, before)


def test_missing_random_is_60002(seeded: Api) -> None:
    before = seeded.state()
    assert_fails_unchanged(
        seeded, seeded.call("update_group_counter", INCREASE_A, random=None), 60002, before
    )


@pytest.mark.parametrize("random", ["abc", "4294967296", "-1", "1.5", "", "99999999999999999999"])
def test_random_out_of_uint32_or_not_a_number_is_60002(seeded: Api, random: str) -> None:
    before = seeded.state()
    assert_fails_unchanged(seeded, post_query(seeded, with_params(random=random)), 60002, before)


@pytest.mark.parametrize("random", [0, 4294967295])
def test_random_bounds_of_uint32_are_accepted(seeded: Api, random: int) -> None:
    reply = seeded.call("update_group_counter", INCREASE_A, random=random)
    assert reply["ErrorCode"] == 0, reply
    assert seeded.counters("g") == {"a": 11}


def test_missing_contenttype_is_60002(seeded: Api) -> None:
    before = seeded.state()
    reply = seeded.call("update_group_counter", INCREASE_A, contenttype=None)
    assert_fails_unchanged(seeded, reply, 60002, before)


@pytest.mark.parametrize("contenttype", ["xml", "JSON", ""])
def test_contenttype_other_than_json_is_60002(seeded: Api, contenttype: str) -> None:
    before = seeded.state()
    reply = post_query(seeded, with_params(contenttype=contenttype))
    assert_fails_unchanged(seeded, reply, 60002, before)


@pytest.mark.parametrize("name", ["random", "identifier", "contenttype", "usersig", "sdkappid"])
def test_parameter_given_twice_is_60002(seeded: Api, name: str) -> None:
    before = seeded.state()
    params = default_params()
    query_string = urlencode(params) + "&" + urlencode({name: params[name]})
    assert_fails_unchanged(seeded, post_query(seeded, query_string), 60002, before)


def test_query_parameter_names_are_case_sensitive(seeded: Api) -> None:
    before = seeded.state()
    params = default_params()
    params["SDKAPPID"] = params.pop("sdkappid")
    assert_fails_unchanged(seeded, post_query(seeded, urlencode(params)), 60012, before)


def test_same_random_on_every_call_is_not_an_idempotency_key(seeded: Api) -> None:
    first = seeded.call("update_group_counter", INCREASE_A, random=777)
    second = seeded.call("update_group_counter", INCREASE_A, random=777)
    assert first["ErrorCode"] == 0, first
    assert second["ErrorCode"] == 0, second
    assert first["GroupCounter"] == [{"Key": "a", "Value": 11}]
    assert second["GroupCounter"] == [{"Key": "a", "Value": 12}]
    assert seeded.counters("g") == {"a": 12}
