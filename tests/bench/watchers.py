"""The load generator of the live-counter benchmark: N watchers of one group and one writer.

python -m tests.bench.watchers --port P --usersig U --group G --watchers N --rate R --seconds S

Opens N watch_group_counter streams, waits until each has its snapshot, then
sends update_group_counter (Increase) to the group at R calls/s on a schedule for S
seconds, pipelined on one keep-alive connection (open loop: a call goes out on time
whether or not the one before was answered). The group has one writer, so the n-th
acknowledged update is version base + n. `--probes` of the watchers note the arrival
time of every version; the others only read. Prints one JSON line: delivery latency
from each update's acknowledgement to its arrival at each probe (p50, p99, max), the
versions every probe missed or saw twice or out of order, the streams cut off, and the
service's mean pass over its watchers (group_counter_delivery_pass_seconds, from /metrics).

The client must cost far less than the server it measures, and on one machine a
client's socket costs the server too: the kernel runs a loopback packet's receiving
side, and wakes whoever polls the receiving socket, in the sender's system call. So
only the probes are asyncio protocols (uvloop), polled; the other watchers are plain
sockets that no poller watches, read a slice at a time a few times a second. A
watcher's data then costs the server's CPU what it would cost with the client on
another machine, plus the receiving half of loopback TCP, which no client can avoid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
import sys
import time
from typing import Any, Final, cast

API: Final = "/v4/group_open_http_svc"
SDKAPPID: Final = 1400000000
ADMIN: Final = "administrator"
_VALUE: Final = re.compile(rb'"Key":"a","Value":(\d+)')
_ID: Final = re.compile(rb"\nid: (?:[0-9a-f]+-)?(\d+)\n")


def query(usersig: str) -> str:
    return f"sdkappid={SDKAPPID}&identifier={ADMIN}&usersig={usersig}&random=1&contenttype=json"


class Watcher(asyncio.Protocol):
    """A probe: notes the arrival time of every version."""

    def __init__(self, request: bytes, ready: asyncio.Future[None]) -> None:
        self.request = request
        self.ready = ready
        self.snapshot: int | None = None
        self.arrivals: list[tuple[int, float]] = []
        self.tail = b""
        self.lost = False
        self.bytes = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        now = time.monotonic()
        text = self.tail + data
        for match in _ID.finditer(text):
            version = int(match.group(1))
            if self.snapshot is None:
                self.snapshot = version
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                self.arrivals.append((version, now))
        # An id split across two reads is found on the next one.
        cut = text.rfind(b"\n\n")
        self.tail = text[cut:] if cut >= 0 else text[-200:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("stream closed before its snapshot"))


class Bulk:
    """A watcher that is not a probe: a plain socket that no poller watches."""

    def __init__(self, request: bytes, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(request)
        self.snapshot: int | None = None
        self.lost = False
        self.bytes = 0

    def await_snapshot(self) -> None:
        self.sock.settimeout(60)
        text = b""
        while (match := _ID.search(text)) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("stream closed before its snapshot")
            text += data
        self.bytes += len(text)
        self.snapshot = int(match.group(1))
        self.sock.setblocking(False)

    def drain(self) -> None:
        """Take whatever the kernel holds for this watcher."""
        if not self.lost:
            taken, self.lost = take(self.sock)
            self.bytes += taken


def take(sock: socket.socket) -> tuple[int, bool]:
    """Read a non-blocking socket until the kernel holds nothing more for it: the bytes
    read, and whether its stream has ended."""
    taken = 0
    while True:
        try:
            data = sock.recv(1 << 18)
        except BlockingIOError:
            return taken, False
        except OSError:
            return taken, True
        if not data:
            return taken, True
        taken += len(data)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """The body of the next HTTP/1.1 response on a keep-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower())[1])  # type: ignore[index]
    return await reader.readexactly(length)


