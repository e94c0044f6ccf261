"""The HTTP edge: uvicorn's httptools protocol, with limits on what one client may cost.

uvicorn as configured has no header size or time limit, never closes a connection
that sends nothing, and keeps reading from a client that reads none of its answers.
One such client could stall a worker (a header value grown by repeated concatenation)
or take gigabytes of memory (issue 11). This subclass keeps uvicorn's parsing and
ASGI cycle and adds, per connection:

- a cap on the bytes of the request line and headers (431) and of the request
  target (414), both answered and closed before the headers end;
- deadlines: the headers within `header_timeout` of their first byte, the body within
  `body_timeout` of the headers (408), the next request within `keepalive_timeout`
  (closed silently), and the client reading its answers (`send_timeout`, closed);
- backpressure: at most `max_pipelined` requests queued, and no reading at all while
  the client is not reading its answers, so a connection's memory is bounded;
- a cap on open connections per worker: beyond it a connection is answered 503 and
  closed at once, before anything is read.

Timeouts are checked by one sweep a second over the worker's connections instead of
a timer per request: the hot path only stores the connection's phase. Every refusal is counted in
`group_counter_http_rejections_total` and logged at debug level only, because a
hostile client must not be able to flood the log either.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import math
import urllib.parse
from typing import Any, ClassVar, Final

import httptools
import msgspec
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from service.errors import ErrorCode
from service.http.direct import DirectCycle, DirectRoutes
from service.ops.metrics import TALLY
from service.wire import encode_error

log = logging.getLogger("service.http")

# Bytes handed to the parser at once while requests may be queued behind one another:
# it bounds how many requests one read can queue past `max_pipelined` (a read can be
# 256 KB, thousands of minimal requests). A usual request fits in one slice.
_SLICE: Final = 4096
# Headers spread over several reads are fed in smaller slices: the one that ends them
# is not counted (it may hold a body), so the header count is short by less than this.
_HEADER_SLICE: Final = 1024
_SWEEP_SECONDS: Final = 1.0
_NEVER: Final = math.inf


class HttpLimits(msgspec.Struct, frozen=True):
    max_header_bytes: int = 16384
    max_url_bytes: int = 8192
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 10.0
    max_connections: int = 16384
    max_pipelined: int = 32


def _canned(status: int, reason: str, code: ErrorCode, info: str) -> bytes:
    """A whole response that closes the connection: the error envelope, as every answer.
    Its request never reached a command: a 10002 here says it did not run."""
    body = encode_error(code, info, "no" if code == ErrorCode.INTERNAL else None)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the answer is already chosen."""


class _Flow(FlowControl):
    """uvicorn resumes reading whenever a request reads its body or an answer is done;
    this one stays paused while the client is not reading or requests are queued."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedHttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if self.read_paused and self._protocol.may_read():
            self.read_paused = False
            self._transport.resume_reading()


class _Sweeper:
    """Once a second: close the connections past a deadline; give memory back after
    a connection that cost more than a usual one (see `release_memory`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server_state: ServerState) -> None:
        self.loop = loop
        self.server_state = server_state
        self.heavy_closed = False
        loop.call_later(_SWEEP_SECONDS, self.sweep)

    def sweep(self) -> None:
        # The next sweep first: a fault below must not end the timeouts for good.
        self.loop.call_later(_SWEEP_SECONDS, self.sweep)
        now = self.loop.time()
        for connection in list(self.server_state.connections):
            if isinstance(connection, LimitedHttpToolsProtocol):
                connection.check_deadlines(now)
        if self.heavy_closed:
            self.heavy_closed = False
            release_memory()


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


_TRIM: Final = _malloc_trim()


