"""Real Redis topologies on loopback for the tests: a three-master cluster, and a
master with a replica watched by a sentinel. Every process is ours, on free ports,
with nothing kept on disk beyond a temp dir."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.support import NOTHING_ON_DISK, VALKEY_SERVER, free_port, redis_server_args

CLUSTER_BUS_OFFSET = 10_000
MASTER_NAME = "countermaster"


def _binary(name: str) -> str:
    if name == "valkey-server":  # Redis 7.2's fork, for WAITAOF: the Makefile fetches it
        if not VALKEY_SERVER.exists():
            raise RuntimeError(
                f"{VALKEY_SERVER} is missing: `make test` fetches it "
                "(bash tests/tools/fetch_valkey.sh .tools/valkey)"
            )
        return str(VALKEY_SERVER)
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run `make redis-server` (apt-get install redis-server)")
    return path


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below the ephemeral range."""
    for _ in range(200):
        port = random.randrange(20_000, 30_000)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {seconds} s waiting for {what}")


@dataclass
class Process:
    """One redis-server (or sentinel) process in its own directory."""

    port: int
    args: list[str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    binary: str = "redis-server"

    def start(self) -> Process:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [_binary(self.binary), *self.args, "--logfile", str(self.workdir / "redis.log")],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout)

    def wait_ready(self, seconds: float = 10.0) -> None:
        client = self.client(0.5)
        try:

            def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server on {self.port} exited:\n{log}")
                return bool(client.ping())

            wait_for(answers, seconds, f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        # SIGKILL: nothing on disk to keep, and a master with replicas would wait on SIGTERM.
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@dataclass
class Cluster:
    """Three masters, no replicas, slots split evenly by `redis-cli --cluster create`."""

    nodes: list[Process] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-cluster-")))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, masters: int = 3) -> Cluster:
        for attempt in range(3):
            try:
                return self._start(masters)
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError):
                self.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self, masters: int) -> Cluster:
        ports: list[int] = []
        while len(ports) < masters:
            port = cluster_port()
            if port not in ports:
                ports.append(port)
        for port in ports:
            args = [
                *redis_server_args(port),
                *NOTHING_ON_DISK,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "5000",
            ]
            self.nodes.append(Process(port, args, self.root / str(port)).start())
        for node in self.nodes:
            node.wait_ready()
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, seconds: float = 30.0) -> None:
        """Every node says cluster_state:ok and knows every master."""

        def all_ok() -> bool:
            for node in self.nodes:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info:
                        return False
                    if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                        return False
            return True

        wait_for(all_ok, seconds, "cluster_state:ok on every node")

    def inspector(self) -> RedisCluster:
        """A sync cluster client that reads any key; KEYS asks every primary, not one node."""
        client = RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5.0)
        client.command_flags["KEYS"] = client.PRIMARIES
        return client

    def node(self, port: int) -> Process:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class SentinelSetup:
    """A master, one replica of it, and one sentinel watching them (quorum 1)."""

    master: Process | None = None
    replica: Process | None = None
    sentinel: Process | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-sentinel-")))

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{MASTER_NAME}"

    def start(self) -> SentinelSetup:
        master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
        # As advised to operators: a master that lost its replica refuses writes, so a
        # demoted master cannot take (and later drop) writes during a failover.
        master_args = [
            *redis_server_args(master_port),
            *NOTHING_ON_DISK,
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "10",
            "--repl-diskless-sync-delay",  # the replica syncs at once, not after 5 s
            "0",
        ]
        self.master = Process(master_port, master_args, self.root / "master").start()
        self.master.wait_ready()
        replica_args = [
            *redis_server_args(replica_port),
            *NOTHING_ON_DISK,
            "--replicaof",
            "127.0.0.1",
            str(master_port),
        ]
        self.replica = Process(replica_port, replica_args, self.root / "replica").start()
        self.replica.wait_ready()
        sentinel_dir = self.root / "sentinel"
        sentinel_dir.mkdir(parents=True)
        conf = sentinel_dir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {sentinel_dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            # Known from the start, rather than found by the sentinel's INFO every 10 s.
            f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {replica_port}\n"
        )
        self.sentinel = Process(sentinel_port, [str(conf), "--sentinel"], sentinel_dir).start()
        self.sentinel.wait_ready()
        # The sentinel must know the replica, linked and in sync, before it can fail over.
        wait_for(self._replica_known, 20, "the sentinel to see an in-sync replica")
        return self

    def _replica_known(self) -> bool:
        assert self.sentinel is not None
        assert self.replica is not None
        with self.sentinel.client() as client:
            replicas = client.sentinel_slaves(MASTER_NAME)
        with self.replica.client() as client:
            linked = client.info("replication").get("master_link_status") == "up"
        assert self.master is not None
        with self.master.client() as client:  # min-replicas-to-write counts it: writes accepted
            linked = linked and int(client.info("replication").get("min_slaves_good_slaves", 0)) >= 1
        return linked and any(
            int(r["port"]) == self.replica.port and "s_down" not in r["flags"] and not r["is_disconnected"]
            for r in replicas
        )

    def master_port(self) -> int:
        """The master's port as the sentinel reports it."""
        assert self.sentinel is not None
        with self.sentinel.client() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def processes(self) -> list[Process]:
        return [p for p in (self.master, self.replica, self.sentinel) if p is not None]

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class ReplicatedRedis:
    """A master and `count` replicas of it, linked and in sync (no sentinel)."""

    count: int = 1
    master: Process | None = None
    replicas: list[Process] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-replicated-")))
    binary: str = "redis-server"
    # Each node's, e.g. an AOF for ack_fsync (its replicas' by default too).
    persistence: tuple[str, ...] = NOTHING_ON_DISK
    replica_persistence: tuple[str, ...] | None = None

    @property
    def url(self) -> str:
        assert self.master is not None
        return f"redis://127.0.0.1:{self.master.port}/0"

    def start(self) -> ReplicatedRedis:
        port = free_port()
        # The replica syncs at once, not after diskless sync's usual 5 s.
        args = [*redis_server_args(port), *self.persistence, "--repl-diskless-sync-delay", "0"]
        self.master = Process(port, args, self.root / "master", binary=self.binary).start()
        self.master.wait_ready()
        for n in range(self.count):
            replica_port = free_port()
            replica_args = [
                *redis_server_args(replica_port),
                *(self.persistence if self.replica_persistence is None else self.replica_persistence),
                *("--replicaof", "127.0.0.1", str(port)),
            ]
            replica = Process(
                replica_port, replica_args, self.root / f"replica-{n}", binary=self.binary
            ).start()
            replica.wait_ready()
            self.replicas.append(replica)
        wait_for(self.in_sync, 20, f"{self.count} replicas in sync")
        replica_persistence = (
            self.persistence if self.replica_persistence is None else self.replica_persistence
        )
        if self.binary == "valkey-server" and "yes" in replica_persistence:
            # A replica rewrites its AOF after its first sync and confirms no fsync until done.
            wait_for(self.fsyncing, 30, f"{self.count} replicas fsyncing their AOF")
        return self

    def fsyncing(self) -> bool:
        """A write is fsynced by every replica within 100 ms (WAITAOF: Redis 7.2+, Valkey)."""
        assert self.master is not None
        with self.master.client() as client:
            client.set("topology:fsync-probe", 1)
            fsynced = client.execute_command("WAITAOF", 0, len(self.replicas), 100)[1] == len(self.replicas)
            client.delete("topology:fsync-probe")
            return bool(fsynced)

    def in_sync(self) -> bool:
        """Every replica is online: the master lists it in ROLE."""
        assert self.master is not None
        with self.master.client() as client:
            return len(client.execute_command("ROLE")[2]) == len(self.replicas)

    def stop(self) -> None:
        for process in (*self.replicas, self.master):
            if process is not None:
                process.stop()
        shutil.rmtree(self.root, ignore_errors=True)
