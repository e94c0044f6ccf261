"""Redis faults under load, with real redis-server and service processes (issue: fault injection).

Each test starts its own redis-server and one service process on it
(`python -m service ... --config F`, `redis_timeout = 0.5`), drives it with concurrent
clients, and injects a fault: SIGKILL and a restart on the same port, `SCRIPT FLUSH` in a
loop, `DEBUG SLEEP` (a stalled Redis), the last one also with a low `redis_max_pending`.

The Redis here keeps an append-only file fsynced on every write (`appendfsync always`):
Redis writes and fsyncs it before it sends the replies, so a write the service
acknowledged survives a SIGKILL, and the counters can be checked across the outage.

Every call is one multi-key Increase that adds the same positive amount to keys a, b
and c of one group (a worker's own group or one shared by all), so at the end:

- a == b == c in every group: no partial multi-key update;
- acknowledged sum <= stored value <= acknowledged sum + the sum of the calls answered
  10002 (such a call may or may not have run, and the service never retries it), and
  exactly the acknowledged sum when no call failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest

from tests.support import CONFIG, IMPLICIT_APP, RedisServer, ServiceProcess, group_key, query

REDIS_TIMEOUT: Final = 0.5
ANSWER_BOUND: Final = REDIS_TIMEOUT + 1.0  # every answer while Redis is down or stalled
CLIENT_TIMEOUT: Final = 3.0  # a call not answered by then hangs
RECOVERY_BOUND: Final = 2.0
WORKERS: Final = 24
KEYS: Final = ("a", "b", "c")
SHARED: Final = "shared"
APP: Final = IMPLICIT_APP  # every well-formed GroupId exists: no create_group in the way
OK: Final = 0
META: Final = b"\xff"  # the group hash's metadata field (registered groups): never a Key
VERSION: Final = b"\xfd"  # the group's version (lua/include/live.lua): never a Key either
INTERNAL: Final = 10002

now = time.monotonic


# Processes ---------------------------------------------------------------------------------


def durable_redis(workdir: Path) -> RedisServer:
    """A redis-server with an fsync-always append-only file: it survives a SIGKILL and restart."""
    return RedisServer(
        workdir=workdir, persistence=("--save", "", "--appendonly", "yes", "--appendfsync", "always")
    )


def _ready(service: ServiceProcess, client: httpx2.Client) -> bool:
    try:
        return client.get(f"{service.base_url}/readyz").status_code == 200
    except httpx2.TransportError:
        return False


@contextlib.contextmanager
def running_stack(
    workdir: Path, *, max_pending: int | None = None
) -> Iterator[tuple[RedisServer, ServiceProcess]]:
    """A durable_redis and one service process on it, both stopped at the end."""
    server = durable_redis(workdir)
    server.start()
    service: ServiceProcess | None = None
    try:
        settings = [f'redis_url = "{server.url}"', f"redis_timeout = {REDIS_TIMEOUT}", 'log_level = "error"']
        if max_pending is not None:
            settings.append(f"redis_max_pending = {max_pending}")
        config = workdir / "config.toml"
        config.write_text(CONFIG.replace('redis_url = "memory://"', "\n".join(settings)), encoding="utf-8")
        service = ServiceProcess.start(config, log=workdir / "service.log")
        with httpx2.Client(timeout=1.0) as client:
            service.wait_until(functools.partial(_ready, service, client))
        yield server, service
    finally:
        if service is not None:
            service.stop(15)
        server.stop()


# Load ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One call: when it left and came back (monotonic), what it added, how it was answered."""

    started: float
    ended: float
    group: str
    delta: int
    code: int | None  # None: no answer (client timeout or transport error)
    detail: str

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Probes:
    """What /readyz, /healthz and /metrics said during a run: (time, status or value)."""

    readyz: list[tuple[float, int]] = field(default_factory=list)
    healthz: list[tuple[float, int]] = field(default_factory=list)
    in_flight: list[tuple[float, float]] = field(default_factory=list)


def _client(connections: int) -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx2.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits)


