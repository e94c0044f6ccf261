"""The query string of a call (docs/API.md §1), checked in its order: 60012, 60006, 60002.

The usersig itself is only extracted here; `auth.py` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl

import msgspec

from service.config import App
from service.errors import ErrorCode, ServiceError

_UINT32_MAX: Final = 2**32 - 1
# Digits beyond these (after leading zeros) cannot be an sdkappid (int64) or a uint32,
# and int() of a string over 4,300 digits raises instead of answering.
_SDKAPPID_DIGITS: Final = 19
_RANDOM_DIGITS: Final = 10


class Caller(msgspec.Struct, frozen=True):
    app: App
    identifier: str
    usersig: str


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_query(query_string: bytes, apps: Mapping[int, App]) -> Caller:
    params: dict[str, str] = {}
    repeated: list[str] = []
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in params:
            repeated.append(name)
        else:
            params[name] = value

    sdkappid = params.get("sdkappid", "")
    if not sdkappid:
        raise ServiceError(ErrorCode.SDKAPPID_MISSING, "sdkappid is missing from the query string")
    if not _is_decimal(sdkappid):
        raise ServiceError(ErrorCode.UNKNOWN_APP, "sdkappid is not a number")
    significant = sdkappid.lstrip("0")
    app = apps.get(int(significant or "0")) if len(significant) <= _SDKAPPID_DIGITS else None
    if app is None:
        raise ServiceError(ErrorCode.UNKNOWN_APP, f"sdkappid {sdkappid[:24]!r} is not a configured app")

    if repeated:
        raise ServiceError(ErrorCode.BAD_QUERY, f"query parameter {repeated[0]!r} is given more than once")
    identifier = params.get("identifier", "")
    if not identifier:
        raise ServiceError(ErrorCode.BAD_QUERY, "identifier is missing from the query string")
    random = params.get("random")
    if random is None:
        raise ServiceError(ErrorCode.BAD_QUERY, "random is missing from the query string")
    significant = random.lstrip("0")
    if not _is_decimal(random) or len(significant) > _RANDOM_DIGITS or int(significant or "0") > _UINT32_MAX:
        raise ServiceError(ErrorCode.BAD_QUERY, "random must be an integer from 0 to 4294967295")
    if params.get("contenttype") != "json":
        raise ServiceError(ErrorCode.BAD_QUERY, "contenttype must be json")
    return Caller(app=app, identifier=identifier, usersig=params.get("usersig", ""))
