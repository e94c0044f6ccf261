"""Pull every group of an app off a platform-compatible API, resumably.

Two steps, each written down as it goes so that an interrupted run resumes where it
stopped (`Checkpoint`, next to the output file):

1. list: get_appid_group_list once per GroupType (the platform's reply names no
   types, so a listing by type is how each group's type is learnt), appending
   `<Type>\\t<GroupId>` lines to `<out>.groups`;
2. counters: get_group_counter for each listed group, in order, appending one
   import line per group to `<out>` (transfer.py's format).

Every call is paced under `rate` calls a second (the platform's cap is 200), and
get_appid_group_list under its own once a second. 10002 (the source's internal
error), 60007 (its rate limit), HTTP errors and broken connections are retried with
exponential backoff; after `retries` failed attempts the run stops with its
checkpoint saved, and the same command resumes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final, cast, get_args
from urllib.parse import urlencode

from service.api.auth import mint_usersig
from service.moving.transfer import GroupLine, Progress, encode_line, sorted_counters
from service.wire import GroupType

PATH: Final = "/v4/group_open_http_svc/"
RETRIED: Final = frozenset({10002, 60007})
GROUP_TYPES: Final[tuple[str, ...]] = get_args(GroupType)
# The source refuses this GroupType as a filter (invalid parameter): skip it, say so.
TYPE_REFUSED: Final = frozenset({10004})
# get_group_counter calls in flight at once (the pacer sets the rate, this the overlap).
WINDOW: Final = 16
# Groups between two checkpoints in the counters step.
CHECKPOINT_EVERY: Final = 50


class MigrationError(Exception):
    """The run cannot go on; its checkpoint is saved, and rerunning resumes it."""


class Pacer:
    """At most `rate` turns a second, evenly spaced."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_turn = 0.0

    async def turn(self) -> None:
        now = time.monotonic()
        at = max(now, self.next_turn)
        self.next_turn = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class Source:
    """The platform-compatible API: its base URL and an admin's credentials."""

    base_url: str
    sdkappid: int
    identifier: str
    secret_key: str
    rate: float = 200.0
    list_rate: float = 1.0
    retries: int = 8
    backoff: float = 0.5
    timeout: float = 10.0
    log: IO[str] | None = None

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.rate)
        self.list_pacer = Pacer(self.list_rate)
        self.retried = 0
        self.usersig = mint_usersig(self.sdkappid, self.secret_key, self.identifier, expire=7 * 86400)

    def _url(self, command: str) -> str:
        params = {
            "sdkappid": self.sdkappid,
            "identifier": self.identifier,
            "usersig": self.usersig,
            "random": random.randrange(2**32),
            "contenttype": "json",
        }
        return f"{self.base_url.rstrip('/')}{PATH}{command}?{urlencode(params)}"

    def _post(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (the operator's --from URL, http or https)
            self._url(command),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            reply: dict[str, Any] = json.loads(response.read())
        return reply

    async def call(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        """The reply of a call that did not answer a retried code; MigrationError after
        `retries` retries."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            if command == "get_appid_group_list":
                await self.list_pacer.turn()
            await self.pacer.turn()
            try:
                reply = await asyncio.to_thread(self._post, command, body)
                code = reply.get("ErrorCode")
                if code not in RETRIED:
                    return reply
                why = f"{code} {reply.get('ErrorInfo', '')}"
            except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, not JSON
                why = f"{type(exc).__name__}: {exc}"
            if attempt == self.retries:
                raise MigrationError(f"{command} failed {self.retries + 1} times, last: {why}")
            self.retried += 1
            if self.log is not None:
                print(f"{command}: {why}; retrying in {delay:.1f} s", file=self.log)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")


@dataclass
class Checkpoint:
    """Where a run is; saved atomically (a temp file renamed over the old one)."""

    source: str
    sdkappid: int
    step: str = "list"  # "list", "counters", "done"
    type_index: int = 0
    next_value: int = 0
    listed_bytes: int = 0
    listed: int = 0
    total_count: int | None = None
    groups_done: int = 0
    out_bytes: int = 0
    vanished: int = 0

    def save(self, path: Path) -> None:
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(json.dumps(asdict(self)))
        os.replace(temp, path)

    @classmethod
    def load(cls, path: Path, source: str, sdkappid: int) -> Checkpoint:
        if not path.exists():
            return cls(source, sdkappid)
        saved = cls(**json.loads(path.read_text()))
        if (saved.source, saved.sdkappid) != (source, sdkappid):
            raise MigrationError(
                f"{path} is the checkpoint of sdkappid {saved.sdkappid} from {saved.source}; "
                "delete it (and the files next to it) to start another migration"
            )
        return saved


def _append(path: Path, keep_bytes: int) -> IO[bytes]:
    """Open for appending after the first `keep_bytes`: what a killed run wrote after its
    last checkpoint is cut off and written again."""
    handle = path.open("r+b" if path.exists() else "w+b")
    handle.truncate(keep_bytes)
    handle.seek(keep_bytes)
    return handle


def _sync(handle: IO[bytes]) -> int:
    handle.flush()
    os.fsync(handle.fileno())
    return handle.tell()


async def list_groups(
    source: Source, checkpoint: Checkpoint, groups_path: Path, save: Callable[[], None]
) -> None:
    with _append(groups_path, checkpoint.listed_bytes) as spool:
        while checkpoint.type_index < len(GROUP_TYPES):
            group_type = GROUP_TYPES[checkpoint.type_index]
            reply = await source.call(
                "get_appid_group_list",
                {"Limit": 10_000, "Next": checkpoint.next_value, "GroupType": group_type},
            )
            code = reply.get("ErrorCode")
            if code in TYPE_REFUSED:
                if source.log is not None:
                    print(f"the source lists no {group_type} groups ({code}); skipped", file=source.log)
                next_value = 0
            elif code != 0:
                raise MigrationError(f"get_appid_group_list ({group_type}): {code} {reply.get('ErrorInfo')}")
            else:
                ids = [item["GroupId"] for item in reply.get("GroupIdList") or []]
                spool.write("".join(f"{group_type}\t{group_id}\n" for group_id in ids).encode())
                checkpoint.listed += len(ids)
                checkpoint.total_count = reply.get("TotalCount", checkpoint.total_count)
                next_value = int(reply.get("Next") or 0)
            if next_value == 0:
                checkpoint.type_index += 1
            checkpoint.next_value = next_value
            checkpoint.listed_bytes = _sync(spool)
            save()
    checkpoint.step = "counters"
    save()


async def _fetch(source: Source, group_type: str, group_id: str) -> GroupLine | None:
    reply = await source.call("get_group_counter", {"GroupId": group_id})
    code = reply.get("ErrorCode")
    if code == 10010:
        return None  # destroyed since it was listed
    if code == 10007:  # a Community group: it has no counters
        return GroupLine(0, group_id, "Community", [])
    if code != 0:
        raise MigrationError(f"get_group_counter {group_id!r}: {code} {reply.get('ErrorInfo')}")
    pairs = [(item["Key"], int(item["Value"])) for item in reply.get("GroupCounter") or []]
    return GroupLine(0, group_id, cast(GroupType, group_type), sorted_counters(pairs))


async def fetch_counters(
    source: Source,
    checkpoint: Checkpoint,
    groups_path: Path,
    out_path: Path,
    save: Callable[[], None],
    progress: Progress,
) -> None:
    progress.total = checkpoint.listed
    progress.step(checkpoint.groups_done)
    with _append(out_path, checkpoint.out_bytes) as out, groups_path.open("rb") as listed:
        remaining = (line.decode().rstrip("\n").split("\t", 1) for line in listed)
        for _ in range(checkpoint.groups_done):
            next(remaining)
        pending: deque[Awaitable[GroupLine | None]] = deque()

        async def settle(keep: int) -> None:
            while len(pending) > keep:
                line = await pending.popleft()
                if line is None:
                    checkpoint.vanished += 1
                else:
                    line.sdkappid = source.sdkappid
                    out.write(encode_line(line))
                checkpoint.groups_done += 1
                progress.step()
                if checkpoint.groups_done % CHECKPOINT_EVERY == 0:
                    checkpoint.out_bytes = _sync(out)
                    save()

        try:
            for group_type, group_id in remaining:
                pending.append(asyncio.ensure_future(_fetch(source, group_type, group_id)))
                await settle(WINDOW)
            await settle(0)
        finally:
            for task in pending:
                if isinstance(task, asyncio.Future):
                    task.cancel()
        checkpoint.out_bytes = _sync(out)
    checkpoint.step = "done"
    save()


async def migrate(source: Source, out_path: Path, progress: Progress) -> Checkpoint:
    """Run (or resume) the migration into `out_path`; the final checkpoint."""
    checkpoint_path = out_path.with_name(out_path.name + ".checkpoint")
    groups_path = out_path.with_name(out_path.name + ".groups")
    checkpoint = Checkpoint.load(checkpoint_path, source.base_url, source.sdkappid)

    def save() -> None:
        checkpoint.save(checkpoint_path)

    if checkpoint.step == "list":
        await list_groups(source, checkpoint, groups_path, save)
    if checkpoint.step == "counters":
        await fetch_counters(source, checkpoint, groups_path, out_path, save, progress)
    return checkpoint
