"""The HTTP protocol layer's own cost per request, in process, without the machine's noise.

    python -m tests.bench.protocol_cost [REQUESTS]      (pin it: taskset -c 0 ...)

uvicorn's HttpToolsProtocol against service.http.protocol.LimitedHttpToolsProtocol: a fake
transport, one keep-alive connection, a trivial ASGI app, uvloop; the best of 7 runs
of REQUESTS requests each, twice in alternation. Paired wrk runs on a shared 2-core
machine vary by +-5% between rounds; this isolates what the subclass adds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Final

import uvloop
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.http.protocol import LimitedHttpToolsProtocol

REQUEST: Final = (
    b"POST /v4/group_open_http_svc/update_group_counter?sdkappid=1400000000&identifier=administrator"
    b"&usersig=" + b"x" * 200 + b"&random=12345&contenttype=json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\nContent-Length: 90\r\n\r\n{" + b" " * 88 + b"}"
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


class FakeTransport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name in ("sockname", "peername") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def seconds_per_request(protocol_class: type[HttpToolsProtocol], requests: int) -> float:
    config = Config(app=app, loop="none", http=protocol_class, ws="none", log_config=None)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(FakeTransport())  # type: ignore[arg-type]
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(requests):
            protocol.data_received(REQUEST)
            await asyncio.sleep(0)  # the request's task runs
            await asyncio.sleep(0)  # and finishes
        best = min(best, (time.perf_counter() - started) / requests)
    return best


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    for _ in range(2):
        for protocol_class in (HttpToolsProtocol, LimitedHttpToolsProtocol):
            cost = uvloop.run(seconds_per_request(protocol_class, requests))
            print(f"{protocol_class.__name__:28s} {cost * 1e9:7.0f} ns per request")


if __name__ == "__main__":
    main()
