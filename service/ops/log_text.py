"""Fields of a log line, made safe: one line, whatever a client sent, and never huge.

A field can hold what a client sent (a GroupId, a bad request's description), so a
line must not be forgeable: control characters (a newline above all) and backslashes
are escaped in text, and a long field is cut with a marker saying how much was left out.
"""

from __future__ import annotations

import re
from typing import Final

MAX_FIELD_CHARS: Final = 256
MAX_MESSAGE_CHARS: Final = 2048
# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the backslash
# (so that an escape in the log always means an escape).
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]")


def bounded(value: str, limit: int = MAX_FIELD_CHARS) -> str:
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[{len(value) - limit} more chars]"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escaped(value: str) -> str:
    """One line, whatever `value` holds."""
    return _UNSAFE.sub(_escape, value)
