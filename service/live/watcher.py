"""A watcher of live counters: one event stream's bounded buffer of frames not yet
written to its socket, and the notices and frames a feed hands it (service/live/feeds.py).

A watcher whose buffer overflows (a client that does not read, once its socket's own
buffer is full) is ended: memory never grows with a slow reader, and its EventSource
reconnects with Last-Event-ID and resyncs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from starlette.types import Send

from service.http.protocol import OneWrite
from service.wire import encoder

# Bytes of frames a watcher may hold unwritten beyond its socket's own buffer.
WATCHER_BUFFER_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Notice:
    """One published change: "<incarnation>\\xff<version>\\xff<kind>\\xff<item>..." (lua/include/live.lua)."""

    incarnation: str
    version: int
    kind: bytes  # b"u" update (Key, value pairs), b"d" delete (Keys), b"x" destroy
    items: list[bytes]

    @classmethod
    def parse(cls, payload: bytes) -> Notice:
        incarnation, version, kind, *items = payload.split(b"\xff")
        return cls(incarnation.decode(), int(version), kind, items)


def event_id(incarnation: str, version: int) -> str:
    """The SSE id: a version means nothing outside the group's life it belongs to."""
    return f"{incarnation}-{version}" if incarnation else "0"


def sse_frame(event: str, ident: str, data: msgspec.Struct) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (ident.encode(), event.encode(), encoder.encode(data))


class _Resume:
    """Hands a coroutine that suspended while we drove it by hand to a task, to finish.

    `coroutine.send(None)` ran it up to `blocker`, the future it waits on (the socket's
    drain); awaiting this resumes it exactly where it stopped."""

    def __init__(self, coroutine: Coroutine[Any, Any, None], blocker: Any) -> None:
        self.coroutine = coroutine
        self.blocker = blocker

    def __await__(self) -> Generator[Any, Any, None]:
        pending = self.blocker
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # cancelled: the coroutine learns it too
                pending = self.coroutine.throw(exc)
                continue
            try:
                pending = self.coroutine.send(value)
            except StopIteration:
                return


class Watcher:
    """One SSE client: frames go straight to its socket while it keeps up.

    A frame for a watcher that is idle is written at once, from the feed's own step:
    `send` runs to completion without suspending unless the socket's buffer is full
    (uvicorn's flow control). Then, and only then, the watcher gets a task of its own
    that waits for the socket to drain, frames queue meanwhile (bounded), and the task
    writes them as one chunk when it can. So ten thousand watchers that keep up cost
    one write each per pass of the feed's cursor and no task switch at all."""

    __slots__ = (
        "busy",
        "ended",
        "finished",
        "frames",
        "limit",
        "overflowed",
        "seen",
        "send",
        "size",
        "transport",
        "writer",
    )

    def __init__(self, limit: int) -> None:
        self.frames: list[bytes] = []
        self.size = 0
        self.seen = 0  # the feed's number of the next frame this watcher needs (`Feed.add` sets it)
        self.limit = limit
        self.ended = False
        self.overflowed = False
        # Until the endpoint has sent the response's start and first frames, it owns the socket.
        self.busy = True
        self.send: Send | None = None
        self.transport: Any = None
        self.writer: asyncio.Future[None] | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def attach(self, send: Send) -> None:
        """The endpoint has sent the response's start: frames may go to the socket now.

        Under uvicorn's httptools server (the one `python -m service` runs) a chunked
        response's socket is reachable from its `send`, and the feed's cursor then writes
        one pre-framed chunk, the same bytes for watchers at the same point, straight to each socket:
        one call and one syscall per watcher instead of a coroutine through the server's
        send. Any other server gets `send`. Either way a watcher whose socket holds more
        than `limit` unsent bytes is cut off."""
        self.send = send
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if isinstance(transport, OneWrite):  # nothing is held once the stream has begun
            transport = transport.transport
        if getattr(cycle, "chunked_encoding", None) is True and hasattr(transport, "get_write_buffer_size"):
            self.transport = transport

    def unsent(self) -> int:
        """Bytes queued for this watcher and not yet taken by the kernel."""
        transport = self.transport
        return self.size + (transport.get_write_buffer_size() if transport is not None else 0)

    def push(self, frame: bytes, framed: bytes | None = None) -> None:
        """Queue or write `frame`; `framed` is the same as an HTTP/1.1 chunk, when known."""
        if self.ended:
            return
        if not self.busy:
            transport = self.transport
            if transport is None or framed is None:
                self._write_now(frame)
            elif transport.is_closing():
                self.end()
            elif transport.get_write_buffer_size() > self.limit:
                self.overflowed = True
                self.end()
            else:
                transport.write(framed)
            return
        self.size += len(frame)
        if self.size > self.limit:
            # Cut off: what it holds is dropped with it, so its memory stays bounded.
            self.frames.clear()
            self.overflowed = True
            self.end()
        else:
            self.frames.append(frame)

    def end(self, frame: bytes = b"") -> None:
        if frame:
            self.push(frame)
        self.ended = True
        if not self.finished.done():
            self.finished.set_result(None)

    def _write_now(self, frame: bytes) -> None:
        assert self.send is not None
        message = {"type": "http.response.body", "body": frame, "more_body": True}
        # An ASGI server's send is a coroutine function (uvicorn's is): driven by hand here.
        coroutine = cast(Coroutine[Any, Any, None], self.send(message))
        try:
            blocker = coroutine.send(None)
        except StopIteration:
            return
        except Exception:  # the client is gone: the endpoint ends the stream
            self.end()
            return
        self.busy = True
        self.writer = asyncio.ensure_future(self._finish(coroutine, blocker))

    async def _finish(self, coroutine: Coroutine[Any, Any, None], blocker: Any) -> None:
        try:
            await _Resume(coroutine, blocker)
            await self.flush()
        except Exception:
            self.end()

    async def flush(self) -> None:
        """Write what queued while the socket was busy, then take frames directly again."""
        assert self.send is not None
        while self.frames:
            frames, self.frames, self.size = self.frames, [], 0
            await self.send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
        self.busy = False
