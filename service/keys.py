"""Every Redis key name, in one place.

A group's counters live in one hash named `{<sdkappid>:<GroupId>}`; the braces make
the whole name the Redis Cluster hash tag, so any later key of the group (an
idempotency record, say) written as `{<sdkappid>:<GroupId>}:<suffix>` lands in the
same slot.
"""

from __future__ import annotations

from typing import Final

# Not a group's key: GroupIds are never empty, so `{<sdkappid>:...}` never matches it.
READINESS_KEY: Final = "{readyz}"


def group_key(sdkappid: int, group_id: str) -> str:
    return f"{{{sdkappid}:{group_id}}}"


def idempotency_key(group: str, key: str) -> str:
    """The record of an Idempotency-Key, after the group's key (`group_key`): in the
    group's slot, so the script that updates the group can write it."""
    return f"{group}:idempotency:{key}"


def rate_limit_key(sdkappid: int) -> str:
    # Never a group's key: those tags start with the numeric sdkappid.
    return f"{{ratelimit:{sdkappid}}}"