def _in_flight(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("group_counter_in_flight_requests "):
            return float(line.split()[1])
    raise AssertionError("no group_counter_in_flight_requests in /metrics")


def _judge(response: httpx2.Response) -> tuple[int, str]:
    """The reply's ErrorCode; -1 for anything that is not a well-formed envelope."""
    if response.status_code != 200:
        return -1, f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        reply: dict[str, Any] = response.json()
        code = int(reply["ErrorCode"])
    except (ValueError, KeyError, TypeError):
        return -1, f"not an envelope: {response.text[:200]}"
    if code == OK:
        values = {item["Key"]: item["Value"] for item in reply["GroupCounter"]}
        if sorted(values) != sorted(KEYS) or len(set(values.values())) != 1:
            return -1, f"one call left its keys apart: {values}"
    return code, str(reply.get("ErrorInfo", ""))


async def drive(
    service: ServiceProcess,
    scenario: Callable[[], Awaitable[None]],
    *,
    workers: int = WORKERS,
    probe_readiness: bool = True,
) -> tuple[list[Outcome], Probes]:
    """`workers` clients call in a loop (and probes poll) until `scenario` returns."""
    url = f"{service.base_url}/v4/group_open_http_svc/update_group_counter?{query(APP)}"
    outcomes: list[Outcome] = []
    probes = Probes()
    stop = asyncio.Event()

    async def worker(n: int, client: httpx2.AsyncClient) -> None:
        rng = random.Random(n)
        calls = 0
        while not stop.is_set():
            group = f"w{n:02d}" if calls % 2 == 0 else SHARED
            calls += 1
            delta = rng.randint(1, 1000)
            items = [{"Key": key, "Value": delta} for key in KEYS]
            body = json.dumps({"GroupId": group, "Mode": "Increase", "GroupCounter": items}).encode()
            started = now()
            try:
                response = await client.post(url, content=body)
            except httpx2.HTTPError as exc:
                outcomes.append(Outcome(started, now(), group, delta, None, repr(exc)))
                continue
            code, detail = _judge(response)
            outcomes.append(Outcome(started, now(), group, delta, code, detail))

    async def poll(path: str, client: httpx2.AsyncClient, record: Callable[[float, int, str], None]) -> None:
        while not stop.is_set():
            started = now()
            try:
                response = await client.get(f"{service.base_url}{path}")
            except httpx2.HTTPError as exc:
                record(started, -1, repr(exc))
            else:
                record(started, response.status_code, response.text)
            await asyncio.sleep(0.05)

    def metrics(t: float, status: int, text: str) -> None:
        assert status == 200, text
        probes.in_flight.append((t, _in_flight(text)))

    async with _client(workers) as load_client, _client(4) as probe_client:
        pollers = [
            poll("/healthz", probe_client, lambda t, status, _: probes.healthz.append((t, status))),
            poll("/metrics", probe_client, metrics),
        ]
        if probe_readiness:
            pollers.append(
                poll("/readyz", probe_client, lambda t, status, _: probes.readyz.append((t, status)))
            )
        tasks = [asyncio.create_task(worker(n, load_client)) for n in range(workers)]
        tasks += [asyncio.create_task(poller) for poller in pollers]
        try:
            await scenario()
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return outcomes, probes


# Checks --------------------------------------------------------------------------------------


def assert_every_call_answered_ok_or_10002(outcomes: list[Outcome]) -> None:
    hung = [o for o in outcomes if o.code is None]
    assert not hung, f"{len(hung)} calls got no answer within {CLIENT_TIMEOUT} s, e.g. {hung[:3]}"
    wrong = [o for o in outcomes if o.code not in (OK, INTERNAL)]
    assert not wrong, f"{len(wrong)} calls answered neither 0 nor 10002, e.g. {wrong[:3]}"


def assert_counters_are_the_acknowledged_sums(server: RedisServer, outcomes: list[Outcome]) -> None:
    """a == b == c in every group, and acked <= value <= acked + unknown (== acked with no failure)."""
    acknowledged: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for outcome in outcomes:
        if outcome.code == OK:
            acknowledged[outcome.group] += outcome.delta
        else:
            unknown[outcome.group] += outcome.delta
    client = server.client()
    try:
        for group in sorted(set(acknowledged) | set(unknown)):
            fields: dict[bytes, bytes] = client.hgetall(group_key(APP, group))  # type: ignore[assignment]
            stored = {k.decode(): int(v) for k, v in fields.items() if k not in (META, VERSION)}
            values = [stored.get(key, 0) for key in KEYS]
            assert set(stored) in (set(), set(KEYS)), f"{group}: stored keys {sorted(stored)}"
            assert len(set(values)) == 1, f"{group}: a partial multi-key update: {stored}"
            low, high = acknowledged[group], acknowledged[group] + unknown[group]
            assert low <= values[0] <= high, (
                f"{group}: stored {values[0]}, acknowledged {low}, at most {high} with the unknown calls"
            )
    finally:
        client.close()


def _figures(name: str, **figures: float | int) -> None:
    shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"[{name}] {shown}")


