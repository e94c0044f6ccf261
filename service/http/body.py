"""Reading a request body under the configured cap, without reading an oversized one whole,
and decoding it with every malformed byte sequence answered by its code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import msgspec
from starlette.types import Receive, Scope

from service.errors import ErrorCode, ServiceError

# Longer than any Content-Length worth reading; also keeps int() away from Python's
# 4,300-digit limit on converting a string to an int.
_MAX_LENGTH_DIGITS: Final = 18

# Reads numbers without turning floats into Python floats, so 1e400 is no error here.
_syntax_only: Final = msgspec.json.Decoder(float_hook=lambda _: 0)


class BodyTooLarge(Exception):
    """The body is over the cap; answered with HTTP 413."""


class ClientGone(Exception):
    """The client disconnected before sending its whole body; there is no one to answer."""


def too_large(cap: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than the {cap}-byte limit")


def check_declared_length(scope: Scope, cap: int) -> None:
    """A Content-Length over the cap is refused before a byte of the body is read."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and (len(value) > _MAX_LENGTH_DIGITS or int(value) > cap):
                raise too_large(cap)
            return


async def read_body(scope: Scope, receive: Receive, cap: int) -> bytes:
    check_declared_length(scope, cap)
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            if len(body) + len(chunk) > cap:
                raise too_large(cap)
            body += chunk
        if not message.get("more_body", False):
            return body


R = TypeVar("R")


def decode_request(decode: Callable[[bytes], R], body: bytes) -> R:
    """The command's typed request (what `decode` makes of the body); 60003 for a body
    that is not JSON, 10004 for a bad field.

    JSON is UTF-8: a body that is not is not JSON (60003), even where the bytes sit in a
    field the decoder would skip. `isascii` keeps the check off the usual body's path.
    """
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise ServiceError(
                ErrorCode.BAD_BODY, f"the body is not valid JSON: it is not UTF-8 (byte {exc.start})"
            ) from None
    try:
        return decode(body)
    except ServiceError as exc:
        # The untyped syntax check behind 60003 fails on a number beyond a double's range
        # (1e400): such a body is valid JSON whose Value is a float, 10004 as any float.
        if exc.code == ErrorCode.BAD_BODY and _is_json_object(body):
            raise ServiceError(
                ErrorCode.INVALID_PARAMETER, "invalid parameter: a number is not an int64 integer"
            ) from None
        raise


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(_syntax_only.decode(body), dict)
    except (msgspec.DecodeError, RecursionError):
        return False
