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

An end user's call is counted on its own before the body too (so 60007 and then the
end user's own limit, 61007, come in the same order on every topology), and then in
the end user's reads or writes: at most `END_USER_LIMIT` each per `END_USER_WINDOW`
seconds, the platform's client limits, exact across replicas.
"""

from __future__ import annotations

from typing import Final

from service.config import App
from service.errors import ErrorCode, ServiceError
from service.storage.keys import end_user_window_key, rate_limit_key
from service.storage.scripts import END_USER_LIMIT, RATE_LIMIT, ScriptArg, ScriptCall, ScriptReply
from service.storage.store import Store

_OVER_LIMIT: Final = "the app's rate limit of {} calls per second is exceeded"
END_USER_LIMIT_CALLS: Final = 20
END_USER_WINDOW: Final = 5


class RateLimit:
    """One call's count against its app's limit."""

    __slots__ = ("_app", "_counted", "_store", "before_body")

    def __init__(self, store: Store, app: App, *, end_user: bool = False) -> None:
        self._store = store
        self._app = app
        self._counted = not app.rate_limit
        # Whether to count before the body is read, where no command script can carry the
        # count (a plain attribute: the endpoint tests it on every call without an await).
        self.before_body = not self._counted and (end_user or not store.cross_slot_scripts)

    def in_script(self, group: str) -> tuple[str, ScriptArg]:
        """KEYS[2] and ARGV[2] of a command script: the app's window and limit when the
        count rides in the script, else the group's key again (same slot) and "0"."""
        if self._counted:
            return group, "0"
        self._counted = True
        return rate_limit_key(self._app.sdkappid), str(self._app.rate_limit)

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


async def count_end_user(store: Store, app: App, identifier: str, *, writes: bool) -> None:
    """Count an end user's call in their reads or writes; 61007 when over."""
    kind = "writes" if writes else "reads"
    window = end_user_window_key(app.sdkappid, identifier)
    reply = await store.run(
        ScriptCall(END_USER_LIMIT, [window], [kind, END_USER_LIMIT_CALLS, END_USER_WINDOW])
    )
    if reply[0] == ErrorCode.END_USER_LIMITED:
        raise ServiceError(
            ErrorCode.END_USER_LIMITED,
            f"identifier {identifier!r} is over its limit of {END_USER_LIMIT_CALLS} {kind} "
            f"per {END_USER_WINDOW} s",
        )
