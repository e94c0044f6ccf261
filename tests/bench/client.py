"""The bench's API client: many calls at once, the groups the load runs over, Redis's memory."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Final

import httpx2
import redis

from tests.bench.machine import BenchError
from tests.bench.servers import ADMIN, SDKAPPID

CONNECTIONS: Final = 64  # wrk's and the open-loop driver's, and this client's calls at once
API: Final = "/v4/group_open_http_svc"


def query_string(usersig: str, sdkappid: int = SDKAPPID) -> str:
    return f"sdkappid={sdkappid}&identifier={ADMIN}&usersig={usersig}&random=12345&contenttype=json"


async def _calls(
    port: int, usersig: str, command: str, bodies: list[dict[str, Any]], sdkappid: int
) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}{API}/{command}?{query_string(usersig, sdkappid)}"
    limits = httpx2.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    replies: list[dict[str, Any]] = [{} for _ in bodies]
    next_index = 0

    async def worker(client: httpx2.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(bodies):
            index = next_index
            next_index += 1
            response = await client.post(url, content=json.dumps(bodies[index]).encode())
            response.raise_for_status()
            replies[index] = response.json()

    async with httpx2.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONNECTIONS)))
    return replies


def call_each(
    port: int, usersig: str, command: str, bodies: list[dict[str, Any]], sdkappid: int = SDKAPPID
) -> list[dict[str, Any]]:
    """One call per body, 64 at a time; the replies in the bodies' order, whatever they say."""
    return asyncio.run(_calls(port, usersig, command, bodies, sdkappid))


def call_all(
    port: int, usersig: str, command: str, bodies: list[dict[str, Any]], sdkappid: int = SDKAPPID
) -> list[dict[str, Any]]:
    replies = call_each(port, usersig, command, bodies, sdkappid)
    bad = [reply for reply in replies if reply.get("ErrorCode") != 0]
    if bad:
        raise BenchError(f"{command}: {len(bad)} of {len(replies)} calls failed, the first: {bad[0]}")
    return replies


def group_ids(groups: int) -> list[str]:
    return [f"bench-{n}" for n in range(groups)]


def create_groups(port: int, usersig: str, ids: list[str], sdkappid: int = SDKAPPID) -> None:
    bodies = [{"Type": "Public", "Name": "bench", "GroupId": g} for g in ids]
    call_all(port, usersig, "create_group", bodies, sdkappid)
    zero = [{"Key": "a", "Value": 0}, {"Key": "b", "Value": 0}]
    call_all(
        port,
        usersig,
        "update_group_counter",
        [{"GroupId": g, "Mode": "Set", "GroupCounter": zero} for g in ids],
        sdkappid,
    )


@dataclass
class Memory:
    groups: int
    used_before: int
    used_after: int
    keys_before: int
    keys_after: int

    @property
    def bytes_per_group(self) -> float:
        return (self.used_after - self.used_before) / self.groups

    @property
    def keys_per_group(self) -> float:
        return (self.keys_after - self.keys_before) / self.groups


def redis_memory(client: redis.Redis) -> tuple[int, int]:
    info: dict[str, Any] = client.info("memory")
    keys: int = client.dbsize()
    return int(info["used_memory"]), keys
