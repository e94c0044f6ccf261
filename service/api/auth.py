"""TLSSigAPIv2 usersig: verification (with a bounded cache) and minting.

A usersig is base64 (with `+/=` written as `*-_`) of zlib-compressed JSON whose
`TLS.sig` is an HMAC-SHA256, under the app's secret key, of the other fields. The
checks run in docs/API.md's order: 70002, 70003, 70014, 70013, 70009, 70001.

Verifying costs a base64 decode, an inflate, a JSON decode and an HMAC; a client
sends the same usersig thousands of times, so `access.py` remembers a query string
that passed (the one cache of the access check; the expiry is still checked on every
call, so an expired usersig never passes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Final

import msgspec

from service.errors import ErrorCode, ServiceError

_MAX_INFLATED_BYTES: Final = 4096
_TO_STANDARD_BASE64: Final = bytes.maketrans(b"*-_", b"+/=")
_TO_USERSIG_ALPHABET: Final = bytes.maketrans(b"+/=", b"*-_")


class UsersigDocument(msgspec.Struct):
    ver: str = msgspec.field(name="TLS.ver")
    identifier: str = msgspec.field(name="TLS.identifier")
    sdkappid: int = msgspec.field(name="TLS.sdkappid")
    time: int = msgspec.field(name="TLS.time")
    expire: int = msgspec.field(name="TLS.expire")
    sig: str = msgspec.field(name="TLS.sig")
    userbuf: str | None = msgspec.field(default=None, name="TLS.userbuf")


_document_decoder: Final = msgspec.json.Decoder(UsersigDocument)


class _Proven(msgspec.Struct, frozen=True):
    """What a verified usersig proved: who, for which app, valid until when."""

    sdkappid: int
    identifier: str
    expires_at: int


def _signed_content(identifier: str, sdkappid: int, sig_time: int, expire: int, userbuf: str | None) -> bytes:
    content = (
        f"TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{sig_time}\nTLS.expire:{expire}\n"
    )
    if userbuf is not None:
        content += f"TLS.userbuf:{userbuf}\n"
    return content.encode()


def _signature(secret_key: str, content: bytes) -> bytes:
    return base64.b64encode(hmac.new(secret_key.encode(), content, hashlib.sha256).digest())


def _decode(usersig: str) -> UsersigDocument:
    undecodable = ServiceError(
        ErrorCode.USERSIG_UNDECODABLE, "usersig does not decode as a TLSSigAPIv2 signature"
    )
    try:
        compressed = base64.b64decode(usersig.encode("ascii").translate(_TO_STANDARD_BASE64), validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, _MAX_INFLATED_BYTES)
        if inflater.unconsumed_tail:
            raise undecodable
        document = _document_decoder.decode(raw)
    except (ValueError, zlib.error, RecursionError) as exc:
        # ValueError: base64 (binascii.Error), a non-ASCII usersig (UnicodeEncodeError),
        # bytes that are not UTF-8 in the inflated JSON (UnicodeDecodeError), bad JSON or
        # a bad field (msgspec.DecodeError).
        raise undecodable from exc
    if document.ver != "2.0":
        raise ServiceError(ErrorCode.USERSIG_UNDECODABLE, "usersig TLS.ver is not 2.0")
    return document


class UsersigVerifier:
    """Verifies usersigs for the configured apps; `secret_keys` maps sdkappid to key.

    During a key rotation an app also has a `previous_keys` entry: a usersig signed with
    either key is valid, so the usersigs clients already hold keep working while they
    move to the new key, until the previous one is removed from the config."""

    def __init__(
        self,
        secret_keys: Mapping[int, str],
        *,
        previous_keys: Mapping[int, str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret_keys = {
            sdkappid: (key, *filter(None, [(previous_keys or {}).get(sdkappid)]))
            for sdkappid, key in secret_keys.items()
        }
        self._clock = clock

    def verify(self, usersig: str | None, sdkappid: int, identifier: str) -> int:
        """Raise the first failing check's error; return when the usersig expires (Unix time)."""
        if not usersig:
            raise ServiceError(ErrorCode.USERSIG_MISSING, "usersig is missing or empty")
        proven = self._prove(usersig, sdkappid, identifier)
        if self._clock() > proven.expires_at:
            raise ServiceError(ErrorCode.USERSIG_EXPIRED, "usersig has expired")
        return proven.expires_at

    def _prove(self, usersig: str, sdkappid: int, identifier: str) -> _Proven:
        document = _decode(usersig)
        self._check_claims(document.sdkappid, document.identifier, sdkappid, identifier)
        try:
            content = _signed_content(
                document.identifier, document.sdkappid, document.time, document.expire, document.userbuf
            )
        except UnicodeEncodeError:  # a lone surrogate (\ud800) in TLS.userbuf: no generator signs that
            raise ServiceError(ErrorCode.USERSIG_UNDECODABLE, "usersig TLS.userbuf is not text") from None
        signature = document.sig.encode()
        if not any(
            hmac.compare_digest(_signature(key, content), signature) for key in self._secret_keys[sdkappid]
        ):
            raise ServiceError(
                ErrorCode.USERSIG_BAD_SIGNATURE, "usersig signature does not match the app's key"
            )
        return _Proven(sdkappid, identifier, document.time + document.expire)

    @staticmethod
    def _check_claims(signed_sdkappid: int, signed_identifier: str, sdkappid: int, identifier: str) -> None:
        if signed_sdkappid != sdkappid:
            raise ServiceError(ErrorCode.USERSIG_WRONG_SDKAPPID, "usersig was made for another sdkappid")
        if signed_identifier != identifier:
            raise ServiceError(ErrorCode.USERSIG_WRONG_IDENTIFIER, "usersig was made for another identifier")


def mint_usersig(
    sdkappid: int,
    secret_key: str,
    identifier: str,
    *,
    expire: int = 180 * 86400,
    now: int | None = None,
    userbuf: bytes | None = None,
) -> str:
    """A usersig exactly as the official tls-sig-api-v2 generators make one."""
    sig_time = int(time.time()) if now is None else now
    userbuf_b64 = base64.b64encode(userbuf).decode() if userbuf is not None else None
    document: dict[str, object] = {
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": sig_time,
    }
    if userbuf_b64 is not None:
        document["TLS.userbuf"] = userbuf_b64
    content = _signed_content(identifier, sdkappid, sig_time, expire, userbuf_b64)
    document["TLS.sig"] = _signature(secret_key, content).decode()
    compressed = zlib.compress(msgspec.json.encode(document))
    return base64.b64encode(compressed).translate(_TO_USERSIG_ALPHABET).decode()
