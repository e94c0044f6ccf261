"""Helpers for the tests: a redis-server on a free port, the test apps, an API client."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlencode

import httpx2
import redis

from service.api.auth import mint_usersig
from service.ops.access_log import ACCESS
from service.storage import keys

REGISTERED_APP: Final = 1400000000
IMPLICIT_APP: Final = 1400000001
OTHER_APP: Final = 1400000002
RATE_LIMITED_APP: Final = 1400000003
RATE_LIMIT: Final = 5
END_USER_APP: Final = 1400000004  # end users may read, and Increase/Decrease CLIENT_KEYS
CLIENT_KEYS: Final = ("like", "gift")
SECRET_KEYS: Final = {
    REGISTERED_APP: "secret-of-the-registered-app",
    IMPLICIT_APP: "secret-of-the-implicit-app",
    OTHER_APP: "secret-of-the-other-app",
    RATE_LIMITED_APP: "secret-of-the-rate-limited-app",
    END_USER_APP: "secret-of-the-end-user-app",
}
ADMIN: Final = "administrator"

CONFIG: Final = f"""
redis_url = "memory://"

[[apps]]
sdkappid = {REGISTERED_APP}
secret_key = "{SECRET_KEYS[REGISTERED_APP]}"
admins = ["{ADMIN}", "ops"]
groups = "registered"

[[apps]]
sdkappid = {IMPLICIT_APP}
secret_key = "{SECRET_KEYS[IMPLICIT_APP]}"
admins = ["{ADMIN}"]
groups = "implicit"

[[apps]]
sdkappid = {OTHER_APP}
secret_key = "{SECRET_KEYS[OTHER_APP]}"
admins = ["{ADMIN}"]

[[apps]]
sdkappid = {RATE_LIMITED_APP}
secret_key = "{SECRET_KEYS[RATE_LIMITED_APP]}"
admins = ["{ADMIN}"]
groups = "implicit"
rate_limit = {RATE_LIMIT}

[[apps]]
sdkappid = {END_USER_APP}
secret_key = "{SECRET_KEYS[END_USER_APP]}"
admins = ["{ADMIN}"]
end_users = true
client_keys = ["like", "gift"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[Any], seconds: float) -> int:
    """SIGTERM, then SIGKILL after `seconds`; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def redis_server_args(port: int) -> list[str]:
    """What every test redis-server shares: loopback only, DEBUG allowed from localhost."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--enable-debug-command", "local"]


NOTHING_ON_DISK: Final = ("--save", "", "--appendonly", "no")
# Every write fsynced to the AOF before the next is taken: WAITAOF answers at once.
AOF_ALWAYS: Final = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")
# Valkey 8 (Redis 7.2's fork, with WAITAOF) for ack_fsync: the Makefile fetches it here.
VALKEY_SERVER: Final = Path(__file__).resolve().parent.parent / ".tools/valkey/usr/bin/valkey-server"


