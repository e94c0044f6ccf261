"""Export and import: an app's groups as JSON Lines, one group per line.

    {"SdkAppId": 1400000000, "GroupId": "demo", "Type": "Public",
     "GroupCounter": [{"Key": "like", "Value": 5}]}

`Type` is null for a group of an implicit app (no type is stored). Counters are in
byte order of their Keys and groups in byte order of their GroupIds, apps in
sdkappid order: the same counters always export to the same bytes, whatever Redis's
hash table order, so an export can be compared with another byte for byte.

Export reads each group with one script (one state, never half an update); import
writes each group with one script that checks before it writes (a group is imported
whole or not at all) and leaves a group that is already exactly the line alone, so a
rerun is harmless.
"""

from __future__ import annotations

import asyncio
import heapq
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Final, Literal, cast

import msgspec

from service.api.listing import walk_group_ids
from service.api.validate import check_group_id, check_item_count, check_keys
from service.config import App
from service.errors import ServiceError
from service.storage import scripts
from service.storage.keys import group_key
from service.storage.scripts import ScriptCall
from service.storage.store import Store
from service.wire import INT64_MAX, INT64_MIN, GroupType

OnConflict = Literal["skip", "overwrite", "fail"]
# Scripts in flight at once: enough to fill a pipelined connection's writes.
WINDOW: Final = 64
# GroupIds sorted in memory at once before spilling a sorted run to a temp file.
SORT_RUN: Final = 100_000


class Counter(msgspec.Struct, rename="pascal"):
    key: str
    # Any JSON integer decodes; the int64 range is checked by `check_line`, so that an
    # out-of-range value is reported as such.
    value: int


class GroupLine(
    msgspec.Struct,
    rename={"sdkappid": "SdkAppId", "group_id": "GroupId", "type": "Type", "group_counter": "GroupCounter"},
):
    sdkappid: int
    group_id: str
    type: GroupType | None
    group_counter: list[Counter]


line_encoder: Final = msgspec.json.Encoder()
line_decoder: Final = msgspec.json.Decoder(GroupLine)


def encode_line(line: GroupLine) -> bytes:
    return line_encoder.encode(line) + b"\n"


def sorted_counters(pairs: Iterable[tuple[str, int]]) -> list[Counter]:
    # Python orders str by code point, which is the byte order of their UTF-8.
    return [Counter(key, value) for key, value in sorted(pairs)]


# ---- export ----


async def read_group(store: Store, sdkappid: int, group_id: str) -> GroupLine | None:
    """The group as one state; None when it is gone or holds nothing to export (an
    implicit group with no counters is indistinguishable from no group)."""
    reply = await store.run(ScriptCall(scripts.READ_GROUP, [group_key(sdkappid, group_id)], ["all"]))
    stored_type = reply[0].decode() if isinstance(reply[0], bytes) else None
    values = reply[1:]
    if stored_type is None and not values:
        return None
    pairs = ((key.decode(), int(value)) for key, value in zip(values[0::2], values[1::2], strict=True))
    # A type the service did not write exports as it is, and import rejects it.
    return GroupLine(sdkappid, group_id, cast(GroupType | None, stored_type), sorted_counters(pairs))


def _spill(run: list[str]) -> IO[str]:
    # Outlives this function: `sorted_group_ids` merges the runs, then closes them.
    spill = tempfile.TemporaryFile("w+", encoding="ascii")  # noqa: SIM115
    spill.writelines(f"{group_id}\n" for group_id in sorted(run))
    spill.seek(0)
    return spill


def _read_run(spill: IO[str]) -> Iterator[str]:
    for line in spill:
        yield line[:-1]


async def sorted_group_ids(store: Store, sdkappid: int) -> AsyncIterator[str]:
    """Every GroupId of the app once, in byte order, in bounded memory: runs of
    `SORT_RUN` sorted in memory, spilled to temp files and merged (GroupIds are
    printable ASCII, one a line)."""
    runs: list[IO[str]] = []
    current: list[str] = []
    try:
        async for ids in walk_group_ids(store, sdkappid):
            current += ids
            if len(current) >= SORT_RUN:
                runs.append(_spill(current))
                current = []
        merged: Iterable[str] = (
            heapq.merge(*(_read_run(run) for run in runs), sorted(current)) if runs else sorted(current)
        )
        previous = None
        for group_id in merged:
            if group_id != previous:  # SCAN may have returned a group twice
                yield group_id
            previous = group_id
    finally:
        for run in runs:
            run.close()


async def export_app(store: Store, sdkappid: int, out: IO[bytes], on_group: Progress | None = None) -> int:
    """Write every group of the app; the number written."""
    pending: deque[asyncio.Task[GroupLine | None]] = deque()
    written = 0

    async def drain(keep: int) -> None:
        nonlocal written
        while len(pending) > keep:
            line = await pending.popleft()
            if line is not None:
                out.write(encode_line(line))
                written += 1
                if on_group is not None:
                    on_group.step()

    try:
        async for group_id in sorted_group_ids(store, sdkappid):
            pending.append(asyncio.ensure_future(read_group(store, sdkappid, group_id)))
            await drain(WINDOW)
        await drain(0)
    finally:
        for task in pending:
            task.cancel()
    return written


# ---- import ----


class Rejected(Exception):
    """A line that cannot be imported; the message is the reason."""


