"""`make bench`'s "Every command" rows: what each measures, its label and its target
(a ratio of the service's throughput to the ceiling's). rows.py measures and renders them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tests.bench.servers import NEVER_REFUSES


@dataclass(frozen=True)
class RowSpec:
    key: str
    label: str
    target: float
    how: str


ROWS: Final = (
    RowSpec(
        "update",
        "update_group_counter (default config: JSON access log)",
        0.80,
        "the headline throughput above: the service as shipped, one JSON access line per call on stdout",
    ),
    RowSpec(
        "update_warning",
        'update_group_counter, log_level "warning"',
        0.85,
        'the same calls on a second service instance whose config adds `log_level = "warning"` '
        "(no access lines)",
    ),
    RowSpec(
        "get",
        "get_group_counter",
        0.90,
        "every counter (a and b) of a group drawn at random from the main groups",
    ),
    RowSpec(
        "delete",
        "delete_group_counter",
        0.80,
        'Key "c" of a group drawn at random: a full call (usersig, checks, the group\'s script) '
        "that finds no such Key, so it removes nothing, makes no version and publishes nothing, "
        "and the counters the exactness check reads stay as they are",
    ),
    RowSpec(
        "create",
        "create_group",
        0.80,
        "a fresh GroupId per call (one sequence per run: `cd-<run token>-<n>`)",
    ),
    RowSpec(
        "destroy",
        "destroy_group",
        0.80,
        "groups the create runs made before this run, taken in the order they were made; a "
        "create run on the service tops the pool up first when the next run could outrun it, "
        "and every name a create run sent is checked (and made when missing) before it is taken",
    ),
    RowSpec(
        "idempotent",
        "update_group_counter with an Idempotency-Key",
        0.75,
        "the update workload with a fresh `Idempotency-Key` per call (each call a first attempt: "
        "the script writes a 24 h record); counted in the main groups' exactness ledger",
    ),
    RowSpec(
        "rate_limited",
        "update_group_counter, rate-limited app",
        0.75,
        "the update workload on a second app of the same service whose `rate_limit` is "
        f"{NEVER_REFUSES:,} calls/s (every call counted in its window by the script, none refused), "
        "on its own registered groups with their own exactness check",
    ),
    RowSpec(
        "cluster",
        "update_group_counter on a 3-master Redis Cluster",
        0.70,
        "the update workload on a second service instance whose redis_url is a 3-master Cluster "
        "the bench starts (redis-servers pinned with the load), on its own registered groups made "
        "through the API, with their own exactness check; Redis cost summed over the masters",
    ),
    RowSpec(
        "hot_update",
        "update_group_counter, every call on one group",
        0.75,
        "the update workload with every call on one GroupId: one hash, one slot, one Redis thread "
        "(and at least 0.95 of the headline row, each as its ratio to its ceiling: see *Targets*)",
    ),
    RowSpec(
        "hot_get",
        "get_group_counter, every call on one group",
        0.75,
        "get_group_counter with every call on that one GroupId",
    ),
    RowSpec(
        "replicated",
        'update_group_counter, a master with one replica, ack = "primary"',
        0.75,
        "the update workload on a second service instance on a master with one replica on "
        "loopback that the bench starts (both pinned with the load), the default ack",
    ),
    RowSpec(
        "ack_replicas",
        'update_group_counter, a master with one replica, ack = "replicas"',
        0.60,
        'the same master, replica and groups on a third instance with `ack = "replicas"`: '
        "each batch waits for the replica's WAIT (and at least 0.80 of the row above: see *Targets*)",
    ),
)
# The headline row is the throughput phase's: always measured.
OPTIONAL_ROWS: Final = tuple(spec.key for spec in ROWS if spec.key != "update")
