"""Pull every group of an app off a platform-compatible API, resumably.

Two steps, each written down as it goes so that an interrupted run resumes where it
stopped (`Checkpoint`, next to the output file):

1. list: get_appid_group_list once per GroupType (the platform's reply names no
   types, so a listing by type is how each group's type is learnt), appending
   `["<Type>","<GroupId>"]` lines to `<out>.groups` (JSON: any GroupId is one line);
2. counters: get_group_counter for each listed group, in order, appending one
   import line per group to `<out>` (transfer.py's format).

Every call is paced under `rate` calls a second (the platform's cap is 200), and
get_appid_group_list under its own once a second. 10002 (the source's internal
error), 60007 (its rate limit), HTTP errors and broken connections are retried with
exponential backoff; after `retries` failed attempts the run stops with its
checkpoint saved, and the same command resumes it.

The source is not trusted (a buggy or hostile one must not write wrong data, nor run
the walk forever): every reply is decoded strictly into the shape the contract gives
(no coercion: a Value of 1.9, "12" or true is not an integer), a call has a deadline
for the whole reply (`timeout`, however slowly it drips) and a size cap
(MAX_REPLY_BYTES), a walk that repeats a cursor or lists more groups than the source's
TotalCount (with LIST_MARGIN) stops, and a group whose reply is not the contract's is
reported and skipped, never guessed at.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import random
import socket
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Final, cast, get_args
from urllib.parse import unquote, urlencode, urlsplit

import msgspec

from service.api.auth import mint_usersig
from service.moving import strict_json
from service.moving.strict_json import Malformed, shown
from service.moving.transfer import GroupLine, Progress, encode_line, sorted_counters
from service.wire import INT64_MAX, INT64_MIN, GroupType

PATH: Final = "/v4/group_open_http_svc/"
RETRIED: Final = frozenset({10002, 60007})
GROUP_TYPES: Final[tuple[str, ...]] = get_args(GroupType)
# The source refuses this GroupType as a filter (invalid parameter): skip it, say so.
TYPE_REFUSED: Final = frozenset({10004})
# get_group_counter calls in flight at once (the pacer sets the rate, this the overlap).
WINDOW: Final = 16
# Groups between two checkpoints in the counters step.
CHECKPOINT_EVERY: Final = 50
# GroupIds asked for per listing page (the platform's maximum).
LIST_LIMIT: Final = 10_000
# A reply longer than this is refused unread: a full listing page is at most about
# 3 MiB (10,000 GroupIds of 48 characters, each escaped \\uXXXX), a counter reply a few KiB.
MAX_REPLY_BYTES: Final = 4 * 2**20
# A walk that lists more groups than the first TotalCount plus this (or a tenth of it,
# whichever is more: groups created meanwhile) is not ending: it stops.
LIST_MARGIN: Final = 1000
# Skipped groups named one by one on stderr; the rest are counted.
SHOWN_SKIPS: Final = 100

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Cursor = Annotated[int, msgspec.Meta(ge=0)]


class Envelope(msgspec.Struct, rename="pascal"):
    """What every reply has; anything else it holds is read by the command's own shape."""

    error_code: int
    error_info: str = ""


class ListedGroup(msgspec.Struct, rename="pascal"):
    group_id: str


class ListReply(msgspec.Struct, rename="pascal"):
    total_count: Annotated[int, msgspec.Meta(ge=0)]
    group_id_list: Annotated[list[ListedGroup], msgspec.Meta(max_length=LIST_LIMIT)] | None = None
    next: Cursor = 0


class CounterItem(msgspec.Struct, rename="pascal"):
    key: str
    value: Int64


class CounterReply(msgspec.Struct, rename="pascal"):
    group_counter: list[CounterItem] | None = None


envelope_decoder: Final = msgspec.json.Decoder(Envelope)
list_decoder: Final = msgspec.json.Decoder(ListReply)
counter_decoder: Final = msgspec.json.Decoder(CounterReply)
spool_decoder: Final = msgspec.json.Decoder(tuple[str, str])


