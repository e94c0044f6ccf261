"""The machine's floor for a delivery pass: N loopback TCP sockets, one bare write each.

python -m tests.bench.floor [--sockets 10000] [--bytes 2048] [--seconds 5]

A server process (pinned where the service runs in `make bench`) accepts N connections
from a client process (pinned with the load, reading as tests/bench/watchers.py reads
its watchers: plain sockets, a slice at a time, a few times a second), then writes
`--bytes` to each socket in turn with os.write, pass after pass, for `--seconds`. Nothing
else: no event loop, no HTTP, no frames, no bookkeeping.

A server that gives each watcher every frame it lacks in one write, as the service
does, delivers a frame within one pass of its watchers, so its p99 delivery latency is
about one pass. The median bare pass is the least that pass can take on this machine
with this many watchers: the floor under the delivery figures of `make bench`, measured
in the same run. Most of it is the kernel's: on loopback a write runs both ends' TCP
(the receiving socket's too) inside the sender's system call.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from tests.bench.machine import BenchError, Cpus
from tests.bench.watchers import take


def serve(sockets: int, nbytes: int, seconds: float) -> dict[str, Any]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    print(listener.getsockname()[1], flush=True)
    fds: list[int] = []
    connections: list[socket.socket] = []
    while len(connections) < sockets:
        connection, _ = listener.accept()
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connections.append(connection)
        fds.append(connection.fileno())
    time.sleep(0.5)  # the client's last connections settle
    data = b"x" * nbytes
    write = os.write
    passes: list[float] = []
    short = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        for fd in fds:
            try:
                short += write(fd, data) != nbytes
            except BlockingIOError:
                short += 1
        passes.append(time.perf_counter() - started)
    return {
        "sockets": sockets,
        "bytes": nbytes,
        "passes": len(passes),
        "pass_ms": statistics.median(passes) * 1000,
        "write_us": statistics.median(passes) / sockets * 1e6,
        "short_writes": short,
    }


def read(port: int, sockets: int) -> None:
    streams = []
    for _ in range(sockets):
        stream = socket.create_connection(("127.0.0.1", port))
        stream.setblocking(False)
        streams.append(stream)
    while True:
        for stream in streams:
            take(stream)
        time.sleep(0.2)


def floor_pass(cpus: Cpus, sockets: int, nbytes: int = 2048, seconds: float = 5.0) -> dict[str, Any]:
    """The floor, with the server on `cpus.server` and the client on `cpus.load`."""
    base = [sys.executable, "-m", "tests.bench.floor", "--sockets", str(sockets)]
    server = subprocess.Popen(
        [*Cpus.prefix(cpus.server), *base, "--bytes", str(nbytes), "--seconds", str(seconds), "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    client: subprocess.Popen[bytes] | None = None
    try:
        port = server.stdout.readline().strip()
        if not port:
            raise BenchError(f"the floor's server failed (exit {server.wait(10)})")
        client = subprocess.Popen([*Cpus.prefix(cpus.load), *base, "--read", port])
        line = server.stdout.readline()
        if server.wait(60) != 0 or not line:
            raise BenchError(f"the floor's server failed (exit {server.returncode})")
        result: dict[str, Any] = json.loads(line)
        return result
    finally:
        if client is not None:
            client.kill()
            client.wait()
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--bytes", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--read", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.sockets, args.bytes, args.seconds)), flush=True)
    elif args.read:
        read(args.read, args.sockets)
    else:
        print(json.dumps(floor_pass(Cpus.pick(), args.sockets, args.bytes, args.seconds)))


if __name__ == "__main__":
    main()
