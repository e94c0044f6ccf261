"""Never another caller's reply, never stuck: the service behind a fault-injecting proxy.

A `FaultProxy` sits between one service process and real Redis (one Redis, each node
of a Cluster, the master behind a Sentinel) and, at seeded random points, resets
either side, stalls, cuts replies in half, delays, accepts and closes, answers
"max number of clients" and refuses. Meanwhile concurrent workers call Set, Increase,
Decrease, get and delete. Each worker owns its groups, and every group's counter `id`
holds the group's own number, so a reply that belongs to another request shows it:

- every update and get reply names its own group (`id`), and its `n` is exactly what
  this worker's own history of the group allows (so every acknowledged Increase is
  stored, and a value is within [acknowledged, acknowledged + unknown outcomes]);
- after a call without a definite answer (10002, or no answer), the worker reads the
  group until it gets one, and the value must be one the unknown outcomes allow;
- no call waits longer than `redis_timeout` plus a small margin;
- once the proxy stops injecting, the service heals by itself: every call answers OK.

The seed is printed (and taken from FAULT_PROXY_SEED when set) to replay a failure.
`make test` runs 10 s per topology; `make test-slow` 120 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest

from tests.faultproxy import FaultProxy
from tests.support import CONFIG, IMPLICIT_APP, RedisServer, ServiceProcess, free_port, query
from tests.topologies import MASTER_NAME, Cluster, Process, wait_for

REDIS_TIMEOUT: Final = 0.5
# A call's answer: its redis_timeout, plus scheduling on 2 shared cores.
ANSWER_BOUND: Final = REDIS_TIMEOUT + 0.75
WORKERS: Final = 16
GROUPS_PER_WORKER: Final = 4
APP: Final = IMPLICIT_APP
BASE: Final = "/v4/group_open_http_svc/"
HEAL_SECONDS: Final = 10.0


def _seed() -> int:
    seed = int(os.environ.get("FAULT_PROXY_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault proxy seed: {seed} (replay with FAULT_PROXY_SEED={seed})")
    return seed


# ---- the topologies, each behind proxies ----


@dataclass
class Stack:
    url: str
    proxies: list[FaultProxy]
    stop_all: list[Any] = field(default_factory=list)

    def inject(self, on: bool) -> None:
        for proxy in self.proxies:
            proxy.injecting = on

    def injected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for proxy in self.proxies:
            total += proxy.injected
        return total


def _single(seed: int) -> Iterator[Stack]:
    server = RedisServer().start()
    proxy = FaultProxy(server.port, seed=seed).start()
    try:
        yield Stack(f"redis://127.0.0.1:{proxy.port}/0", [proxy])
    finally:
        proxy.stop()
        server.stop()


def _cluster(seed: int) -> Iterator[Stack]:
    """Each node announces its proxy's port: the slot map and MOVED lead through proxies."""
    cluster = Cluster().start()
    proxies = []
    try:
        for index, node in enumerate(cluster.nodes):
            proxy = FaultProxy(node.port, seed=seed + index).start()
            proxies.append(proxy)
            with node.client() as client:
                client.config_set("cluster-announce-bus-port", node.port + 10_000)
                client.config_set("cluster-announce-port", proxy.port)

        def announced() -> bool:
            for node in cluster.nodes:
                with node.client() as client:
                    slots = client.execute_command("CLUSTER", "SLOTS")
                    ports = {int(entry[2][1]) for entry in slots}
                    if ports != {proxy.port for proxy in proxies}:
                        return False
            return True

        wait_for(announced, 20, "every node to announce its proxy's port")
        seeds = ",".join(f"127.0.0.1:{proxy.port}" for proxy in proxies)
        yield Stack(f"redis+cluster://{seeds}", proxies)
    finally:
        for proxy in proxies:
            proxy.stop()
        cluster.stop()


def _sentinel(seed: int, root: Path) -> Iterator[Stack]:
    """A master whose sentinel knows it by its proxy's address; no replica, so faults
    cannot turn into a failover (which may lose acknowledged writes by design)."""
    master = RedisServer().start()
    proxy = FaultProxy(master.port, seed=seed).start()
    sentinel_dir = root / "sentinel"
    sentinel_dir.mkdir(parents=True)
    port = free_port()
    conf = sentinel_dir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {sentinel_dir}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {proxy.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 600000\n"
    )
    sentinel = Process(port, [str(conf), "--sentinel"], sentinel_dir).start()
    try:
        sentinel.wait_ready()
        yield Stack(f"redis+sentinel://127.0.0.1:{port}/{MASTER_NAME}", [proxy])
    finally:
        sentinel.stop()
        proxy.stop()
        master.stop()


