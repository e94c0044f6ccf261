"""The storage format: which layout of keys and fields the data in Redis is in, and
whether this release may serve it.

    format 1   release 0.1.0: GroupIds unescaped in key names, idempotency records
               without epochs; it wrote no marker
    format 2   release 0.2.0 on: escaped key names, epochs, versions; the marker
               `{storage-format}` holds "2"

A service checks the marker before it serves (`check_format`): the current format
serves; a store with no marker and no group is new and gets the current marker; a store
with no marker but groups was written by 0.1.0 and must be upgraded first
(`python -m service upgrade`, service/storage/upgrade.py); a newer format than this
release knows means a newer release wrote it, and this one must not touch it.
"""

from __future__ import annotations

from typing import Final

from service.storage import scripts
from service.storage.keys import ANY_GROUP_PATTERN, FORMAT_KEY
from service.storage.scripts import ScriptCall
from service.storage.store import Store

CURRENT_FORMAT: Final = 2
# The first release that wrote each format, for the messages.
RELEASE_OF_FORMAT: Final = {1: "0.1.0", 2: "0.2.0"}
# The exit code of a service (and of check-config --connect) that refuses the data's format.
EXIT_WRONG_FORMAT: Final = 3
_UPGRADE_HINT: Final = "run `python -m service upgrade --config FILE` first (UPGRADING.md)"


class StorageFormatError(Exception):
    """The data in Redis is in a format this release must not serve; the message says
    what to do."""


async def read_format(store: Store) -> int | None:
    """The marker's format, or None when there is none. 10002 on a Redis fault."""
    reply = await store.run(ScriptCall(scripts.STORAGE_FORMAT, [FORMAT_KEY], ["", "absent"]))
    return _format_of(reply)


async def write_format(store: Store, storage_format: int, *, only_if_absent: bool) -> int | None:
    """Writes the marker (only where there is none, with `only_if_absent`); the marker after."""
    how = "absent" if only_if_absent else "always"
    reply = await store.run(ScriptCall(scripts.STORAGE_FORMAT, [FORMAT_KEY], [str(storage_format), how]))
    return _format_of(reply)


async def remove_format(store: Store) -> None:
    """Removes the marker: format 1 (release 0.1.0) has none."""
    await store.run(ScriptCall(scripts.STORAGE_FORMAT, [FORMAT_KEY], ["", "remove"]))


def _format_of(reply: list[object]) -> int | None:
    if not reply:
        return None
    held = reply[0]
    text = held.decode() if isinstance(held, bytes) else str(held)
    if not text.isdigit():
        raise StorageFormatError(
            f"the storage format marker {FORMAT_KEY} holds {text[:40]!r}, which no release writes: "
            "this Redis is not what the config says, or the key was changed by hand"
        )
    return int(text)


async def holds_any_group(store: Store) -> bool:
    """Whether any master holds a key of any app's groups (stops at the first)."""
    for master in range(await store.masters()):
        cursor = 0
        while True:
            cursor, keys = await store.scan(master, cursor, ANY_GROUP_PATTERN, 1000)
            if keys:
                return True
            if cursor == 0:
                break
    return False


async def check_format(store: Store) -> int:
    """The format this release may serve (the current one), marking a new store as such;
    `StorageFormatError` when it must not serve this data. 10002 on a Redis fault."""
    held = await read_format(store)
    if held is None:
        if await holds_any_group(store):
            raise StorageFormatError(
                "this Redis holds groups but no storage format marker: they were written by release "
                f"{RELEASE_OF_FORMAT[1]} (format 1), and this release reads format {CURRENT_FORMAT}; "
                + _UPGRADE_HINT
            )
        held = await write_format(store, CURRENT_FORMAT, only_if_absent=True)
    if held == CURRENT_FORMAT:
        return CURRENT_FORMAT
    if held is not None and held > CURRENT_FORMAT:
        raise StorageFormatError(
            f"the data in this Redis is in storage format {held}, written by a newer release than this "
            f"one, which reads format {CURRENT_FORMAT}: run that release (or a newer one); rolling back "
            "past a format change needs the downgrade steps in UPGRADING.md"
        )
    raise StorageFormatError(
        f"the data in this Redis is in storage format {held}, this release reads format "
        f"{CURRENT_FORMAT}; " + _UPGRADE_HINT
    )
