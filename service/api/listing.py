"""Walking an app's groups: get_appid_group_list's pages and export's full walk.

Why SCAN and not an index: an index of groups would be one more write on every
update, and the update path is the product. A group is its hash, `{<sdkappid>:...}`,
so SCAN MATCH over the app's key prefix on every master finds every group, and the
key gives the GroupId back (`keys.group_id_from_key`).

A page's `Next` names where the walk resumes: which master (the low bits) and that
master's SCAN cursor (the rest). SCAN's guarantee carries over: a group that exists
for the whole walk is listed; one created or destroyed meanwhile may or may not be,
and one may be listed twice while Redis resizes its table (docs/API.md §2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Final

from service.api.validate import COMMUNITY_PREFIX
from service.errors import ErrorCode, ServiceError
from service.storage import scripts
from service.storage.keys import group_id_from_key, group_key, group_pattern
from service.storage.scripts import ScriptCall
from service.storage.store import Store

_MASTER_BITS: Final = 10
_MASTER_MASK: Final = (1 << _MASTER_BITS) - 1
# SCAN's COUNT for a walk that keeps everything it finds (counting, export).
_WALK_COUNT: Final = 1000
_TYPES_IN_FLIGHT: Final = 32


def _next_value(master: int, cursor: int) -> int:
    return cursor << _MASTER_BITS | master


def _position(next_value: int, masters: int) -> tuple[int, int]:
    master, cursor = next_value & _MASTER_MASK, next_value >> _MASTER_BITS
    if master >= masters:
        raise ServiceError(ErrorCode.INVALID_PARAMETER, "Next is not a value a previous reply gave")
    return master, cursor


def group_ids(sdkappid: int, keys: Sequence[bytes]) -> list[str]:
    """The GroupIds among SCAN's keys, once each (SCAN may return a key twice)."""
    found: dict[str, None] = {}
    for key in keys:
        group_id = group_id_from_key(sdkappid, key.decode("ascii", "replace"))
        if group_id is not None:
            found[group_id] = None
    return list(found)


async def group_type(store: Store, sdkappid: int, group_id: str) -> str | None:
    reply = await store.run(ScriptCall(scripts.READ_GROUP, [group_key(sdkappid, group_id)], ["type"]))
    stored = reply[0]
    return stored.decode() if isinstance(stored, bytes) else None


async def _of_type(store: Store, sdkappid: int, ids: list[str], wanted: str, implicit: bool) -> list[str]:
    if implicit:
        # Implicit mode stores no type; only a Community group is known, by its prefix.
        if wanted != "Community":
            return []
        return [group_id for group_id in ids if group_id.startswith(COMMUNITY_PREFIX)]
    types: list[str | None] = []
    # A bounded number in flight: a SCAN batch may hold a thousand groups, and a
    # connection pool (the embedded store's, a Cluster node's) is finite.
    for start in range(0, len(ids), _TYPES_IN_FLIGHT):
        chunk = ids[start : start + _TYPES_IN_FLIGHT]
        types += await asyncio.gather(*(group_type(store, sdkappid, group_id) for group_id in chunk))
    return [group_id for group_id, stored in zip(ids, types, strict=True) if stored == wanted]


async def list_page(
    store: Store, sdkappid: int, *, limit: int, next_value: int, wanted_type: str | None, implicit: bool
) -> tuple[list[str], int]:
    """Up to `limit` GroupIds from where `next_value` says, and the Next of the page after
    (0: this was the last). A SCAN batch cannot be split (its cursor resumes after all of
    it), so a batch that would overfill a page waits for the next one; only a single
    hash bucket holding more of the app's groups than `limit` makes a page longer."""
    masters = await store.masters()
    master, cursor = _position(next_value, masters)
    pattern = group_pattern(sdkappid)
    found: list[str] = []
    smallest_step = False
    while True:
        step = 1 if smallest_step else min(limit - len(found), _WALK_COUNT)
        after, keys = await store.scan(master, cursor, pattern, step)
        ids = group_ids(sdkappid, keys)
        if wanted_type is not None and ids:
            ids = await _of_type(store, sdkappid, ids, wanted_type, implicit)
        if len(found) + len(ids) > limit:
            if found:
                return found, _next_value(master, cursor)
            if not smallest_step:
                smallest_step = True  # the same cursor again, one bucket at a time
                continue
        smallest_step = False
        found += ids
        cursor = after
        if cursor == 0:
            master += 1
            if master == masters:
                return found, 0
        if len(found) >= limit:
            return found, _next_value(master, cursor)


async def walk_group_ids(store: Store, sdkappid: int) -> AsyncIterator[list[str]]:
    """Every GroupId of the app, a SCAN batch at a time, master after master."""
    pattern = group_pattern(sdkappid)
    for master in range(await store.masters()):
        cursor = 0
        while True:
            cursor, keys = await store.scan(master, cursor, pattern, _WALK_COUNT)
            ids = group_ids(sdkappid, keys)
            if ids:
                yield ids
            if cursor == 0:
                break


async def count_groups(store: Store, sdkappid: int) -> int:
    total = 0
    async for ids in walk_group_ids(store, sdkappid):
        total += len(ids)
    return total