# Redis killed --------------------------------------------------------------------------------


async def _kill_and_restart(
    server: RedisServer, marks: dict[str, float], *, after: float, down: float, then: float
) -> None:
    """Under load: Redis killed `after` s in, started again `down` s later on the same port
    and append-only file, then `then` s more; each moment in `marks`."""
    await asyncio.sleep(after)
    marks["kill"] = now()
    server.kill()
    marks["killed"] = now()
    if down:
        await asyncio.sleep(down)
    marks["restart"] = now()
    await asyncio.to_thread(server.start)
    marks["up"] = now()
    await asyncio.sleep(then)


def test_redis_killed_under_load_answers_10002_in_bounded_time_and_recovers_without_restart(
    tmp_path: Path,
) -> None:
    with running_stack(tmp_path) as (server, service):
        marks: dict[str, float] = {}

        async def scenario() -> None:
            await _kill_and_restart(server, marks, after=1.0, down=1.5, then=2.5)

        outcomes, probes = asyncio.run(drive(service, scenario))
        alive_at_end = service.alive()

        assert_every_call_answered_ok_or_10002(outcomes)
        kill, killed, restart, up = marks["kill"], marks["killed"], marks["restart"], marks["up"]
        failed = [o for o in outcomes if o.code == INTERNAL]
        assert failed, "killing Redis failed no call: the fault was not injected"
        slow = [o for o in failed if o.latency > ANSWER_BOUND]
        assert not slow, f"{len(slow)} calls took over {ANSWER_BOUND} s to answer 10002, e.g. {slow[:3]}"
        during = [o for o in outcomes if killed <= o.started and o.ended <= restart]
        assert during, "no call ran while Redis was down"
        assert all(o.code == INTERNAL for o in during), "a call succeeded while Redis was down"
        outage_latency = max(o.latency for o in outcomes if o.ended >= kill and o.started <= up)

        # /readyz 503 while Redis is down, /healthz 200 throughout.
        assert any(status == 503 for t, status in probes.readyz if killed <= t <= restart - 0.1), (
            probes.readyz
        )
        assert all(status == 200 for _, status in probes.healthz), probes.healthz

        # Back by itself within 2 s of Redis answering again, with no restart of the service.
        recovered = [o for o in outcomes if o.code == OK and o.ended >= up]
        assert recovered, "no call succeeded after Redis came back"
        recovery = min(o.ended for o in recovered) - up
        assert recovery < RECOVERY_BOUND, f"first success {recovery:.3f} s after Redis came back"
        late = [o for o in outcomes if o.started >= up + RECOVERY_BOUND and o.code != OK]
        assert not late, f"{len(late)} calls failed over {RECOVERY_BOUND} s after Redis came back: {late[:3]}"
        assert alive_at_end, "the service process died"
        assert service.alive()  # the same process throughout: no restart
        assert httpx2.get(f"{service.base_url}/readyz", timeout=CLIENT_TIMEOUT).status_code == 200

        assert_counters_are_the_acknowledged_sums(server, outcomes)
        _figures(
            "kill",
            calls=len(outcomes),
            failed=len(failed),
            max_latency_during_outage=outage_latency,
            max_10002_latency=max(o.latency for o in failed),
            recovery_after_redis_up=recovery,
        )


# Script cache ------------------------------------------------------------------------------


def _eval_calls(server: RedisServer) -> int:
    client = server.client()
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    calls: int = stats.get("cmdstat_eval", {}).get("calls", 0)
    return calls


def test_script_flush_under_load_fails_no_call_and_loses_no_update(tmp_path: Path) -> None:
    with running_stack(tmp_path) as (server, service):
        flushes = 0

        async def scenario() -> None:
            nonlocal flushes
            await asyncio.sleep(0.3)
            client = server.client()
            try:
                deadline = now() + 2.0
                while now() < deadline:
                    await asyncio.to_thread(client.script_flush)
                    flushes += 1
                    await asyncio.sleep(0.02)
            finally:
                client.close()
            await asyncio.sleep(0.3)

        outcomes, _ = asyncio.run(drive(service, scenario))

        assert flushes >= 20
        assert _eval_calls(server) > 0, "the service never had to reload a script: the fault did not bite"
        failed = [o for o in outcomes if o.code != OK]
        assert not failed, f"{len(failed)} of {len(outcomes)} calls failed under SCRIPT FLUSH: {failed[:3]}"
        assert_counters_are_the_acknowledged_sums(server, outcomes)
        _figures("script flush", calls=len(outcomes), flushes=flushes, reloads=_eval_calls(server))


