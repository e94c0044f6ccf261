"""The failover kit (tests/failover/): what survives a failover under load, exactly.

Every run: Sentinel with three sentinels, a master and replicas with AOF everysec, the
service on it, 32 clients each sending Increase 1 with an Idempotency-Key of its own;
one fault; then every acknowledged call looked up on the final master by its record.

In `make test`: one run per fault that loses acknowledged updates under the default, with
`ack = "replicas"` (0 lost), and the default's accounting on a planned failover. In
`make test-slow`: ten runs of each fault with one and with two replicas.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.failover.cluster import one_cluster_run
from tests.failover.load import Account
from tests.failover.run import FAULTS, one_run


def consistent(account: Account) -> None:
    """Whatever was lost: nothing applied twice or made up, every call answered."""
    assert account.acknowledged > 0
    assert account.invented == 0, "a group's value is not the number of its calls present"
    assert account.unanswered == 0
    assert account.outage < 15.0


@pytest.mark.parametrize("fault", ["sentinel-failover", "partition"])
def test_with_ack_replicas_a_failover_loses_no_acknowledged_update(fault: str, tmp_path: Path) -> None:
    account = one_run(1, fault, "replicas", tmp_path)
    consistent(account)
    assert account.lost == 0, account.line()


def test_with_ack_primary_a_failover_loses_what_was_acknowledged_alone_and_nothing_else(
    tmp_path: Path,
) -> None:
    account = one_run(1, "sentinel-failover", "primary", tmp_path)
    consistent(account)
    print(account.line())


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("fault", FAULTS)
def test_with_ack_replicas_ten_failovers_of_each_kind_lose_nothing(
    replicas: int, fault: str, tmp_path: Path
) -> None:
    for run in range(10):
        account = one_run(replicas, fault, "replicas", tmp_path / str(run))
        print(f"{replicas} replica(s), {fault}, run {run + 1}: {account.line()}")
        consistent(account)
        assert account.lost == 0, account.line()


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("fault", FAULTS)
def test_with_ack_primary_ten_failovers_of_each_kind_are_accounted_for(
    replicas: int, fault: str, tmp_path: Path
) -> None:
    for run in range(10):
        account = one_run(replicas, fault, "primary", tmp_path / str(run))
        print(f"{replicas} replica(s), {fault}, ack primary, run {run + 1}: {account.line()}")
        consistent(account)


def test_with_ack_replicas_a_cluster_master_killed_loses_no_acknowledged_update(tmp_path: Path) -> None:
    account = one_cluster_run("kill", "replicas", tmp_path)
    consistent(account)
    assert account.lost == 0, account.line()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "cluster-failover"])
def test_with_ack_replicas_five_cluster_failovers_lose_nothing(fault: str, tmp_path: Path) -> None:
    for run in range(5):
        account = one_cluster_run(fault, "replicas", tmp_path / str(run))
        print(f"cluster, {fault}, run {run + 1}: {account.line()}")
        consistent(account)
        assert account.lost == 0, account.line()
