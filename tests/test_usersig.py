"""Spec §5 and §6: the TLSSigAPIv2 usersig (70002, 70003, 70014, 70013, 70009, 70001) and admins (60010)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from typing import Any, Final

import pytest

from service.api.auth import UsersigVerifier, mint_usersig
from service.errors import ServiceError
from tests.support import ADMIN, OTHER_APP, REGISTERED_APP, SECRET_KEYS, Api, usersig_for

INCREASE_A: dict[str, Any] = {
    "GroupId": "g",
    "Mode": "Increase",
    "GroupCounter": [{"Key": "a", "Value": 1}],
}
SECRET = SECRET_KEYS[REGISTERED_APP]


def encode_usersig(raw_json: bytes) -> str:
    """The usersig alphabet over zlib over `raw_json`."""
    text = base64.b64encode(zlib.compress(raw_json)).decode()
    return text.replace("+", "*").replace("/", "-").replace("=", "_")


def decode_usersig(usersig: str) -> dict[str, Any]:
    text = usersig.replace("*", "+").replace("-", "/").replace("_", "=")
    document: dict[str, Any] = json.loads(zlib.decompress(base64.b64decode(text)))
    return document


def official_usersig(
    sdkappid: int, key: str, identifier: str, expire: int = 86400, now: int | None = None
) -> str:
    """Exactly as the official tls-sig-api-v2 Python generator (TLSSigAPIv2.__gen_sig) builds one."""
    curr_time = int(time.time()) if now is None else now
    content = (
        "TLS.identifier:" + str(identifier) + "\n"
        "TLS.sdkappid:" + str(sdkappid) + "\n"
        "TLS.time:" + str(curr_time) + "\n"
        "TLS.expire:" + str(expire) + "\n"
    )
    sig = base64.b64encode(hmac.new(key.encode("utf-8"), content.encode("utf-8"), hashlib.sha256).digest())
    m: dict[str, Any] = {
        "TLS.ver": "2.0",
        "TLS.identifier": str(identifier),
        "TLS.sdkappid": int(sdkappid),
        "TLS.expire": int(expire),
        "TLS.time": int(curr_time),
        "TLS.sig": bytes.decode(sig),
    }
    raw_sig = json.dumps(m)
    sig_cmpressed = zlib.compress(raw_sig.encode("utf-8"))
    base64_sig = base64.b64encode(sig_cmpressed)
    return bytes.decode(base64_sig).replace("+", "*").replace("/", "-").replace("=", "_")


@pytest.fixture
def seeded(api: Api) -> Api:
    api.create("g")
    assert api.update("g", {"a": 10})["ErrorCode"] == 0
    return api


def call_with_usersig(api: Api, usersig: str | None, identifier: str = ADMIN) -> dict[str, Any]:
    # usersig=None drops the parameter from the query string.
    return api.call("update_group_counter", INCREASE_A, identifier=identifier, usersig=usersig)


def assert_refused(api: Api, usersig: str | None, code: int, identifier: str = ADMIN) -> None:
    before = api.state()
    reply = call_with_usersig(api, usersig, identifier)
    assert reply["ErrorCode"] == code, reply
    assert reply["ErrorInfo"], reply
    assert api.state() == before


def assert_accepted(api: Api, usersig: str) -> None:
    reply = call_with_usersig(api, usersig)
    assert reply["ErrorCode"] == 0, reply
    assert reply["GroupCounter"] == [{"Key": "a", "Value": 11}]


def fields_document(**changes: Any) -> dict[str, Any]:
    document = decode_usersig(usersig_for())
    document.update(changes)
    return document


# Through the API ---------------------------------------------------------------------


def test_missing_usersig_is_70002(seeded: Api) -> None:
    assert_refused(seeded, None, 70002)


def test_empty_usersig_is_70002(seeded: Api) -> None:
    assert_refused(seeded, "", 70002)


@pytest.mark.parametrize("usersig", ["!!not base64!!", "abc", "é", "eJ"])
def test_usersig_not_base64_is_70003(seeded: Api, usersig: str) -> None:
    assert_refused(seeded, usersig, 70003)


def test_usersig_base64_but_not_zlib_is_70003(seeded: Api) -> None:
    usersig = base64.b64encode(b"this is not zlib data at all").decode()
    usersig = usersig.replace("+", "*").replace("/", "-").replace("=", "_")
    assert_refused(seeded, usersig, 70003)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"TLS"', b"{"])
def test_usersig_zlib_of_non_json_document_is_70003(seeded: Api, raw: bytes) -> None:
    assert_refused(seeded, encode_usersig(raw), 70003)


@pytest.mark.parametrize(
    "field", ["TLS.sig", "TLS.ver", "TLS.identifier", "TLS.sdkappid", "TLS.time", "TLS.expire"]
)
def test_usersig_lacking_a_field_is_70003(seeded: Api, field: str) -> None:
    document = fields_document()
    del document[field]
    assert_refused(seeded, encode_usersig(json.dumps(document).encode()), 70003)


def test_usersig_version_other_than_2_0_is_70003(seeded: Api) -> None:
    document = fields_document(**{"TLS.ver": "1.0"})
    assert_refused(seeded, encode_usersig(json.dumps(document).encode()), 70003)


def test_usersig_for_another_sdkappid_is_70014(seeded: Api) -> None:
    assert_refused(seeded, usersig_for(OTHER_APP, ADMIN), 70014)


def test_usersig_for_another_identifier_is_70013(seeded: Api) -> None:
    assert_refused(seeded, usersig_for(REGISTERED_APP, "ops"), 70013)


def test_forged_usersig_signed_with_another_key_is_70009(seeded: Api) -> None:
    assert_refused(seeded, usersig_for(REGISTERED_APP, ADMIN, secret_key="not-the-key"), 70009)


def test_usersig_with_tampered_expire_is_70009(seeded: Api) -> None:
    now = int(time.time()) - 100
    document = decode_usersig(usersig_for(REGISTERED_APP, ADMIN, now=now, expire=10))
    document["TLS.expire"] = 10**9
    assert_refused(seeded, encode_usersig(json.dumps(document).encode()), 70009)


def test_expired_usersig_is_70001(seeded: Api) -> None:
    usersig = usersig_for(REGISTERED_APP, ADMIN, now=int(time.time()) - 100, expire=10)
    assert_refused(seeded, usersig, 70001)


def test_usersig_with_userbuf_verifies(seeded: Api) -> None:
    usersig = mint_usersig(REGISTERED_APP, SECRET, ADMIN, userbuf=b"x")
    assert "TLS.userbuf" in decode_usersig(usersig)
    assert_accepted(seeded, usersig)


def test_usersig_from_official_python_generator_is_accepted(seeded: Api) -> None:
    assert_accepted(seeded, official_usersig(REGISTERED_APP, SECRET, ADMIN))


def test_valid_usersig_of_non_admin_is_60010(seeded: Api) -> None:
    assert_refused(seeded, usersig_for(REGISTERED_APP, "someone"), 60010, identifier="someone")


# The verifier (its cache is the access check's: tests/test_access_cache.py) ---------------


def test_cached_usersig_is_refused_once_it_expires() -> None:
    clock = [1_000_000.0]
    verifier = UsersigVerifier({REGISTERED_APP: SECRET}, clock=lambda: clock[0])
    usersig = mint_usersig(REGISTERED_APP, SECRET, ADMIN, now=1_000_000, expire=60)
    verifier.verify(usersig, REGISTERED_APP, ADMIN)
    clock[0] = 1_000_060.0
    verifier.verify(usersig, REGISTERED_APP, ADMIN)  # now == time + expire: not yet expired
    clock[0] = 1_000_061.0
    with pytest.raises(ServiceError) as caught:
        verifier.verify(usersig, REGISTERED_APP, ADMIN)
    assert caught.value.code == 70001


def test_cached_usersig_presented_with_another_identifier_or_sdkappid_is_refused() -> None:
    verifier = UsersigVerifier({REGISTERED_APP: SECRET, OTHER_APP: SECRET_KEYS[OTHER_APP]})
    usersig = mint_usersig(REGISTERED_APP, SECRET, ADMIN)
    verifier.verify(usersig, REGISTERED_APP, ADMIN)
    with pytest.raises(ServiceError) as wrong_identifier:
        verifier.verify(usersig, REGISTERED_APP, "ops")
    assert wrong_identifier.value.code == 70013
    with pytest.raises(ServiceError) as wrong_app:
        verifier.verify(usersig, OTHER_APP, ADMIN)
    assert wrong_app.value.code == 70014
    verifier.verify(usersig, REGISTERED_APP, ADMIN)


def test_cached_usersig_through_the_api_keeps_identifier_and_sdkappid_checks(seeded: Api) -> None:
    usersig = usersig_for(REGISTERED_APP, ADMIN)
    assert_accepted(seeded, usersig)
    assert_refused(seeded, usersig, 70013, identifier="ops")
    before = seeded.state()
    reply = seeded.call(
        "update_group_counter", INCREASE_A, sdkappid=OTHER_APP, identifier=ADMIN, usersig=usersig
    )
    assert reply["ErrorCode"] == 70014, reply
    assert seeded.state() == before


# Key rotation: the previous key is accepted beside the new one until it is removed ------

ROTATED: Final = "the-new-key-of-the-registered-app"


def _verify_code(verifier: UsersigVerifier, usersig: str) -> int:
    try:
        verifier.verify(usersig, REGISTERED_APP, ADMIN)
    except ServiceError as exc:
        return int(exc.code)
    return 0


def test_during_a_rotation_usersigs_of_the_new_and_the_previous_key_are_both_valid() -> None:
    verifier = UsersigVerifier({REGISTERED_APP: ROTATED}, previous_keys={REGISTERED_APP: SECRET})
    assert _verify_code(verifier, mint_usersig(REGISTERED_APP, ROTATED, ADMIN)) == 0
    assert _verify_code(verifier, mint_usersig(REGISTERED_APP, SECRET, ADMIN)) == 0


def test_during_a_rotation_a_usersig_of_any_other_key_is_70009() -> None:
    verifier = UsersigVerifier({REGISTERED_APP: ROTATED}, previous_keys={REGISTERED_APP: SECRET})
    assert _verify_code(verifier, mint_usersig(REGISTERED_APP, "neither-key", ADMIN)) == 70009


def test_once_the_previous_key_is_removed_its_usersigs_are_70009() -> None:
    verifier = UsersigVerifier({REGISTERED_APP: ROTATED})
    assert _verify_code(verifier, mint_usersig(REGISTERED_APP, SECRET, ADMIN)) == 70009


def test_the_previous_key_of_one_app_is_no_key_of_another() -> None:
    verifier = UsersigVerifier(
        {REGISTERED_APP: ROTATED, OTHER_APP: SECRET_KEYS[OTHER_APP]}, previous_keys={REGISTERED_APP: SECRET}
    )
    usersig = mint_usersig(OTHER_APP, SECRET, ADMIN)
    with pytest.raises(ServiceError) as caught:
        verifier.verify(usersig, OTHER_APP, ADMIN)
    assert caught.value.code == 70009
