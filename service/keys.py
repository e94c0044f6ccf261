"""Every Redis key name, in one place, so that no two can collide.

    {<sdkappid>:<escaped GroupId>}                          a group's hash
    {<sdkappid>:<escaped GroupId>}:idempotency:<key>        an Idempotency-Key's record
    {ratelimit:<sdkappid>}                                  an app's rate-limit window
    {enduser:<sdkappid>:<escaped identifier>}               an end user's 5 s window
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
    if "%" in group_id or "{" in group_id or "}" in group_id:  # rare: translate costs 0.5 us
        group_id = group_id.translate(_ESCAPES)
    return f"{{{sdkappid}:{group_id}}}"


def idempotency_key(group: str, key: str) -> str:
    """The record of an Idempotency-Key, after the group's key (`group_key`): in the
    group's slot, so the script that updates the group can write it."""
    return f"{group}:idempotency:{key}"


def end_user_window_key(sdkappid: int, identifier: str) -> str:
    """An end user's reads and writes in the current 5 s window. The identifier is
    escaped like a GroupId, so it cannot end the hash tag early."""
    if "%" in identifier or "{" in identifier or "}" in identifier:
        identifier = identifier.translate(_ESCAPES)
    return f"{{enduser:{sdkappid}:{identifier}}}"


def rate_limit_key(sdkappid: int) -> str:
    # Never a group's key: those tags start with the numeric sdkappid.
    return f"{{ratelimit:{sdkappid}}}"
