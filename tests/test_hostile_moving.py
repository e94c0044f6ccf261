"""Issue 25, points 4 and 5: import and migrate against hostile input. Every bad line is a
named reject and the run goes on; rejects cost a counter, not memory or stderr; a
conflict under --on-conflict fail is the last thing looked at; a lying migration source
gets no coerced value into the output and cannot keep the walk going for ever.

The attacks themselves are in `tests/hostile_moving.py` (`python -m tests.hostile_moving
ATTACK` replays one against the real command line)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import fakeredis
import pytest
import redis

import service.moving.transfer
from service.config import App, Settings, parse_config
from service.errors import ErrorCode, ServiceError
from service.moving.exits import MAX_LINE_BYTES, Exit
from service.moving.migrate import LIST_LIMIT, MAX_REPLY_BYTES
from service.moving.transfer import (
    SHOWN_REJECTS,
    GroupLine,
    ImportReport,
    OnConflict,
    bounded_lines,
    import_lines,
)
from service.storage.store import Store
from service.storage.transports.embedded import RedisPyTransport
from tests.hostile_moving import (
    MIGRATE_ATTACKS,
    Lies,
    deep_line,
    duplicate_key_lines,
    empty_objects,
    environ,
    good_lines,
    group_line,
    invalid_utf8_line,
    listing,
    long_line,
    lying_source,
    migrate_argv,
    only_public,
)
from tests.support import CONFIG, REGISTERED_APP, REPO, RedisServer

GROUP_KEY_PREFIX: Final = f"{{{REGISTERED_APP}:"


@pytest.fixture
def settings() -> Settings:
    return parse_config(CONFIG, environ={})


class Memory:
    """The embedded store's engine, and a look at what it holds."""

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self.inspector = fakeredis.FakeRedis(server=self.server, decode_responses=True)

    def store(self) -> Store:
        return Store(RedisPyTransport(fakeredis.FakeAsyncRedis(server=self.server)))

    def group_ids(self) -> set[str]:
        return {str(key)[len(GROUP_KEY_PREFIX) : -1] for key in self.inspector.keys("{*")}


@pytest.fixture
def memory() -> Memory:
    return Memory()


def run_import(
    memory: Memory, settings: Settings, data: bytes, on_conflict: OnConflict = "fail"
) -> tuple[ImportReport, str]:
    """The report and what was written to stderr; the lines read as the command reads them."""
    err = io.StringIO()

    async def run() -> ImportReport:
        store = memory.store()
        try:
            return await import_lines(
                store,
                settings.apps,
                bounded_lines(io.BytesIO(data)),
                on_conflict=on_conflict,
                dry_run=False,
                on_reject=err,
            )
        finally:
            await store.close()

    return asyncio.run(run()), err.getvalue()


def good_ids(count: int, prefix: str = "good") -> set[str]:
    return {f"{prefix}-{i}" for i in range(count)}


# ---- import: every bad line is a named reject -----------------------------------------------


def test_an_invalid_utf8_line_is_a_named_reject_and_the_lines_after_it_are_imported(
    memory: Memory, settings: Settings
) -> None:
    report, err = run_import(memory, settings, invalid_utf8_line() + good_lines(1000))
    assert (report.rejected, report.created) == (1, 1000)
    assert "rejected line 1: invalid UTF-8" in err
    assert memory.group_ids() == good_ids(1000)


def test_nesting_5000_deep_is_a_reject_not_a_crash(memory: Memory, settings: Settings) -> None:
    deep_counters = group_line("g").replace(
        b'"GroupCounter": []', b'"GroupCounter": ' + b"[" * 5000 + b"]" * 5000
    )
    report, err = run_import(memory, settings, deep_line(5000) + deep_counters + good_lines(10))
    assert (report.rejected, report.created) == (2, 10)
    assert "rejected line 1: nested too deep" in err
    assert "rejected line 2: not a group line" in err


