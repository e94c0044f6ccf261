"""Walking an app's groups: get_appid_group_list's pages and export's full walk.

Why SCAN and not an index: an index of groups would be one more write on every
update, and the update path is the product. A group is its hash, `{<sdkappid>:...}`,
so SCAN MATCH over the app's key prefix on every master finds every group, and the
key gives the GroupId back (`keys.group_id_from_key`).

A page's `Next` names where the walk resumes: which master (the low bits) and that
master's SCAN cursor (the rest). SCAN's guarantee carries over: a group that exists
for the whole walk is listed; one created or destroyed meanwhile may or may not be,
and one may be listed twice while Redis resizes its table (docs/API.md §2).

What one call may cost (issue 25): SCAN's work is its COUNT of keys visited, whatever
they hold, so a walk with a COUNT as small as `Limit` over a Redis of other apps' keys
took hundreds of thousands of round trips. A page's walk starts at `MIN_SCAN_COUNT` and
goes smaller only where the app's groups are dense enough to overfill the page; it
stops at its `Budget` (seconds and SCANs) with a partial page whose `Next` resumes; a
worker runs at most `walks_per_app` walks of an app at once (`Walks`); and a walk stops
when its client has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Final

import msgspec

from service.api.validate import COMMUNITY_PREFIX
from service.errors import ErrorCode, ServiceError
from service.storage import scripts
from service.storage.keys import group_id_from_key, group_key, group_pattern
from service.storage.scripts import ScriptCall
from service.storage.store import Store

_MASTER_BITS: Final = 10
_MASTER_MASK: Final = (1 << _MASTER_BITS) - 1
# SCAN's COUNT for a walk that keeps everything it finds (counting, export), and the
# COUNT a page's walk starts from whatever `Limit` says.
_WALK_COUNT: Final = 1000
MIN_SCAN_COUNT: Final = _WALK_COUNT
_TYPES_IN_FLIGHT: Final = 32


class WalkAbandoned(Exception):
    """The client left during the walk: there is no one to answer."""


class ListingBounds(msgspec.Struct, frozen=True):
    """What one get_appid_group_list call may cost (the config's `list_*` keys)."""

    seconds: float = 0.5
    scans: int = 1000
    walks_per_app: int = 1


def _never() -> bool:
    return False


class Budget:
    """One call's allowance: a deadline and a number of SCANs for its page, and whether
    its client is still there (checked before every SCAN, the page's and the count's)."""

    def __init__(self, bounds: ListingBounds, client_left: Callable[[], bool] = _never) -> None:
        self.deadline = time.monotonic() + bounds.seconds
        self.scans_left = bounds.scans
        self.client_left = client_left

    def check_client(self) -> None:
        if self.client_left():
            raise WalkAbandoned

    def spend_scan(self) -> None:
        self.scans_left -= 1

    def exhausted(self) -> bool:
        return self.scans_left <= 0 or time.monotonic() >= self.deadline


class Walks:
    """The walks in flight in this worker, per app, under `walks_per_app`."""

    def __init__(self, bounds: ListingBounds) -> None:
        self.bounds = bounds
        self._in_flight: dict[int, int] = {}

    def in_flight(self, sdkappid: int) -> int:
        return self._in_flight.get(sdkappid, 0)

    @contextlib.contextmanager
    def admit(self, sdkappid: int) -> Iterator[None]:
        """Room for one more walk of the app, or 60007: a client retries that code later."""
        held = self._in_flight.get(sdkappid, 0)
        if held >= self.bounds.walks_per_app:
            raise ServiceError(
                ErrorCode.RATE_LIMITED,
                f"get_appid_group_list: {held} listing(s) of this app already in progress; retry when done",
            )
        self._in_flight[sdkappid] = held + 1
        try:
            yield
        finally:
            left = self._in_flight[sdkappid] - 1
            if left:
                self._in_flight[sdkappid] = left
            else:
                del self._in_flight[sdkappid]


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
    store: Store,
    sdkappid: int,
    *,
    limit: int,
    next_value: int,
    wanted_type: str | None,
    implicit: bool,
    budget: Budget,
) -> tuple[list[str], int]:
    """Up to `limit` GroupIds from where `next_value` says, and the Next of the page after
    (0: this was the last). A SCAN batch cannot be split (its cursor resumes after all of
    it), so a batch that would overfill the page is asked again from the same cursor with
    a quarter of the COUNT, down to one hash bucket; only a single bucket holding more of
    the app's groups than `limit` makes a page longer. When the budget runs out after
    the walk has moved, the page ends there, partial (even empty), its Next resuming."""
    masters = await store.masters()
    master, cursor = _position(next_value, masters)
    pattern = group_pattern(sdkappid)
    found: list[str] = []
    step = MIN_SCAN_COUNT
    moved = False
    while True:
        budget.check_client()
        after, keys = await store.scan(master, cursor, pattern, step)
        budget.spend_scan()
        ids = group_ids(sdkappid, keys)
        if wanted_type is not None and ids:
            ids = await _of_type(store, sdkappid, ids, wanted_type, implicit)
        overfilled = len(found) + len(ids) > limit
        if overfilled and step > 1:
            step = max(1, step // 4)  # the same cursor again, fewer buckets at a time
        elif overfilled and found:
            return found, _next_value(master, cursor)
        else:
            found += ids
            cursor, moved = after, True
            # Back up towards the minimum once the groups thin out.
            step = min(step * 2, MIN_SCAN_COUNT)
            if cursor == 0:
                master += 1
                if master == masters:
                    return found, 0
            if len(found) >= limit:
                return found, _next_value(master, cursor)
        if moved and budget.exhausted():
            return found, _next_value(master, cursor)


async def walk_group_ids(
    store: Store, sdkappid: int, client_left: Callable[[], bool] = _never
) -> AsyncIterator[list[str]]:
    """Every GroupId of the app, a SCAN batch at a time, master after master; stops
    (WalkAbandoned) when `client_left` says so."""
    pattern = group_pattern(sdkappid)
    for master in range(await store.masters()):
        cursor = 0
        while True:
            if client_left():
                raise WalkAbandoned
            cursor, keys = await store.scan(master, cursor, pattern, _WALK_COUNT)
            ids = group_ids(sdkappid, keys)
            if ids:
                yield ids
            if cursor == 0:
                break


async def count_groups(store: Store, sdkappid: int, client_left: Callable[[], bool] = _never) -> int:
    total = 0
    async for ids in walk_group_ids(store, sdkappid, client_left):
        total += len(ids)
    return total
