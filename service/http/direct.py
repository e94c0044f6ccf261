"""Commands answered on their request cycle, below ASGI.

Over ASGI a command call costs its worker a `receive` message for the body, two `send`
messages whose headers uvicorn checks one by one and writes in two pieces, and the
app's dispatch; for a call as small as ours that is a large share of its cost (see
docs/performance.md). A `DirectCycle` is uvicorn's request cycle with the endpoint as
its app: it hands its request to the endpoint with itself as the `Exchange`, and
writes the answer, head and body, in one write.

Everything else about the cycle stays uvicorn's: its body arrives through the
protocol's parser callbacks (paused past uvicorn's high-water mark), it waits in the
pipeline behind the requests before it, a lost connection marks it disconnected, its
end starts the next request, and the server's default headers and keep-alive rules
apply as to any answer. HEAD, the watch stream and every other path stay on ASGI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.types import Scope
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from service.errors import ErrorCode
from service.http.body import ClientGone, check_declared_length, too_large
from service.http.exchange import Exchange
from service.wire import encode_error

log = logging.getLogger("service.http")

Handler = Callable[[Scope, Exchange], Awaitable[None]]
# What the app offers the HTTP edge: the handler of a (method, path) it answers directly.
DirectRoutes = Callable[[str, str], Handler | None]

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
# A call cut off before its answer: it may have run (its script may have been sent).
_CUT_OFF: Final = encode_error(
    ErrorCode.INTERNAL,
    "internal error: the call was cut off before its answer (the graceful shutdown's timeout, or a "
    "fault); it may have been applied",
    "maybe",
)


def _nothing() -> None:
    pass


class DirectCycle(RequestResponseCycle):
    def __init__(
        self,
        handler: Handler,
        scope: Scope,
        transport: asyncio.Transport,
        flow: FlowControl,
        logger: logging.Logger,
        default_headers: list[tuple[bytes, bytes]],
        expect_100_continue: bool,
        keep_alive: bool,
        on_response: Callable[[], None],
    ) -> None:
        # uvicorn's attributes, set here rather than by its __init__ from keywords: a
        # third of the cost, on every call (tests/test_direct.py checks they are all here).
        self.handler = handler
        self.request = scope
        self.scope = scope  # type: ignore[assignment]
        self.transport = transport
        self.flow = flow
        self.logger = logger
        self.access_logger = logger
        self.access_log = False  # the endpoint logs its own calls (ops/access_log.py)
        self.default_headers = default_headers
        self.message_event = asyncio.Event()
        self.on_response = on_response
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = bytearray()
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding = None
        self.expected_content_length = 0

    async def run_asgi(self, app: Any) -> None:
        """uvicorn's wrapper, around the handler instead of an app; but where uvicorn
        answers a plain-text 500, this answers the envelope: 10002, maybe applied."""
        try:
            await self.handler(self.request, self)
        except BaseException as exc:
            # The endpoint answers its own faults as values: this is the cancel at the end
            # of the graceful timeout (uvicorn's), or a fault of ours.
            if isinstance(exc, asyncio.CancelledError):
                log.warning("a call still running at the end of the graceful timeout was cut off")
            else:
                log.error("unexpected fault answering %s", self.request["path"], exc_info=exc)
            self._cut_off()
        else:
            if not self.response_started and not self.disconnected:  # a fault of ours
                log.error("%s ended without an answer", self.request["path"])
                self._cut_off()
        finally:
            self.on_response = _nothing

    def _cut_off(self) -> None:
        if self.response_started or self.disconnected or self.transport.is_closing():
            self.transport.close()
        else:
            self.keep_alive = False
            self._answer(200, _CUT_OFF, None)

    # Exchange --------------------------------------------------------------------------

    async def read_body(self, cap: int) -> bytes:
        check_declared_length(self.request, cap)
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        while self.more_body and not self.disconnected:
            if len(self.body) > cap:
                raise too_large(cap)
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected:
            raise ClientGone
        if len(self.body) > cap:
            raise too_large(cap)
        return bytes(self.body)

    async def gone(self) -> None:
        while not (self.disconnected or self.response_complete):
            self.flow.resume_reading()  # as uvicorn's receive(): a paused socket hears no EOF
            await self.message_event.wait()
            self.message_event.clear()

    async def reply(self, status: int, payload: bytes, request_id: bytes) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        # A reset connection: uvloop closes its transport before the protocol hears of it.
        if not self.disconnected and not self.transport.is_closing():
            self._answer(status, payload, request_id)

    def _answer(self, status: int, payload: bytes, request_id: bytes | None) -> None:
        """Head and body in one write, as uvicorn's `send` would write them."""
        parts = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(payload))
        if request_id is not None:
            parts += (b"x-request-id: ", request_id, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", payload)
        self.response_started = True
        self.waiting_for_100_continue = False
        self.transport.write(b"".join(parts))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
