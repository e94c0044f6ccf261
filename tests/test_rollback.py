"""Rolling back to release 0.1.0: `python -m service downgrade` takes what this release
wrote back to format 1, and 0.1.0's own scripts (tests/releases/v0_1_0) then read and
update it: every value as this release answered it, every call this release acknowledged
with an Idempotency-Key replayed by 0.1.0, never applied twice (UPGRADING.md).

Also why the two cannot run side by side: 0.1.0 misreads format 2 (its hidden fields as
counters), which is what the marker and the stop-upgrade-start order are for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Final, cast

import pytest
import redis
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.storage.format import StorageFormatError
from service.storage.keys import FORMAT_KEY
from service.storage.store import open_store
from service.storage.upgrade import UpgradeReport
from tests.releases.v0_1_0 import Release010
from tests.releases.v0_1_0 import group_key as old_group_key
from tests.support import REGISTERED_APP, Api
from tests.test_upgrade import (
    Topology,
    _cli,
    _config,
    format_check,
    post_with_key,
    run_downgrade,
    run_upgrade,
    seed_release_010,
    stored_format,
    topology,  # noqa: F401 - the fixture
)

REPO: Final = Path(__file__).resolve().parents[1]
GROUPS: Final = ("plain", "a%b", "br{ace}", "x}", "edge", "new{g}")


@pytest.fixture
def written_by_this_release(topology: Topology, settings: Settings) -> dict[str, dict[str, int]]:  # noqa: F811
    """0.1.0's data, upgraded, then changed through this release; what it answers for each group."""
    seed_release_010(topology)
    run_upgrade(topology.url)
    with TestClient(create_app(settings, open_store(topology.url, timeout=5.0))) as client:
        api = Api(client=client, inspector=cast(redis.Redis, topology.client))
        increase = {"GroupId": "plain", "Mode": "Increase", "GroupCounter": [{"Key": "like", "Value": 2}]}
        assert post_with_key(api, "update_group_counter", increase, "after-1")["ErrorCode"] == 0
        brace = {"GroupId": "br{ace}", "Mode": "Increase", "GroupCounter": [{"Key": "like", "Value": 1}]}
        assert post_with_key(api, "update_group_counter", brace, "after-2")["ErrorCode"] == 0
        delete = {"GroupId": "x}", "GroupCounterKeys": ["like"]}
        assert post_with_key(api, "delete_group_counter", delete, "del-2")["ErrorCode"] == 0
        api.create("new{g}")
        api.update("new{g}", {"x": 5}, "Set")
        answers: dict[str, dict[str, int]] = {}
        for group_id in GROUPS:
            reply = api.call("get_group_counter", {"GroupId": group_id})
            assert reply["ErrorCode"] == 0, reply
            answers[group_id] = {c["Key"]: c["Value"] for c in reply["GroupCounter"]}
    assert answers["plain"] == {"like": 8, "gift": 2}
    return answers


def test_release_010_misreads_data_of_format_2_so_the_two_never_share_it(
    topology: Topology,  # noqa: F811
    written_by_this_release: dict[str, dict[str, int]],
) -> None:
    old = Release010(topology.client)
    # 0.1.0 takes every field but 0xFF for a Key and decodes it as UTF-8: the version and
    # epoch fields (0xFD, 0xFE) make its get_group_counter fail (10002 to the client).
    with pytest.raises(UnicodeDecodeError):
        old.get(REGISTERED_APP, "plain")
    assert old.get(REGISTERED_APP, "new{g}") == 10010, "and looks for a braced GroupId under another name"