# ---- the load: groups that name themselves ----


@dataclass
class Group:
    number: int  # its `id` counter
    states: set[int | None]  # what `n` may hold now: one value, unless an outcome is unknown
    history: list[str] = field(default_factory=list)  # shown when a check fails

    @property
    def name(self) -> str:
        return f"proxy-{self.number}"


@dataclass
class Tally:
    ok: int = 0
    unknown: int = 0
    slowest: float = 0.0
    by_code: Counter[int] = field(default_factory=Counter)


class Misrouted(AssertionError):
    pass


async def _call(client: httpx2.AsyncClient, command: str, body: dict[str, Any], tally: Tally) -> Any:
    """The reply, or None for no definite answer (10002, no answer at all)."""
    started = time.monotonic()
    try:
        response = await client.post(f"{BASE}{command}?{query(APP)}", json=body)
        reply = response.json()
    except (httpx2.TransportError, ValueError):
        reply = None
    elapsed = time.monotonic() - started
    tally.slowest = max(tally.slowest, elapsed)
    assert elapsed < ANSWER_BOUND, f"{command} took {elapsed:.2f} s (bound {ANSWER_BOUND} s)"
    if reply is None or reply.get("ErrorCode") == 10002:
        tally.unknown += 1
        tally.by_code[10002] += 1
        return None
    tally.by_code[reply["ErrorCode"]] += 1
    assert reply["ErrorCode"] == 0, reply
    tally.ok += 1
    return reply


def _values(reply: dict[str, Any]) -> dict[str, int]:
    return {item["Key"]: item["Value"] for item in reply.get("GroupCounter", [])}


def _check(group: Group, values: dict[str, int], expected: set[int | None], what: str) -> None:
    if values.get("id") != group.number:
        raise Misrouted(f"{what} on {group.name} answered with id {values.get('id')}: another call's reply")
    if values.get("n") not in expected:
        raise Misrouted(
            f"{what} on {group.name}: n = {values.get('n')}, expected one of {expected}; "
            f"history: {group.history[-8:]}"
        )


async def _resync(client: httpx2.AsyncClient, group: Group, tally: Tally, deadline: float) -> None:
    """After an unknown outcome: read until a definite answer, which the outcomes allow."""
    while time.monotonic() < deadline + HEAL_SECONDS:
        reply = await _call(client, "get_group_counter", {"GroupId": group.name}, tally)
        if reply is not None:
            values = _values(reply)
            _check(group, values, group.states, "get after an unknown outcome")
            group.states = {values.get("n")}
            return
    raise AssertionError(f"{group.name}: no definite answer to a get for {HEAL_SECONDS} s after the run")


async def _worker(base_url: str, groups: list[Group], rng: random.Random, until: float, tally: Tally) -> None:
    async with httpx2.AsyncClient(base_url=base_url, timeout=ANSWER_BOUND + 1) as client:
        while time.monotonic() < until:
            group = rng.choice(groups)
            (current,) = group.states
            operation = rng.choice(("set", "increase", "decrease", "get", "delete"))
            amount = rng.randrange(1, 1000)
            if operation == "set":
                body = {
                    "GroupId": group.name,
                    "Mode": "Set",
                    "GroupCounter": [{"Key": "id", "Value": group.number}, {"Key": "n", "Value": amount}],
                }
                after: int | None = amount
            elif operation in ("increase", "decrease"):
                sign = 1 if operation == "increase" else -1
                body = {
                    "GroupId": group.name,
                    "Mode": operation.capitalize(),
                    "GroupCounter": [{"Key": "id", "Value": 0}, {"Key": "n", "Value": amount}],
                }
                after = (current or 0) + sign * amount
            elif operation == "get":
                body = {"GroupId": group.name, "GroupCounterKeys": ["id", "n"]}
                after = current
            else:
                body = {"GroupId": group.name, "GroupCounterKeys": ["n"]}
                after = None
            command = {"get": "get_group_counter", "delete": "delete_group_counter"}.get(
                operation, "update_group_counter"
            )
            reply = await _call(client, command, body, tally)
            outcome = "?" if reply is None else "ok"
            group.history.append(f"{time.monotonic():.3f} {operation} {amount} -> {after} {outcome}")
            if reply is None:
                group.states = {current, after}
                await _resync(client, group, tally, until)
                continue
            if operation != "delete":
                _check(group, _values(reply), {after}, operation)
            group.states = {after}