@dataclass
class RedisServer:
    """A redis-server process of our own on a free loopback port; nothing on disk unless
    `persistence` says otherwise (e.g. an fsync-always AOF, to survive a SIGKILL)."""

    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-test-")))
    persistence: tuple[str, ...] = NOTHING_ON_DISK

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start, on `port` if set (a restart keeps its port), else on a free one."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `make redis-server` (apt-get install redis-server)"
            )
        # A port we picked may be taken in between: pick again. A given port is kept or we fail.
        choose_port = self.port == 0
        for _ in range(5 if choose_port else 1):
            if choose_port:
                self.port = free_port()
            self.process = subprocess.Popen(
                [
                    binary,
                    *redis_server_args(self.port),
                    *self.persistence,
                    *("--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}; see its log in {self.workdir}")

    def client(self, timeout: float = 10.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown save, connections dropped at once."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def _wait_ready(self, seconds: float = 10.0) -> bool:
        deadline = time.monotonic() + seconds
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
        self.process = None


REPO: Final = Path(__file__).resolve().parent.parent


def service_argv(port: int, config: Path) -> list[str]:
    """`python -m service` on loopback `port` with the config file `config`."""
    return [
        sys.executable,
        "-m",
        "service",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(config),
    ]


@dataclass
class ServiceProcess:
    """`python -m service` as a process of its own, its output in a log file.

    REDIS_URL is dropped from its environment, so the config file says where Redis is.
    """

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    scheme: str = "http"

    @classmethod
    def start(cls, config: Path, *extra: str, log: Path | None = None, tls: bool = False) -> ServiceProcess:
        port = free_port()
        log = log or config.parent / f"service-{port}.log"
        environ = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [*service_argv(port, config), *extra],
                cwd=REPO,
                env=environ,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return cls(process, port, log, "https" if tls else "http")

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{'localhost' if self.scheme == 'https' else '127.0.0.1'}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], seconds: float = 30.0) -> None:
        """Until `ready()` holds; fails at once, with the log, if the process exits."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.alive():
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"service on port {self.port} did not get ready; log:\n{self.log.read_text()}")

    def stop(self, seconds: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after `seconds`; the exit code."""
        return stop_process(self.process, seconds)

    def post(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_command(self.port, command, body)


def post_command(
    port: int, command: str, body: dict[str, Any], sdkappid: int = REGISTERED_APP
) -> dict[str, Any]:
    """One command as `sdkappid`'s admin, over plain HTTP to 127.0.0.1:`port`; its JSON reply."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", f"/v4/group_open_http_svc/{command}?{query(sdkappid)}", json.dumps(body))
        reply: dict[str, Any] = json.loads(connection.getresponse().read())
        return reply
    finally:
        connection.close()


def usersig_for(sdkappid: int = REGISTERED_APP, identifier: str = ADMIN, **kwargs: Any) -> str:
    return mint_usersig(sdkappid, kwargs.pop("secret_key", SECRET_KEYS[sdkappid]), identifier, **kwargs)


def query(sdkappid: int = REGISTERED_APP, identifier: str = ADMIN, **overrides: Any) -> str:
    params: dict[str, Any] = {
        "sdkappid": sdkappid,
        "identifier": identifier,
        "usersig": usersig_for(sdkappid, identifier),
        "random": 12345,
        "contenttype": "json",
    }
    for name, value in overrides.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return urlencode(params)


@dataclass
class Api:
    """Calls commands the way a client of the hosted platform does."""

    client: httpx2.Client  # a TestClient (ASGI) or a client of a real server (tests/edge.py)
    inspector: redis.Redis

    def call(
        self,
        command: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        sdkappid: int = REGISTERED_APP,
        **query_overrides: Any,
    ) -> dict[str, Any]:
        response = self.post(command, body, raw=raw, sdkappid=sdkappid, **query_overrides)
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        assert reply["ActionStatus"] == ("OK" if reply["ErrorCode"] == 0 else "FAIL")
        return reply

    def post(
        self,
        command: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        sdkappid: int = REGISTERED_APP,
        path: str | None = None,
        **query_overrides: Any,
    ) -> Any:
        content = raw if raw is not None else (b"" if body is None else _json(body))
        url = (path or f"/v4/group_open_http_svc/{command}") + "?" + query(sdkappid, **query_overrides)
        return self.client.post(url, content=content)

    def create(self, group_id: str, group_type: str = "Public", *, sdkappid: int = REGISTERED_APP) -> None:
        reply = self.call(
            "create_group", {"Type": group_type, "Name": "g", "GroupId": group_id}, sdkappid=sdkappid
        )
        assert reply["ErrorCode"] == 0, reply

    def update(
        self,
        group_id: str,
        counters: dict[str, int],
        mode: str | None = "Set",
        *,
        sdkappid: int = REGISTERED_APP,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "GroupId": group_id,
            "GroupCounter": [{"Key": k, "Value": v} for k, v in counters.items()],
        }
        if mode is not None:
            body["Mode"] = mode
        return self.call("update_group_counter", body, sdkappid=sdkappid)

    def get(
        self, group_id: str, keys: list[str] | None = None, *, sdkappid: int = REGISTERED_APP
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"GroupId": group_id}
        if keys is not None:
            body["GroupCounterKeys"] = keys
        return self.call("get_group_counter", body, sdkappid=sdkappid)

    def counters(self, group_id: str, *, sdkappid: int = REGISTERED_APP) -> dict[str, int]:
        reply = self.get(group_id, sdkappid=sdkappid)
        assert reply["ErrorCode"] == 0, reply
        return {item["Key"]: item["Value"] for item in reply["GroupCounter"]}

    def assert_fails(
        self, command: str, body: Any, code: int, *, raw: bytes | None = None, sdkappid: int = REGISTERED_APP
    ) -> dict[str, Any]:
        """The call fails with `code` and the store is exactly as before."""
        before = self.state()
        reply = self.call(command, body, raw=raw, sdkappid=sdkappid)
        assert reply["ErrorCode"] == code, reply
        assert reply["ActionStatus"] == "FAIL"
        assert self.state() == before
        return reply

    def state(self) -> dict[Any, Any]:
        """Everything in the store, to assert that a failed call changed nothing."""
        return {key: self._value(key) for key in sorted(self.inspector.keys("*"))}

    def _value(self, key: Any) -> Any:
        # Groups are hashes; idempotency records are strings.
        if self.inspector.type(key) == b"string":
            return self.inspector.get(key)
        return self.inspector.hgetall(key)


def assert_ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ErrorCode"] == 0, reply
    return reply


UPDATE: Final = "/v4/group_open_http_svc/update_group_counter"
# The request the error-code tests break one part of: a += 1 in the registered group "g".
INCREASE_A: Final[dict[str, Any]] = {
    "GroupId": "g",
    "Mode": "Increase",
    "GroupCounter": [{"Key": "a", "Value": 1}],
}


def post_query(api: Api, query_string: str, body: Any = INCREASE_A, path: str = UPDATE) -> dict[str, Any]:
    """POST with a query string built by hand (for values `query` cannot express); the reply."""
    response = api.client.post(path + "?" + query_string, content=_json(body))
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def keys_body(group_id: str, keys: Any) -> dict[str, Any]:
    """A get or delete of `keys` of the group; the string "absent" leaves GroupCounterKeys out."""
    request: dict[str, Any] = {"GroupId": group_id}
    if keys != "absent":
        request["GroupCounterKeys"] = keys
    return request


def group_of_three(api: Api, group_id: str) -> Api:
    """`api` once the group exists holding a = 1, b = 2 and c = 3."""
    api.create(group_id)
    assert_ok(api.update(group_id, {"a": 1, "b": 2, "c": 3}))
    return api


def _json(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()


def group_key(sdkappid: int, group_id: str) -> bytes:
    return keys.group_key(sdkappid, group_id).encode()


def iterate(n: int) -> Iterator[int]:
    return iter(range(n))


@contextlib.contextmanager
def access_lines(fmt: Literal["json", "text"] = "json") -> Iterator[Callable[[], list[str]]]:
    """The access log's lines, captured: yields a function that returns those written so far."""
    written: list[bytes] = []
    logger = logging.getLogger("service.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    ACCESS.configure(fmt)
    ACCESS.write = written.append

    def lines() -> list[str]:
        ACCESS.flush()
        return b"".join(written).decode().splitlines()

    try:
        yield lines
    finally:
        ACCESS.flush()
        ACCESS.write = None
        ACCESS.configure("json")
        logger.setLevel(level)


def listens(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def make_run(log: Path) -> Iterator[int]:
    """`make run` on a free port, as a new user starts it (its output in `log`), until it
    listens; make and the server it starts are stopped together, by group id."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *("make", "--no-print-directory", "-o", ".venv/.installed-run", "run"),
                *(f"PORT={port}", f"PY={sys.executable}"),
            ],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not listens(port):
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


class RecordingTransport:
    """A transport that keeps what is written to it (tests of one response's writes)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
