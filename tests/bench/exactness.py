"""Exactness: every counter's final value against the increments the load generators saw
acknowledged, for every set of groups the bench drove."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.bench.client import call_all
from tests.bench.servers import SDKAPPID


@dataclass
class Ledger:
    """What the load generators saw of the service's Increase calls (a += 1, b += 2)."""

    acked: int = 0
    unanswered: int = 0

    def add(self, acked: int, unanswered: int) -> None:
        self.acked += acked
        self.unanswered += unanswered


def read_counters(port: int, usersig: str, ids: list[str], sdkappid: int = SDKAPPID) -> tuple[int, int, int]:
    """Sum of a, sum of b, and how many groups break b == 2a (each call moves both or neither)."""
    replies = call_all(port, usersig, "get_group_counter", [{"GroupId": g} for g in ids], sdkappid)
    total_a = total_b = torn = 0
    for reply in replies:
        values = {item["Key"]: int(item["Value"]) for item in reply.get("GroupCounter") or []}
        a, b = values.get("a", 0), values.get("b", 0)
        total_a += a
        total_b += b
        torn += b != 2 * a
    return total_a, total_b, torn


def exactness_verdict(ledger: Ledger, total_a: int, total_b: int, torn: int) -> dict[str, Any]:
    """PASS when a's total is the acknowledged calls plus at most the calls whose answer was never read.

    wrk stops at its deadline with up to one call per connection in flight: the service may
    have applied it, but no client saw the answer. Those are counted (`unanswered`) and allowed,
    nothing more: a lost acknowledged increment, a double increment or a torn update fails.
    """
    applied_unanswered = total_a - ledger.acked
    ok = 0 <= applied_unanswered <= ledger.unanswered and total_b == 2 * total_a and torn == 0
    return {
        "verdict": "PASS" if ok else "FAIL",
        "acked": ledger.acked,
        "unanswered": ledger.unanswered,
        "sum_a": total_a,
        "sum_b": total_b,
        "torn_groups": torn,
        "applied_unanswered": applied_unanswered,
    }


def exactness_verdicts(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every set of groups checked: the main groups, and those of the rows with their own."""
    verdicts = {"main groups": data["exactness"]}
    for key, row in (data.get("rows") or {}).items():
        if row.get("exactness"):
            verdicts[f"{key} groups"] = row["exactness"]
    return verdicts


def exactness_overall(data: dict[str, Any]) -> str:
    verdicts = exactness_verdicts(data)
    return "PASS" if all(v["verdict"] == "PASS" for v in verdicts.values()) else "FAIL"
