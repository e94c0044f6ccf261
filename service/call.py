"""One call's use of the store: the app's group mode and rate limit go with its script.

Every command script begins with the same two ARGV (the group mode, the rate limit)
and takes the app's rate-limit window as KEYS[2], so on one Redis the limit costs no
extra round trip. Where the window cannot share the script (a Cluster: another slot)
or no script runs (the call failed validation first), `count_against_limit` counts
the call on its own; the spec checks the limit before the body, so over the limit
that call answers 60007 whatever else was wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.config import App
from service.errors import ErrorCode, ServiceError
from service.store import RATE_LIMIT, Script, ScriptArg, ScriptReply, Store, rate_limit_key

_OVER_LIMIT = "the app's rate limit of {} calls per second is exceeded"


class Call:
    def __init__(self, store: Store, app: App, idempotency_key: str | None = None) -> None:
        self.store = store
        self.app = app
        self.idempotency_key = idempotency_key
        self._limit_counted = not app.rate_limit
        self._registered = "0" if app.implicit_groups else "1"

    def check_idempotency_key(self) -> None:
        """An Idempotency-Key header is 1 to 128 printable ASCII characters (10004)."""
        key = self.idempotency_key
        if key is not None and not (0 < len(key) <= 128 and key.isascii() and key.isprintable()):
            raise ServiceError(
                ErrorCode.INVALID_PARAMETER, "Idempotency-Key must be 1 to 128 printable ASCII characters"
            )

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> ScriptReply:
        """Run the command's script: `keys` are KEYS[1] and KEYS[3..], `args` ARGV[3..]."""
        group, *rest = keys
        if not self._limit_counted and self.store.limiter_shares_call:
            self._limit_counted = True
            limit: ScriptArg = self.app.rate_limit
            window = rate_limit_key(self.app.sdkappid)
        else:
            limit, window = 0, group
        reply = await self.store.run(script, [group, window, *rest], [self._registered, limit, *args])
        if reply[0] == ErrorCode.RATE_LIMITED:
            raise ServiceError(ErrorCode.RATE_LIMITED, _OVER_LIMIT.format(self.app.rate_limit))
        return reply

    async def count_against_limit(self) -> None:
        """Count this call in the app's window now, unless it was; 60007 when over."""
        if self._limit_counted:
            return
        self._limit_counted = True
        reply = await self.store.run(RATE_LIMIT, [rate_limit_key(self.app.sdkappid)], [self.app.rate_limit])
        if reply[0] == ErrorCode.RATE_LIMITED:
            raise ServiceError(ErrorCode.RATE_LIMITED, _OVER_LIMIT.format(self.app.rate_limit))