async def _drive(base_url: str, seed: int, seconds: float, stack: Stack) -> Tally:
    rng = random.Random(seed)
    numbers = iter(range(1, WORKERS * GROUPS_PER_WORKER + 1))
    owned = [[Group(next(numbers), {None}) for _ in range(GROUPS_PER_WORKER)] for _ in range(WORKERS)]
    tally = Tally()
    async with httpx2.AsyncClient(base_url=base_url, timeout=5.0) as client:
        for groups in owned:  # each group names itself before the faults start
            for group in groups:
                body = {
                    "GroupId": group.name,
                    "Mode": "Set",
                    "GroupCounter": [{"Key": "id", "Value": group.number}],
                }
                assert (await client.post(f"{BASE}update_group_counter?{query(APP)}", json=body)).json()[
                    "ErrorCode"
                ] == 0
                await client.post(
                    f"{BASE}delete_group_counter?{query(APP)}",
                    json={"GroupId": group.name, "GroupCounterKeys": ["n"]},
                )
    stack.inject(True)
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(_worker(base_url, groups, random.Random(rng.random()), until, tally) for groups in owned)
    )
    return tally


async def _healed(base_url: str, seconds: float) -> Tally:
    """With the proxy faithful again: every call answers OK within the bound."""
    tally = Tally()
    groups = [Group(1, set())]
    async with httpx2.AsyncClient(base_url=base_url, timeout=5.0) as client:
        deadline = time.monotonic() + seconds
        # The first calls may still meet a link that is dying; then it is all OK.
        while time.monotonic() < deadline:
            if await _call(client, "get_group_counter", {"GroupId": groups[0].name}, tally) is not None:
                break
        streak = 0
        while streak < 50 and time.monotonic() < deadline:
            reply = await _call(client, "get_group_counter", {"GroupId": groups[0].name}, tally)
            streak = streak + 1 if reply is not None else 0
        assert streak == 50, f"the service did not heal within {seconds} s: {tally}"
    return tally


def run_behind_proxy(stack: Stack, tmp_path: Path, seed: int, seconds: float) -> None:
    settings = [f'redis_url = "{stack.url}"', f"redis_timeout = {REDIS_TIMEOUT}", 'log_level = "error"']
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.replace('redis_url = "memory://"', "\n".join(settings)), encoding="utf-8")
    service = ServiceProcess.start(config, log=tmp_path / "service.log")
    try:

        def ready() -> bool:
            try:
                return httpx2.get(f"{service.base_url}/readyz", timeout=1.0).status_code == 200
            except httpx2.TransportError:
                return False

        service.wait_until(ready)
        tally = asyncio.run(_drive(service.base_url, seed, seconds, stack))
        stack.inject(False)
        asyncio.run(_healed(service.base_url, HEAL_SECONDS))
        print(f"faults injected: {dict(stack.injected())}; calls: {tally}")
        assert sum(stack.injected().values()) > 0, "no fault was injected: the test proved nothing"
        assert tally.ok > 0
    finally:
        service.stop(15)


def _seconds() -> float:
    return float(os.environ.get("FAULT_PROXY_SECONDS", "10"))


def test_one_redis_behind_a_faulty_proxy_never_misroutes_and_heals(tmp_path: Path) -> None:
    seed = _seed()
    for stack in _single(seed):
        run_behind_proxy(stack, tmp_path, seed, _seconds())


def test_a_cluster_behind_faulty_proxies_never_misroutes_and_heals(tmp_path: Path) -> None:
    seed = _seed()
    for stack in _cluster(seed):
        run_behind_proxy(stack, tmp_path, seed, _seconds())


def test_sentinel_with_a_faulty_proxy_before_the_master_never_misroutes_and_heals(tmp_path: Path) -> None:
    seed = _seed()
    for stack in _sentinel(seed, tmp_path):
        run_behind_proxy(stack, tmp_path, seed, _seconds())


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["one", "cluster", "sentinel"])
def test_two_minutes_behind_faulty_proxies(
    topology: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAULT_PROXY_SECONDS", os.environ.get("FAULT_PROXY_SLOW_SECONDS", "120"))
    {
        "one": test_one_redis_behind_a_faulty_proxy_never_misroutes_and_heals,
        "cluster": test_a_cluster_behind_faulty_proxies_never_misroutes_and_heals,
        "sentinel": test_sentinel_with_a_faulty_proxy_before_the_master_never_misroutes_and_heals,
    }[topology](tmp_path)
