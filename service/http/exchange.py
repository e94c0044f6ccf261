"""What the command endpoint needs of a request's connection, whatever carries it.

A command reads one body, answers once, and (a command that walks) learns when its
client leaves. Over ASGI (`AsgiExchange`: Starlette's test client, a server other than
ours) that is `receive` and `send`; under `python -m service` it is the connection's
request cycle itself (direct.py), which skips ASGI's messages on the hot path.
"""

from __future__ import annotations

from typing import Final, Protocol

from starlette.types import Message, Receive, Scope, Send

from service.http.body import read_body

_JSON: Final = (b"content-type", b"application/json")


class Exchange(Protocol):
    async def read_body(self, cap: int) -> bytes:
        """The whole body; BodyTooLarge past `cap` bytes, ClientGone when the client left."""
        ...

    async def gone(self) -> None:
        """Returns once the client has left (after the body is read)."""
        ...

    async def reply(self, status: int, payload: bytes, request_id: bytes) -> None:
        """The JSON answer, in full; nothing when the client has left."""
        ...


async def send_reply(send: Send, status: int, payload: bytes, request_id: bytes | None = None) -> None:
    headers = [_JSON, (b"content-length", b"%d" % len(payload))]
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def disconnected(receive: Receive) -> None:
    """Until the client goes away: uvicorn's receive() answers `http.disconnect` once the
    connection is lost (a body still unread is read, and ignored, on the way)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


class AsgiExchange:
    __slots__ = ("receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send

    async def read_body(self, cap: int) -> bytes:
        return await read_body(self.scope, self.receive, cap)

    async def gone(self) -> None:
        await disconnected(self.receive)

    async def reply(self, status: int, payload: bytes, request_id: bytes) -> None:
        await send_reply(self.send, status, payload, request_id)
