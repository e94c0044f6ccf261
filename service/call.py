"""One call's context for its command: the app, its Idempotency-Key, its rate-limit count."""

from __future__ import annotations

from service.config import App
from service.errors import ErrorCode, ServiceError
from service.rate_limit import RateLimit
from service.scripts import ScriptCall, ScriptReply
from service.store import Store


class Call:
    def __init__(self, store: Store, app: App, idempotency_key: str | None = None) -> None:
        self.store = store
        self.app = app
        self.idempotency_key = idempotency_key
        self.limit = RateLimit(store, app)
        # ARGV[1] of every command script.
        self.registered = "0" if app.implicit_groups else "1"

    def check_idempotency_key(self) -> None:
        """An Idempotency-Key header is 1 to 128 printable ASCII characters (10004)."""
        key = self.idempotency_key
        if key is not None and not (0 < len(key) <= 128 and key.isascii() and key.isprintable()):
            raise ServiceError(
                ErrorCode.INVALID_PARAMETER, "Idempotency-Key must be 1 to 128 printable ASCII characters"
            )

    async def run(self, script_call: ScriptCall) -> ScriptReply:
        """Run the command's one script; 60007 when it found the app over its limit."""
        reply = await self.store.run(script_call)
        if reply[0] == ErrorCode.RATE_LIMITED:
            self.limit.check(reply)
        return reply