def check_line(line: GroupLine, apps: dict[int, App]) -> tuple[App, list[str]]:
    """The app and the script's ARGV tail (Key, Value as decimal text, ...), or Rejected:
    every rule is checked before any script runs."""
    app = apps.get(line.sdkappid)
    if app is None:
        raise Rejected(f"unknown app: sdkappid {line.sdkappid} is not in the config")
    try:
        check_group_id(line.group_id)
    except ServiceError as exc:
        raise Rejected(f"bad GroupId: {exc.info}") from None
    if not app.implicit_groups and line.type is None:
        raise Rejected("no Type: the app keeps registered groups, which need one")
    if line.type == "Community" and line.group_counter:
        raise Rejected("a Community group has no counters")
    try:
        check_keys([counter.key for counter in line.group_counter])
    except ServiceError as exc:
        raise Rejected(f"bad key: {exc.info}") from None
    try:
        check_item_count(len(line.group_counter), "GroupCounter")
    except ServiceError:
        raise Rejected(f"over 20 keys: the group has {len(line.group_counter)}") from None
    pairs: list[str] = []
    for counter in line.group_counter:
        if not INT64_MIN <= counter.value <= INT64_MAX:
            raise Rejected(f"out-of-range value: Key {counter.key!r} is {counter.value}, outside int64")
        pairs += (counter.key, str(counter.value))
    return app, pairs


OUTCOMES: Final = ("created", "unchanged", "conflict", "overwritten")


@dataclass
class ImportReport:
    lines: int = 0
    created: int = 0
    unchanged: int = 0
    overwritten: int = 0
    conflicts: int = 0
    counters: int = 0  # counters written (created or overwritten groups)
    rejects: list[str] = field(default_factory=list)
    stopped: str | None = None  # why --on-conflict fail stopped the import

    def summary(self, dry_run: bool) -> str:
        verb = "would be " if dry_run else ""
        text = (
            f"{self.lines} lines: {self.created} groups {verb}created, {self.overwritten} {verb}overwritten, "
            f"{self.unchanged} unchanged, {self.conflicts} conflicts, {len(self.rejects)} rejected; "
            f"{self.counters} counters {verb}written"
        )
        return f"{text}\nstopped: {self.stopped}" if self.stopped else text


async def import_group(
    store: Store, app: App, line: GroupLine, pairs: list[str], on_conflict: OnConflict, dry_run: bool
) -> str:
    """One group, in one script; its outcome, one of OUTCOMES."""
    registered = "0" if app.implicit_groups else "1"
    group_type = "" if app.implicit_groups else (line.type or "")
    mode = "overwrite" if on_conflict == "overwrite" else "keep"
    reply = await store.run(
        ScriptCall(
            scripts.IMPORT_GROUP,
            [group_key(app.sdkappid, line.group_id)],
            [registered, mode, "1" if dry_run else "0", group_type, *pairs],
        )
    )
    if reply[0] not in range(len(OUTCOMES)):
        raise Rejected(f"the store refused the group (code {reply[0]})")
    return OUTCOMES[reply[0]]


async def import_lines(
    store: Store,
    apps: dict[int, App],
    lines: Iterable[bytes],
    *,
    on_conflict: OnConflict,
    dry_run: bool,
    on_reject: IO[str],
    progress: Progress | None = None,
) -> ImportReport:
    """Import JSON Lines, WINDOW groups in flight; a reject is reported on `on_reject`
    as it happens and the import goes on; a conflict under "fail" stops it."""
    report = ImportReport()
    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(WINDOW)

    def reject(number: int, group_id: str | None, reason: str) -> None:
        where = f"line {number}" + (f" (GroupId {group_id!r})" if group_id is not None else "")
        message = f"{where}: {reason}"
        report.rejects.append(message)
        print(f"rejected {message}", file=on_reject)

    async def one(number: int, app: App, line: GroupLine, pairs: list[str]) -> None:
        try:
            outcome = await import_group(store, app, line, pairs, on_conflict, dry_run)
        except (Rejected, ServiceError) as exc:
            reject(number, line.group_id, exc.info if isinstance(exc, ServiceError) else str(exc))
            return
        finally:
            slots.release()
        if outcome == "conflict":
            report.conflicts += 1
            if on_conflict == "fail" and report.stopped is None:
                report.stopped = (
                    f"line {number}: GroupId {line.group_id!r} differs from the group already there"
                )
        else:
            setattr(report, outcome, getattr(report, outcome) + 1)
            if outcome in ("created", "overwritten"):
                report.counters += len(line.group_counter)
        if progress is not None:
            progress.step()

    for number, raw in enumerate(lines, start=1):
        if report.stopped is not None:
            break
        if not raw.strip():
            continue
        report.lines += 1
        try:
            line = line_decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            reject(number, None, f"not a group line: {exc}")
            continue
        try:
            app, pairs = check_line(line, apps)
        except Rejected as exc:
            reject(number, line.group_id, str(exc))
            continue
        await slots.acquire()
        task = asyncio.ensure_future(one(number, app, line, pairs))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return report


# ---- progress ----


class Progress:
    """A one-line count on stderr, redrawn at most ten times a second, only when stderr
    is a terminal (a log file or a pipe gets just the final report). A few lines of our
    own rather than tqdm or rich: one counter does not justify a dependency in the image."""

    def __init__(self, what: str, stream: IO[str], *, total: int | None = None) -> None:
        self.what = what
        self.stream = stream
        self.total = total
        self.count = 0
        self.enabled = stream.isatty()
        self._drawn = 0.0
        self._started = _now()

    def step(self, n: int = 1) -> None:
        self.count += n
        if self.enabled and _now() - self._drawn >= 0.1:
            self._draw()

    def _draw(self) -> None:
        self._drawn = now = _now()
        rate = self.count / max(now - self._started, 1e-6)
        of = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"\r{self.what}: {self.count}{of} ({rate:.0f}/s)\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def _now() -> float:
    return time.monotonic()