def test_an_over_long_line_is_rejected_unread_and_the_next_line_imported(
    memory: Memory, settings: Settings
) -> None:
    data = long_line(4 * MAX_LINE_BYTES) + good_lines(3)
    read = list(bounded_lines(io.BytesIO(data)))
    assert len(read) == 4
    assert max(len(raw) for raw in read) <= MAX_LINE_BYTES + 2
    report, err = run_import(memory, settings, data)
    assert (report.rejected, report.created) == (1, 3)
    assert f"rejected line 1: line too long: over {MAX_LINE_BYTES} bytes" in err
    assert len(err) < 500


def test_a_key_twice_in_one_object_is_a_reject(memory: Memory, settings: Settings) -> None:
    report, err = run_import(memory, settings, duplicate_key_lines() + good_lines(1))
    assert (report.rejected, report.created) == (2, 1)
    assert "rejected line 1: duplicate key: 'SdkAppId' twice in one object" in err
    assert "rejected line 2: duplicate key: 'Value' twice in one object" in err
    assert memory.group_ids() == good_ids(1)


def test_rejects_are_counted_not_kept_and_stderr_stays_bounded(memory: Memory, settings: Settings) -> None:
    count = 300_000
    report, err = run_import(memory, settings, empty_objects(count) + good_lines(1))
    assert (report.rejected, report.created) == (count, 1)
    assert report.reject_kinds == {"not a group line": count}
    assert len(report.shown_rejects) == SHOWN_REJECTS
    assert len(err.splitlines()) == SHOWN_REJECTS + 1  # and one line saying the rest are counted
    assert len(err) < 200 * (SHOWN_REJECTS + 1)
    assert f"{count} rejected (not a group line {count})" in report.summary(dry_run=False)


def test_an_echoed_value_is_cut_to_a_line(memory: Memory, settings: Settings) -> None:
    huge_id = "g" * (MAX_LINE_BYTES - 200)
    huge_key = "k" * (MAX_LINE_BYTES - 200)
    report, err = run_import(memory, settings, group_line(huge_id) + group_line("ok", {huge_key: 2**63}))
    assert report.rejected == 2
    assert "bad GroupId" in err
    assert f"({len(huge_id)} characters)" in err
    assert max(len(line) for line in err.splitlines()) < 400


# ---- import: --on-conflict fail ---------------------------------------------------------------


@pytest.mark.parametrize("before", [10, 100])  # in the first batch, and in a later one
def test_on_conflict_fail_writes_nothing_after_the_conflict(
    memory: Memory, settings: Settings, before: int
) -> None:
    run_import(memory, settings, group_line("taken", {"a": 1}))
    data = good_lines(before, "before") + group_line("taken", {"a": 2}) + good_lines(200, "after")
    report, _ = run_import(memory, settings, data)
    assert (report.created, report.conflicts) == (before, 1)
    assert report.stopped is not None
    assert report.stopped.startswith(f"line {before + 1}: GroupId 'taken' differs")
    assert "nothing after it was written" in report.stopped
    assert memory.group_ids() == good_ids(before, "before") | {"taken"}
    assert report.exit_code() == Exit.CONFLICT


