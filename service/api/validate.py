"""Field rules that a JSON type cannot express (docs/API.md §3, §4).

Each function raises `ServiceError` or returns the checked value. The order of
checks across a request follows docs/API.md §6: every 10004 first, then 10015 (GroupId),
then 10063 (too many items), so callers run `check_keys` before `check_group_id`
before `check_item_count`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from service.errors import ErrorCode, ServiceError

MAX_KEYS: Final = 20
MAX_KEY_BYTES: Final = 128
MAX_GROUP_ID_BYTES: Final = 48
MAX_NAME_BYTES: Final = 30
GENERATED_PREFIX: Final = "@TGS#"
COMMUNITY_PREFIX: Final = "@TGS#_"


def check_keys(keys: Sequence[str]) -> list[bytes]:
    """Every Key non-empty, at most 128 bytes of UTF-8, and no Key twice; returns them encoded."""
    encoded: list[bytes] = []
    seen: set[bytes] = set()
    for key in keys:
        raw = key.encode()
        if not raw:
            raise ServiceError(ErrorCode.INVALID_PARAMETER, "Key must not be empty")
        if len(raw) > MAX_KEY_BYTES:
            raise ServiceError(
                ErrorCode.INVALID_PARAMETER,
                f"Key {key!r} is {len(raw)} bytes; a Key is at most {MAX_KEY_BYTES} bytes of UTF-8",
            )
        if raw in seen:
            raise ServiceError(
                ErrorCode.INVALID_PARAMETER, f"Key {key!r} appears more than once in the request"
            )
        seen.add(raw)
        encoded.append(raw)
    return encoded


def check_group_id(group_id: str) -> str:
    """1..48 bytes of printable ASCII (0x20..0x7e), else 10015."""
    if not group_id:
        raise ServiceError(ErrorCode.BAD_GROUP_ID, "GroupId must not be empty")
    if len(group_id) > MAX_GROUP_ID_BYTES or not (group_id.isascii() and group_id.isprintable()):
        raise ServiceError(
            ErrorCode.BAD_GROUP_ID,
            f"GroupId must be 1 to {MAX_GROUP_ID_BYTES} printable ASCII characters",
        )
    return group_id


def check_custom_group_id(group_id: str, *, community: bool) -> str:
    """A GroupId chosen by the caller of create_group: the @TGS# prefix is reserved."""
    check_group_id(group_id)
    if community and not group_id.startswith(COMMUNITY_PREFIX):
        raise ServiceError(
            ErrorCode.BAD_GROUP_ID,
            f"a Community GroupId must start with {COMMUNITY_PREFIX!r}",
        )
    if not community and group_id.startswith(GENERATED_PREFIX):
        raise ServiceError(
            ErrorCode.BAD_GROUP_ID,
            f"a custom GroupId must not start with {GENERATED_PREFIX!r}",
        )
    return group_id


def check_item_count(count: int, what: str) -> None:
    if count > MAX_KEYS:
        raise ServiceError(
            ErrorCode.TOO_MANY_KEYS,
            f"{what} has {count} items; at most {MAX_KEYS} keys are allowed",
        )


def check_name(name: str) -> str:
    raw = name.encode()
    if not raw or len(raw) > MAX_NAME_BYTES:
        raise ServiceError(
            ErrorCode.INVALID_PARAMETER,
            f"Name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8",
        )
    return name
