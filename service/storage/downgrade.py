"""`python -m service downgrade`: takes data of format 2 back to format 1, so that release
0.1.0 can serve it again (a rollback; UPGRADING.md). Every 0.2.0 process must be stopped.

In order, each step resumable (a rerun finds only what is left):
1. the marker becomes "1": a 0.2.0 process that starts meanwhile refuses the data;
2. every idempotency record of a group's current epoch loses the epoch (0.1.0's form,
   its time to live kept); a record of another life of its group, which 0.2.0 would never
   replay and 0.1.0 would misread, is removed;
3. every group loses its version and epoch fields (0xFD, 0xFE), which 0.1.0 would answer
   as counters; a group whose GroupId holds `%`, `{` or `}` goes back to 0.1.0's key name,
   with its records (a group already under that name is a conflict, never overwritten);
4. the marker goes: format 1 has none.
"""

from __future__ import annotations

from collections.abc import Awaitable

from service.storage.format import (
    CURRENT_FORMAT,
    StorageFormatError,
    read_format,
    remove_format,
    write_format,
)
from service.storage.upgrade import (
    _ESCAPE,
    _RECORD_MARK,
    FINGERPRINT_LENGTH,
    Upgrade,
    UpgradeReport,
    _Rename,
    legacy_group,
)

_FORMAT_1: int = 1


def _unescaped(group_id: str) -> str:
    return _ESCAPE.sub(lambda match: {"%25": "%", "%7B": "{", "%7D": "}"}[match[0]], group_id)


class Downgrade(Upgrade):
    # Renames back convert no record: they are in format 1 already when the renames run.
    convert = 0

    async def run(self) -> UpgradeReport:
        held = await read_format(self.store)
        if held is None:
            return self.report  # format 1 already (or an empty store)
        if held > CURRENT_FORMAT:
            raise StorageFormatError(
                f"the data is in storage format {held}, newer than this release's {CURRENT_FORMAT}: "
                "downgrade with the release that wrote it first"
            )
        if not self.dry_run:
            await write_format(self.store, _FORMAT_1, only_if_absent=False)
        renames = await self._find_renames()
        await self._strip_records(renames)
        await self._strip_groups()
        await self.rename_all(renames)
        self._tick(force=True)
        if not self.dry_run and not self.report.conflicts:
            await remove_format(self.store)
            self.report.marker_written = True
        return self.report

    def new_name(self, key: str, sdkappid: int, group_id: str) -> str | None:
        """0.1.0's key for a group whose escaped name differs from its GroupId."""
        if not _ESCAPE.search(group_id):
            return None
        return f"{{{sdkappid}:{_unescaped(group_id)}}}"

    async def _strip_records(self, renames: dict[str, _Rename]) -> None:
        def visit(key: str) -> Awaitable[None] | None:
            if _RECORD_MARK not in key:
                return None
            self.report.records_seen += 1
            group = key[: key.index(_RECORD_MARK) + 1]
            rename = renames.get(group)
            if rename is not None:
                rename.records.append(key)
            if self.dry_run:
                return None
            return self._strip([group, group, key, key])

        await self._scan(visit)

    async def _strip_groups(self) -> None:
        def visit(key: str) -> Awaitable[None] | None:
            if self.dry_run or legacy_group(key) is None:
                return None
            return self._strip([key, key])

        await self._scan(visit)

    async def _strip(self, keys: list[str]) -> None:
        reply = await self._upgrade(keys, "strip", convert=FINGERPRINT_LENGTH)
        if len(keys) > 2:
            self.report.records_converted += int(reply[1])
