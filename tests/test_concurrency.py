"""Two service processes on one redis-server, many concurrent clients (docs/API.md §3: one atomic script).

No Increase may be lost between replicas, and racing requests that add new Keys must
never leave a group with more than 20 keys.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest

from tests.support import CONFIG, REGISTERED_APP, RedisServer, ServiceProcess, query

REPO: Final = Path(__file__).resolve().parents[1]
INT64_MAX: Final = 2**63 - 1
MAX_KEYS: Final = 20
CLIENTS: Final = 48


def _answers_a_call(service: ServiceProcess, client: httpx2.Client) -> bool:
    url = f"{service.base_url}/v4/group_open_http_svc/get_group_counter?{query(REGISTERED_APP)}"
    try:
        return client.post(url, content=b'{"GroupId": "probe"}').status_code == 200
    except httpx2.TransportError:
        return False


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A redis-server of this module's own."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, server: RedisServer) -> Iterator[list[ServiceProcess]]:
    """Two service processes on the module's redis-server."""
    workdir = tmp_path_factory.mktemp("concurrency")
    started: list[ServiceProcess] = []
    try:
        config = workdir / "config.toml"
        config.write_text(
            CONFIG.replace('redis_url = "memory://"', f'redis_url = "{server.url}"\nlog_level = "warning"'),
            encoding="utf-8",
        )
        started += [ServiceProcess.start(config, log=workdir / f"service-{n}.log") for n in range(2)]
        with httpx2.Client(timeout=1.0) as client:
            for service in started:
                service.wait_until(functools.partial(_answers_a_call, service, client))
        yield started
    finally:
        for service in started:
            service.stop(15)


class Caller:
    """Posts commands of the registered app, alternating between the service processes."""

    def __init__(self, services: list[ServiceProcess], client: httpx2.AsyncClient) -> None:
        self.urls = [service.base_url for service in services]
        self.client = client
        self.query = query(REGISTERED_APP)  # one usersig for the whole run
        self.calls = 0

    async def call(
        self, command: str, body: dict[str, Any], *, replica: int | None = None, key: str | None = None
    ) -> dict[str, Any]:
        if replica is None:
            replica = self.calls % len(self.urls)
        self.calls += 1
        url = f"{self.urls[replica]}/v4/group_open_http_svc/{command}?{self.query}"
        headers = {} if key is None else {"Idempotency-Key": key}
        response = await self.client.post(url, content=json.dumps(body).encode(), headers=headers)
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        return reply

    async def counters(self, group: str, replica: int) -> dict[str, int]:
        reply = await self.call("get_group_counter", {"GroupId": group}, replica=replica)
        assert reply["ErrorCode"] == 0, reply
        return {item["Key"]: item["Value"] for item in reply["GroupCounter"]}


def _client() -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
    return httpx2.AsyncClient(timeout=30.0, limits=limits)


def _amount(rng: random.Random) -> int:
    # small ones, and ones past 2**53 (a double would round them); at most 3000 * 2**50 of drift
    return rng.choice([rng.randint(-1000, 1000), rng.randint(-(2**50), 2**50), 2**50 - 1, -(2**50) + 1])


GROUPS: Final = ["inc-a", "inc-b", "inc-c"]
KEYS: Final = ["k1", "k2", "k3", "k4", "k5"]
CALLS: Final = 3000


async def _no_lost_update(services: list[ServiceProcess]) -> None:
    rng = random.Random(20240611)
    start = {
        (group, key): rng.choice([1, -1]) * (2**60 + rng.randint(0, 2**40))
        for group in GROUPS
        for key in KEYS
    }
    async with _client() as client:
        caller = Caller(services, client)
        for group in GROUPS:
            reply = await caller.call("create_group", {"Type": "Public", "Name": "n", "GroupId": group})
            assert reply["ErrorCode"] == 0, reply
            counters = [{"Key": key, "Value": start[group, key]} for key in KEYS]
            reply = await caller.call("update_group_counter", {"GroupId": group, "GroupCounter": counters})
            assert reply["ErrorCode"] == 0, reply

        requests = []
        for _ in range(CALLS):
            group = rng.choice(GROUPS)
            keys = rng.sample(KEYS, rng.randint(1, 4))
            mode = rng.choice(["Increase", "Increase", "Increase", "Decrease"])
            requests.append((group, mode, [(key, _amount(rng)) for key in keys]))
        queue: asyncio.Queue[tuple[str, str, list[tuple[str, int]]]] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)

        acknowledged: list[tuple[str, str, int, int]] = []  # group, key, signed delta, value after
        failures: list[dict[str, Any]] = []

        async def worker() -> None:
            while not queue.empty():
                group, mode, items = queue.get_nowait()
                body = {
                    "GroupId": group,
                    "Mode": mode,
                    "GroupCounter": [{"Key": key, "Value": value} for key, value in items],
                }
                reply = await caller.call("update_group_counter", body)
                if reply["ErrorCode"] != 0:
                    failures.append(reply)
                    continue
                assert [item["Key"] for item in reply["GroupCounter"]] == [key for key, _ in items]
                for (key, value), item in zip(items, reply["GroupCounter"], strict=True):
                    delta = value if mode == "Increase" else -value
                    acknowledged.append((group, key, delta, item["Value"]))

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        assert failures == [], f"{len(failures)} of {CALLS} calls failed, e.g. {failures[:3]}"

        expected = dict(start)
        for group, key, delta, _ in acknowledged:
            expected[group, key] += delta
        for replica in range(len(services)):
            for group in GROUPS:
                got = await caller.counters(group, replica)
                assert got == {key: expected[group, key] for key in KEYS}, f"{group} via replica {replica}"

        # Each acknowledged call saw the value the previous one left: the values before
        # (after - delta) and after chain from the start value to the final one.
        for group in GROUPS:
            for key in KEYS:
                steps = [(delta, after) for g, k, delta, after in acknowledged if (g, k) == (group, key)]
                befores = Counter(after - delta for delta, after in steps) + Counter([expected[group, key]])
                afters = Counter(after for _, after in steps) + Counter([start[group, key]])
                assert befores == afters, f"{group}/{key}: the replies do not form one serial history"


