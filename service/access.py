"""Who is calling: the query string's app and identifier, proven by the usersig, an admin.

Clients send the same query string on every call (the spec notes that real client
libraries even repeat `random`), so a query string that passed every check is
remembered, keyed by the query string itself, with the usersig's expiry. A repeat
costs one dict lookup, and the expiry is still checked on every call. (A digest as the
key cost a fifth of a microsecond more per call and protected nothing: the process
holds every app's secret key, which can mint any usersig.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from service.auth import UsersigVerifier
from service.config import App
from service.errors import ErrorCode, ServiceError
from service.query import parse_query


class Access:
    def __init__(
        self,
        apps: Mapping[int, App],
        *,
        cache_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._apps = apps
        self._verifier = UsersigVerifier(
            {sdkappid: app.secret_key for sdkappid, app in apps.items()}, cache_size=cache_size, clock=clock
        )
        self._cache: dict[bytes, tuple[App, int]] = {}
        self._cache_size = cache_size
        self._clock = clock

    def authorize(self, query_string: bytes) -> App:
        """The checks of spec §6 from the query string to the admin check, in order."""
        known = self._cache.get(query_string)
        if known is not None:
            app, expires_at = known
            if self._clock() > expires_at:
                raise ServiceError(ErrorCode.USERSIG_EXPIRED, "usersig has expired")
            return app
        caller = parse_query(query_string, self._apps)
        expires_at = self._verifier.verify(caller.usersig, caller.app.sdkappid, caller.identifier)
        if caller.identifier not in caller.app.admins:
            raise ServiceError(
                ErrorCode.NOT_ADMIN, f"identifier {caller.identifier!r} is not an admin of the app"
            )
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]  # oldest first: dicts keep insertion order
        self._cache[bytes(query_string)] = (caller.app, expires_at)
        return caller.app
