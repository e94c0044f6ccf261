"""python -m tests.failover [--replicas 1,2] [--faults kill,...] [--acks primary,replicas] [--runs N]
python -m tests.failover --cluster [--faults kill,cluster-failover] [--acks ...] [--runs N]

Runs every combination `--runs` times on a fresh topology each time, prints one line per
run and a markdown table: acknowledged calls, those lost (acknowledged, absent from the
final master), calls answered 10002 by their Applied, and the write outage (seconds
from the fault to the first acknowledgment after it; median and max).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.failover.cluster import CLUSTER_FAULTS, NODE_TIMEOUT_MS, one_cluster_run
from tests.failover.load import Account
from tests.failover.run import FAULTS, one_run
from tests.failover.topology import redis_version


def table(results: dict[tuple[int, str, str], list[Account]]) -> str:
    lines = [
        "| replicas | fault | ack | runs | acknowledged | lost (total) | runs with loss | 10002 no / maybe "
        "| outage median / max (s) | after the switch, median / max (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (replicas, fault, ack), accounts in results.items():
        outages = [a.outage for a in accounts]
        follows = [a.follow for a in accounts]
        lines.append(
            f"| {replicas} | {fault} | {ack} | {len(accounts)} | {sum(a.acknowledged for a in accounts):,} "
            f"| {sum(a.lost for a in accounts):,} | {sum(1 for a in accounts if a.lost)} "
            f"| {sum(a.failed_not_run for a in accounts):,} / {sum(a.failed_maybe for a in accounts):,} "
            f"| {statistics.median(outages):.2f} / {max(outages):.2f} "
            f"| {statistics.median(follows):.2f} / {max(follows):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.failover", description=__doc__)
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--cluster", action="store_true", help="a 3-master Cluster, one replica each")
    parser.add_argument("--faults", default=None)
    parser.add_argument("--acks", default="primary,replicas")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--down-after-ms", type=int, default=1000)
    args = parser.parse_args()
    results: dict[tuple[int, str, str], list[Account]] = {}
    faults = (args.faults or ",".join(CLUSTER_FAULTS if args.cluster else FAULTS)).split(",")
    for replicas in [1] if args.cluster else [int(r) for r in args.replicas.split(",")]:
        for fault in faults:
            for ack in args.acks.split(","):
                for run in range(args.runs):
                    workdir = Path(tempfile.mkdtemp(prefix="failover-run-"))
                    if args.cluster:
                        account = one_cluster_run(fault, ack, workdir)
                    else:
                        account = one_run(replicas, fault, ack, workdir, args.down_after_ms)
                    results.setdefault((replicas, fault, ack), []).append(account)
                    print(
                        f"{replicas} replica(s), {fault}, ack {ack}, run {run + 1}: {account.line()}",
                        flush=True,
                    )
    print()
    if args.cluster:
        print(f"Cluster: 3 masters, one replica each, AOF everysec, cluster-node-timeout {NODE_TIMEOUT_MS}")
    else:
        print(f"Sentinel (3 sentinels, quorum 2), AOF everysec, down-after-milliseconds {args.down_after_ms}")
    print(redis_version().strip())
    print()
    print(table(results))


if __name__ == "__main__":
    main()
