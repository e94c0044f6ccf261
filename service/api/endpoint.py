"""The command endpoint: the hot path of every call, read top to bottom.

path (60009) → query string, usersig, admin (`Access`) → body → the command's one
script → reply. It is a plain ASGI endpoint inside Starlette's router: a call needs
none of Starlette's Request and Response objects or their wrappers, and under load
that framework work is a large share of a call's cost. `_reply` is the one place a
`ServiceError` becomes the wire envelope.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from service.api.access import Access, EndUser
from service.api.call import Call
from service.api.commands import COMMANDS, END_USER_COMMANDS, Command
from service.api.listing import ListingBounds, WalkAbandoned, Walks
from service.config import Settings
from service.errors import ErrorCode, ServiceError
from service.http.body import BodyTooLarge, ClientGone, decode_request
from service.http.exchange import AsgiExchange, Exchange
from service.ops.access_log import ACCESS
from service.ops.metrics import TALLY
from service.storage.store import Store
from service.wire import encode_error

log = logging.getLogger("service")


class RequestIds:
    """The caller's X-Request-Id when it is sane, else `<process prefix>-<counter>`."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    def __call__(self, scope: Scope) -> bytes:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if 0 < len(value) <= 64 and value.isascii() and value.decode().isprintable():
                    return bytes(value)
                break
        return f"{self._prefix}-{next(self._counter):x}".encode()


async def _run(command: Command[Any], call: Call, request: Any, exchange: Exchange) -> bytes:
    """The command; one that walks (more than one script) learns when its client leaves
    and stops there, instead of walking on for no one (issue 25)."""
    if not command.walks:
        return await command.run(call, request)
    gone = asyncio.ensure_future(exchange.gone())
    call.client_left = gone.done
    try:
        return await command.run(call, request)
    finally:
        gone.cancel()


def _idempotency_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            key: bytes = value
            return key.decode("latin-1")
    return None


# Commands real SDKs send as a GET (timsdk 1.1.12's get_app_id_group_list, with no body):
# answered as a POST of their body, or of `{}` when there is none. Every other command
# and method stays 60009, as on the platform.
GET_COMMANDS: Final = frozenset({"get_appid_group_list"})


class CommandEndpoint:
    def __init__(self, settings: Settings, store: Store, prefix: str) -> None:
        self.prefix_length = len(prefix)
        self.store = store
        self.access = Access(
            settings.apps,
            cache_size=settings.config.usersig_cache_size,
            cache_bytes=settings.config.usersig_cache_bytes,
        )
        self.max_body_bytes = settings.config.max_body_bytes
        self.request_ids = RequestIds()
        config = settings.config
        self.walks = Walks(
            ListingBounds(
                seconds=config.list_walk_seconds,
                scans=config.list_walk_scans,
                walks_per_app=config.list_walks_in_flight,
            )
        )

    async def _end_user_call(self, name: str, end_user: EndUser, scope: Scope) -> Call:
        """The checks an admin does not go through: the command is one an end user may
        call (60010), the app's rate limit on its own (60007), then the end user's (61007)."""
        writes = END_USER_COMMANDS.get(name)
        if writes is None:
            raise ServiceError(
                ErrorCode.NOT_ADMIN, f"{name} needs an admin; end users may read and update counters"
            )
        call = Call(
            self.store, end_user.app, _idempotency_key(scope), end_user=end_user.identifier, walks=self.walks
        )
        await call.count_end_user(writes=writes)
        return call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, AsgiExchange(scope, receive, send))

    async def serve(self, scope: Scope, exchange: Exchange) -> None:
        """One call, over ASGI or on its request cycle (service/http/direct.py)."""
        started = time.perf_counter()
        name: str = scope["path"][self.prefix_length :]
        command = COMMANDS.get(name)
        sdkappid: int | None = None
        identifier: str | None = None
        group_id: str | None = None
        code = ErrorCode.OK
        status = 200
        TALLY.in_flight += 1
        try:
            method = scope["method"]
            if command is None or not (method == "POST" or (method == "GET" and name in GET_COMMANDS)):
                raise ServiceError(
                    ErrorCode.UNKNOWN_COMMAND, f"unknown command path {scope['method']} {scope['path']!r}"
                )
            principal, identifier = self.access.caller(scope["query_string"])
            if isinstance(principal, EndUser):
                call = await self._end_user_call(name, principal, scope)
            else:
                call = Call(self.store, principal, _idempotency_key(scope), walks=self.walks)
                if call.limit.before_body:  # its window is in another slot: counted on its own, first
                    await call.limit.count_alone()
            sdkappid = call.app.sdkappid
            try:
                body = await exchange.read_body(self.max_body_bytes)
                if method == "GET" and not body:
                    body = b"{}"  # a GET without a body asks with every field absent
                request = decode_request(command.decode, body)
                group_id = getattr(request, "group_id", None)
                call.check_idempotency_key()
                payload = await _run(command, call, request, exchange)
            except ServiceError:
                # The limit is checked before the body: a call refused before its script
                # ran still counts, and over the limit it answers 60007 instead.
                await call.limit.count_alone()
                raise
        except ServiceError as exc:
            code = exc.code
            payload = encode_error(exc.code, exc.info, exc.applied)
        except BodyTooLarge as exc:
            code, status = ErrorCode.BAD_BODY, 413
            payload = encode_error(code, str(exc))
        except ClientGone:
            log.debug("the client left before sending its whole body (%s)", name)
            return
        except WalkAbandoned:
            log.debug("the client left during the walk (%s)", name)
            return
        except Exception:
            code = ErrorCode.INTERNAL
            log.exception("unexpected fault in %s", name)
            payload = encode_error(code, "internal error", "maybe")
        finally:
            TALLY.in_flight -= 1

        request_id = self.request_ids(scope)
        try:
            await exchange.reply(status, payload, request_id)
        except RuntimeError as exc:
            # uvloop closes a reset connection's transport before uvicorn hears of it, and
            # uvicorn's send then raises: a client that left, not a fault of ours.
            log.debug("the client left before its answer (%s): %s", name, exc)
            return

        elapsed = time.perf_counter() - started
        label = name if command is not None else "unknown"
        TALLY.call(label, code, elapsed)
        ACCESS.call(request_id, label, sdkappid, group_id, code, elapsed, identifier)
