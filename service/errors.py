"""Error codes of the wire contract, and the one exception type that carries them.

Every failure the service answers is a `ServiceError`: a code from `ErrorCode` and a
plain-words message. `app.py` is the only place that turns one into the wire envelope.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

# For a 10002: whether the call may have changed anything. "no": it certainly did not
# run (safe to send again without an Idempotency-Key); "maybe": it may have (docs/API.md,
# "Applied"). Other codes never ran a change and carry neither.
Applied = Literal["no", "maybe"]


class ErrorCode(IntEnum):
    OK = 0
    INTERNAL = 10002
    INVALID_PARAMETER = 10004
    NOT_ALLOWED = 10007
    GROUP_NOT_FOUND = 10010
    BAD_GROUP_ID = 10015
    GROUP_ID_TAKEN = 10021
    TOO_MANY_KEYS = 10063
    BAD_QUERY = 60002
    BAD_BODY = 60003
    UNKNOWN_APP = 60006
    RATE_LIMITED = 60007
    END_USER_LIMITED = 61007  # ours, not the platform's: an end user's reads or writes
    UNKNOWN_COMMAND = 60009
    NOT_ADMIN = 60010
    SDKAPPID_MISSING = 60012
    USERSIG_EXPIRED = 70001
    USERSIG_MISSING = 70002
    USERSIG_UNDECODABLE = 70003
    USERSIG_BAD_SIGNATURE = 70009
    USERSIG_WRONG_IDENTIFIER = 70013
    USERSIG_WRONG_SDKAPPID = 70014


class ServiceError(Exception):
    """A failure with its wire code; `info` is shown to the client as ErrorInfo."""

    def __init__(self, code: ErrorCode, info: str, applied: Applied | None = None) -> None:
        super().__init__(f"{int(code)}: {info}")
        self.code = code
        self.info = info
        self.applied: Applied | None = applied