def test_redis_restarted_with_an_empty_script_cache_fails_no_call_after_the_first_reload(
    tmp_path: Path,
) -> None:
    with running_stack(tmp_path) as (server, service):
        marks: dict[str, float] = {}

        async def scenario() -> None:
            # Restarted at once: a quick restart, the scripts forgotten.
            await _kill_and_restart(server, marks, after=0.8, down=0, then=2.0)

        outcomes, _ = asyncio.run(drive(service, scenario, probe_readiness=False))

        assert_every_call_answered_ok_or_10002(outcomes)
        assert _eval_calls(server) > 0, "the restarted Redis never saw a script reload"
        kill, up = marks["kill"], marks["up"]
        recovered = [o for o in outcomes if o.code == OK and o.started >= kill]
        assert recovered, "no call succeeded after the restart"
        first_reload = min(o.ended for o in recovered)
        after = [o for o in outcomes if o.started >= first_reload]
        failed = [o for o in after if o.code != OK]
        assert after
        assert not failed, f"{len(failed)} of {len(after)} calls failed after the first reload: {failed[:3]}"
        before = [o for o in outcomes if o.ended < kill and o.code != OK]
        assert not before, f"calls failed before the kill: {before[:3]}"
        assert_counters_are_the_acknowledged_sums(server, outcomes)
        _figures(
            "restart",
            calls=len(outcomes),
            failed=sum(o.code != OK for o in outcomes),
            first_success_after_up=first_reload - up,
        )


# Slow Redis ------------------------------------------------------------------------------------


async def _stall(server: RedisServer, seconds: int, marks: dict[str, float]) -> None:
    """DEBUG SLEEP from a client of our own: Redis answers nobody meanwhile."""
    client = server.client(timeout=seconds + 10.0)
    try:
        # Connected first: redis-py's handshake (CLIENT SETINFO, twice) and the thread's
        # start would otherwise come between the mark and the sleep.
        await asyncio.to_thread(client.ping)
        marks["stall"] = now()
        await asyncio.to_thread(client.execute_command, "DEBUG", "SLEEP", str(seconds))
        marks["stall_end"] = now()
    finally:
        client.close()


def _service_connections(server: RedisServer) -> int:
    """Clients of this Redis other than the one asking (the service's connections)."""
    client = server.client()
    try:
        return len(client.client_list()) - 1
    finally:
        client.close()


def test_stalled_redis_answers_10002_within_the_timeout_and_in_flight_stays_bounded(
    tmp_path: Path,
) -> None:
    with running_stack(tmp_path) as (server, service):
        marks: dict[str, float] = {}

        async def scenario() -> None:
            await asyncio.sleep(0.8)
            await _stall(server, 2, marks)
            await asyncio.sleep(1.5)

        outcomes, probes = asyncio.run(drive(service, scenario))

        assert_every_call_answered_ok_or_10002(outcomes)
        stall, stall_end = marks["stall"], marks["stall_end"]
        assert stall_end - stall >= 1.9
        worst = max(o.latency for o in outcomes)
        assert worst <= ANSWER_BOUND, f"a call took {worst:.3f} s (redis_timeout {REDIS_TIMEOUT})"
        stalled = [o for o in outcomes if stall + 0.1 <= o.started <= stall_end - REDIS_TIMEOUT - 0.1]
        assert stalled, "no call ran during the stall"
        wrong = [o for o in stalled if o.code != INTERNAL or not 0.4 <= o.latency <= ANSWER_BOUND]
        assert not wrong, f"calls during the stall not answered 10002 in 0.4..{ANSWER_BOUND} s: {wrong[:3]}"

        sampled = [value for t, value in probes.in_flight if stall <= t <= stall_end]
        assert len(sampled) >= 5, "/metrics was not sampled during the stall"
        assert max(sampled) > 0
        assert max(value for _, value in probes.in_flight) <= WORKERS
        assert any(status == 503 for t, status in probes.readyz if stall <= t <= stall_end), probes.readyz

        after = [o for o in outcomes if o.started >= stall_end + 0.3]
        assert after
        failed = [o for o in after if o.code != OK]
        assert not failed, f"{len(failed)} calls failed after the stall: {failed[:3]}"
        assert _service_connections(server) == 1, "the service opened more than one connection to Redis"
        assert_counters_are_the_acknowledged_sums(server, outcomes)
        _figures(
            "stall",
            calls=len(outcomes),
            failed=sum(o.code != OK for o in outcomes),
            max_latency=worst,
            max_in_flight=max(value for _, value in probes.in_flight),
        )


