"""watch_group_counter: a group's changes as Server-Sent Events (docs/API.md §8).

`GET /v4/group_open_http_svc/watch_group_counter?<the usual query string>&GroupId=...`,
so that a browser's EventSource, which can set neither a header nor a body, can call
it. Everything up to the first event is a call like any other, checked in the same
order, and a failure answers the usual JSON envelope (an EventSource gives up on a
reply that is not an event stream rather than retrying it); then the stream: the
first frame the feed queued (a snapshot, or nothing when Last-Event-ID is current),
then every frame as it comes, several in one write when they queue up.

Hand-written rather than sse-starlette's EventSourceResponse: that one runs a task
group per stream (a sender, a disconnect listener, a ping task and their cancel
scopes), several tasks and kilobytes per connection, where a watcher here costs one
waiting future and one task for the disconnect; and its per-stream pings would wake
every stream on its own timer where one timer here beats for all (`Feeds._beat`).
The frames are a dozen lines of the SSE format (`feeds._frame`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final
from urllib.parse import parse_qsl

from starlette.types import Message, Receive, Scope, Send

from service.api.access import Access, EndUser
from service.api.call import Call
from service.api.endpoint import RequestIds, send_reply
from service.api.validate import COMMUNITY_PREFIX, check_group_id
from service.config import Settings
from service.errors import ErrorCode, ServiceError
from service.live.feeds import Feeds
from service.ops.access_log import ACCESS
from service.ops.metrics import TALLY
from service.storage.keys import changes_channel, group_key
from service.storage.store import Store
from service.wire import encode_error

log = logging.getLogger("service")

COMMAND: Final = "watch_group_counter"
_HEADERS: Final = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx would otherwise hold events back in its buffer.
    (b"x-accel-buffering", b"no"),
]
# Sent first: how long an EventSource waits before it reconnects (ms).
_PREAMBLE: Final = b"retry: 1000\n\n"
# How long a cut-off stream waits for the server to notice its connection is gone.
_ABORT_NOTICE_SECONDS: Final = 1.0


def _group_id(query_string: bytes) -> str:
    """GroupId from the query string: missing is 10004, malformed 10015 (docs/API.md §6).
    (A parameter given twice was already 60002.)"""
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "GroupId":
            return check_group_id(value)
    raise ServiceError(
        ErrorCode.INVALID_PARAMETER, "invalid parameter: GroupId is missing from the query string"
    )


def _last_event_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            text: str = value.decode("latin-1")
            return text
    return None


class WatchEndpoint:
    def __init__(self, settings: Settings, store: Store, access: Access, request_ids: RequestIds) -> None:
        self.store = store
        self.access = access
        self.request_ids = request_ids
        self.live = settings.config.live_counters
        self.feeds = Feeds(store, timeout=max(settings.config.redis_timeout * 2, 1.0))

    async def authorize(self, query_string: bytes) -> Call:
        """Who may watch: an admin of the app, or an end user where the app allows them
        (docs/API.md, "End users"); a watch counts once against the app's rate limit and,
        for an end user, as one of their reads."""
        principal = self.access.authorize(query_string)
        if isinstance(principal, EndUser):
            call = Call(self.store, principal.app, end_user=principal.identifier)
            await call.count_end_user(writes=False)
            return call
        call = Call(self.store, principal)
        await call.limit.count_alone()
        return call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        sdkappid: int | None = None
        group_id: str | None = None
        code = ErrorCode.OK
        request_id = self.request_ids(scope)
        try:
            if scope["method"] != "GET":
                raise ServiceError(
                    ErrorCode.UNKNOWN_COMMAND, f"unknown command path {scope['method']} {scope['path']!r}"
                )
            if not self.live:
                raise ServiceError(ErrorCode.UNKNOWN_COMMAND, f"{COMMAND} is off (live_counters = false)")
            call = await self.authorize(scope["query_string"])
            app = call.app
            sdkappid = app.sdkappid
            group_id = _group_id(scope["query_string"])
            if app.implicit_groups and group_id.startswith(COMMUNITY_PREFIX):
                raise ServiceError(
                    ErrorCode.NOT_ALLOWED, f"group {group_id!r} is a Community group, which has no counters"
                )
            group = group_key(app.sdkappid, group_id)
            channel = changes_channel(group, self.store.db)
            watcher = await self.feeds.join(channel, group, group_id, call.registered, _last_event_id(scope))
        except ServiceError as exc:
            code = exc.code
            await send_reply(send, 200, encode_error(exc.code, exc.info), request_id)
            self._log(request_id, sdkappid, group_id, code, started)
            return
        except Exception:
            log.exception("unexpected fault in %s", COMMAND)
            code = ErrorCode.INTERNAL
            await send_reply(send, 200, encode_error(code, "internal error"), request_id)
            self._log(request_id, sdkappid, group_id, code, started)
            return

        self._log(request_id, sdkappid, group_id, code, started)
        gone = asyncio.ensure_future(_disconnected(receive))
        gone.add_done_callback(lambda _: watcher.end())
        TALLY.watchers += 1
        try:
            headers = [*_HEADERS, (b"x-request-id", request_id)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": _PREAMBLE, "more_body": True})
            watcher.attach(send)
            await watcher.flush()  # the first frames; from now on the feed writes directly
            await watcher.finished
            if watcher.writer is not None and not watcher.overflowed:
                await watcher.writer  # the last frames (a destroy) reach the client first
            if not gone.done() and not watcher.overflowed:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif watcher.overflowed and watcher.transport is not None:
                # Closed now with what it holds: a close would wait for a reader that does not read.
                watcher.transport.abort()
                # The server learns of the abort a loop step later; an app that returned
                # before that would be logged as one that left its response unfinished.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(gone), _ABORT_NOTICE_SECONDS)
        finally:
            gone.cancel()
            if watcher.writer is not None:
                watcher.writer.cancel()
            self.feeds.leave(channel, watcher)
            TALLY.watcher_left(cut_off=watcher.overflowed)

    def _log(
        self, request_id: bytes, sdkappid: int | None, group_id: str | None, code: int, started: float
    ) -> None:
        elapsed = time.perf_counter() - started
        TALLY.call(COMMAND, code, elapsed)
        ACCESS.call(request_id, COMMAND, sdkappid, group_id, code, elapsed)

    async def close(self) -> None:
        await self.feeds.close()


async def _disconnected(receive: Receive) -> None:
    """Until the client goes away (a GET's body is read, and ignored, on the way)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
