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
import collections
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
from service.moving import strict_json
from service.moving.exits import MAX_LINE_BYTES, Exit
from service.storage import scripts
from service.storage.keys import group_key
from service.storage.scripts import ScriptCall
from service.storage.store import Store
from service.wire import INT64_MAX, INT64_MIN, GroupType

OnConflict = Literal["skip", "overwrite", "fail"]
# Scripts in flight at once: enough to fill a pipelined connection's writes.
WINDOW: Final = 64
# --on-conflict fail's batch: checked whole, then written up to its first conflict, while
# the next batch is checked: at most WINDOW scripts in flight, as in the other modes.
FAIL_BATCH: Final = WINDOW // 2
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

# Rejects echoed on stderr one by one; the rest are counted by kind in the final report.
SHOWN_REJECTS: Final = 100


class Rejected(Exception):
    """A line that cannot be imported: `kind` (one of a few fixed phrases) and a detail."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def decode_line(raw: bytes) -> GroupLine:
    """The line as a GroupLine, or Rejected: every decode error is one (not JSON, invalid
    UTF-8, nested too deep, a key twice in an object, the wrong shape)."""
    if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
        raise Rejected("line too long", f"over {MAX_LINE_BYTES} bytes")
    try:
        return strict_json.decode(raw, line_decoder)
    except strict_json.Malformed as exc:
        raise Rejected("not a group line" if exc.kind == "wrong shape" else exc.kind, exc.detail) from None


def check_line(line: GroupLine, apps: dict[int, App]) -> tuple[App, list[str]]:
    """The app and the script's ARGV tail (Key, Value as decimal text, ...), or Rejected:
    every rule is checked before any script runs."""
    app = apps.get(line.sdkappid)
    if app is None:
        raise Rejected("unknown app", f"sdkappid {line.sdkappid} is not in the config")
    try:
        check_group_id(line.group_id)
    except ServiceError as exc:
        raise Rejected("bad GroupId", exc.info) from None
    if not app.implicit_groups and line.type is None:
        raise Rejected("no Type", "the app keeps registered groups, which need one")
    if line.type == "Community" and line.group_counter:
        raise Rejected("counters in a Community group", "a Community group has none")
    try:
        check_item_count(len(line.group_counter), "GroupCounter")
    except ServiceError:
        raise Rejected("over 20 keys", f"the group has {len(line.group_counter)}") from None
    try:
        check_keys([counter.key for counter in line.group_counter])
    except ServiceError as exc:
        # The message quotes the Key: cut to a line, whatever its length.
        raise Rejected("bad key", exc.info[:200]) from None
    pairs: list[str] = []
    for counter in line.group_counter:
        if not INT64_MIN <= counter.value <= INT64_MAX:
            key = strict_json.shown(counter.key)
            raise Rejected("out-of-range value", f"Key {key} is {counter.value}, outside int64")
        pairs += (counter.key, str(counter.value))
    return app, pairs


OUTCOMES: Final = ("created", "unchanged", "conflict", "overwritten")


@dataclass
class ImportReport:
    """Counts, not lists: a file of millions of bad lines costs a few counters. Only the
    first SHOWN_REJECTS rejects are kept, to show."""

    lines: int = 0
    created: int = 0
    unchanged: int = 0
    overwritten: int = 0
    conflicts: int = 0
    counters: int = 0  # counters written (created or overwritten groups)
    rejected: int = 0
    reject_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    shown_rejects: list[str] = field(default_factory=list)
    stopped: str | None = None  # why --on-conflict fail stopped the import
    failed: str | None = None  # why the import could not go on (the store failed)

    def summary(self, dry_run: bool) -> str:
        verb = "would be " if dry_run else ""
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.reject_kinds.items()))
        text = (
            f"{self.lines} lines: {self.created} groups {verb}created, {self.overwritten} {verb}overwritten, "
            f"{self.unchanged} unchanged, {self.conflicts} conflicts, {self.rejected} rejected"
            f"{f' ({kinds})' if kinds else ''}; {self.counters} counters {verb}written"
        )
        if self.stopped:
            text += f"\nstopped: {self.stopped}"
        if self.failed:
            text += f"\nnot finished: {self.failed}; rerun the same import once it is fixed"
        return text

    def exit_code(self) -> Exit:
        if self.failed:
            return Exit.COULD_NOT_RUN
        if self.stopped:
            return Exit.CONFLICT
        return Exit.REJECTS if self.rejected else Exit.DONE


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
        raise Rejected("refused by the store", f"code {reply[0]}")
    return OUTCOMES[reply[0]]


@dataclass
class _Checked:
    number: int
    app: App
    line: GroupLine
    pairs: list[str]


class _Importer:
    """One run of `import_lines`: the report, the reject log, and one group's outcome."""

    def __init__(
        self,
        store: Store,
        on_conflict: OnConflict,
        dry_run: bool,
        on_reject: IO[str],
        progress: Progress | None,
    ) -> None:
        self.store = store
        self.on_conflict: OnConflict = on_conflict
        self.dry_run = dry_run
        self.on_reject = on_reject
        self.progress = progress
        self.report = ImportReport()

    def reject(self, number: int, group_id: str | None, exc: Rejected) -> None:
        report = self.report
        report.rejected += 1
        report.reject_kinds[exc.kind] += 1
        if report.rejected > SHOWN_REJECTS:
            return
        where = f"line {number}"
        if group_id is not None:
            where += f" (GroupId {strict_json.shown(group_id)})"
        message = f"{where}: {exc}"
        report.shown_rejects.append(message)
        print(f"rejected {message}", file=self.on_reject)
        if report.rejected == SHOWN_REJECTS:
            print(
                f"(only the first {SHOWN_REJECTS} rejects are shown; the rest are counted in the report)",
                file=self.on_reject,
            )

    def checked(self, apps: dict[int, App], lines: Iterable[bytes]) -> Iterator[_Checked]:
        """The lines that pass every check, in order; the others are rejected on the way."""
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            self.report.lines += 1
            group_id = None
            try:
                line = decode_line(raw)
                group_id = line.group_id
                app, pairs = check_line(line, apps)
            except Rejected as exc:
                self.reject(number, group_id, exc)
                continue
            yield _Checked(number, app, line, pairs)

    async def attempt(self, item: _Checked, *, dry_run: bool) -> str | None:
        """The group's outcome; None when it was rejected or the store failed (recorded)."""
        try:
            return await import_group(self.store, item.app, item.line, item.pairs, self.on_conflict, dry_run)
        except Rejected as exc:
            self.reject(item.number, item.line.group_id, exc)
        except ServiceError as exc:
            if self.report.failed is None:
                self.report.failed = f"the store failed at line {item.number}: {exc.info}"
        return None

    def count(self, item: _Checked, outcome: str | None) -> None:
        if outcome is None:
            return
        report = self.report
        if outcome == "conflict":
            report.conflicts += 1
        else:
            setattr(report, outcome, getattr(report, outcome) + 1)
            if outcome in ("created", "overwritten"):
                report.counters += len(item.line.group_counter)
        if self.progress is not None:
            self.progress.step()

    async def windowed(self, checked: Iterator[_Checked]) -> None:
        """skip and overwrite: WINDOW groups in flight, none waits for another."""
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(WINDOW)

        async def one(item: _Checked) -> None:
            try:
                self.count(item, await self.attempt(item, dry_run=self.dry_run))
            finally:
                slots.release()

        for item in checked:
            if self.report.failed is not None:
                break
            await slots.acquire()
            task = asyncio.ensure_future(one(item))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)

    async def in_order(self, checked: Iterator[_Checked]) -> None:
        """fail: batches of FAIL_BATCH groups, each checked (a dry run) before any of it is
        written, and written only up to its first conflict: nothing after a conflict is
        written. The next batch's check runs while this one is written (checks write
        nothing). A group that changed between its check and its write (another writer,
        or an earlier line with the same GroupId) is still a conflict, not overwritten;
        the report then names the lines of the batch written after it."""
        batches = _batches(checked, FAIL_BATCH)
        current = next(batches, None)
        if current is None:
            return
        checks = await self.check(current)
        for following in batches:
            checking = asyncio.ensure_future(self.check(following))
            try:
                go_on = await self.settle(current, checks)
            finally:
                following_checks = await checking  # never left running
            if not go_on:
                return
            current, checks = following, following_checks
        await self.settle(current, checks)

    async def check(self, batch: list[_Checked]) -> list[str | None]:
        return list(await asyncio.gather(*(self.attempt(item, dry_run=True) for item in batch)))

    async def settle(self, batch: list[_Checked], checks: list[str | None]) -> bool:
        """Write the batch up to its first conflict; whether the import goes on."""
        if self.report.failed is not None:
            return False
        first = next((i for i, outcome in enumerate(checks) if outcome == "conflict"), len(batch))
        # A line the store refused at its check is rejected already: not tried again.
        to_write = [item for item, outcome in zip(batch[:first], checks, strict=False) if outcome is not None]
        outcomes: list[str | None]
        if self.dry_run:
            outcomes = [outcome for outcome in checks[:first] if outcome is not None]
        else:
            outcomes = list(await asyncio.gather(*(self.attempt(item, dry_run=False) for item in to_write)))
        raced = next((i for i, outcome in enumerate(outcomes) if outcome == "conflict"), None)
        for item, outcome in zip(to_write, outcomes, strict=True):
            self.count(item, outcome)
        if raced is not None:
            after = [
                item.number
                for item, outcome in zip(to_write[raced + 1 :], outcomes[raced + 1 :], strict=True)
                if outcome in ("created", "overwritten")
            ]
            self.stop(to_write[raced], written_after=after)
        elif first < len(batch):
            self.count(batch[first], "conflict")
            self.stop(batch[first], written_after=[])
        return self.report.stopped is None and self.report.failed is None

    def stop(self, item: _Checked, written_after: list[int]) -> None:
        group_id = strict_json.shown(item.line.group_id)
        text = f"line {item.number}: GroupId {group_id} differs from the group already there"
        if written_after:
            lines = ", ".join(str(number) for number in written_after)
            text += (
                f"; it changed between its check and its write (another writer, or an earlier "
                f"line with the same GroupId), and lines written after it in its batch are: {lines}"
            )
        else:
            text += "; nothing after it was written"
        self.report.stopped = text


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
    """Import JSON Lines: a reject is reported on `on_reject` as it happens (the first
    SHOWN_REJECTS of them) and the import goes on; a conflict under "fail" stops it with
    nothing after it written; a store failure stops it (`report.failed`)."""
    importer = _Importer(store, on_conflict, dry_run, on_reject, progress)
    checked = importer.checked(apps, lines)
    if on_conflict == "fail":
        await importer.in_order(checked)
    else:
        await importer.windowed(checked)
    return importer.report


def _batches(items: Iterator[_Checked], size: int) -> Iterator[list[_Checked]]:
    batch: list[_Checked] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def bounded_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's lines, one per line, none longer than MAX_LINE_BYTES + 1: the rest of
    an over-long line is read and dropped in bounded chunks (its first bytes are yielded
    so that the line is counted and rejected, with its number)."""
    while raw := stream.readline(MAX_LINE_BYTES + 2):
        if len(raw) > MAX_LINE_BYTES + 1 and not raw.endswith(b"\n"):
            rest = raw
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(MAX_LINE_BYTES)
        yield raw


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