def test_stalled_redis_past_max_pending_refuses_calls_at_once_instead_of_queueing(tmp_path: Path) -> None:
    """64 clients, redis_max_pending 8: at most 8 calls wait on a stalled Redis, the rest fail at once.

    With 64 clients and 8 slots calls are refused under a healthy Redis too (one tick can
    hold 64 calls), so "everything succeeds after the stall" is checked with 8 clients.
    """
    max_pending, clients = 8, 64
    with running_stack(tmp_path, max_pending=max_pending) as (server, service):
        marks: dict[str, float] = {}

        async def stall_then_drain() -> None:
            await asyncio.sleep(0.8)
            await _stall(server, 2, marks)
            await asyncio.sleep(0.5)

        async def settle() -> None:
            await asyncio.sleep(1.0)

        outcomes, probes = asyncio.run(
            drive(service, stall_then_drain, workers=clients, probe_readiness=False)
        )
        after, _ = asyncio.run(drive(service, settle, workers=max_pending, probe_readiness=False))

        assert_every_call_answered_ok_or_10002(outcomes)
        stall, stall_end = marks["stall"], marks["stall_end"]
        # The mark is taken as DEBUG SLEEP leaves for Redis: on busy cores a call that starts
        # just after it can still be answered before Redis begins to sleep.
        during = [o for o in outcomes if stall + 0.2 <= o.started and o.ended <= stall_end]
        refused = [o for o in during if o.code == INTERNAL and o.latency < 0.3]
        waited = [o for o in outcomes if o.latency >= 0.45]
        # At most max_pending calls wait on the stalled Redis at any moment (on its connection,
        # or for a new one once that was dropped as overdue); every other call is refused at
        # once rather than queued. (Times are the client's: a call answered when its link was
        # dropped is still in flight to the client, up to 0.15 s on 2 busy cores, while the
        # next ones start.)
        most = max(sum(w.started <= o.started < w.ended - 0.15 for w in waited) for o in waited)
        assert most <= max_pending, f"{most} calls waited on the stalled Redis at once"
        assert len(refused) >= clients, f"only {len(refused)} calls were refused at once during the stall"
        assert all(o.code == INTERNAL for o in during)
        assert max(value for _, value in probes.in_flight) <= clients

        assert after
        failed = [o for o in after if o.code != OK]
        assert not failed, (
            f"{len(failed)} of {len(after)} calls by {max_pending} clients failed: {failed[:3]}"
        )
        assert _service_connections(server) == 1
        assert_counters_are_the_acknowledged_sums(server, outcomes + after)
        _figures(
            "backpressure",
            calls=len(outcomes),
            refused_before_stall=sum(o.code != OK for o in outcomes if o.ended < stall),
            calls_before_stall=sum(o.ended < stall for o in outcomes),
            refused_at_once=len(refused),
            waited=len(waited),
            max_refusal_latency=max(o.latency for o in refused),
            max_in_flight=max(value for _, value in probes.in_flight),
            calls_after_by_8_clients=len(after),
        )


@pytest.mark.parametrize("deltas", [[5, 5, 5], [5, 5, 6]])
def test_the_exactness_check_catches_a_partial_or_lost_update(tmp_path: Path, deltas: list[int]) -> None:
    """The check above can fail: a hash with a != b is caught, as is a value below the acknowledged sum."""
    server = durable_redis(tmp_path)
    server.start()
    try:
        client = server.client()
        client.hset(group_key(APP, "g"), mapping=dict(zip(KEYS, deltas, strict=True)))
        client.close()
        acked = [Outcome(0.0, 0.0, "g", 5, OK, ""), Outcome(0.0, 0.0, "g", 1, OK, "")]
        with pytest.raises(AssertionError):
            assert_counters_are_the_acknowledged_sums(server, acked)
    finally:
        server.stop()