class MigrationError(Exception):
    """The run cannot go on; its checkpoint is saved. Rerunning resumes it, unless
    `rerun_helps` is false: the source refused the credentials, which a rerun sends again."""

    def __init__(self, message: str, *, rerun_helps: bool = True) -> None:
        super().__init__(message)
        self.rerun_helps = rerun_helps


# What the source answers when it does not take the credentials: the app (60006), the
# identifier (60010, not an admin) or the usersig made from the secret key (70xxx).
CREDENTIAL_CODES: Final = frozenset({60006, 60010, 70001, 70002, 70003, 70009, 70013, 70014})


def refused(what: str, code: int, info: str) -> MigrationError:
    if code in CREDENTIAL_CODES:
        return MigrationError(
            f"{what}: {code} {info}: the source does not take these credentials (--sdkappid, "
            "--identifier, the secret key in --secret-key-env); rerunning the same command cannot help",
            rerun_helps=False,
        )
    return MigrationError(f"{what}: {code} {info}")


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
    timeout: float = 30.0  # a whole call: connecting, sending, the whole reply
    log: IO[str] | None = None

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.rate)
        self.list_pacer = Pacer(self.list_rate)
        self.retried = 0
        # Its own threads, one per call in flight: a call waits for none to start, so its
        # deadline is its own.
        self.executor = ThreadPoolExecutor(max_workers=WINDOW + 1, thread_name_prefix="migrate-call")
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

    async def _post(self, command: str, body: dict[str, Any]) -> bytes:
        """The body of an HTTP 200 reply within `timeout` seconds, whole; OSError or
        HTTPException (retried) otherwise, MigrationError for an over-long reply."""
        post = _Post(self._url(command), json.dumps(body).encode(), self.timeout)
        future = asyncio.get_running_loop().run_in_executor(self.executor, post.run)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            post.abort()
            with contextlib.suppress(Exception):
                await future  # ends at once: its socket is shut
            raise TimeoutError(f"no whole reply within {self.timeout:g} s") from None
        finally:
            if not future.done():
                post.abort()

    async def call(self, command: str, body: dict[str, Any]) -> Reply:
        """The reply of a call that did not answer a retried code; MigrationError after
        `retries` retries."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            if command == "get_appid_group_list":
                await self.list_pacer.turn()
            await self.pacer.turn()
            try:
                reply = Reply.of(await self._post(command, body))
                code = reply.envelope.error_code if reply.envelope is not None else None
                if code not in RETRIED:
                    return reply
                why = f"{code} {shown(reply.envelope.error_info if reply.envelope else '')}"
            except MigrationError as exc:  # not retried: the same call would get the same reply
                raise MigrationError(f"{command}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeouts, HTTP errors
                why = f"{type(exc).__name__}: {str(exc)[:200]}"
            if attempt == self.retries:
                raise MigrationError(f"{command} failed {self.retries + 1} times, last: {why}")
            self.retried += 1
            if self.log is not None:
                print(f"{command}: {why}; retrying in {delay:.1f} s", file=self.log)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def close(self) -> None:
        # A call still in flight was aborted: its thread ends by itself.
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Reply:
    """A reply's body and its envelope, or why the body is not one."""

    raw: bytes
    envelope: Envelope | None
    malformed: Malformed | None

    @classmethod
    def of(cls, raw: bytes) -> Reply:
        try:
            # Duplicate keys are looked for by the command's own decoding, which knows
            # whether a bad reply skips a group or stops the walk.
            return cls(raw, strict_json.decode(raw, envelope_decoder, allow_duplicate_keys=True), None)
        except Malformed as exc:
            return cls(raw, None, exc)

    def decode(self, decoder: msgspec.json.Decoder[strict_json.T]) -> strict_json.T:
        if self.malformed is not None:
            raise self.malformed
        return strict_json.decode(self.raw, decoder)


