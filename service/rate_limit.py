"""An app's rate limit (calls per second, every replica sharing one exact count).

Each call is counted exactly once, in the first of these that happens:

- inside the command's script, where the script may touch the app's window (KEYS[2],
  ARGV[2] of every command script: one Redis, Sentinel, the embedded store): no extra
  round trip;
- on its own, before the body is read, where it may not (a Cluster: the window is in
  another hash slot than the group);
- on its own, when the call failed before any script ran (a bad body, a bad field).
  The contract checks the limit before the body, so over the limit such a call
  answers 60007 whatever else was wrong with it.
"""

from __future__ import annotations

from typing import Final

from service.config import App
from service.errors import ErrorCode, ServiceError
from service.keys import rate_limit_key
from service.scripts import RATE_LIMIT, ScriptArg, ScriptCall, ScriptReply
from service.store import Store

_OVER_LIMIT: Final = "the app's rate limit of {} calls per second is exceeded"


class RateLimit:
    """One call's count against its app's limit."""

    __slots__ = ("_app", "_counted", "_store", "before_body")

    def __init__(self, store: Store, app: App) -> None:
        self._store = store
        self._app = app
        self._counted = not app.rate_limit
        # Whether to count before the body is read, where no command script can carry the
        # count (a plain attribute: the endpoint tests it on every call without an await).
        self.before_body = not self._counted and not store.cross_slot_scripts

    def in_script(self, group: str) -> tuple[str, ScriptArg]:
        """KEYS[2] and ARGV[2] of a command script: the app's window and limit when the
        count rides in the script, else the group's key again (same slot) and "0"."""
        if self._counted:
            return group, 0
        self._counted = True
        return rate_limit_key(self._app.sdkappid), self._app.rate_limit

    def check(self, reply: ScriptReply) -> None:
        """60007 when a script (command or counter) answered that the app is over."""
        if reply[0] == ErrorCode.RATE_LIMITED:
            raise ServiceError(ErrorCode.RATE_LIMITED, _OVER_LIMIT.format(self._app.rate_limit))

    async def count_alone(self) -> None:
        """Count this call now unless it was; 60007 when over."""
        if self._counted:
            return
        self._counted = True
        window = rate_limit_key(self._app.sdkappid)
        self.check(await self._store.run(ScriptCall(RATE_LIMIT, [window], [self._app.rate_limit])))