def test_concurrent_increases_over_two_processes_lose_no_update(services: list[ServiceProcess]) -> None:
    asyncio.run(_no_lost_update(services))


async def _new_keys_race(services: list[ServiceProcess], group: str) -> None:
    async with _client() as client:
        caller = Caller(services, client)
        reply = await caller.call("create_group", {"Type": "Public", "Name": "n", "GroupId": group})
        assert reply["ErrorCode"] == 0, reply

        requests = [[f"s{i:02d}"] for i in range(60)]
        requests += [[f"t{i:02d}a", f"t{i:02d}b", f"t{i:02d}c"] for i in range(10)]
        random.Random(group).shuffle(requests)

        async def send(keys: list[str]) -> tuple[list[str], dict[str, Any]]:
            body = {
                "GroupId": group,
                "Mode": "Increase",
                "GroupCounter": [{"Key": key, "Value": 1} for key in keys],
            }
            return keys, await caller.call("update_group_counter", body)

        results = await asyncio.gather(*(send(keys) for keys in requests))

        acknowledged: set[str] = set()
        for keys, reply in results:
            if reply["ErrorCode"] == 0:
                assert reply["GroupCounter"] == [{"Key": key, "Value": 1} for key in keys], reply
                acknowledged.update(keys)
            else:
                assert reply["ErrorCode"] == 10063, reply
        for replica in range(len(services)):
            final = await caller.counters(group, replica)
            assert len(final) <= MAX_KEYS, f"{group} holds {len(final)} keys"
            assert set(final) == acknowledged, f"{group}: stored keys differ from acknowledged ones"
            assert all(value == 1 for value in final.values()), final
            # at least 40 one-key requests were refused, each when the group was full
            assert len(final) == MAX_KEYS, f"{group} holds {len(final)} keys after refusals"


def test_racing_requests_adding_new_keys_never_exceed_20_keys(services: list[ServiceProcess]) -> None:
    for round_ in range(5):
        asyncio.run(_new_keys_race(services, f"race-{round_}"))


async def _hot_group(services: list[ServiceProcess]) -> None:
    """Every client on one group, each call with an Idempotency-Key of its own."""
    group, calls = "hot", 1500
    async with _client() as client:
        caller = Caller(services, client)
        reply = await caller.call("create_group", {"Type": "Public", "Name": "n", "GroupId": group})
        assert reply["ErrorCode"] == 0, reply
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(calls):
            queue.put_nowait(n)
        acknowledged: dict[int, int] = {}  # call -> the value its reply named

        def body(n: int) -> dict[str, Any]:
            return {"GroupId": group, "GroupCounter": [{"Key": "a", "Value": 1 + n % 3}], "Mode": "Increase"}

        async def client_loop() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                reply = await caller.call("update_group_counter", body(n), key=f"hot-{n}")
                assert reply["ErrorCode"] == 0, reply
                acknowledged[n] = reply["GroupCounter"][0]["Value"]

        await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
        total = sum(1 + n % 3 for n in acknowledged)
        for replica in range(len(services)):
            assert await caller.counters(group, replica) == {"a": total}
        # One serial history: every value named once, each the previous plus its amount.
        assert sorted(acknowledged.values()) == sorted(
            sum(1 + m % 3 for m in order[: i + 1])
            for order in [sorted(acknowledged, key=acknowledged.__getitem__)]
            for i in range(len(order))
        )
        # Every key replays exactly its own reply, through either process.
        for n in range(0, calls, 7):
            replayed = await caller.call("update_group_counter", body(n), key=f"hot-{n}")
            assert replayed["GroupCounter"][0]["Value"] == acknowledged[n], n
        assert await caller.counters(group, 0) == {"a": total}


def test_one_hot_group_over_two_processes_keeps_every_increment_once(
    services: list[ServiceProcess], server: RedisServer
) -> None:
    """All clients on one group: its updates are combined into shared script calls
    (combining.py), and each must still be applied, answered and recorded as its own."""
    with server.client() as client:
        client.config_resetstat()
        asyncio.run(_hot_group(services))
        stats = client.info("commandstats")
    script_calls = sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )
    assert script_calls < 1500 + 215 + 3, f"some updates were combined ({script_calls} script calls)"
