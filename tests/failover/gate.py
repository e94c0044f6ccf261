"""A TCP proxy in front of one Redis that can cut off everyone but the service.

The service connects from 127.0.0.1; the sentinels and the replicas are started with
`bind-source-addr 127.0.0.2`, so their connections come from 127.0.0.2. `cut()` stops
passing bytes on every connection not from 127.0.0.1, both ways, without closing it (a
partition drops packets; it sends no reset), and holds new ones likewise: the node is
cut off from its sentinels and replicas while it still serves the service (the
dangerous case: a master that keeps acknowledging writes a failover will drop, its
replicas still counted as connected until its repl-timeout). `heal()` lets the held
bytes through, as TCP retransmits them after a partition. Its own event loop, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final

SERVICE_ADDRESS: Final = "127.0.0.1"
OTHERS_ADDRESS: Final = "127.0.0.2"


class Gate:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_off = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: asyncio.Event | None = None  # set while not cut off

    def start(self) -> Gate:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        other = writer.get_extra_info("peername")[0] != SERVICE_ADDRESS
        gate = self._open if other else None
        try:
            if gate is not None:
                await gate.wait()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            try:
                await asyncio.gather(_pipe(reader, up_writer, gate), _pipe(up_reader, writer, gate))
            finally:
                up_writer.transport.abort()
        except OSError:
            pass  # the node is down: the client sees its connection closed, as behind any proxy
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._cut)

    def _cut(self) -> None:
        self.cut_off = True
        assert self._open is not None
        self._open.clear()

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self._heal)

    def _heal(self) -> None:
        self.cut_off = False
        assert self._open is not None
        self._open.set()

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            if gate is not None:
                await gate.wait()
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