def release_memory() -> None:
    """Free what a departed heavy connection left: its objects form reference cycles
    (a request cycle and its protocol point at each other) that the tuned collector
    (lifecycle.py: few young collections, rarer old ones) would keep for a long time,
    and glibc keeps freed heap pages unless asked to return them."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


class OneWrite:
    """A response's view of its connection: the head goes out with the first body write.

    uvicorn writes a response's status line and headers, then its body, in two writes:
    two system calls where one does, and a system call is a large share of a small
    call's cost. Each response cycle writes through one of these instead: the head is
    held until the cycle's next write, or the end of the loop step, whichever comes
    first, so an app that sends its head and then waits (a stream before its first
    event) still has the head sent at once.
    """

    __slots__ = ("cycle", "held", "loop", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.cycle = cycle
        self.loop = loop
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held + data)
        elif self.cycle is not None and self.cycle.response_started:
            # The cycle's first write since its response started: the head. (A "100
            # Continue" comes before the response starts, and goes out at once.) The
            # cycle and this refer to each other until now: let go, so that reference
            # counting frees both at the end of the call, not the cyclic collector.
            self.cycle = None
            self.held = data
            self.loop.call_soon(self.release)
        else:
            self.transport.write(data)

    def release(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.release()
        self.transport.close()


# Where a connection is; the sweep times how long it stays in one phase of one request.
_IDLE: Final = 0  # between requests (or before the first): keepalive_timeout
_HEADERS: Final = 1  # a request has begun, its headers have not ended: header_timeout
_BODY: Final = 2  # its headers have ended, its body has not: body_timeout
_APP: Final = 3  # the request is whole; the app's own timeouts bound it


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[HttpLimits] = HttpLimits()
    _sweeper: ClassVar[_Sweeper | None] = None

    @classmethod
    def configure(cls, limits: HttpLimits) -> None:
        """Call once per worker, before serving (the app factory does)."""
        cls.limits = limits

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The hot path only stores the phase and counts requests; the sweep notes when
        # it first saw (phase, requests) and trips the phase's timeout from there.
        self._phase = _IDLE
        self._requests = 0
        self._seen: tuple[int, int] = (-1, -1)
        self._seen_at = 0.0
        self._write_stalled_at = _NEVER
        self._shutdown_deadline = _NEVER
        self._header_bytes = 0
        self._completed_in_feed = False
        self._held: bytes = b""
        self._heavy = False
        self._refused = False
        # The app's commands, answered below ASGI (direct.py); absent, every call is ASGI.
        self._direct: DirectRoutes | None = getattr(self.app, "direct_routes", None)

    # Connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Before anything is parsed or allocated: the cheapest refusal that still
            # tells a client why. Not added to the worker's connections.
            self._refused = True
            self.transport = transport
            TALLY.rejection("max_connections")
            transport.write(_OVER_CAPACITY)
            transport.close()
            return
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        TALLY.open_connections += 1
        sweeper = LimitedHttpToolsProtocol._sweeper
        if sweeper is None or sweeper.loop is not self.loop:
            LimitedHttpToolsProtocol._sweeper = _Sweeper(self.loop, self.server_state)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        super().connection_lost(exc)
        TALLY.open_connections -= 1
        # Queued requests and held bytes go now rather than with the collector.
        self.pipeline.clear()
        self._held = b""
        if self._heavy and self._sweeper is not None:
            self._sweeper.heavy_closed = True

    def may_read(self) -> bool:
        return (
            not self.flow.write_paused and not self._held and len(self.pipeline) < self.limits.max_pipelined
        )

    # Reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._held:
            # Paused while we hold unparsed bytes; what was already in flight waits with them.
            self._held += data
            self.flow.pause_reading()
        elif len(data) <= _SLICE and self._phase != _HEADERS:
            self._parse(data)  # the usual read: one whole request
        else:
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        start, end = 0, len(data)
        while start < end:
            if self.transport.is_closing():
                return
            if len(self.pipeline) >= self.limits.max_pipelined or self.flow.write_paused:
                self._held = bytes(view[start:])
                self._heavy = True
                self.flow.pause_reading()
                return
            step = _HEADER_SLICE if self._phase == _HEADERS else _SLICE
            self._parse(view[start : start + step])
            start += step

    def _parse(self, data: bytes | memoryview) -> None:
        self._completed_in_feed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No WebSocket here (uvicorn runs with ws="none"): the request is answered as
            # any other; the upgrade is ignored, and not worth a warning per request.
            log.debug("upgrade request ignored")
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Rejected):
                TALLY.rejection("malformed")
                log.debug("malformed HTTP request: %s", exc)
                self._answer_and_close(_MALFORMED)
            return
        if self._phase == _HEADERS and not self._completed_in_feed:
            # A slice in which another request ended is not counted: its start belongs
            # to that request (the count is short by less than a slice, never long).
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                TALLY.rejection("header_bytes")
                self._answer_and_close(_HEADERS_TOO_LARGE)

    def _answer_and_close(self, answer: bytes) -> None:
        # A refused request usually arrived in large reads: give their memory back.
        self._heavy = self._heavy or bool(answer)
        self._phase = _APP
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                answer = b""  # half an answer is out: closing is all that is left
            # As connection_lost will: the app's next receive() is a disconnect, its
            # send() a no-op, and uvicorn does not add a plain 500 of its own.
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()

    # Parser callbacks -----------------------------------------------------------------------
    # on_message_begin and on_message_complete are uvicorn's own bodies (0.54) plus a line:
    # a call to super() in each costs a share of a call that `make bench` can see.

    def on_message_begin(self) -> None:
        self._phase = _HEADERS
        self._requests += 1
        self._header_bytes = 0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            TALLY.rejection("url_bytes")
            self._answer_and_close(_URL_TOO_LONG)
            raise _Rejected

    def on_headers_complete(self) -> None:
        # uvicorn's (0.55), but for the cycle it makes: a command's answers itself (direct.py).
        self._phase = _BODY
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        method = scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        path = scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        cycle: RequestResponseCycle
        default_headers = self.server_state.default_headers
        keep_alive = http_version != "1.0" and parser.should_keep_alive()
        handler = self._direct(method, path) if self._direct is not None else None
        if handler is not None:
            cycle = DirectCycle(
                handler,
                scope,  # type: ignore[arg-type]
                self.transport,
                self.flow,
                self.logger,
                default_headers,
                self.expect_100_continue,
                keep_alive,
                self.on_response_complete,
            )
        else:
            cycle = RequestResponseCycle(
                scope=scope,
                transport=self.transport,
                flow=self.flow,
                logger=self.logger,
                access_logger=self.access_logger,
                access_log=self.access_log,
                default_headers=default_headers,
                message_event=asyncio.Event(),
                expect_100_continue=self.expect_100_continue,
                keep_alive=keep_alive,
                on_response=self.on_response_complete,
            )
            # Its task has not run yet (it starts at the next loop step, or waits in the pipeline).
            cycle.transport = OneWrite(self.transport, cycle, self.loop)  # type: ignore[assignment]
        existing, self.cycle = self.cycle, cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:
            # Pipelined requests wait their turn (on_response_complete starts the next).
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))
            if len(self.pipeline) > 1:
                self._heavy = True

    def on_message_complete(self) -> None:
        self._phase = _APP
        self._completed_in_feed = True
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.more_body = False
        self.cycle.message_event.set()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer per request: the sweep times idleness.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._phase == _APP:
            self._phase = _IDLE
        if self._held:
            self._resume_held()
        self.flow.resume_reading()

    def _resume_held(self) -> None:
        if not self.flow.write_paused and len(self.pipeline) < self.limits.max_pipelined:
            held, self._held = self._held, b""
            self._feed(held)

    # Writing ---------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._heavy = True
        self._write_stalled_at = self.loop.time()
        self.flow.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_stalled_at = _NEVER
        if not self.transport.is_closing():
            if self._held:
                self._resume_held()
            self.flow.resume_reading()

    # Deadlines and shutdown --------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        limits = self.limits
        if now - self._write_stalled_at > limits.send_timeout:
            TALLY.rejection("send_timeout")
            self._answer_and_close(b"")
            return
        if now > self._shutdown_deadline and self._phase == _BODY:
            TALLY.rejection("shutdown")
            self._answer_and_close(_SHUTTING_DOWN)
            return
        seen = (self._phase, self._requests)
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
            return
        waited = now - self._seen_at
        if self._phase == _IDLE and waited >= limits.keepalive_timeout:
            TALLY.rejection("keepalive_timeout")
            self._answer_and_close(b"")
        elif self._phase == _HEADERS and waited >= limits.header_timeout:
            TALLY.rejection("header_timeout")
            self._answer_and_close(_HEADERS_TOO_SLOW)
        elif self._phase == _BODY and waited >= limits.body_timeout:
            TALLY.rejection("body_timeout")
            self._answer_and_close(_BODY_TOO_SLOW)

    def shutdown(self) -> None:
        """SIGTERM: a body still arriving may finish within the graceful timeout, as any
        call in flight; one that does not is answered 503 (nothing was done, retry
        elsewhere) just before uvicorn would cancel it, which answers a plain-text 500."""
        grace = self.config.timeout_graceful_shutdown
        if self._phase == _BODY and grace is not None:
            # The sweep runs once a second: aim a little over a second before the cancel.
            self._shutdown_deadline = self.loop.time() + max(grace - 1.5, 0.0)
        super().shutdown()


_OVER_CAPACITY: Final = _canned(
    503, "Service Unavailable", ErrorCode.INTERNAL, "too many connections to this worker; retry"
)
_MALFORMED: Final = _canned(400, "Bad Request", ErrorCode.BAD_QUERY, "malformed HTTP request")
_HEADERS_TOO_LARGE: Final = _canned(
    431, "Request Header Fields Too Large", ErrorCode.BAD_QUERY, "the request line and headers are too large"
)
_URL_TOO_LONG: Final = _canned(414, "URI Too Long", ErrorCode.BAD_QUERY, "the request target is too long")
_HEADERS_TOO_SLOW: Final = _canned(
    408, "Request Timeout", ErrorCode.BAD_QUERY, "the request headers did not arrive in time"
)
_BODY_TOO_SLOW: Final = _canned(
    408, "Request Timeout", ErrorCode.BAD_BODY, "the request body did not arrive in time"
)
_SHUTTING_DOWN: Final = _canned(
    503, "Service Unavailable", ErrorCode.INTERNAL, "the service is shutting down; nothing was done, retry"
)
