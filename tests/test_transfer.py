"""README "Moving counters": export and import. A round trip gives a byte-identical export
on one Redis, a Cluster and the embedded store; an import writes a group whole or not
at all, rejects bad lines with their reason, and a rerun changes nothing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

import service.moving.transfer
from service.app import create_app
from service.config import Settings, parse_config
from service.moving.cli import export_apps
from service.moving.transfer import ImportReport, OnConflict, import_lines
from service.storage.format import CURRENT_FORMAT
from service.storage.keys import FORMAT_KEY
from service.storage.scripts import IMPORT_GROUP, ScriptCall, ScriptReply
from service.storage.store import Store, open_store
from service.storage.transports.embedded import RedisPyTransport
from tests.support import CONFIG, IMPLICIT_APP, OTHER_APP, REGISTERED_APP, REPO, Api, RedisServer
from tests.test_lua_scripts import parse_header
from tests.topologies import Cluster, SentinelSetup

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
APPS: Final = [REGISTERED_APP, IMPLICIT_APP, OTHER_APP]


@dataclass
class Backend:
    name: str
    new_store: Callable[[], Store]
    flush: Callable[[], object]
    state: Callable[[], dict[Any, Any]]


def _backend(name: str, request: pytest.FixtureRequest) -> Backend:
    if name == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        inspector: Any = redis.Redis.from_url(server.url)
        inspector.flushall()
        return Backend(
            name,
            lambda: open_store(server.url, timeout=5.0),
            inspector.flushall,
            lambda: _state(inspector),
        )
    if name == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        client = cluster.inspector()
        client.flushall(target_nodes=client.PRIMARIES)
        return Backend(
            name,
            lambda: open_store(cluster.url, timeout=5.0),
            lambda: client.flushall(target_nodes=client.PRIMARIES),
            lambda: _state(client),
        )
    fake_server = fakeredis.FakeServer()
    fake = fakeredis.FakeRedis(server=fake_server)
    return Backend(
        name,
        lambda: Store(RedisPyTransport(fakeredis.FakeAsyncRedis(server=fake_server))),
        fake.flushall,
        lambda: _state(fake),
    )


def _state(client: Any) -> dict[Any, Any]:
    return {key: client.hgetall(key) for key in sorted(client.keys("*")) if client.type(key) == b"hash"}


@pytest.fixture(params=["redis", "memory", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return _backend(request.param, request)


@pytest.fixture(params=["redis", "memory"])
def single(request: pytest.FixtureRequest) -> Backend:
    return _backend(request.param, request)


@pytest.fixture
def settings() -> Settings:
    return parse_config(CONFIG, environ={})


def populate(backend: Backend, settings: Settings) -> None:
    """Groups through the API, as a client makes them: every type, int64 extremes,
    multi-byte Keys, GroupIds with escaped characters, an implicit app."""
    with TestClient(create_app(settings, backend.new_store())) as client:
        api = Api(client=client, inspector=fakeredis.FakeRedis())  # its inspector is not used here
        api.create("extremes")
        api.update("extremes", {"min": INT64_MIN, "max": INT64_MAX, "zero": 0, "2^53+1": 2**53 + 1})
        api.create("utf8", "ChatRoom")
        api.update("utf8", {"点赞": 7, "café": -1, "😀" * 32: 3})
        for i, group_id in enumerate(["50%", "{x}", "a}b{c", "%7B", " "]):
            api.create(group_id, "Private")
            api.update(group_id, {f"k{i}": i})
        api.create("full", "Work")
        api.update("full", {f"key{i:02d}": i * 10**17 for i in range(20)})
        api.create("empty", "Meeting")
        api.create("@TGS#_community", "Community")
        api.update("counted", {"a": 1, "b": -2}, sdkappid=IMPLICIT_APP)
        api.create("other", "AVChatRoom", sdkappid=OTHER_APP)
        api.update("other", {"x": INT64_MAX}, sdkappid=OTHER_APP)


def export(backend: Backend) -> bytes:
    out = io.BytesIO()

    async def run() -> None:
        store = backend.new_store()
        try:
            await export_apps(store, APPS, out, io.StringIO())
        finally:
            await store.close()

    asyncio.run(run())
    return out.getvalue()


def import_(
    backend: Backend,
    settings: Settings,
    data: bytes,
    on_conflict: OnConflict = "fail",
    *,
    dry_run: bool = False,
) -> ImportReport:
    async def run() -> ImportReport:
        store = backend.new_store()
        try:
            return await import_lines(
                store,
                settings.apps,
                data.splitlines(keepends=True),
                on_conflict=on_conflict,
                dry_run=dry_run,
                on_reject=io.StringIO(),
            )
        finally:
            await store.close()

    return asyncio.run(run())


def test_export_flush_import_gives_a_byte_identical_export(backend: Backend, settings: Settings) -> None:
    populate(backend, settings)
    first = export(backend)
    lines = [json.loads(line) for line in first.splitlines()]
    assert len(lines) == 12
    extremes = next(line for line in lines if line["GroupId"] == "extremes")
    assert {c["Key"]: c["Value"] for c in extremes["GroupCounter"]}["min"] == INT64_MIN
    assert b'"Value":9223372036854775807' in first  # written as the exact integer

    backend.flush()
    report = import_(backend, settings, first)
    assert (report.created, report.rejected, report.conflicts) == (12, 0, 0)
    assert export(backend) == first


def test_a_rerun_of_an_import_changes_nothing(backend: Backend, settings: Settings) -> None:
    populate(backend, settings)
    data = export(backend)
    before = backend.state()
    report = import_(backend, settings, data)
    assert (report.created, report.unchanged, report.conflicts) == (0, 12, 0)
    assert backend.state() == before


def test_a_cluster_moves_to_one_redis(settings: Settings, request: pytest.FixtureRequest) -> None:
    cluster = _backend("cluster", request)
    single = _backend("redis", request)
    populate(cluster, settings)
    data = export(cluster)
    report = import_(single, settings, data)
    assert (report.created, report.rejected) == (12, 0)
    assert export(single) == data


def line(group_id: str, counters: dict[str, Any], group_type: str | None = "Public", **extra: Any) -> bytes:
    body = {
        "SdkAppId": REGISTERED_APP,
        "GroupId": group_id,
        "Type": group_type,
        "GroupCounter": [{"Key": key, "Value": value} for key, value in counters.items()],
        **extra,
    }
    return json.dumps(body).encode() + b"\n"


def test_bad_lines_are_rejected_with_their_reason_and_write_nothing(
    single: Backend, settings: Settings
) -> None:
    data = b"".join(
        [
            line("bad-key", {"ok": 1, "": 2}),
            line("long-key", {"k" * 129: 1}),
            line("too-many", {f"k{i}": i for i in range(21)}),
            line("too-big", {"ok": 1, "big": 2**63}),
            line("too-small", {"small": INT64_MIN - 1}),
            line("é-not-ascii", {"a": 1}),
            line("untyped", {"a": 1}, None),
            line("community", {"a": 1}, "Community"),
            line("elsewhere", {"a": 1}, SdkAppId=1),
            b"{not json\n",
            line("string-value", {"a": "1"}),
            line("good", {"a": INT64_MIN}),
        ]
    )
    report = import_(single, settings, data)
    reasons = "\n".join(report.shown_rejects)
    assert report.rejected == 11, reasons
    for reason in ("bad key", "over 20 keys", "out-of-range value", "bad GroupId", "no Type", "unknown app"):
        assert reason in reasons
    assert report.created == 1
    assert list(single.state().values()) == [{b"\xff": b"Public", b"a": str(INT64_MIN).encode()}]


def test_a_conflicting_group_is_skipped_overwritten_or_stops_the_import(
    single: Backend, settings: Settings
) -> None:
    import_(single, settings, line("g", {"a": 1}))
    theirs = line("g", {"a": 2, "b": 3}, "ChatRoom")
    before = single.state()

    skipped = import_(single, settings, theirs + line("new", {}), "skip")
    assert (skipped.conflicts, skipped.created, skipped.stopped) == (1, 1, None)
    after_skip = single.state()
    assert after_skip[b"{1400000000:g}"] == before[b"{1400000000:g}"]

    failed = import_(single, settings, theirs, "fail")
    assert failed.stopped is not None
    assert "GroupId 'g'" in failed.stopped
    assert single.state() == after_skip

    dry = import_(single, settings, theirs, "overwrite", dry_run=True)
    assert dry.overwritten == 1
    assert single.state() == after_skip

    overwritten = import_(single, settings, theirs, "overwrite")
    assert (overwritten.overwritten, overwritten.counters) == (1, 2)
    assert single.state()[b"{1400000000:g}"] == {b"\xff": b"ChatRoom", b"a": b"2", b"b": b"3"}


def test_a_dry_run_reports_what_it_would_do_and_writes_nothing(single: Backend, settings: Settings) -> None:
    report = import_(single, settings, line("g", {"a": 1}) + line("h", {"b": 2}), dry_run=True)
    assert (report.created, report.counters) == (2, 2)
    assert single.state() == {}


def test_import_calls_its_script_with_the_keys_and_argv_its_header_documents(
    single: Backend, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ScriptCall] = []
    original = Store.run

    async def spy(self: Store, call: ScriptCall) -> ScriptReply:
        seen.append(call)
        return await original(self, call)

    monkeypatch.setattr(Store, "run", spy)
    import_(single, settings, line("g", {"a": 1, "b": 2}) + line("e", {}, "Community"), "skip")
    header = parse_header(IMPORT_GROUP)
    assert [call.script for call in seen] == [IMPORT_GROUP, IMPORT_GROUP]
    for call in seen:
        assert len(call.keys) == len(header.keys)
        tail = len(call.args) - len(header.argv)
        assert tail >= 0
        assert tail % 2 == 0


# ---- the command lines ----


def _cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environ = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**environ, **(env or {})},
        check=False,
    )


def test_the_export_and_import_commands_round_trip_through_a_file(
    redis_server: RedisServer, tmp_path: Path, settings: Settings, request: pytest.FixtureRequest
) -> None:
    backend = _backend("redis", request)
    populate(backend, settings)
    # As a served Redis is: `python -m service` marks the storage format at its first start
    # (the in-process app that populated it is no process of its own and marks nothing).
    redis.Redis.from_url(redis_server.url).set(FORMAT_KEY, CURRENT_FORMAT)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace('redis_url = "memory://"', f'redis_url = "{redis_server.url}"'))

    exported = _cli("export", "--config", str(config))
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr.decode().strip().endswith("exported 12 groups")
    dump = tmp_path / "groups.jsonl"
    dump.write_bytes(exported.stdout)

    backend.flush()
    dry = _cli("import", "--config", str(config), "--input", str(dump), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert b"12 groups would be created" in dry.stderr
    assert backend.state() == {}
    imported = _cli("import", "--config", str(config), "--input", str(dump))
    assert imported.returncode == 0, imported.stderr
    assert _cli("export", "--config", str(config)).stdout == exported.stdout

    one_app = _cli("export", "--config", str(config), "--sdkappid", str(OTHER_APP))
    assert [json.loads(x)["GroupId"] for x in one_app.stdout.splitlines()] == ["other"]

    rejected = _cli("import", "--config", str(config), stdin=line("x", {"": 1}))
    assert rejected.returncode == 1
    assert b"rejected line 1 (GroupId 'x'): bad key" in rejected.stderr


def test_export_refuses_the_embedded_store_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    for command in ("export", "import"):
        result = _cli(command, "--config", str(config))
        assert result.returncode == 2
        assert b"memory://" in result.stderr
        assert b"Traceback" not in result.stderr


def test_export_and_import_go_to_the_master_the_sentinels_name(settings: Settings) -> None:
    setup = SentinelSetup().start()
    try:
        assert setup.master is not None
        master = setup.master.client()
        backend = Backend(
            "sentinel",
            lambda: open_store(setup.url, timeout=5.0),
            master.flushall,
            lambda: _state(master),
        )
        data = line("g", {"max": INT64_MAX, "点赞": INT64_MIN}) + line("h", {}, "Community")
        assert import_(backend, settings, data).created == 2
        exported = export(backend)
        assert [json.loads(x) for x in exported.splitlines()] == [json.loads(x) for x in data.splitlines()]
        master.close()
    finally:
        setup.stop()


def test_export_sorts_in_bounded_runs_and_gives_the_same_bytes(
    single: Backend, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(single, settings)
    in_memory = export(single)
    monkeypatch.setattr(service.moving.transfer, "SORT_RUN", 3)  # every few GroupIds spill to a temp file
    assert export(single) == in_memory
