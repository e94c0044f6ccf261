"""`/metrics` on a port of its own (`--metrics-port`), so the API port serves only the API.

Scrapes then need no path rule at the Ingress, and a NetworkPolicy can open the
metrics port to the monitoring namespace alone. The server runs on the worker's own
event loop: `metrics.TALLY` is written by that loop's calls without a lock, so a
thread (as prometheus_client's `start_http_server` uses) would race them. Every
worker binds the port with SO_REUSEPORT; whichever one answers a scrape reports all
workers (metrics.py's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from service.ops.metrics import render

# A scrape is one small request; anything slower or larger is not a scraper.
_READ_TIMEOUT: Final = 5.0
_MAX_HEADER_LINES: Final = 100


async def serve_metrics(host: str, port: int) -> asyncio.Server:
    """Listening once this returns; close the returned server to stop."""
    return await asyncio.start_server(_answer, host, port, reuse_port=True)


async def _request_target(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(method, path) of one HTTP request, its headers read and dropped."""
    request_line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
    for _ in range(_MAX_HEADER_LINES):
        line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
        if line in (b"\r\n", b"\n", b""):
            break
    parts = request_line.split()
    if len(parts) != 3:
        return b"", b""
    return parts[0], parts[1].split(b"?", 1)[0]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        method, path = await _request_target(reader)
        if method in (b"GET", b"HEAD") and path == b"/metrics":
            payload, content_type = render()
            status = b"200 OK"
        else:
            payload, content_type = b"only GET /metrics here\n", "text/plain; charset=utf-8"
            status = b"404 Not Found"
        head = (
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + content_type.encode()
            + b"\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        writer.write(head if method == b"HEAD" else head + payload)
        await writer.drain()
    except (TimeoutError, ConnectionError, ValueError):
        pass  # a client that went away or sent garbage gets nothing; the next scrape retries
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
