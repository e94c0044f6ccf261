"""Every Redis key name, in one place, so that no two can collide.

    {<sdkappid>:<escaped GroupId>}                          a group's hash
    {<sdkappid>:<escaped GroupId>}:idempotency:<key>        an Idempotency-Key's record
    {ratelimit:<sdkappid>}                                  an app's rate-limit window
    {enduser:<sdkappid>:<escaped identifier>}               an end user's 5 s window
    {grouplist:<sdkappid>}                                  get_appid_group_list's own window
    {<sdkappid>:<escaped GroupId>}:changes[:<db>]           a group's channel (pub/sub, not a key)
    {readyz}                                                the readiness probe's key
    {storage-format}                                        the format the data is in (format.py)

The braces make `<sdkappid>:<escaped GroupId>` the Redis Cluster hash tag, so a
group's record lands in the group's slot. A GroupId is printable ASCII and may hold
`{`, `}`, `%` and `:`; escaped (`%` -> %25, `{` -> %7B, `}` -> %7D, reversibly), it
holds no brace, so the tag always ends right after it: a group's hash ends at its
tag's `}` and every other key of the group goes on after it. Without the escape, the
record of group `v` with Idempotency-Key `r}` was the hash of GroupId `v}:idempotency:r`.
Tags of groups start with a digit, the others with a letter.
"""

from __future__ import annotations

import re
from typing import Final

# Not a group's key: GroupIds are never empty, so `{<sdkappid>:...}` never matches it.
READINESS_KEY: Final = "{readyz}"
# The storage format marker (service/storage/format.py); a tag that starts with a letter.
FORMAT_KEY: Final = "{storage-format}"
# SCAN MATCH for every key of every app's groups (their tags start with the sdkappid).
ANY_GROUP_PATTERN: Final = "{[0-9]*"


_ESCAPES: Final = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})
_UNESCAPES: Final = {"%25": "%", "%7B": "{", "%7D": "}"}
# Left to right, every `%` of an escaped GroupId starts one of the three escapes.
_ESCAPED: Final = re.compile("%25|%7B|%7D")


def _escaped(text: str) -> str:
    """`text` with no brace left, reversibly, so it cannot end a hash tag early."""
    if "%" in text or "{" in text or "}" in text:  # rare: translate costs 0.5 us a call
        return text.translate(_ESCAPES)
    return text


def group_key(sdkappid: int, group_id: str) -> str:
    return f"{{{sdkappid}:{_escaped(group_id)}}}"


def group_pattern(sdkappid: int) -> str:
    """A SCAN MATCH pattern for every group of the app. It matches some idempotency
    records too (an Idempotency-Key may end with `}`): `group_id_from_key` tells them apart."""
    return f"{{{sdkappid}:*}}"


def group_id_from_key(sdkappid: int, key: str) -> str | None:
    """The GroupId whose hash `key` is (`group_key`'s inverse), or None for any other key."""
    prefix = f"{{{sdkappid}:"
    if not (key.startswith(prefix) and key.endswith("}")):
        return None
    escaped = key[len(prefix) : -1]
    # An escaped GroupId holds no brace, so a brace inside means the tag ended earlier:
    # another key of the group (`...}:idempotency:x}`), not its hash.
    if not escaped or "{" in escaped or "}" in escaped or not escaped.isascii():
        return None
    return _ESCAPED.sub(lambda match: _UNESCAPES[match[0]], escaped)


def idempotency_key(group: str, key: str) -> str:
    """The record of an Idempotency-Key, after the group's key (`group_key`): in the
    group's slot, so the script that updates the group can write it."""
    return f"{group}:idempotency:{key}"


def end_user_window_key(sdkappid: int, identifier: str) -> str:
    """An end user's reads and writes in the current 5 s window. The identifier is
    escaped like a GroupId, so it cannot end the hash tag early."""
    return f"{{enduser:{sdkappid}:{_escaped(identifier)}}}"


def changes_channel(group: str, db: int) -> str:
    """The channel a group's changes are announced on (`group_key` then `:changes`): its
    hash tag puts it in the group's slot, so on a Cluster the script that changes the
    group may SPUBLISH to it, and its watchers subscribe on the node that owns the group.

    Channels belong to the whole server, whatever database a client SELECTed: two
    deployments on db 0 and db 1 of one Redis would hear each other's groups, so a db
    other than 0 ends the name (`:changes:1`). On db 0, and so on a Cluster, which has
    no other, the name stays `:changes`: during a rolling upgrade the pods of both
    versions then announce and listen on the same channel."""
    return f"{group}:changes" if db == 0 else f"{group}:changes:{db}"


def rate_limit_key(sdkappid: int) -> str:
    # Never a group's key: those tags start with the numeric sdkappid.
    return f"{{ratelimit:{sdkappid}}}"


def demo_limit_key(sdkappid: int) -> str:
    """/demo's one-second window (page loads and group creations), apart from the app's."""
    return f"{{demo:{sdkappid}}}"


def group_list_key(sdkappid: int) -> str:
    """get_appid_group_list's once-a-second window, apart from the app's own rate limit."""
    return f"{{grouplist:{sdkappid}}}"
