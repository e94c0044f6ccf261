"""What the data layer costs: Redis CPU per API call, and Redis memory, against bare Redis.

`make bench` quotes each workload's Redis cost beside its throughput, so the data layer's
headroom is visible: the service's scripts against the cheapest way to move the same
counters (a pipeline of bare HINCRBY), and a registered group's hash against a bare
two-field hash.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Final

import redis

from service.storage.keys import group_key

# Whatever the service sends to run a script; a command a script runs is listed in
# commandstats too, under its own name, so summing these counts each call once.
SCRIPT_COMMANDS: Final = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")
# Apart from the service's database, so the bare hashes grow a main hash table from
# empty, as the groups did in the service's own.
BARE_DB: Final = 1
BASELINE_BATCH: Final = 64  # calls per pipeline: one per wrk connection


@dataclass
class RedisCost:
    """What one or more Redis servers spent between `RedisMeter.reset` and `RedisMeter.read`."""

    usec: int  # commandstats usec of the counted commands
    commands: int  # how many of them ran
    cpu_seconds: float  # the process's user + system CPU, parsing and network included
    by_command: dict[str, int]

    def per_call(self, calls: int) -> dict[str, float]:
        """Microseconds per API call (or per equivalent call of a baseline)."""
        calls = max(calls, 1)
        return {
            "us_per_call": self.usec / calls,
            "cpu_us_per_call": self.cpu_seconds * 1e6 / calls,
            "commands_per_call": self.commands / calls,
        }


class RedisMeter:
    """CONFIG RESETSTAT, then INFO commandstats and INFO cpu, summed over every master."""

    def __init__(self, ports: list[int], commands: tuple[str, ...] = SCRIPT_COMMANDS) -> None:
        self.clients = [redis.Redis(port=port, socket_timeout=10.0) for port in ports]
        self.commands = commands
        self.cpu_at_reset = 0.0

    def reset(self) -> None:
        for client in self.clients:
            client.config_resetstat()
        # RESETSTAT leaves the CPU counters alone: they come from getrusage.
        self.cpu_at_reset = self._cpu()

    def read(self) -> RedisCost:
        by_command: dict[str, int] = {}
        usec = commands = 0
        for client in self.clients:
            stats: dict[str, Any] = client.info("commandstats")
            for name in self.commands:
                entry = stats.get(f"cmdstat_{name}")
                if entry:
                    usec += int(entry["usec"])
                    commands += int(entry["calls"])
                    by_command[name] = by_command.get(name, 0) + int(entry["calls"])
        return RedisCost(usec, commands, self._cpu() - self.cpu_at_reset, by_command)

    def _cpu(self) -> float:
        total = 0.0
        for client in self.clients:
            info: dict[str, Any] = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total

    def close(self) -> None:
        for client in self.clients:
            client.close()


def bare_key(sdkappid: int, group_id: str) -> str:
    """As long as the group's own key, so the two memory figures differ only in what is stored."""
    return group_key(sdkappid, group_id).replace("{", "(").replace("}", ")")


def bare_hash_memory(port: int, keys: list[str]) -> dict[str, Any]:
    """used_memory growth over `keys` bare hashes (HSET key a 0 b 0), as the groups are measured."""
    client = redis.Redis(port=port, db=BARE_DB, socket_timeout=30.0)
    try:
        if client.dbsize():
            raise RuntimeError(f"database {BARE_DB} of the bench's Redis is not empty")
        before = int(client.info("memory")["used_memory"])
        for start in range(0, len(keys), 1000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.hset(key, mapping={"a": 0, "b": 0})
            pipe.execute()
        after = int(client.info("memory")["used_memory"])
    finally:
        client.close()
    return {
        "keys": len(keys),
        "used_before": before,
        "used_after": after,
        "bytes_per_key": (after - before) / len(keys),
        "key_length": len(keys[0]),
    }


def hincrby_baseline(port: int, keys: list[str], calls: int) -> dict[str, Any]:
    """Redis's cost of a bare `a += 1, b += 2` (two HINCRBY) on a random hash, pipelined."""
    client = redis.Redis(port=port, db=BARE_DB, socket_timeout=30.0)
    meter = RedisMeter([port], commands=("hincrby",))
    chosen = random.Random(14)
    try:
        meter.reset()
        for start in range(0, calls, BASELINE_BATCH):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(BASELINE_BATCH, calls - start)):
                key = chosen.choice(keys)
                pipe.hincrby(key, "a", 1)
                pipe.hincrby(key, "b", 2)
            pipe.execute()
        cost = meter.read()
    finally:
        meter.close()
        client.close()
    return {"calls": calls, **cost.per_call(calls)}


def delete_keys(port: int, keys: list[str]) -> None:
    """Only the keys the baseline made: the rest of the bench's Redis stays as it was."""
    client = redis.Redis(port=port, db=BARE_DB, socket_timeout=30.0)
    try:
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()
