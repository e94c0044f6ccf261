"""A Redis Cluster on loopback for the failover kit: three masters, one replica each,
AOF everysec on every node, `cluster-node-timeout` 1 s; faults: SIGKILL of a master
(its replica takes over once the others agree it is down) and `CLUSTER FAILOVER` on a
replica (a planned switch: the master pauses until the replica caught up)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from redis.cluster import RedisCluster
from redis.crc import key_slot

from service.storage.keys import group_key
from tests.failover.load import Account, Load, account
from tests.failover.run import AFTER, BEFORE, SETTLE, service_on_url
from tests.support import IMPLICIT_APP, redis_server_args
from tests.topologies import Process, cluster_port, wait_for

CLUSTER_FAULTS: Final = ("kill", "cluster-failover")
NODE_TIMEOUT_MS: Final = 1000


@dataclass
class ClusterKit:
    nodes: list[Process] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="failover-cluster-")))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> ClusterKit:
        ports: list[int] = []
        while len(ports) < 6:
            port = cluster_port()
            if port not in ports:
                ports.append(port)
        for port in ports:
            args = [
                *redis_server_args(port),
                *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0"),
            ]
            self.nodes.append(Process(port, args, self.root / str(port)).start())
        for node in self.nodes:
            node.wait_ready()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.healthy, 30, "a healthy cluster with a replica per master")
        return self

    def roles(self) -> dict[int, bytes]:
        roles: dict[int, bytes] = {}
        for node in self.nodes:
            if node.process is None:
                continue
            with node.client() as client:
                roles[node.port] = client.execute_command("ROLE")[0]
        return roles

    def healthy(self) -> bool:
        """cluster_state:ok everywhere, three masters, each with an online replica."""
        for node in self.nodes:
            if node.process is None:
                return False
            with node.client() as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
        masters = [port for port, role in self.roles().items() if role == b"master"]
        if len(masters) != 3:
            return False
        for port in masters:
            with self.node(port).client() as client:
                if len(client.execute_command("ROLE")[2]) != 1:
                    return False
        return True

    def node(self, port: int) -> Process:
        return next(node for node in self.nodes if node.port == port)

    def a_master(self) -> Process:
        return self.node(min(port for port, role in self.roles().items() if role == b"master"))

    def replica_of(self, master: Process) -> Process:
        with master.client() as client:
            _, port, _ = client.execute_command("ROLE")[2][0]
        return self.node(int(port))

    def serving(self, old: Process) -> bool:
        """The live nodes say ok, and three masters serve, `old` not among them."""
        live = [node for node in self.nodes if node.process is not None]
        for node in live:
            with node.client() as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
        roles = self.roles()
        masters = [port for port, role in roles.items() if role == b"master"]
        return len(masters) == 3 and old.port not in masters

    def groups_on(self, master: Process, groups: set[str]) -> set[str]:
        """Those of `groups` whose slot `master` serves."""
        with master.client() as client:
            ranges = [
                (int(start), int(end))
                for start, end, owner, *_ in client.execute_command("CLUSTER", "SLOTS")
                if int(owner[1]) == master.port
            ]
        return {
            group
            for group in groups
            if any(start <= key_slot(group_key(IMPLICIT_APP, group).encode()) <= end for start, end in ranges)
        }

    def inspector(self) -> RedisCluster:
        alive = next(node for node in self.nodes if node.process is not None)
        return RedisCluster(host="127.0.0.1", port=alive.port, socket_timeout=5.0)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def inject(kit: ClusterKit, fault: str, old: Process) -> Callable[[], None]:
    if fault == "kill":
        old.stop()

        def restart() -> None:
            old.start()
            old.wait_ready(20)

        return restart
    if fault == "cluster-failover":
        with kit.replica_of(old).client() as client:
            client.execute_command("CLUSTER", "FAILOVER")
        return lambda: None
    raise ValueError(f"unknown cluster fault {fault!r}")


def one_cluster_run(fault: str, ack: str, workdir: Path) -> Account:
    kit = ClusterKit(root=workdir / "redis").start()
    try:
        with service_on_url(kit.url, ack, workdir) as service:
            return asyncio.run(_drive(kit, service.base_url, fault))
    finally:
        kit.stop()


async def _drive(kit: ClusterKit, base_url: str, fault: str) -> Account:
    load = Load(base_url)
    running = asyncio.ensure_future(load.run())
    await asyncio.sleep(BEFORE)
    old = kit.a_master()
    affected = kit.groups_on(old, {call.group for call in load.calls})
    fault_at = time.monotonic()
    undo = inject(kit, fault, old)
    await asyncio.to_thread(wait_for, lambda: kit.serving(old), SETTLE, "another master for the slots")
    switched_at = time.monotonic()
    await asyncio.sleep(AFTER)
    load.stopping = True
    await running
    undo()
    await asyncio.to_thread(wait_for, kit.healthy, SETTLE, "the old master back as a replica")
    inspector = kit.inspector()
    try:
        return account(load.calls, inspector, fault_at, switched_at, affected)  # type: ignore[arg-type]
    finally:
        inspector.close()
