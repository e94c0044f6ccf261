"""Reading a request body under the configured cap, without reading an oversized one whole."""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body is over the cap; answered with HTTP 413."""


def _too_large(cap: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than the {cap}-byte limit")


async def read_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _too_large(cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
    return b"".join(chunks)
