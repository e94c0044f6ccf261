"""`python -m service upgrade`: brings the data of release 0.1.0 (storage format 1) to
the current format, on one Redis, Sentinel or a Cluster, then writes the format marker.

What it moves (lua/upgrade_group.lua does each group's part):
- a group whose GroupId holds `%`, `{` or `}` is renamed to its escaped key name, with
  its idempotency records; a group of another life already holding the new name is a
  conflict, reported and never overwritten;
- an idempotency record of format 1 gets its group's epoch (the group gets one when it
  has none), keeping its time to live, so a retry of a call acknowledged by 0.1.0 is
  still answered from its record after the upgrade, never applied twice.

It is idempotent and resumable: a rerun finds only what is left (on a Cluster, a group
placed under its new name but not yet removed from the old is recognised by its fields).
The marker is written last, only when nothing is left and nothing conflicts, so a
service of this release never serves half-upgraded data (service/storage/format.py).

The walk: one SCAN of every master for the apps' keys, collecting the groups to rename
(rare: most GroupIds need no escape); a second, converting records in place and
collecting the renamed groups' records; then the renames.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from service.storage import scripts
from service.storage.format import (
    CURRENT_FORMAT,
    RELEASE_OF_FORMAT,
    StorageFormatError,
    read_format,
    write_format,
)
from service.storage.keys import ANY_GROUP_PATTERN, group_key
from service.storage.scripts import ScriptArg, ScriptCall, ScriptReply
from service.storage.store import Store

# How a record of format 1 is told apart: its first line is a fingerprint (blake2b-128, hex).
FINGERPRINT_LENGTH: Final = 32
_RECORD_MARK: Final = "}:idempotency:"
# A format 1 group key: `{<sdkappid>:<GroupId as it was>}`.
_GROUP_KEY: Final = re.compile(r"\{(\d+):(.+)\}")
# The escapes of a format 2 name; a `%` that starts none of them is a format 1 name's.
_ESCAPE: Final = re.compile("%25|%7B|%7D")
_IN_FLIGHT: Final = 64
_SCAN_COUNT: Final = 1000


@dataclass
class UpgradeReport:
    """What the upgrade found and did (with `dry_run`, what it would do)."""

    keys_seen: int = 0
    groups_seen: int = 0
    records_seen: int = 0
    renamed: int = 0
    records_converted: int = 0
    already_current: int = 0
    conflicts: list[str] = field(default_factory=list)
    not_ascii: int = 0
    ambiguous: list[str] = field(default_factory=list)
    marker_written: bool = False

    def summary(self, dry_run: bool, *, downgrade: bool = False) -> str:
        verb = "would rename" if dry_run else "renamed"
        names = "0.1.0's key names" if downgrade else "escaped key names"
        lines = [
            f"scanned {self.keys_seen} keys: {self.groups_seen} groups, "
            f"{self.records_seen} idempotency records",
            f"{verb} {self.renamed} groups to {names}"
            + (f", {self.already_current} already current" if self.already_current else ""),
        ]
        if not dry_run:
            done = "without their epochs" if downgrade else "to epochs"
            lines.append(f"converted {self.records_converted} idempotency records {done}")
        if self.ambiguous:
            lines.append(
                f"left {len(self.ambiguous)} groups whose name reads as an escaped one (it holds %25, "
                "%7B or %7D and no brace): this release reads them as the unescaped GroupId "
                f"(UPGRADING.md), e.g. {', '.join(self.ambiguous[:3])}"
            )
        if self.not_ascii:
            lines.append(f"left {self.not_ascii} keys that are not ASCII (no release writes such keys)")
        for conflict in self.conflicts[:20]:
            lines.append(f"CONFLICT: {conflict}")
        if len(self.conflicts) > 20:
            lines.append(f"... and {len(self.conflicts) - 20} more conflicts")
        return "\n".join(lines)


@dataclass
class _Rename:
    old: str
    new: str
    records: list[str] = field(default_factory=list)


def legacy_group(key: str) -> tuple[int, str] | None:
    """The (sdkappid, GroupId) whose format 1 hash `key` would be, or None for another key."""
    if _RECORD_MARK in key:
        return None
    match = _GROUP_KEY.fullmatch(key)
    if match is None:
        return None
    return int(match[1]), match[2]


def is_format_2_name(group_id: str) -> bool:
    """Whether a GroupId as it appears in a key is a valid escaped one (format 2's): no
    brace, and every `%` starts an escape. A format 1 name that is one (a GroupId that
    held `%7D` literally) cannot be told apart, and is left as it is."""
    return "{" not in group_id and "}" not in group_id and "%" not in _ESCAPE.sub("", group_id)


def record_groups(key: str) -> Iterator[str]:
    """Every group key a record `key` may belong to (a format 1 GroupId may hold `}`)."""
    start = key.find(_RECORD_MARK)
    while start != -1:
        yield key[: start + 1]
        start = key.find(_RECORD_MARK, start + 1)


class Upgrade:
    # The fingerprint length by which records of format 1 are found and converted (0: none).
    convert = FINGERPRINT_LENGTH

    def __init__(
        self, store: Store, *, dry_run: bool, progress: Callable[[UpgradeReport], None] = lambda _: None
    ) -> None:
        self.store = store
        self.dry_run = dry_run
        self.report = UpgradeReport()
        self._progress = progress
        self._last_progress = 0.0
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self) -> UpgradeReport:
        held = await read_format(self.store)
        if held == CURRENT_FORMAT:
            return self.report
        if held is not None and held > CURRENT_FORMAT:
            raise StorageFormatError(
                f"the data is in storage format {held}, newer than this release's {CURRENT_FORMAT}: "
                "upgrade with the release that wrote it"
            )
        renames = await self._find_renames()
        await self._walk_records(renames)
        await self.rename_all(renames)
        self._tick(force=True)
        if not self.dry_run and not self.report.conflicts:
            await write_format(self.store, CURRENT_FORMAT, only_if_absent=False)
            self.report.marker_written = True
        return self.report

    async def _scan(self, visit: Callable[[str], Awaitable[None] | None]) -> None:
        for master in range(await self.store.masters()):
            cursor = 0
            while True:
                cursor, keys = await self.store.scan(master, cursor, ANY_GROUP_PATTERN, _SCAN_COUNT)
                for raw in keys:
                    try:
                        key = raw.decode("ascii")
                    except UnicodeDecodeError:
                        self.report.not_ascii += 1
                        continue
                    pending = visit(key)
                    if pending is not None:
                        await self._bounded(pending)
                self._tick()
                if cursor == 0:
                    break
        await self._drain()

    async def _find_renames(self) -> dict[str, _Rename]:
        """Every group hash whose key name changes (the scan's first pass)."""
        renames: dict[str, _Rename] = {}

        def visit(key: str) -> None:
            self.report.keys_seen += 1
            found = legacy_group(key)
            if found is None:
                return
            self.report.groups_seen += 1
            new = self.new_name(key, *found)
            if new is not None:
                renames[key] = _Rename(key, new)

        await self._scan(visit)
        return renames

    def new_name(self, key: str, sdkappid: int, group_id: str) -> str | None:
        """The key a group of the old format gets, or None where it keeps its own."""
        if is_format_2_name(group_id):
            if _ESCAPE.search(group_id):
                self.report.ambiguous.append(key)
            return None
        return group_key(sdkappid, group_id)

    async def _walk_records(self, renames: dict[str, _Rename]) -> None:
        def visit(key: str) -> Awaitable[None] | None:
            if _RECORD_MARK not in key:
                return None
            self.report.records_seen += 1
            for group in record_groups(key):
                rename = renames.get(group)
                if rename is not None:
                    rename.records.append(key)
                    return None
            if self.dry_run:
                return None
            group = key[: key.index(_RECORD_MARK) + 1]
            return self._convert_in_place(group, key)

        await self._scan(visit)

    async def _convert_in_place(self, group: str, record: str) -> None:
        reply = await self._upgrade([group, group, record, record], "move")
        if reply[0] == b"moved":
            self.report.records_converted += int(reply[1])

    async def rename_all(self, renames: dict[str, _Rename]) -> None:
        for rename in renames.values():
            await self._rename(rename)

    async def _rename(self, rename: _Rename) -> None:
        new_records = [rename.new + record[len(rename.old) :] for record in rename.records]
        if self.dry_run:
            held = await self._upgrade([rename.new, rename.new], "read")
            if held[0]:
                self.report.conflicts.append(self._conflict(rename))
            else:
                self.report.renamed += 1
            return
        if self.store.cross_slot_scripts:
            reply = await self._upgrade([rename.old, rename.new, *rename.records, *new_records], "move")
            outcome = reply[0]
            if outcome == b"moved":
                self.report.renamed += 1
                self.report.records_converted += int(reply[1])
            elif outcome == b"current":
                self.report.already_current += 1
            elif outcome == b"conflict":
                self.report.conflicts.append(self._conflict(rename))
            return
        await self._rename_across_slots(rename, new_records)

    async def _rename_across_slots(self, rename: _Rename, new_records: list[str]) -> None:
        """A Cluster: read the old group, place it under the new name, remove the old."""
        old_keys = [rename.old, rename.old, *rename.records, *rename.records]
        fields, records = await self._upgrade(old_keys, "read")
        if not fields:
            return  # gone since the scan
        if self.convert and any(name in (b"\xfd", b"\xfe") for name in fields[::2]):
            self.report.already_current += 1
            return
        placed = await self._upgrade(
            [rename.new, rename.new, *new_records, *new_records], "place", len(fields), *fields, *records
        )
        if placed[0] == b"conflict":
            self.report.conflicts.append(self._conflict(rename))
            return
        self.report.records_converted += int(placed[1])
        dropped = await self._upgrade(old_keys, "drop", len(fields), *fields)
        if dropped[0] == b"changed":
            self.report.conflicts.append(
                f"{rename.old}: changed while it was being moved to {rename.new}; rerun the upgrade "
                "with every service of release 0.1.0 stopped"
            )
            return
        self.report.renamed += 1

    @staticmethod
    def _conflict(rename: _Rename) -> str:
        return (
            f"{rename.old} (format 1) and {rename.new} (its new name) both hold a group: neither was "
            "changed. Keep one (DEL the other, or RENAME it away) and rerun the upgrade"
        )

    async def _upgrade(
        self, keys: list[str], mode: str, *rest: ScriptArg, convert: int | None = None
    ) -> ScriptReply:
        token = secrets.token_hex(8)
        length = self.convert if convert is None else convert
        old, new, *records = keys
        call = ScriptCall(scripts.UPGRADE_GROUP, [old, new, *records], [mode, token, length, *rest])
        return await self.store.run(call)

    async def _bounded(self, pending: Awaitable[None]) -> None:
        """Up to _IN_FLIGHT conversions at once: they go out pipelined, not one round trip each."""
        while len(self._pending) >= _IN_FLIGHT:
            done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                self._pending.discard(finished)
                finished.result()
        self._pending.add(asyncio.ensure_future(pending))

    async def _drain(self) -> None:
        pending, self._pending = self._pending, set()
        for task in pending:
            await task

    def _tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress >= 1.0:
            self._last_progress = now
            self._progress(self.report)


def describe_release(storage_format: int | None) -> str:
    if storage_format is None:
        return f"no marker (release {RELEASE_OF_FORMAT[1]}, format 1)"
    return f"format {storage_format} (release {RELEASE_OF_FORMAT.get(storage_format, 'unknown')})"
