"""The access log: one line per call, written to stdout in batches of whole lines.

Operators keep it on, so it is on the hot path of every call. Going through `logging`
cost about a third of the service's throughput (a `LogRecord` per call, a walk of its
`__dict__`, a write and a flush per line), and even one write per event-loop tick cost a
fifth: under load a tick holds only a call or two, and a write is a system call. Here a
call appends its encoded line to a buffer; the buffer is written when it holds PIPE_BUF
bytes, and otherwise FLUSH_SECONDS after its first line, so a line reaches stdout within
that time, and the lines still pending are written at shutdown.

The line is the one `logging` wrote before, field for field (`service.ops.logs` formats
every other line): JSON by default, escaped text for a terminal. The level is still the
`service.access` logger's, so `log_level = "warning"` turns the lines off.

Every write is whole lines of at most PIPE_BUF bytes: a pipe (a container's stdout) takes
such a write in one piece, so the workers of `--workers N`, which share one stdout,
never interleave inside a line.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Final, Literal

import msgspec

from service.ops.log_text import MAX_FIELD_CHARS, bounded, escaped

_LOGGER: Final = logging.getLogger("service.access")
_PIPE_BUF: Final = select.PIPE_BUF
FLUSH_SECONDS: Final = 0.05


class _Line(msgspec.Struct, gc=False):
    # The order and names of today's JSON access line; msgspec writes them in this order.
    time: str
    level: str
    logger: str
    message: str
    request_id: str
    command: str
    sdkappid: int | None
    # Who called (the query's identifier, once authenticated): an end user's changes are
    # traceable to the end user.
    identifier: str | None
    group_id: str | None
    error_code: int
    latency_ms: float


class _Clock:
    """Log timestamps: formatted once per millisecond, the date part once per second."""

    def __init__(self, utc: bool) -> None:
        self._utc = utc
        self._second = -1
        self._prefix = ""
        self._millisecond = -1
        self._text = ""

    def __call__(self) -> str:
        millisecond = int(time.time() * 1000)
        if millisecond != self._millisecond:
            self._millisecond = millisecond
            second, millis = divmod(millisecond, 1000)
            if second != self._second:
                self._second = second
                if self._utc:
                    self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                else:
                    self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._text = f"{self._prefix}.{millis:03d}Z" if self._utc else f"{self._prefix},{millis:03d}"
        return self._text


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AccessLog:
    """The process's access log (`ACCESS`); `setup_logging` picks its format."""

    def __init__(self) -> None:
        self._format: Literal["json", "text"] = "json"
        self._clock = _Clock(utc=True)
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()
        self._flush_timer: asyncio.TimerHandle | None = None
        # Tests swap the destination; by default it is whatever stdout is at flush time.
        self.write: Callable[[bytes], None] | None = None

    def configure(self, fmt: Literal["json", "text"]) -> None:
        self.flush()
        self._format = fmt
        self._clock = _Clock(utc=fmt == "json")

    def call(
        self,
        request_id: bytes,
        command: str,
        sdkappid: int | None,
        group_id: str | None,
        code: int,
        elapsed: float,
        identifier: str | None = None,
    ) -> None:
        """Log one call, if the level lets INFO through; written within FLUSH_SECONDS."""
        if not _LOGGER.isEnabledFor(logging.INFO):
            return
        if group_id is not None and len(group_id) > MAX_FIELD_CHARS:
            group_id = bounded(group_id)
        if identifier is not None and len(identifier) > MAX_FIELD_CHARS:
            identifier = bounded(identifier)
        latency_ms = round(elapsed * 1_000_000) / 1000  # round(x, 3), at a fraction of its cost
        code = int(code)  # an ErrorCode writes as its number in both formats
        buffer = self._buffer
        start = len(buffer)
        if self._format == "json":
            line = _Line(
                self._clock(),
                "info",
                "service.access",
                "call",
                request_id.decode(),
                command,
                sdkappid,
                identifier,
                group_id,
                code,
                latency_ms,
            )
            self._encoder.encode_into(line, buffer, -1)
            buffer += b"\n"
        else:
            buffer += (
                f"{self._clock()} INFO service.access: call request_id={escaped(request_id.decode())} "
                f"command={escaped(command)} sdkappid={sdkappid} identifier={escaped(str(identifier))} "
                f"group_id={escaped(str(group_id))} "
                f"error_code={code} latency_ms={latency_ms}\n"
            ).encode()
        if len(buffer) >= _PIPE_BUF:
            # The lines before this one make a write; this one starts the next (a line
            # alone over PIPE_BUF, which no write could keep whole, goes out by itself).
            cut = start or len(buffer)
            self._emit(bytes(buffer[:cut]))
            del buffer[:cut]
        if buffer and self._flush_timer is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling a handler directly): write now
            self.flush()
            return
        self._flush_timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write every pending line (also at shutdown, so none is lost at SIGTERM)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._buffer:
            pending = bytes(self._buffer)
            self._buffer.clear()
            self._emit(pending)

    def _emit(self, chunk: bytes) -> None:
        (self.write or _stdout_writer())(chunk)


def _stdout_writer() -> Callable[[bytes], None]:
    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # stdout replaced by something without a file

        def write_text(chunk: bytes) -> None:
            stream.write(chunk.decode())
            stream.flush()

        return write_text
    stream.flush()  # lines written through `logging` come first
    return functools.partial(_write_all, fd)


ACCESS: Final = AccessLog()
atexit.register(ACCESS.flush)