class _Post:
    """One POST in a worker thread that the event loop can cut short (`abort`): a socket
    timeout bounds each read, not the reply, so a reply dripping one byte at a time
    would otherwise hold the call for ever."""

    def __init__(self, url: str, body: bytes, timeout: float) -> None:
        self.url = urlsplit(url)
        self.body = body
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.aborted = False

    def _connection(self) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """The connection, the request target and the headers: through the proxy the
        environment names (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as urllib would."""
        url = self.url
        host, port = url.hostname or "", url.port
        target, headers = f"{url.path}?{url.query}", {"Content-Type": "application/json"}
        proxy = urllib.request.getproxies().get(url.scheme)
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else None
        if via is not None and urllib.request.proxy_bypass(host):
            via = None
        auth: dict[str, str] = {}
        if via is not None and via.username is not None:
            credentials = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
            auth["Proxy-Authorization"] = f"Basic {base64.b64encode(credentials).decode()}"
        connect_host, connect_port = (via.hostname or "", via.port) if via is not None else (host, port)
        if url.scheme != "https":
            connection = http.client.HTTPConnection(connect_host, connect_port, timeout=self.timeout)
            if via is not None:  # a plain proxy takes the whole URL
                return connection, url.geturl(), {**headers, **auth}
            return connection, target, headers
        context = ssl.create_default_context()
        secure = http.client.HTTPSConnection(
            connect_host, connect_port, timeout=self.timeout, context=context
        )
        if via is not None:
            secure.set_tunnel(host, port, headers=auth)
        return secure, target, headers

    def run(self) -> bytes:
        connection, target, headers = self._connection()
        response: http.client.HTTPResponse | None = None
        try:
            connection.connect()
            # Kept here: the connection lets go of its socket once a reply says it closes
            # it, and the response goes on reading from it.
            self.sock = connection.sock
            if self.aborted:  # `abort` ran before the socket existed
                raise TimeoutError("deadline passed")
            connection.request("POST", target, body=self.body, headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                raise http.client.HTTPException(f"HTTP {response.status} {shown(response.reason)}")
            if response.length is not None and response.length > MAX_REPLY_BYTES:
                raise MigrationError(f"a reply of {response.length} bytes, over the {MAX_REPLY_BYTES} cap")
            body = response.read(MAX_REPLY_BYTES + 1)
            if len(body) > MAX_REPLY_BYTES:
                raise MigrationError(f"a reply over the {MAX_REPLY_BYTES}-byte cap")
            return body
        finally:
            if response is not None:
                response.close()
            connection.close()

    def abort(self) -> None:
        self.aborted = True
        sock = self.sock
        if sock is not None:
            # Wakes the thread's blocked read, which then fails at once.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


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
    skipped: int = 0  # groups whose reply was not the contract's: named on stderr, not written

    def save(self, path: Path) -> None:
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(json.dumps(asdict(self)))
        os.replace(temp, path)

    @classmethod
    def load(cls, path: Path, source: str, sdkappid: int) -> Checkpoint:
        if not path.exists():
            return cls(source, sdkappid)
        try:
            saved = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise MigrationError(
                f"{path} is not a checkpoint ({str(exc)[:200]}); delete it and the files next to it "
                "to start over"
            ) from None
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


def spool_line(group_type: str, group_id: str) -> bytes:
    """One listed group, a JSON array on one line: a GroupId holding a newline or any
    other byte is still one line, read back as it was."""
    return msgspec.json.encode((group_type, group_id)) + b"\n"


def read_spool_line(raw: bytes, number: int, path: Path) -> tuple[str, str]:
    try:
        group_type, group_id = strict_json.decode(raw, spool_decoder)
    except Malformed as exc:
        raise MigrationError(
            f"{path} line {number} is not a listed group ({exc}): written by another version? "
            "Delete the three files to start over"
        ) from None
    if group_type not in GROUP_TYPES:
        raise MigrationError(f"{path} line {number}: {shown(group_type)} is not a group type")
    return group_type, group_id


def _check_walk(checkpoint: Checkpoint, group_type: str, next_value: int, seen: set[int]) -> None:
    """Stop a walk that would not end: a cursor given twice, or more groups than the
    source says it has."""
    total = checkpoint.total_count or 0
    bound = total + max(LIST_MARGIN, total // 10)
    if checkpoint.listed > bound:
        raise MigrationError(
            f"get_appid_group_list ({group_type}) has listed {checkpoint.listed} groups, more than the "
            f"source's TotalCount {total} (plus {bound - total} created meanwhile): its walk is not "
            "ending"
        )
    if next_value != 0 and next_value in seen:
        raise MigrationError(
            f"get_appid_group_list ({group_type}) gave Next {next_value} a second time: its walk would "
            "not end"
        )
    seen.add(next_value)


async def list_groups(
    source: Source, checkpoint: Checkpoint, groups_path: Path, save: Callable[[], None]
) -> None:
    seen = {checkpoint.next_value}  # the cursors given so far in this type's walk
    with _append(groups_path, checkpoint.listed_bytes) as spool:
        while checkpoint.type_index < len(GROUP_TYPES):
            group_type = GROUP_TYPES[checkpoint.type_index]
            reply = await source.call(
                "get_appid_group_list",
                {"Limit": LIST_LIMIT, "Next": checkpoint.next_value, "GroupType": group_type},
            )
            what = f"get_appid_group_list ({group_type})"
            if reply.envelope is None:
                raise MigrationError(f"{what}: the reply is not the contract's: {reply.malformed}")
            code = reply.envelope.error_code
            if code in TYPE_REFUSED:
                if source.log is not None:
                    print(f"the source lists no {group_type} groups ({code}); skipped", file=source.log)
                next_value = 0
            elif code != 0:
                raise refused(what, code, shown(reply.envelope.error_info))
            else:
                try:
                    page = reply.decode(list_decoder)
                except Malformed as exc:
                    raise MigrationError(f"{what}: the reply is not the contract's: {exc}") from None
                listed = page.group_id_list or []
                spool.write(b"".join(spool_line(group_type, item.group_id) for item in listed))
                checkpoint.listed += len(listed)
                if checkpoint.total_count is None:  # the first: a source raising it cannot walk on
                    checkpoint.total_count = page.total_count
                next_value = page.next
                _check_walk(checkpoint, group_type, next_value, seen)
            if next_value == 0:
                checkpoint.type_index += 1
                seen = {0}
            checkpoint.next_value = next_value
            checkpoint.listed_bytes = _sync(spool)
            save()
    checkpoint.step = "counters"
    save()


@dataclass
class Skipped:
    """A group whose reply is not the contract's: not written, named, counted."""

    group_id: str
    why: str


async def _fetch(source: Source, group_type: str, group_id: str) -> GroupLine | Skipped | None:
    reply = await source.call("get_group_counter", {"GroupId": group_id})
    code = reply.envelope.error_code if reply.envelope is not None else 0
    if code == 10010:
        return None  # destroyed since it was listed
    if code == 10007:  # a Community group: it has no counters
        return GroupLine(0, group_id, "Community", [])
    if code != 0:
        info = reply.envelope.error_info if reply.envelope is not None else ""
        raise refused(f"get_group_counter {shown(group_id)}", code, shown(info))
    try:
        counters = reply.decode(counter_decoder).group_counter or []
    except Malformed as exc:
        return Skipped(group_id, str(exc))
    keys = {item.key for item in counters}
    if len(keys) != len(counters):
        return Skipped(group_id, "a Key twice in its GroupCounter")
    pairs = [(item.key, item.value) for item in counters]
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
        remaining = (read_spool_line(raw, number, groups_path) for number, raw in enumerate(listed, 1))
        for _ in range(checkpoint.groups_done):
            next(remaining)
        pending: deque[Awaitable[GroupLine | Skipped | None]] = deque()

        async def settle(keep: int) -> None:
            while len(pending) > keep:
                line = await pending.popleft()
                if line is None:
                    checkpoint.vanished += 1
                elif isinstance(line, Skipped):
                    checkpoint.skipped += 1
                    if source.log is not None and checkpoint.skipped <= SHOWN_SKIPS:
                        print(f"skipped GroupId {shown(line.group_id)}: {line.why}", file=source.log)
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

    try:
        if checkpoint.step == "list":
            await list_groups(source, checkpoint, groups_path, save)
        if checkpoint.step == "counters":
            await fetch_counters(source, checkpoint, groups_path, out_path, save, progress)
    finally:
        source.close()
    return checkpoint
