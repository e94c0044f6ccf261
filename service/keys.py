"""Every Redis key name, in one place, so that no two can collide.

    {<sdkappid>:<escaped GroupId>}                          a group's hash
    {<sdkappid>:<escaped GroupId>}:idempotency:<key>        an Idempotency-Key's record
    {ratelimit:<sdkappid>}                                  an app's rate-limit window
    {<sdkappid>:<escaped GroupId>}:changes                  a group's channel (pub/sub, not a key)
    {readyz}                                                the readiness probe's key

The braces make `<sdkappid>:<escaped GroupId>` the Redis Cluster hash tag, so a
group's record lands in the group's slot. A GroupId is printable ASCII and may hold
`{`, `}`, `%` and `:`; escaped (`%` -> %25, `{` -> %7B, `}` -> %7D, reversibly), it
holds no brace, so the tag always ends right after it: a group's hash ends at its
tag's `}` and every other key of the group goes on after it. Without the escape, the
record of group `v` with Idempotency-Key `r}` was the hash of GroupId `v}:idempotency:r`.
Tags of groups start with a digit, the others with a letter.
"""

from __future__ import annotations

from typing import Final

# Not a group's key: GroupIds are never empty, so `{<sdkappid>:...}` never matches it.
READINESS_KEY: Final = "{readyz}"


_ESCAPES: Final = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def group_key(sdkappid: int, group_id: str) -> str:
    return f"{{{sdkappid}:{group_id.translate(_ESCAPES)}}}"


def idempotency_key(group: str, key: str) -> str:
    """The record of an Idempotency-Key, after the group's key (`group_key`): in the
    group's slot, so the script that updates the group can write it."""
    return f"{group}:idempotency:{key}"


def changes_channel(group: str) -> str:
    """The channel a group's changes are announced on (`group_key` then `:changes`): its
    hash tag puts it in the group's slot, so on a Cluster the script that changes the
    group may SPUBLISH to it, and its watchers subscribe on the node that owns the group."""
    return f"{group}:changes"


def rate_limit_key(sdkappid: int) -> str:
    # Never a group's key: those tags start with the numeric sdkappid.
    return f"{{ratelimit:{sdkappid}}}"
