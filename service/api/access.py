"""Who is calling: the query string's app and identifier, proven by the usersig, an admin
(or, where the app allows end users, any identifier: an `EndUser`).

A query string that passed every check is remembered with the usersig's expiry, and
the expiry is still checked on every call. Clients send the same query string on
every call but for `random`: real client libraries send the same value every time,
others a new one per call. So the cache holds each such query string under two keys:
the query string itself, whose repeat costs one dict lookup, and the query string with
the value of `random` cut out, tried when the first misses, whose repeat costs a
search for `random=`, a check that its value is a uint32 and a lookup (measured: 0.17
against 0.9 us, which is why the exact key is tried first). (A digest as the key cost
a fifth of a microsecond more per call and protected nothing: the process holds every
app's secret key, which can mint any usersig.)

This is the only cache of the access check. It is bounded in entries and in bytes:
a query string can be `max_url_bytes` long, and entries of that size at the entry
bound alone would be gigabytes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Final

import msgspec

from service.api.auth import UsersigVerifier
from service.config import App
from service.errors import ErrorCode, ServiceError
from service.http.query import parse_query


class EndUser(msgspec.Struct, frozen=True):
    """A non-admin identifier of an app that allows end users (docs/API.md, "End users")."""

    app: App
    identifier: str


# What the access check proves: the app, for an admin; or an end user of it.
Principal = App | EndUser

_RANDOM: Final = b"random="
_UINT32_MAX: Final = 2**32 - 1
# What an entry costs besides its key's bytes: the key's bytes object, the tuple and
# the dict slot (measured with sys.getsizeof, rounded up).
ENTRY_OVERHEAD: Final = sys.getsizeof(b"") + sys.getsizeof((None, 0)) + 64
_PAIR_OVERHEAD: Final = sys.getsizeof(b"") + sys.getsizeof((b"", b""))


# A query string as the client sent it, or the two parts around the value of `random`:
# a tuple never equals a bytes object, so no query string can pass for the latter.
_Key = bytes | tuple[bytes, bytes]


def _without_random(query_string: bytes) -> tuple[bytes, bytes] | None:
    """The query string around `random`'s value, when that value is a plain uint32 and
    `random` is given once; None otherwise (the full parse then decides)."""
    start = query_string.find(_RANDOM)
    if start < 0 or (start and query_string[start - 1] != 0x26):  # 0x26: "&"
        return None
    value_start = start + len(_RANDOM)
    end = query_string.find(b"&", value_start)
    if end < 0:
        end = len(query_string)
    value = query_string[value_start:end]
    if not (0 < len(value) <= 10 and value.isdigit()) or (len(value) == 10 and int(value) > _UINT32_MAX):
        return None
    after = query_string[end:]
    if _RANDOM in after:  # possibly given twice: the full parse answers
        return None
    return query_string[:value_start], after


def _cost(key: _Key) -> int:
    if isinstance(key, bytes):
        return len(key) + ENTRY_OVERHEAD
    return len(key[0]) + len(key[1]) + ENTRY_OVERHEAD + _PAIR_OVERHEAD


class Access:
    def __init__(
        self,
        apps: Mapping[int, App],
        *,
        cache_size: int,
        cache_bytes: int = 16 * 2**20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._apps = apps
        self._verifier = UsersigVerifier(
            {sdkappid: app.secret_key for sdkappid, app in apps.items()},
            previous_keys={sdkappid: app.previous_secret_key for sdkappid, app in apps.items()},
            clock=clock,
        )
        self._cache: dict[_Key, tuple[Principal, str, int]] = {}
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._bytes = 0
        self._clock = clock

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def authorize(self, query_string: bytes) -> Principal:
        """The checks of docs/API.md §6 from the query string to the admin check, in order."""
        return self.caller(query_string)[0]

    def caller(self, query_string: bytes) -> tuple[Principal, str]:
        """`authorize`'s principal and the identifier the call names (for the access log)."""
        known = self._cache.get(query_string)
        key: tuple[bytes, bytes] | None = None
        if known is None:
            key = _without_random(query_string)
            if key is not None:
                known = self._cache.get(key)
        if known is not None:
            if self._clock() > known[2]:
                raise ServiceError(ErrorCode.USERSIG_EXPIRED, "usersig has expired")
            return known[0], known[1]
        caller = parse_query(query_string, self._apps)
        expires_at = self._verifier.verify(caller.usersig, caller.app.sdkappid, caller.identifier)
        principal: Principal = caller.app
        if caller.identifier not in caller.app.admins:
            if not caller.app.end_users:
                raise ServiceError(
                    ErrorCode.NOT_ADMIN, f"identifier {caller.identifier!r} is not an admin of the app"
                )
            principal = EndUser(caller.app, caller.identifier)
        self._remember(bytes(query_string), principal, caller.identifier, expires_at)
        if key is not None:
            self._remember(key, principal, caller.identifier, expires_at)
        return principal, caller.identifier

    def _remember(self, key: _Key, principal: Principal, identifier: str, expires_at: int) -> None:
        cost = _cost(key)
        if cost > self._cache_bytes:
            return
        cache = self._cache
        while cache and (len(cache) >= self._cache_size or self._bytes + cost > self._cache_bytes):
            oldest = next(iter(cache))  # dicts keep insertion order: the oldest goes first
            del cache[oldest]
            self._bytes -= _cost(oldest)
        cache[key] = (principal, identifier, expires_at)
        self._bytes += cost