def test_a_conflict_that_appears_between_check_and_write_names_what_was_written_after_it(
    memory: Memory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = service.moving.transfer.import_group

    async def another_writer_first(
        store: Store, app: App, line: GroupLine, pairs: list[str], on_conflict: OnConflict, dry_run: bool
    ) -> str:
        if line.group_id == "good-3" and not dry_run:
            await original(
                store, app, GroupLine(REGISTERED_APP, "good-3", "Work", []), [], "overwrite", False
            )
        return await original(store, app, line, pairs, on_conflict, dry_run)

    monkeypatch.setattr(service.moving.transfer, "import_group", another_writer_first)
    report, _ = run_import(memory, settings, good_lines(6))
    assert report.stopped is not None
    assert report.stopped.startswith("line 4: GroupId 'good-3' differs")
    assert report.stopped.endswith("lines written after it in its batch are: 5, 6")


def test_a_store_failure_stops_the_import_as_could_not_run(
    memory: Memory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(*_: Any) -> str:
        raise ServiceError(ErrorCode.INTERNAL, "store unavailable")

    monkeypatch.setattr(service.moving.transfer, "import_group", failing)
    for on_conflict in ("fail", "skip"):
        report, _ = run_import(memory, settings, good_lines(200), on_conflict)
        assert report.rejected == 0
        assert report.failed is not None
        assert "store unavailable" in report.failed
        assert report.exit_code() == Exit.COULD_NOT_RUN


# ---- import: the command line's exit codes ----------------------------------------------------


def _import(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "service", "import", "--config", str(config), *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        timeout=60,
        env=environ(),
        check=False,
    )


def test_import_exit_codes_say_rejects_conflict_or_could_not_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace('redis_url = "memory://"', f'redis_url = "{redis_server.url}"'))

    done = _import(config, stdin=group_line("g", {"a": 1}))
    assert done.returncode == 0, done.stderr

    rejects = _import(config, stdin=invalid_utf8_line() + deep_line() + good_lines(5))
    assert rejects.returncode == 1, rejects.stderr
    assert b"imported: 7 lines: 5 groups created" in rejects.stderr
    assert b"2 rejected (invalid UTF-8 1, nested too deep 1)" in rejects.stderr

    conflict = _import(config, stdin=group_line("g", {"a": 2}) + good_lines(5, "later"))
    assert conflict.returncode == 3, conflict.stderr
    assert b"stopped: line 1: GroupId 'g' differs" in conflict.stderr

    missing = _import(config, "--input", str(tmp_path / "nothing.jsonl"))
    assert missing.returncode == 2
    assert b"import could not run: --input" in missing.stderr
    for result in (done, rejects, conflict, missing):
        assert b"Traceback" not in result.stderr

    described = subprocess.run(
        [sys.executable, "-m", "service", "import", "--help"], cwd=REPO, capture_output=True, check=True
    )
    assert b"exit codes:" in described.stdout
    assert f"a line over {MAX_LINE_BYTES} bytes".encode() in described.stdout


# ---- migrate: a lying source ------------------------------------------------------------------


def _run(base_url: str, out: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        migrate_argv(base_url, out, "--retries", "0", *extra),
        cwd=REPO,
        env=environ(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _migrate(lies: Lies, out: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    with lying_source(lies) as base_url:
        return _run(base_url, out, *extra, timeout=timeout)


def _written(out: Path) -> dict[str, dict[str, int]]:
    lines = [json.loads(raw) for raw in out.read_bytes().splitlines()]
    return {line["GroupId"]: {c["Key"]: c["Value"] for c in line["GroupCounter"]} for line in lines}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "moved.jsonl"


def test_a_value_that_is_not_an_int64_integer_skips_its_group_never_coerced(out: Path) -> None:
    lies = MIGRATE_ATTACKS["migrate-coerced-values"]()
    extra = {
        "nan": '[{"Key":"a","Value":NaN}]',
        "same-key": '[{"Key":"a","Value":1},{"Key":"a","Value":2}]',
        "value-twice": '[{"Key":"a","Value":1,"Value":2}]',
    }
    for group_id, items in extra.items():
        lies.counters[group_id] = b'{"ErrorCode":0,"GroupCounter":' + items.encode() + b"}"
    names = ["float", "text", "bool", "big", "int-key", *extra, "good"]
    lies.pages["Public"] = [listing(names, total=len(names))]
    result = _migrate(lies, out)
    assert result.returncode == Exit.REJECTS, result.stderr.decode()
    assert _written(out) == {"good": {"a": 5}}
    stderr = result.stderr.decode()
    for group_id in names[:-1]:
        assert f"skipped GroupId {group_id!r}" in stderr
    assert "8 skipped" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("migrate-alternating-next", "gave Next 1 a second time"),
        ("migrate-endless-listing", "more than the source's TotalCount 3"),
    ],
)
def test_a_walk_that_would_not_end_stops_with_a_clear_error(attack: str, reason: str, out: Path) -> None:
    lies = MIGRATE_ATTACKS[attack]()
    result = _migrate(lies, out, timeout=30)
    assert result.returncode == Exit.COULD_NOT_RUN, result.stderr.decode()
    assert reason in result.stderr.decode()
    assert lies.served["Public"] <= 3


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("migrate-next-minus-one", "Expected `int` >= 0 - at `$.Next`"),
        ("migrate-next-abc", "Expected `int`, got `str` - at `$.Next`"),
        ("migrate-nan-body", "not JSON"),
        ("migrate-array-body", "Expected `object`, got `array`"),
    ],
)
def test_a_reply_not_in_the_contracts_shape_stops_the_walk_with_a_clear_error(
    attack: str, reason: str, out: Path
) -> None:
    result = _migrate(MIGRATE_ATTACKS[attack](), out)
    assert result.returncode == Exit.COULD_NOT_RUN, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "migration stopped: get_appid_group_list (Public)" in stderr
    assert reason in stderr
    assert "Traceback" not in stderr


