"""An app served as `python -m service` serves it, in a thread of the test process.

The contract tests call the service through this on every backend but the embedded
store: uvicorn with uvloop and the service's own HTTP protocol (service/http/protocol.py),
so each call crosses a real socket and the HTTP edge, and a command is answered on its
request cycle (service/http/direct.py), as in production. The embedded store's tests
keep Starlette's TestClient, which speaks ASGI: that path is proven too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import uvicorn
from starlette.types import ASGIApp

from service.http.protocol import LimitedHttpToolsProtocol

_START_SECONDS = 10.0
_STOP_SECONDS = 5.0


class _Server(uvicorn.Server):
    """uvicorn's server, which looks for its exit and waits for its connections every
    10 ms instead of every 100: a server per test puts its stop on every test's path."""

    async def main_loop(self) -> None:
        ticks = 0
        while not await self.on_tick(0 if ticks % 100 == 0 else 1):  # headers once a second
            ticks += 1
            await asyncio.sleep(0.01)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's graceful shutdown, at that pace.
        for server in self.servers:
            server.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        deadline = time.monotonic() + _STOP_SECONDS
        # Polled, as uvicorn does: the server state has no event to wait on.
        while (state.connections or state.tasks) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for task in state.tasks:
            task.cancel()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@contextlib.contextmanager
def served(app: ASGIApp) -> Iterator[httpx2.Client]:
    """A client of `app` served on a free loopback port; the server stops at the end."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="uvloop",
        http=LimitedHttpToolsProtocol,
        ws="none",
        access_log=False,
        proxy_headers=False,
        log_config=None,
    )
    server = _Server(config)
    thread = threading.Thread(target=server.run, name="served app", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.002)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=_START_SECONDS + _STOP_SECONDS)
