"""watch_group_counter: a group's changes as Server-Sent Events (docs/API.md §8).

`GET /v4/group_open_http_svc/watch_group_counter?<the usual query string>&GroupId=...`,
so that a browser's EventSource, which can set neither a header nor a body, can call
it. Everything up to the first event is a call like any other, checked in the same
order, and a failure answers the usual JSON envelope (an EventSource gives up on a
reply that is not an event stream rather than retrying it), but for a refusal that
clears by itself (`RETRY_LATER_MS`: the store unavailable, the worker busy starting
other watches, a limit's window), which answers a short event stream instead: a
`retry:` line and one `refused` event holding the envelope, then its end, after which
an EventSource reconnects (HTML, "Server-sent events": any 200 text/event-stream
that ends is reconnected; any other status or type fails the EventSource for good).
Then the stream: the first frame the feed queued (a snapshot, or nothing when
Last-Event-ID is current), then every frame as it comes, several in one write when
they queue up.

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
import random
import socket
import time
from typing import Final
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from service.api.access import Access, EndUser, Principal
from service.api.call import Call
from service.api.endpoint import RequestIds
from service.api.validate import COMMUNITY_PREFIX, check_group_id
from service.config import Settings
from service.errors import ErrorCode, ServiceError
from service.http.exchange import disconnected, send_reply
from service.http.protocol import OneWrite
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
# Refusals an EventSource should retry, with the wait (ms) it is told: a busy or
# unreachable store clears within seconds (spread, so a refused burst does not come
# back as one burst), a rate window within five.
RETRY_LATER_MS: Final = {
    ErrorCode.INTERNAL: (1000, 3000),
    ErrorCode.RATE_LIMITED: (1000, 2000),
    ErrorCode.END_USER_LIMITED: (5000, 6000),
}


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
        config = settings.config
        self.live = config.live_counters
        self.send_buffer_bytes = config.watch_send_buffer_bytes
        self.max_watchers_per_end_user = config.max_watchers_per_end_user
        # Streams open or starting per end user ("<sdkappid>:<identifier>") on this worker.
        self.held: dict[str, int] = {}
        self.feeds = Feeds(
            store,
            timeout=max(config.redis_timeout * 2, 1.0),
            max_joins=config.max_watch_joins,
            max_joins_per_identity=config.max_watch_joins_per_end_user,
        )

    async def authorize(self, principal: Principal) -> Call:
        """Who may watch: an admin of the app, or an end user where the app allows them
        (docs/API.md, "End users"); a watch counts once against the app's rate limit and,
        for an end user, as one of their reads."""
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
        identifier: str | None = None
        group_id: str | None = None
        code = ErrorCode.OK
        request_id = self.request_ids(scope)
        identity: str | None = None
        try:
            if scope["method"] != "GET":
                raise ServiceError(
                    ErrorCode.UNKNOWN_COMMAND, f"unknown command path {scope['method']} {scope['path']!r}"
                )
            if not self.live:
                raise ServiceError(ErrorCode.UNKNOWN_COMMAND, f"{COMMAND} is off (live_counters = false)")
            principal, identifier = self.access.caller(scope["query_string"])
            call = await self.authorize(principal)
            app = call.app
            sdkappid = app.sdkappid
            group_id = _group_id(scope["query_string"])
            if app.implicit_groups and group_id.startswith(COMMUNITY_PREFIX):
                raise ServiceError(
                    ErrorCode.NOT_ALLOWED, f"group {group_id!r} is a Community group, which has no counters"
                )
            group = group_key(app.sdkappid, group_id)
            channel = changes_channel(group, self.store.db)
            if call.end_user is not None:
                identity = self._hold(f"{app.sdkappid}:{call.end_user}")
            watcher = await self.feeds.join(
                channel, group, group_id, call.registered, _last_event_id(scope), identity
            )
        except ServiceError as exc:
            self._let_go(identity)
            code = exc.code
            await _refuse(send, exc, request_id)
            self._log(request_id, sdkappid, identifier, group_id, code, started)
            return
        except Exception:
            self._let_go(identity)
            log.exception("unexpected fault in %s", COMMAND)
            code = ErrorCode.INTERNAL
            await _refuse(send, ServiceError(code, "internal error"), request_id)
            self._log(request_id, sdkappid, identifier, group_id, code, started)
            return
        except BaseException:  # cancelled (shutdown): the end user's count stays right
            self._let_go(identity)
            raise

        self._log(request_id, sdkappid, identifier, group_id, code, started)
        gone = asyncio.ensure_future(disconnected(receive))
        gone.add_done_callback(lambda _: watcher.end())
        TALLY.watchers += 1
        try:
            _fix_send_buffer(send, self.send_buffer_bytes)
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
            self._let_go(identity)
            TALLY.watcher_left(cut_off=watcher.overflowed)

    def _hold(self, identity: str) -> str:
        """Count a stream of this end user, or refuse it (61007) when they hold the most."""
        held = self.held.get(identity, 0)
        if held >= self.max_watchers_per_end_user:
            raise ServiceError(
                ErrorCode.END_USER_LIMITED,
                f"end user over their limit: {held} watches open (max_watchers_per_end_user)",
            )
        self.held[identity] = held + 1
        return identity

    def _let_go(self, identity: str | None) -> None:
        if identity is None:
            return
        left = self.held[identity] - 1
        if left:
            self.held[identity] = left
        else:
            del self.held[identity]

    def _log(
        self,
        request_id: bytes,
        sdkappid: int | None,
        identifier: str | None,
        group_id: str | None,
        code: int,
        started: float,
    ) -> None:
        elapsed = time.perf_counter() - started
        TALLY.call(COMMAND, code, elapsed)
        ACCESS.call(request_id, COMMAND, sdkappid, group_id, code, elapsed, identifier)

    async def close(self) -> None:
        await self.feeds.close()


async def _refuse(send: Send, exc: ServiceError, request_id: bytes) -> None:
    """The usual envelope; for a refusal that clears by itself, as an event stream that
    tells an EventSource when to come back (see the module's docstring)."""
    envelope = encode_error(exc.code, exc.info)
    wait = RETRY_LATER_MS.get(exc.code)
    if wait is None:
        await send_reply(send, 200, envelope, request_id)
        return
    body = b"retry: %d\n\nevent: refused\ndata: %b\n\n" % (random.randint(*wait), envelope)
    headers = [*_HEADERS, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _fix_send_buffer(send: Send, size: int) -> None:
    """Fix the kernel's send buffer of the watch's socket at `size` bytes (SO_SNDBUF;
    Linux doubles what it is given, for its own bookkeeping, and counts that against
    the data queued). Left alone, the kernel grows the buffer of a client that does not
    read up to tcp_wmem's maximum, 4 MiB by default, before the service's own cut-off
    (`WATCHER_BUFFER_BYTES` beyond it) sees anything. Only a server that shows its
    socket (uvicorn's, as `python -m service` runs) is reached."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if isinstance(transport, OneWrite):
        transport = transport.transport
    get_extra_info = getattr(transport, "get_extra_info", None)
    sock = get_extra_info("socket") if get_extra_info is not None else None
    if sock is not None and transport is not None and not transport.is_closing():
        # A client gone meanwhile: uvloop's view of its socket may have no descriptor left.
        with contextlib.suppress(OSError, ValueError):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size // 2)