def test_a_reply_that_drips_times_out_at_the_call_deadline(out: Path) -> None:
    lies = MIGRATE_ATTACKS["migrate-drip"]()
    lies.drip = 0.3  # a byte every 0.3 s: no read waits long, the whole reply takes 30 s
    started = time.monotonic()
    result = _migrate(lies, out, "--call-timeout", "1", timeout=20)
    assert result.returncode == Exit.COULD_NOT_RUN, result.stderr.decode()
    assert b"no whole reply within 1 s" in result.stderr
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("lies", "reason"),
    [
        (MIGRATE_ATTACKS["migrate-oversized-reply"](), "cap"),
        (
            only_public(
                [listing([f"g{i}" for i in range(LIST_LIMIT + 1)], total=LIST_LIMIT + 1)], LIST_LIMIT + 1
            ),
            f"Expected `array` of length <= {LIST_LIMIT}",
        ),
    ],
    ids=["bytes", "groups"],
)
def test_a_reply_over_the_caps_is_refused(lies: Lies, reason: str, out: Path) -> None:
    result = _migrate(lies, out)
    assert result.returncode == Exit.COULD_NOT_RUN, result.stderr.decode()
    assert reason in result.stderr.decode()
    if reason == "cap":
        assert f"over the {MAX_REPLY_BYTES}" in result.stderr.decode()


def test_a_group_id_with_a_newline_survives_the_spool_and_a_resume(out: Path) -> None:
    expected = {"a\nb": {"a": 1}, "good": {"b": 2}}
    with lying_source(MIGRATE_ATTACKS["migrate-newline-group-id"]()) as base_url:
        first = _run(base_url, out)
        assert first.returncode == Exit.DONE, first.stderr.decode()
        assert _written(out) == expected

        checkpoint_path = out.with_name(out.name + ".checkpoint")
        checkpoint = json.loads(checkpoint_path.read_text())
        checkpoint.update(step="counters", groups_done=0, out_bytes=0)  # as if killed before a fetch
        checkpoint_path.write_text(json.dumps(checkpoint))
        resumed = _run(base_url, out)
        assert resumed.returncode == Exit.DONE, resumed.stderr.decode()
        assert _written(out) == expected


def test_migrate_goes_through_the_proxy_the_environment_names(out: Path) -> None:
    # The lying source answers as a plain HTTP proxy would: the request target is the
    # whole URL, of a host that does not resolve.
    lies = MIGRATE_ATTACKS["migrate-newline-group-id"]()
    with lying_source(lies) as proxy:
        env = {**environ(), "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
        result = subprocess.run(
            migrate_argv("http://platform.invalid", out, "--retries", "0"),
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == Exit.DONE, result.stderr.decode()
    assert _written(out) == {"a\nb": {"a": 1}, "good": {"b": 2}}
