"""Issue 11, point 5: every malformed byte sequence answers its documented code, never
10002, and logs no traceback (query string, usersig, body)."""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlencode

import pytest

from tests.support import ADMIN, REGISTERED_APP, Api, usersig_for

UPDATE: Final = "/v4/group_open_http_svc/update_group_counter"
INCREASE: Final = b'{"GroupId": "g", "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]}'
PAST_THE_INT_DIGIT_LIMIT: Final = "7" * 5000  # Python refuses int() of a string over 4,300 digits


@pytest.fixture
def seeded(api: Api) -> Api:
    api.create("g")
    return api


@pytest.fixture(autouse=True)
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not faults, [r.getMessage() for r in faults]


def params(**changes: str) -> dict[str, str]:
    base = {
        "sdkappid": str(REGISTERED_APP),
        "identifier": ADMIN,
        "usersig": usersig_for(REGISTERED_APP, ADMIN),
        "random": "12345",
        "contenttype": "json",
    }
    return base | changes


def post(api: Api, query: dict[str, str], body: bytes = INCREASE) -> dict[str, Any]:
    response = api.client.post(UPDATE + "?" + urlencode(query), content=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def usersig_of(document: bytes) -> str:
    """A usersig whose inflated JSON is exactly `document` (signed or not)."""
    return base64.b64encode(zlib.compress(document)).translate(bytes.maketrans(b"+/=", b"*-_")).decode()


def signed_document(**fields: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "TLS.ver": "2.0",
        "TLS.identifier": ADMIN,
        "TLS.sdkappid": REGISTERED_APP,
        "TLS.time": now,
        "TLS.expire": 3600,
        "TLS.sig": "bm90IGEgc2lnbmF0dXJl",
        **fields,
    }


@pytest.mark.parametrize(
    "body",
    [
        b'{"GroupId": "g\xff", "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]}',
        b'{"GroupId": "g", "Mode": "Increase", "GroupCounter": [{"Key": "\xc3", "Value": 1}]}',
        b'{"Unknown": "\xed\xa0\x80", "GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1}]}',
        b'{"\xfe": 1, "GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1}]}',
    ],
    ids=["in-group-id", "truncated-sequence-in-key", "surrogate-in-skipped-field", "in-a-field-name"],
)
def test_invalid_utf8_inside_a_json_string_of_the_body_is_60003(seeded: Api, body: bytes) -> None:
    before = seeded.state()
    reply = post(seeded, params(), body)
    assert reply["ErrorCode"] == 60003, reply
    assert seeded.state() == before


@pytest.mark.parametrize("value", [b"1e400", b"-1e400", b"1E+999", b"123456789e999"])
def test_value_beyond_a_double_is_10004_like_any_float(seeded: Api, value: bytes) -> None:
    body = b'{"GroupId": "g", "Mode": "Set", "GroupCounter": [{"Key": "a", "Value": %s}]}' % value
    assert post(seeded, params(), body)["ErrorCode"] == 10004


def test_value_beyond_a_double_in_a_body_that_is_not_json_is_still_60003(seeded: Api) -> None:
    body = b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1e400}]'
    assert post(seeded, params(), body)["ErrorCode"] == 60003


def test_invalid_utf8_inside_the_usersig_json_is_70003(seeded: Api) -> None:
    document = json.dumps(signed_document()).encode().replace(b'"TLS.sig"', b'"TLS.\xffsig"')
    reply = post(seeded, params(usersig=usersig_of(document)))
    assert reply["ErrorCode"] == 70003, reply


def test_invalid_utf8_inside_a_usersig_string_is_70003(seeded: Api) -> None:
    document = json.dumps(signed_document(**{"TLS.sig": "PLACEHOLDER"})).encode()
    reply = post(seeded, params(usersig=usersig_of(document.replace(b"PLACEHOLDER", b"\xc3\x28"))))
    assert reply["ErrorCode"] == 70003, reply


def test_lone_surrogate_in_usersig_userbuf_is_70003(seeded: Api) -> None:
    document = json.dumps(signed_document(**{"TLS.userbuf": "PLACEHOLDER"})).encode()
    reply = post(seeded, params(usersig=usersig_of(document.replace(b"PLACEHOLDER", b"\\ud800"))))
    assert reply["ErrorCode"] == 70003, reply


def test_usersig_json_nested_past_the_decoder_limit_is_70003(seeded: Api) -> None:
    reply = post(seeded, params(usersig=usersig_of(b"[" * 2000 + b"]" * 2000)))
    assert reply["ErrorCode"] == 70003, reply


def test_random_longer_than_the_int_digit_limit_is_60002(seeded: Api) -> None:
    reply = post(seeded, params(random=PAST_THE_INT_DIGIT_LIMIT))
    assert reply["ErrorCode"] == 60002, reply


def test_random_with_many_leading_zeros_is_still_a_uint32(seeded: Api) -> None:
    reply = post(seeded, params(random="0" * 5000 + "4294967295"))
    assert reply["ErrorCode"] == 0, reply


def test_sdkappid_longer_than_the_int_digit_limit_is_60006(seeded: Api) -> None:
    reply = post(seeded, params(sdkappid=PAST_THE_INT_DIGIT_LIMIT))
    assert reply["ErrorCode"] == 60006, reply
    assert len(reply["ErrorInfo"]) < 200, "the ErrorInfo echoes the whole sdkappid"


def test_sdkappid_with_many_leading_zeros_still_names_its_app(seeded: Api) -> None:
    reply = post(seeded, params(sdkappid="0" * 5000 + str(REGISTERED_APP)))
    assert reply["ErrorCode"] == 0, reply
