"""The load of a failover run, and its exact account.

32 clients send update_group_counter Increase 1 over 300 groups of the implicit app,
each call with an Idempotency-Key of its own. The record of that key is written by the
same script as the increment, in the group's slot, so after the run the final master
says exactly which calls are there: a call is present when its record is.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import httpx2
import redis

from service.storage.keys import group_key, idempotency_key
from tests.support import IMPLICIT_APP, query

CLIENTS: Final = 32
GROUPS: Final = 300
CLIENT_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class Call:
    key: str
    group: str
    started: float
    ended: float
    code: int | None  # None: no answer (a client timeout or a transport error)
    applied: str | None  # a 10002's Applied


@dataclass
class Load:
    base_url: str
    calls: list[Call] = field(default_factory=list)
    stopping: bool = False

    async def run(self) -> None:
        limits = httpx2.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx2.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as client:
            await asyncio.gather(*(self._client(client, n) for n in range(CLIENTS)))

    async def _client(self, client: httpx2.AsyncClient, n: int) -> None:
        url = f"{self.base_url}/v4/group_open_http_svc/update_group_counter?{query(IMPLICIT_APP)}"
        turn = n
        while not self.stopping:
            group = f"f{turn % GROUPS}"
            turn += CLIENTS
            key = secrets.token_hex(12)
            body = {"GroupId": group, "Mode": "Increase", "GroupCounter": [{"Key": "n", "Value": 1}]}
            started = time.monotonic()
            code: int | None = None
            applied: str | None = None
            try:
                response = await client.post(url, json=body, headers={"Idempotency-Key": key})
                reply: dict[str, Any] = response.json()
                code, applied = int(reply["ErrorCode"]), reply.get("Applied")
            except (httpx2.HTTPError, ValueError, KeyError):
                await asyncio.sleep(0.05)  # the service itself is away: do not spin
            self.calls.append(Call(key, group, started, time.monotonic(), code, applied))


@dataclass(frozen=True)
class Account:
    acknowledged: int
    present: int  # acknowledged calls whose record is on the final master
    lost: int
    failed_not_run: int  # 10002 with Applied "no"
    failed_maybe: int  # 10002 with Applied "maybe" (or none)
    unanswered: int
    invented: int  # groups whose value is not the number of calls present in them
    outage: float  # seconds from the fault to the first acknowledgment after it
    # Seconds from the moment every sentinel named the new master (as polled every 50 ms)
    # to the first acknowledgment after it: the part of the outage that is the service's.
    follow: float

    def line(self) -> str:
        return (
            f"acknowledged {self.acknowledged:,}, present {self.present:,}, lost {self.lost:,}, "
            f"10002 not run {self.failed_not_run:,}, 10002 maybe {self.failed_maybe:,}, "
            f"unanswered {self.unanswered:,}, groups off {self.invented}, outage {self.outage:.2f} s "
            f"(after the switch: {self.follow:.2f} s)"
        )


def account(
    calls: list[Call],
    master: redis.Redis,
    fault_at: float,
    switched_at: float,
    affected: set[str] | None = None,
) -> Account:
    """What the final master holds of `calls`, exactly. The outage is measured on the
    `affected` groups (those of the failed master on a Cluster), else on all."""
    present_keys = _present(calls, master)
    acknowledged = [c for c in calls if c.code == 0]
    present = sum(1 for c in acknowledged if c.key in present_keys)
    per_group = Counter(c.group for c in calls if c.key in present_keys)
    values = _values(master, sorted({c.group for c in calls}))
    invented = sum(1 for group, value in values.items() if value != per_group.get(group, 0))
    failed = [c for c in calls if c.code == 10002]
    timed = [c for c in acknowledged if affected is None or c.group in affected]
    after = [c.ended for c in timed if c.started >= fault_at]
    outage = (min(after) - fault_at) if after else float("inf")
    after_switch = [c.ended for c in timed if c.ended >= switched_at]
    follow = (min(after_switch) - switched_at) if after_switch else float("inf")
    return Account(
        acknowledged=len(acknowledged),
        present=present,
        lost=len(acknowledged) - present,
        failed_not_run=sum(1 for c in failed if c.applied == "no"),
        failed_maybe=sum(1 for c in failed if c.applied != "no"),
        unanswered=sum(1 for c in calls if c.code is None),
        invented=invented,
        outage=outage,
        follow=follow,
    )


def _present(calls: list[Call], master: redis.Redis) -> set[str]:
    present: set[str] = set()
    for start in range(0, len(calls), 2000):
        chunk = calls[start : start + 2000]
        pipe = master.pipeline(transaction=False)
        for call in chunk:
            pipe.exists(idempotency_key(group_key(IMPLICIT_APP, call.group), call.key))
        for call, exists in zip(chunk, pipe.execute(), strict=True):
            if exists:
                present.add(call.key)
    return present


def _values(master: redis.Redis, groups: list[str]) -> dict[str, int]:
    pipe = master.pipeline(transaction=False)
    for group in groups:
        pipe.hget(group_key(IMPLICIT_APP, group), "n")
    return {group: int(value or 0) for group, value in zip(groups, pipe.execute(), strict=True)}
