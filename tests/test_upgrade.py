"""Upgrading data of release 0.1.0 (storage format 1) to this release's format, and the
format marker that keeps a service off data it cannot read (UPGRADING.md).

The data is written by 0.1.0's own Lua scripts (tests/releases/v0_1_0), on a real
redis-server and on a three-master Cluster; every group must answer as 0.1.0 answered,
and every call 0.1.0 acknowledged with an Idempotency-Key must replay, never apply twice.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import pytest
import redis
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.downgrade import Downgrade
from service.storage.format import CURRENT_FORMAT, StorageFormatError, check_format, read_format
from service.storage.keys import FORMAT_KEY
from service.storage.keys import group_key as current_group_key
from service.storage.store import Store, open_store
from service.storage.upgrade import Upgrade, UpgradeReport
from tests.releases.v0_1_0 import Release010
from tests.releases.v0_1_0 import group_key as old_group_key
from tests.support import CONFIG, IMPLICIT_APP, REGISTERED_APP, Api, RedisServer, ServiceProcess, query
from tests.topologies import Cluster, SentinelSetup

REPO: Final = Path(__file__).resolve().parents[1]
# GroupIds whose key names changed (an escape) and one that did not.
RENAMED: Final = ("a%b", "br{ace}", "x}")
INT64_MAX: Final = 2**63 - 1


@dataclass
class Topology:
    url: str
    client: Any  # redis.Redis or RedisCluster: both answer what these tests ask

    def flush(self) -> None:
        if isinstance(self.client, redis.Redis):
            self.client.flushall()
        else:
            self.client.flushall(target_nodes=self.client.PRIMARIES)

    def keys(self) -> set[bytes]:
        return set(self.client.scan_iter(match="*", count=1000))

    def dump(self) -> dict[bytes, Any]:
        return {key: self.client.dump(key) for key in self.keys()}


@pytest.fixture(params=["redis", "cluster"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        place = Topology(server.url, redis.Redis.from_url(server.url))
    else:
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        place = Topology(cluster.url, cluster.inspector())
    place.flush()
    yield place
    place.flush()
    place.client.close()


@dataclass
class Seeded:
    """What 0.1.0 answered for each group, after writing them."""

    answers: dict[tuple[int, str], dict[str, int] | int]


def seed_release_010(topology: Topology) -> Seeded:
    """A 0.1.0 data set: registered and implicit groups, GroupIds that need an escape,
    a Community group, int64 edges, and idempotency records of updates and deletes."""
    old = Release010(topology.client)
    groups = [(REGISTERED_APP, g) for g in ("plain", *RENAMED, "edge")] + [(IMPLICIT_APP, "imp}licit")]
    for sdkappid, group_id in groups:
        if sdkappid == REGISTERED_APP:
            assert old.create(sdkappid, group_id) == 0
    assert old.create(REGISTERED_APP, "@TGS#_community", "Community") == 0
    assert old.update(REGISTERED_APP, "plain", {"like": 5, "gift": 2})[0] == 0
    assert old.update(REGISTERED_APP, "plain", {"like": 1}, idempotency_key="retry-1") == [0, b"6"]
    assert old.update(REGISTERED_APP, "a%b", {"like": 3, "gift": 4}, "Set")[0] == 0
    assert old.delete(REGISTERED_APP, "a%b", ["gift"], idempotency_key="del-1") == 0
    assert old.update(REGISTERED_APP, "br{ace}", {"like": 7}, idempotency_key="k}2") == [0, b"7"]
    assert old.update(REGISTERED_APP, "x}", {"like": -2}, "Decrease")[0] == 0
    assert old.update(REGISTERED_APP, "edge", {"max": INT64_MAX, "min": -(2**63)}, "Set")[0] == 0
    assert old.update(IMPLICIT_APP, "imp}licit", {"seen": 9}, registered=False)[0] == 0
    answers: dict[tuple[int, str], dict[str, int] | int] = {}
    for sdkappid, group_id in groups:
        answers[(sdkappid, group_id)] = old.get(sdkappid, group_id, registered=sdkappid == REGISTERED_APP)
    assert answers[(REGISTERED_APP, "a%b")] == {"like": 3}
    return Seeded(answers)


def run_upgrade(url: str, *, dry_run: bool = False) -> UpgradeReport:
    async def run() -> UpgradeReport:
        store = open_store(url, timeout=5.0)
        try:
            return await Upgrade(store, dry_run=dry_run).run()
        finally:
            await store.close()

    return asyncio.run(run())


def run_downgrade(url: str, *, dry_run: bool = False) -> UpgradeReport:
    async def run() -> UpgradeReport:
        store = open_store(url, timeout=5.0)
        try:
            return await Downgrade(store, dry_run=dry_run).run()
        finally:
            await store.close()

    return asyncio.run(run())


def stored_format(url: str) -> int | None:
    async def run() -> int | None:
        store = open_store(url, timeout=5.0)
        try:
            return await read_format(store)
        finally:
            await store.close()

    return asyncio.run(run())


def format_check(url: str) -> int:
    async def run() -> int:
        store = open_store(url, timeout=5.0)
        try:
            return await check_format(store)
        finally:
            await store.close()

    return asyncio.run(run())


def post_with_key(api: Api, command: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
    response = api.client.post(
        f"/v4/group_open_http_svc/{command}?" + query(),
        content=json.dumps(body).encode(),
        headers={"Idempotency-Key": idempotency_key},
    )
    assert response.status_code == 200
    reply: dict[str, Any] = response.json()
    return reply


@pytest.fixture
def service_api(topology: Topology, settings: Settings) -> Iterator[Api]:
    """This release's commands, in process, on the topology's Redis."""
    store: Store = open_store(topology.url, timeout=5.0)
    with TestClient(create_app(settings, store)) as client:
        yield Api(client=client, inspector=cast(redis.Redis, topology.client))


# ---- the format marker ----


def test_a_new_store_is_marked_with_the_current_format_when_a_service_first_checks_it(
    topology: Topology,
) -> None:
    assert stored_format(topology.url) is None
    assert format_check(topology.url) == CURRENT_FORMAT
    assert stored_format(topology.url) == CURRENT_FORMAT
    assert topology.client.get(FORMAT_KEY) == str(CURRENT_FORMAT).encode()


def test_groups_without_a_marker_are_release_010_data_and_the_service_refuses_them(
    topology: Topology,
) -> None:
    seed_release_010(topology)
    with pytest.raises(StorageFormatError, match=r"0\.1\.0.*python -m service upgrade"):
        format_check(topology.url)
    assert stored_format(topology.url) is None, "a refused check marks nothing"


def test_a_format_newer_than_this_release_is_refused(topology: Topology) -> None:
    topology.client.set(FORMAT_KEY, str(CURRENT_FORMAT + 1))
    with pytest.raises(StorageFormatError, match="newer release"):
        format_check(topology.url)


def test_a_marker_that_no_release_writes_is_refused(topology: Topology) -> None:
    topology.client.set(FORMAT_KEY, "two")
    with pytest.raises(StorageFormatError, match="no release writes"):
        format_check(topology.url)


# ---- the upgrade ----


def test_dry_run_reports_the_renames_and_writes_nothing(topology: Topology) -> None:
    seed_release_010(topology)
    before = topology.dump()
    report = run_upgrade(topology.url, dry_run=True)
    assert report.renamed == len(RENAMED) + 1  # and the implicit app's imp}licit
    assert report.records_seen == 3
    assert not report.conflicts
    assert not report.marker_written
    assert topology.dump() == before


def test_every_group_answers_as_release_010_did_after_the_upgrade(
    topology: Topology, service_api: Api
) -> None:
    seeded = seed_release_010(topology)
    report = run_upgrade(topology.url)
    assert report.marker_written
    assert report.renamed == len(RENAMED) + 1
    assert report.records_converted == 3
    assert stored_format(topology.url) == CURRENT_FORMAT
    for (sdkappid, group_id), answer in seeded.answers.items():
        reply = service_api.call("get_group_counter", {"GroupId": group_id}, sdkappid=sdkappid)
        assert reply["ErrorCode"] == 0, (group_id, reply)
        assert {c["Key"]: c["Value"] for c in reply["GroupCounter"]} == answer, group_id
    # No key of the old names is left.
    for group_id in RENAMED:
        assert not topology.client.exists(old_group_key(REGISTERED_APP, group_id))
        assert topology.client.exists(current_group_key(REGISTERED_APP, group_id))
    community = service_api.call(
        "update_group_counter",
        {"GroupId": "@TGS#_community", "Mode": "Increase", "GroupCounter": [{"Key": "k", "Value": 1}]},
    )
    assert community["ErrorCode"] == 10007, "a Community group stays one"


def test_a_call_release_010_acknowledged_replays_after_the_upgrade_never_applies_twice(
    topology: Topology, service_api: Api
) -> None:
    seed_release_010(topology)
    run_upgrade(topology.url)
    # Another call with a new Idempotency-Key gives "plain" an epoch first, as the first
    # call through the new release would; the 0.1.0 record must still replay after it.
    other = post_with_key(
        service_api,
        "update_group_counter",
        {"GroupId": "plain", "Mode": "Increase", "GroupCounter": [{"Key": "gift", "Value": 1}]},
        "new-1",
    )
    assert other["ErrorCode"] == 0
    for group_id, key, amount, idempotency_key, value in (
        ("plain", "like", 1, "retry-1", 6),
        ("br{ace}", "like", 7, "k}2", 7),
    ):
        retry = post_with_key(
            service_api,
            "update_group_counter",
            {"GroupId": group_id, "Mode": "Increase", "GroupCounter": [{"Key": key, "Value": amount}]},
            idempotency_key,
        )
        assert retry["ErrorCode"] == 0, retry
        assert retry["GroupCounter"] == [{"Key": key, "Value": value}], "replayed, not applied again"
    mismatch = post_with_key(
        service_api,
        "update_group_counter",
        {"GroupId": "plain", "Mode": "Increase", "GroupCounter": [{"Key": "like", "Value": 2}]},
        "retry-1",
    )
    assert mismatch["ErrorCode"] == 10004, "the record still names its request"
    deleted = post_with_key(
        service_api, "delete_group_counter", {"GroupId": "a%b", "GroupCounterKeys": ["gift"]}, "del-1"
    )
    assert deleted["ErrorCode"] == 0
    final = service_api.call("get_group_counter", {"GroupId": "plain"})
    assert {c["Key"]: c["Value"] for c in final["GroupCounter"]} == {"like": 6, "gift": 3}


def test_a_rerun_changes_nothing(topology: Topology) -> None:
    seed_release_010(topology)
    run_upgrade(topology.url)
    after = topology.dump()
    assert run_upgrade(topology.url) == UpgradeReport(), "marked current: nothing to walk"
    topology.client.delete(FORMAT_KEY)  # as if the first run stopped just before its marker
    again = run_upgrade(topology.url)
    assert (again.renamed, again.records_converted, again.conflicts) == (0, 0, [])
    assert again.marker_written
    assert topology.dump() == after


def test_a_group_already_under_the_new_name_is_a_conflict_reported_and_never_overwritten(
    topology: Topology,
) -> None:
    seed_release_010(topology)
    taken = current_group_key(REGISTERED_APP, "br{ace}")
    # As this release writes a group: with a version (field 0xFD), which 0.1.0 never wrote.
    topology.client.hset(taken, mapping={"\xff": "Public", "other": "1", "\xfd": "1 0a1b2c3d"})
    before = topology.dump()
    report = run_upgrade(topology.url)
    assert len(report.conflicts) == 1
    assert "br{ace}" in report.conflicts[0]
    assert not report.marker_written
    assert stored_format(topology.url) is None, "no marker: the service still refuses the data"
    assert topology.dump()[taken.encode()] == before[taken.encode()]
    assert topology.client.exists(old_group_key(REGISTERED_APP, "br{ace}"))


def test_an_interrupted_cross_slot_move_resumes(topology: Topology) -> None:
    """A Cluster moves a renamed group in three steps; a crash after "place" leaves the
    group under both names, and the rerun finishes the move."""
    seed_release_010(topology)
    old, new = old_group_key(REGISTERED_APP, "x}"), current_group_key(REGISTERED_APP, "x}")
    topology.client.copy(old, new) if isinstance(topology.client, redis.Redis) else topology.client.hset(
        new, mapping=topology.client.hgetall(old)
    )
    report = run_upgrade(topology.url)
    if isinstance(topology.client, redis.Redis):
        # One Redis moves each group in one atomic step: it never leaves such a state,
        # and a copy made by hand is another group's data.
        assert len(report.conflicts) == 1
        return
    assert report.conflicts == []
    assert report.marker_written
    assert not topology.client.exists(old)
    assert topology.client.hgetall(new) == {b"\xff": b"Public", b"like": b"2"}


# ---- the service and the command line ----


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace('redis_url = "memory://"', f'redis_url = "{url}"'))
    return config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_service_refuses_to_start_on_release_010_data_and_serves_after_the_upgrade(
    topology: Topology, tmp_path: Path
) -> None:
    seed_release_010(topology)
    config = _config(tmp_path, topology.url)
    checked = _cli("check-config", "--config", str(config), "--connect")
    assert checked.returncode == 3, checked
    assert "python -m service upgrade" in checked.stderr
    refused = ServiceProcess.start(config)
    assert refused.process.wait(timeout=60) == 3
    assert "python -m service upgrade" in refused.log.read_text()

    dry = _cli("upgrade", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry
    assert "dry run: nothing was written" in dry.stdout
    done = _cli("upgrade", "--config", str(config))
    assert done.returncode == 0, done
    assert "marker written" in done.stdout
    assert "keys scanned" in done.stderr, "a progress line"
    checked = _cli("check-config", "--config", str(config), "--connect")
    assert checked.returncode == 0, checked
    assert f"format {CURRENT_FORMAT}" in checked.stdout

    service = ServiceProcess.start(config)
    try:
        service.wait_until(
            lambda: service.post("get_group_counter", {"GroupId": "br{ace}"})["ErrorCode"] == 0
        )
        reply = service.post("get_group_counter", {"GroupId": "br{ace}"})
        assert reply["GroupCounter"] == [{"Key": "like", "Value": 7}]
    finally:
        service.stop()


def test_upgrade_reports_conflicts_with_exit_code_1(topology: Topology, tmp_path: Path) -> None:
    seed_release_010(topology)
    topology.client.hset(
        current_group_key(REGISTERED_APP, "a%b"), mapping={"\xff": "Public", "\xfd": "1 0a1b2c3d"}
    )
    result = _cli("upgrade", "--config", str(_config(tmp_path, topology.url)))
    assert result.returncode == 1, result
    assert "CONFLICT" in result.stdout
    assert "marker was not changed" in result.stderr


@pytest.mark.parametrize("command", ["import", "export"])
def test_import_and_export_refuse_data_of_another_format(
    topology: Topology, tmp_path: Path, command: str
) -> None:
    seed_release_010(topology)
    lines = tmp_path / "groups.jsonl"
    lines.write_text("")
    args = ["--input", str(lines)] if command == "import" else []
    result = _cli(command, "--config", str(_config(tmp_path, topology.url)), *args)
    assert result.returncode == 2, result
    assert "python -m service upgrade" in result.stderr


def test_the_upgrade_and_the_downgrade_run_through_sentinel(settings: Settings) -> None:
    """Sentinel names the master; the walk and each group's move run there, as on one Redis."""
    setup = SentinelSetup()
    try:
        setup.start()
        assert setup.master is not None
        master = setup.master.client()
        place = Topology(setup.url, master)
        seeded = seed_release_010(place)
        report = run_upgrade(setup.url)
        assert report.marker_written
        assert report.renamed == len(RENAMED) + 1
        assert report.records_converted == 3
        with TestClient(create_app(settings, open_store(setup.url, timeout=5.0))) as client:
            api = Api(client=client, inspector=master)
            for (sdkappid, group_id), answer in seeded.answers.items():
                reply = api.call("get_group_counter", {"GroupId": group_id}, sdkappid=sdkappid)
                assert {c["Key"]: c["Value"] for c in reply["GroupCounter"]} == answer, group_id
        back = run_downgrade(setup.url)
        assert back.marker_written
        assert Release010(master).get(REGISTERED_APP, "br{ace}") == {"like": 7}
        master.close()
    finally:
        setup.stop()