async def delivery_passes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[float, int]:
    """The service's own account of its passes over the watchers (its /metrics):
    seconds in all, and how many."""
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    text = (await read_reply(reader)).decode()
    total = re.search(r"^group_counter_delivery_pass_seconds_sum (\S+)$", text, re.MULTILINE)
    count = re.search(r"^group_counter_delivery_pass_seconds_count (\S+)$", text, re.MULTILINE)
    if total is None or count is None:
        return 0.0, 0
    return float(total[1]), int(float(count[1]))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    path = f"{API}/watch_group_counter?{query(args.usersig)}&GroupId={args.group}"
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    probes: list[Watcher] = []
    bulk: list[Bulk] = []
    every = max(1, args.watchers // args.probes)
    started = time.monotonic()
    for first in range(0, args.watchers, args.batch):
        connecting = []
        batch: list[Bulk] = []
        for n in range(first, min(first + args.batch, args.watchers)):
            if n % every == 0:
                ready: asyncio.Future[None] = loop.create_future()
                probe = Watcher(request, ready)
                probes.append(probe)
                connecting.append(loop.create_connection(lambda w=probe: w, "127.0.0.1", args.port))  # type: ignore[misc]
            else:
                batch.append(Bulk(request, args.port))
        async with asyncio.timeout(60):
            await asyncio.gather(*connecting)
            await asyncio.gather(*(w.ready for w in probes if not w.ready.done()))
        for stream in batch:
            stream.await_snapshot()
        bulk += batch
    connect_seconds = time.monotonic() - started
    base = probes[0].snapshot or 0
    print(
        f"{args.watchers} watchers at version {base} in {connect_seconds:.1f} s", file=sys.stderr, flush=True
    )
    if args.hold:
        # The caller reads the server's RSS now; a line on stdin says go on.
        print(json.dumps({"connected": args.watchers}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)

    async def read_in_bulk() -> None:
        # A few times a second, in slices with the loop free between them: the probes'
        # arrival times must not wait behind this client's own bookkeeping.
        slices = [bulk[n : n + 100] for n in range(0, len(bulk), 100)]
        while True:
            for part in slices:
                for stream in part:
                    stream.drain()
                await asyncio.sleep(0)
            await asyncio.sleep(0.2)

    reading = asyncio.create_task(read_in_bulk())
    body = json.dumps({"GroupId": args.group, "Mode": "Increase", "GroupCounter": [{"Key": "a", "Value": 1}]})
    post = (
        f"POST {API}/update_group_counter?{query(args.usersig)} HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    # Only this client changes Key "a" (0 at the snapshot, version `base`), by 1 a call:
    # the value a reply reports names the version the call made, whichever connection
    # answered first.
    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(16):
        connections.put_nowait(await asyncio.open_connection("127.0.0.1", args.port))
    acks: dict[int, float] = {}
    total = int(args.rate * args.seconds)

    async def call() -> None:
        reader, writer = await connections.get()
        writer.write(post)
        reply = await read_reply(reader)
        acked = time.monotonic()
        connections.put_nowait((reader, writer))
        value = _VALUE.search(reply)
        if b'"ErrorCode":0' not in reply or value is None:
            raise RuntimeError(f"update failed: {reply[:200]!r}")
        acks[base + int(value[1])] = acked

    calls = []
    begin = time.monotonic() + 0.1
    for n in range(total):
        # Open loop: each call goes out on its schedule, whether the ones before were answered or not.
        delay = begin + n / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        calls.append(asyncio.create_task(call()))
    async with asyncio.timeout(60):
        await asyncio.gather(*calls)
    last = base + total
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(  # noqa: ASYNC110 (polls the protocols' state)
        not w.lost and (not w.arrivals or w.arrivals[-1][0] < last) for w in probes
    ):
        await asyncio.sleep(0.05)
    passes = await delivery_passes(*await connections.get())
    while not connections.empty():
        connections.get_nowait()[1].close()
    reading.cancel()
    for stream in bulk:
        stream.drain()

    latencies: list[float] = []
    missing = disorder = 0
    for watcher in probes:
        seen = [version for version, _ in watcher.arrivals]
        if seen != sorted(seen) or len(seen) != len(set(seen)):
            disorder += 1
        missing += len(set(range(base + 1, last + 1)) - set(seen))
        latencies += [(at - acks[version]) * 1000 for version, at in watcher.arrivals if version in acks]
    return {
        "watchers": args.watchers,
        "probes": len(probes),
        "rate": args.rate,
        "updates": total,
        "achieved_rate": (len(acks) - 1) / (max(acks.values()) - min(acks.values()))
        if len(acks) > 1
        else 0.0,
        "connect_seconds": connect_seconds,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=0.0),
        "mean_ms": statistics.fmean(latencies) if latencies else 0.0,
        "deliveries": len(latencies),
        "missing": missing,
        "out_of_order_probes": disorder,
        "passes": passes[1],
        "pass_ms_mean": passes[0] / passes[1] * 1000 if passes[1] else 0.0,
        "cut_off": sum(w.lost for w in probes) + sum(w.lost for w in bulk),
        "bytes": sum(w.bytes for w in probes) + sum(w.bytes for w in bulk),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--usersig", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--hold", action="store_true", help="pause after connecting until a line on stdin")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
