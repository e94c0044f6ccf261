"""A TCP proxy that misbehaves like a sick network or a sick Redis, on purpose.

It runs its own event loop in a thread, between the service and a real redis-server,
and at points chosen by a seeded random generator it:

- closes the service's side or Redis's side of a connection (a reset);
- stalls: stops passing bytes both ways without closing (a partition, a dead host);
- cuts a reply in half and closes (half a reply, then nothing);
- delays a chunk (a slow network);
- accepts a connection and closes it at once, or answers it with Redis's own
  `-ERR max number of clients reached` and closes (a full Redis, a sidecar in front of
  a Redis that is down);
- refuses: resets a connection as it is accepted.

`injecting = False` makes it a faithful proxy again; `seed` replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import socket
import struct
import threading
from collections import Counter
from typing import Final

MAX_CLIENTS: Final = b"-ERR max number of clients reached\r\n"

# Per-connection faults at accept time, and per-chunk faults on a live connection.
ACCEPT_FAULTS: Final = ("accept_close", "max_clients", "refuse")
CHUNK_FAULTS: Final = ("close_client", "close_upstream", "stall", "half_reply", "delay")


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int,
        fault_rate: float = 0.02,
        accept_fault_rate: float = 0.3,
        stall_seconds: float = 1.5,
        listen_port: int = 0,
    ) -> None:
        self.upstream_port = upstream_port
        self.seed = seed
        self.fault_rate = fault_rate
        # Connections are few (one per service worker until a fault): faults at accept
        # need a higher rate to happen at all.
        self.accept_fault_rate = accept_fault_rate
        self.stall_seconds = stall_seconds
        self.injecting = False
        self.injected: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._listen_port = listen_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._listen_port

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        # Anything of the proxy's still unclosed is found here, in the test that made it.
        del self._loop
        gc.collect()

    def drop_all(self) -> None:
        """Reset every open connection (as a proxy or Redis restart would)."""
        self._loop.call_soon_threadsafe(self._drop_all)

    # ---- the proxy's loop ----

    async def _listen(self) -> None:
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._listen_port))
        except OSError:
            sock.close()
            raise
        self._listen_port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accepted, sock=sock)

    async def _shutdown(self) -> None:
        self.injecting = False
        if self._server is not None:
            self._server.close()
        self._drop_all()
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._drop_all()
        await asyncio.sleep(0.05)  # aborted transports close their sockets on the next turns

    def _drop_all(self) -> None:
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    def _draw(self, faults: tuple[str, ...]) -> str | None:
        rate = self.accept_fault_rate if faults is ACCEPT_FAULTS else self.fault_rate
        if not self.injecting or self._random.random() >= rate:
            return None
        fault = self._random.choice(faults)
        self.injected[fault] += 1
        return fault

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            writer.transport.abort()
            self._connections.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self._draw(ACCEPT_FAULTS)
        if fault == "max_clients":
            writer.write(MAX_CLIENTS)
            with contextlib.suppress(OSError):
                await writer.drain()
        if fault == "refuse":
            # A reset as the connection is accepted: what a client sees of a listener past
            # its backlog or a firewall that rejects (closing the listener itself leaves
            # asyncio's half-accepted transports behind).
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if fault is not None:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._connections.add(up_writer)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, writer, replies=False)),
            asyncio.ensure_future(self._pump(up_reader, writer, up_writer, replies=True)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            up_writer.transport.abort()
            self._connections.discard(up_writer)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        target: asyncio.StreamWriter,
        source_writer: asyncio.StreamWriter,
        *,
        replies: bool,
    ) -> None:
        """Bytes from source to target; `replies` is Redis's side (toward the service).

        Reading runs apart from forwarding, so a side that closes is seen at once: bytes
        held back by a delay for a connection that is gone are dropped, as the network
        would drop them, rather than delivered to Redis after the service gave up."""
        client_side = target if replies else source_writer
        upstream_side = source_writer if replies else target
        chunks: asyncio.Queue[bytes] = asyncio.Queue()

        async def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := await source.read(65536):
                    chunks.put_nowait(chunk)
            chunks.put_nowait(b"")  # closed

        reading = asyncio.ensure_future(read())
        try:
            while chunk := await chunks.get():
                match self._draw(CHUNK_FAULTS):
                    case "close_client":
                        client_side.transport.abort()
                        return
                    case "close_upstream":
                        upstream_side.transport.abort()
                        return
                    case "stall":
                        # A peer that stops answering and never resets: nothing passes
                        # until the connection is given up.
                        await asyncio.sleep(self.stall_seconds)
                        return
                    case "half_reply" if replies and len(chunk) > 1:
                        target.write(chunk[: len(chunk) // 2])
                        await target.drain()
                        await asyncio.sleep(0.05)
                        client_side.transport.abort()
                        return
                    case "delay":
                        await asyncio.sleep(self._random.uniform(0.01, 0.2))
                if (reading.done() and chunks.empty()) or client_side.transport.is_closing():
                    return  # the sender left meanwhile: what it sent is lost
                target.write(chunk)
                await target.drain()
        except OSError:
            return
        finally:
            reading.cancel()
