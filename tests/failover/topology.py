"""Sentinel on loopback as production runs it: three sentinels (quorum 2), a master and one
or two replicas, an append-only file fsynced every second on every node, each data node
behind a `Gate` so that it can be partitioned from its sentinels and replicas alone.

Every address the sentinels hand out is a gate's; the replicas and the sentinels connect
from 127.0.0.2 (`bind-source-addr`), the service from 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import redis

from tests.failover.gate import OTHERS_ADDRESS, Gate
from tests.support import free_port, redis_server_args
from tests.topologies import Process, wait_for

MASTER_NAME: Final = "failovermaster"
QUORUM: Final = 2
SENTINELS: Final = 3


@dataclass
class DataNode:
    process: Process
    gate: Gate

    @property
    def address(self) -> tuple[str, int]:
        """What the sentinels and the service know it as: its gate."""
        return "127.0.0.1", self.gate.port

    def client(self) -> redis.Redis:
        return self.process.client()


@dataclass
class SentinelKit:
    replicas: int = 1
    down_after_ms: int = 1000
    nodes: list[DataNode] = field(default_factory=list)
    sentinels: list[Process] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="failover-kit-")))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def start(self) -> SentinelKit:
        for n in range(self.replicas + 1):
            port = free_port()
            gate = Gate(port).start()
            args = [
                *redis_server_args(port),
                *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                *("--bind-source-addr", OTHERS_ADDRESS),
                *("--replica-announce-ip", "127.0.0.1", "--replica-announce-port", str(gate.port)),
                *("--repl-diskless-sync-delay", "0"),
            ]
            if n > 0:
                args += ["--replicaof", "127.0.0.1", str(self.nodes[0].gate.port)]
            process = Process(port, args, self.root / f"node-{n}").start()
            process.wait_ready()
            self.nodes.append(DataNode(process, gate))
        wait_for(self._replicas_online, 20, "replicas online")
        for n in range(SENTINELS):
            self.sentinels.append(self._sentinel(n))
        wait_for(self._sentinels_ready, 30, "sentinels that know each other and every replica")
        return self

    def _sentinel(self, n: int) -> Process:
        port = free_port()
        folder = self.root / f"sentinel-{n}"
        folder.mkdir(parents=True)
        master = self.nodes[0].address
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {folder}",
            f"bind-source-addr {OTHERS_ADDRESS}",
            "sentinel announce-ip 127.0.0.1",
            f"sentinel monitor {MASTER_NAME} {master[0]} {master[1]} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} 10000",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
            *(f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {node.gate.port}" for node in self.nodes[1:]),
        ]
        conf = folder / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        process = Process(port, [str(conf), "--sentinel"], folder).start()
        process.wait_ready()
        return process

    def _replicas_online(self) -> bool:
        with self.nodes[0].client() as client:
            return len(client.execute_command("ROLE")[2]) == self.replicas

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(MASTER_NAME)
                if int(master["num-other-sentinels"]) != SENTINELS - 1:
                    return False
                replicas = client.sentinel_slaves(MASTER_NAME)
                if sum(1 for r in replicas if "s_down" not in r["flags"]) != self.replicas:
                    return False
        return True

    def master(self) -> DataNode:
        """The data node the sentinels name master now."""
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return next(node for node in self.nodes if node.gate.port == int(port))

    def settled(self, old: DataNode) -> bool:
        """Every sentinel names a master other than `old`, and it takes writes."""
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                ports.add(int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
        if len(ports) != 1 or old.gate.port in ports:
            return False
        with self.master().client() as client:
            return bool(client.execute_command("ROLE")[0] == b"master")

    def restart(self, node: DataNode) -> None:
        """Start a killed node again on its port and AOF (it rejoins as a replica)."""
        node.process.start()
        node.process.wait_ready(20)

    def stop(self) -> None:
        for process in (*self.sentinels, *(node.process for node in self.nodes)):
            process.stop()
        for node in self.nodes:
            node.gate.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def redis_version() -> str:
    return subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
