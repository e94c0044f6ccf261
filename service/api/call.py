"""One call's context for its command: the app, its Idempotency-Key, its rate-limit count."""

from __future__ import annotations

from collections.abc import Callable

from service.api.listing import ListingBounds, Walks
from service.api.rate_limit import RateLimit, count_end_user
from service.config import App
from service.errors import ErrorCode, ServiceError
from service.storage.scripts import ScriptCall, ScriptReply
from service.storage.store import Store


def _present() -> bool:
    return False


class Call:
    def __init__(
        self,
        store: Store,
        app: App,
        idempotency_key: str | None = None,
        *,
        end_user: str | None = None,
        walks: Walks | None = None,
    ) -> None:
        self.store = store
        self.app = app
        self.idempotency_key = idempotency_key
        # The identifier of an end user (docs/API.md, "End users"); None for an admin.
        self.end_user = end_user
        self.limit = RateLimit(store, app, end_user=end_user is not None)
        # ARGV[1] of every command script.
        self.registered = "0" if app.implicit_groups else "1"
        # get_appid_group_list's walks in flight (the endpoint's, shared by its calls).
        self.walks = walks if walks is not None else Walks(ListingBounds())
        # Whether the client has left: the endpoint sets it for a command that walks.
        self.client_left: Callable[[], bool] = _present

    def check_idempotency_key(self) -> None:
        """An Idempotency-Key header is 1 to 128 printable ASCII characters (10004)."""
        key = self.idempotency_key
        if key is not None and not (0 < len(key) <= 128 and key.isascii() and key.isprintable()):
            raise ServiceError(
                ErrorCode.INVALID_PARAMETER, "Idempotency-Key must be 1 to 128 printable ASCII characters"
            )

    def check_end_user_update(self, mode: str, changes: list[tuple[str, int]]) -> None:
        """An end user may only Increase or Decrease the app's `client_keys`, each by no
        more than its bounds per call (60010), so a usersig of the app cannot set a
        "likes" counter to anything."""
        if self.end_user is None:
            return
        if mode not in ("Increase", "Decrease"):
            raise ServiceError(
                ErrorCode.NOT_ADMIN, f"Mode {mode} needs an admin; end users may Increase or Decrease"
            )
        for key, value in changes:
            bounds = self.app.client_keys.get(key)
            if bounds is None:
                raise ServiceError(
                    ErrorCode.NOT_ADMIN, f"Key {key!r} is not one the app lets end users change"
                )
            change = value if mode == "Increase" else -value
            low, high = bounds
            if not low <= change <= high:
                raise ServiceError(
                    ErrorCode.NOT_ADMIN,
                    f"an end user may change Key {key!r} by {low:+d} to {high:+d} per call, not {change:+d}",
                )

    async def count_end_user(self, *, writes: bool) -> None:
        """An end user's call counts against the app's rate limit on its own first (60007),
        then in the end user's reads or writes (61007): the same order on every topology."""
        assert self.end_user is not None
        await self.limit.count_alone()
        await count_end_user(self.store, self.app, self.end_user, writes=writes)

    async def run(self, script_call: ScriptCall) -> ScriptReply:
        """Run the command's one script; 60007 when it found the app over its limit."""
        reply = await self.store.run(script_call)
        if reply[0] == ErrorCode.RATE_LIMITED:
            self.limit.check(reply)
        return reply
