"""Reading a request body under the configured cap, without reading an oversized one whole."""

from __future__ import annotations

from starlette.types import Receive, Scope


class BodyTooLarge(Exception):
    """The body is over the cap; answered with HTTP 413."""


class ClientGone(Exception):
    """The client disconnected before sending its whole body; there is no one to answer."""


def _too_large(cap: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than the {cap}-byte limit")


async def read_body(scope: Scope, receive: Receive, cap: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > cap:
                raise _too_large(cap)
            break
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            if len(body) + len(chunk) > cap:
                raise _too_large(cap)
            body += chunk
        if not message.get("more_body", False):
            return body
