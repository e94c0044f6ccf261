"""One failover run: a topology, the service on it, load, one fault, and the account.

Faults (`FAULTS`):
  kill               SIGKILL of the master, restarted on its AOF once the sentinels moved
  sentinel-failover  SENTINEL FAILOVER on a sentinel (a planned switch, Sentinel's way)
  failover           Redis's own FAILOVER on the master (waits for a replica to catch up);
                     the sentinels were not asked
  partition          the master cut off from its sentinels and replicas, not from the
                     service, until the sentinels promoted another; then healed
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import httpx2

from tests.failover.load import Account, Load, account
from tests.failover.topology import MASTER_NAME, DataNode, SentinelKit
from tests.support import CONFIG, ServiceProcess
from tests.topologies import wait_for

FAULTS: Final = ("kill", "sentinel-failover", "failover", "partition")
BEFORE: Final = 3.0  # seconds of load before the fault
AFTER: Final = 3.0  # seconds of load after the switch settled
SETTLE: Final = 30.0


@contextlib.contextmanager
def service_on_url(url: str, ack: str, workdir: Path) -> Iterator[ServiceProcess]:
    """One service process on `url` with `ack`, ready, stopped at the end."""
    settings = [f'redis_url = "{url}"', "redis_timeout = 0.5", 'log_level = "error"']
    if ack != "primary":
        settings.append(f'ack = "{ack}"')
    config = workdir / "config.toml"
    config.write_text(CONFIG.replace('redis_url = "memory://"', "\n".join(settings)), encoding="utf-8")
    service = ServiceProcess.start(config, log=workdir / "service.log")
    try:
        service.wait_until(lambda: _ready(service))
        yield service
    finally:
        service.stop(15)


def _ready(service: ServiceProcess) -> bool:
    try:
        return httpx2.get(f"{service.base_url}/readyz", timeout=1.0).status_code == 200
    except httpx2.TransportError:
        return False


def inject(kit: SentinelKit, fault: str, old: DataNode) -> Callable[[], None]:
    """Start `fault` on the master `old`; returns what undoes it once the switch settled."""
    if fault == "kill":
        old.process.stop()
        return lambda: kit.restart(old)
    if fault == "sentinel-failover":
        with kit.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return lambda: None
    if fault == "failover":
        with old.client() as client:
            client.execute_command("FAILOVER", "TIMEOUT", 5000)
        return lambda: None
    if fault == "partition":
        old.gate.cut()
        return old.gate.heal
    raise ValueError(f"unknown fault {fault!r}")


def one_run(replicas: int, fault: str, ack: str, workdir: Path, down_after_ms: int = 1000) -> Account:
    kit = SentinelKit(replicas=replicas, down_after_ms=down_after_ms, root=workdir / "redis").start()
    try:
        with service_on_url(kit.url, ack, workdir) as service:
            return asyncio.run(_drive(kit, service, fault))
    finally:
        kit.stop()


async def _drive(kit: SentinelKit, service: ServiceProcess, fault: str) -> Account:
    load = Load(service.base_url)
    running = asyncio.ensure_future(load.run())
    await asyncio.sleep(BEFORE)
    old = kit.master()
    fault_at = time.monotonic()
    undo = inject(kit, fault, old)
    await asyncio.to_thread(wait_for, lambda: kit.settled(old), SETTLE, "the sentinels to name a new master")
    switched_at = time.monotonic()
    await asyncio.sleep(AFTER)
    load.stopping = True
    await running
    undo()
    # The old master back, as a replica: what it acknowledged alone is gone for good now.
    await asyncio.to_thread(wait_for, lambda: _replica(old), SETTLE, "the old master to rejoin as a replica")
    with kit.master().client() as master:
        return account(load.calls, master, fault_at, switched_at)


def _replica(node: DataNode) -> bool:
    with node.client() as client:
        role = client.execute_command("ROLE")
    return bool(role[0] == b"slave" and role[3] == b"connected")
