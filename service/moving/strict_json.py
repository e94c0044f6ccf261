"""Decoding JSON that someone else wrote (an import file, a migration source): every way
it can be wrong becomes `Malformed`, a value with a short kind and a bounded detail,
never a traceback; and a key twice in one object is an error, not a silent last-wins."""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

import msgspec

T = TypeVar("T")
# How much of a value someone else wrote is echoed back in a message.
SHOWN_CHARS: Final = 60


class Malformed(Exception):
    """`kind` is one of a few fixed phrases (reports count by it), `detail` says where."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def shown(value: str) -> str:
    """`value` quoted, cut to SHOWN_CHARS, so a 100 MB GroupId costs a line, not 100 MB."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len(dict(pairs)) == len(pairs):  # in C: the usual case costs no Python loop
        return
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen.add(key)


def _ignore(_: str) -> int:
    return 0


def _check_duplicates(raw: bytes) -> None:
    # msgspec keeps the last of a key given twice and has no option to refuse it: a second
    # pass with the standard parser, which sees every key of every object. Only numbers'
    # text is skipped (a 5,000-digit integer would trip int()'s digit limit).
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates, parse_int=_ignore, parse_float=_ignore)
    except _Duplicate as exc:
        raise Malformed("duplicate key", f"{shown(exc.key)} twice in one object") from None
    except RecursionError:
        raise Malformed("nested too deep", "objects or arrays nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise Malformed("not JSON", str(exc)[:200]) from None


def decode(raw: bytes, decoder: msgspec.json.Decoder[T], *, allow_duplicate_keys: bool = False) -> T:
    """`raw` as the decoder's type, strictly (no coercion: 1.9, "12" and true are not
    integers), and with no key twice in an object (unless allowed); Malformed otherwise."""
    try:
        value = decoder.decode(raw)
    except UnicodeDecodeError as exc:
        raise Malformed("invalid UTF-8", f"{exc.reason} in a string") from None
    except RecursionError:
        # msgspec recurses into values it skips; the interpreter's limit (1,000) stops it.
        raise Malformed("nested too deep", "objects or arrays nested too deep") from None
    except msgspec.ValidationError as exc:
        raise Malformed("wrong shape", str(exc)[:200]) from None
    except msgspec.DecodeError as exc:
        raise Malformed("not JSON", str(exc)[:200]) from None
    if not allow_duplicate_keys:
        _check_duplicates(raw)
    return value