def test_after_a_downgrade_release_010_reads_every_group_as_this_release_answered_it(
    topology: Topology,  # noqa: F811
    written_by_this_release: dict[str, dict[str, int]],
) -> None:
    report = run_downgrade(topology.url)
    assert report.conflicts == []
    assert report.marker_written, "the marker is gone: format 1 has none"
    assert stored_format(topology.url) is None
    assert report.renamed == 5  # a%b, br{ace}, x}, new{g} and the implicit app's imp}licit
    old = Release010(topology.client)
    for group_id, answer in written_by_this_release.items():
        assert old.get(REGISTERED_APP, group_id) == answer, group_id
    # 0.1.0's 20-Key check counts no hidden field.
    counters = {f"k{i}": i for i in range(18)}
    assert old.update(REGISTERED_APP, "plain", counters, "Set")[0] == 0, "20 Keys fit"


def test_after_a_downgrade_release_010_replays_what_this_release_acknowledged(
    topology: Topology,  # noqa: F811
    written_by_this_release: dict[str, dict[str, int]],
) -> None:
    run_downgrade(topology.url)
    old = Release010(topology.client)
    assert old.update(REGISTERED_APP, "plain", {"like": 2}, idempotency_key="after-1") == [0, b"8"]
    assert old.update(REGISTERED_APP, "br{ace}", {"like": 1}, idempotency_key="after-2") == [0, b"8"]
    assert old.update(REGISTERED_APP, "plain", {"like": 3}, idempotency_key="after-1") == [10004]
    assert old.delete(REGISTERED_APP, "x}", ["like"], idempotency_key="del-2") == 0
    # A record 0.1.0 itself wrote before the upgrade replays too.
    assert old.update(REGISTERED_APP, "plain", {"like": 1}, idempotency_key="retry-1") == [0, b"6"]
    assert old.get(REGISTERED_APP, "plain") == {"like": 8, "gift": 2}, "nothing applied twice"


def test_after_a_downgrade_this_release_refuses_the_data_until_it_is_upgraded_again(
    topology: Topology,  # noqa: F811
    written_by_this_release: dict[str, dict[str, int]],
    settings: Settings,
) -> None:
    run_downgrade(topology.url)
    old = Release010(topology.client)
    assert old.update(REGISTERED_APP, "new{g}", {"x": 1})[0] == 0  # 0.1.0 serves it meanwhile
    with pytest.raises(StorageFormatError, match="upgrade"):
        format_check(topology.url)
    report = run_upgrade(topology.url)
    assert report.marker_written
    with TestClient(create_app(settings, open_store(topology.url, timeout=5.0))) as client:
        api = Api(client=client, inspector=cast(redis.Redis, topology.client))
        reply = api.call("get_group_counter", {"GroupId": "new{g}"})
        assert reply["GroupCounter"] == [{"Key": "x", "Value": 6}], "0.1.0's write kept across both moves"


def test_a_downgrade_rerun_and_a_dry_run_change_nothing(
    topology: Topology,  # noqa: F811
    written_by_this_release: dict[str, dict[str, int]],
) -> None:
    before = topology.dump()
    dry = run_downgrade(topology.url, dry_run=True)
    assert dry.renamed == 5
    assert not dry.marker_written
    assert topology.dump() == before
    run_downgrade(topology.url)
    after = topology.dump()
    assert run_downgrade(topology.url) == UpgradeReport(), "no marker: format 1 already"
    topology.client.set(FORMAT_KEY, "1")  # as if it stopped just before removing the marker
    again = run_downgrade(topology.url)
    assert (again.renamed, again.records_converted, again.conflicts) == (0, 0, [])
    assert topology.dump() == after
    assert not topology.client.exists(FORMAT_KEY)
    assert topology.client.exists(old_group_key(REGISTERED_APP, "br{ace}"))


def test_downgrade_on_the_command_line(topology: Topology, tmp_path: Path) -> None:  # noqa: F811
    seed_release_010(topology)
    config = _config(tmp_path, topology.url)
    assert _cli("upgrade", "--config", str(config)).returncode == 0
    result: subprocess.CompletedProcess[Any] = _cli("downgrade", "--config", str(config))
    assert result.returncode == 0, result
    assert "storage format 1, which release 0.1.0 serves" in result.stdout
    checked = _cli("check-config", "--config", str(config), "--connect")
    assert checked.returncode == 3, checked
    assert sys.executable
