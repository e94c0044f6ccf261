"""Hostile clients of issue 11, as functions, and a well-behaved client that watches.

Each attack runs in threads of its own on blocking loopback sockets (a blocking send
releases the GIL), so the well-behaved client in another thread keeps its own clock.
`tests/test_hostile_clients.py` asserts on what `under_attack` measures; run as a
module it prints the figures for one attack against a service process of its own:

    .venv/bin/python -m tests.hostile ATTACK [--seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

from tests.support import (
    ADMIN,
    CONFIG,
    END_USER_APP,
    IMPLICIT_APP,
    RedisServer,
    ServiceProcess,
    post_command,
    query,
)

HOST: Final = "127.0.0.1"
GOOD_PATH: Final = "/v4/group_open_http_svc/get_group_counter?" + query(IMPLICIT_APP)
GOOD_BODY: Final = b'{"GroupId": "watched"}'


def redis_url_of(service: ServiceProcess) -> str:
    """The Redis a service of `service_on_redis` runs on."""
    config = (service.log.parent / "config.toml").read_text()
    return config.split('redis_url = "')[1].split('"')[0]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def kernel_send_queues(port: int) -> list[int]:
    """Bytes the kernel holds unacknowledged for each established connection of the
    service's port (tx_queue in /proc/net/tcp): what a client that does not read costs
    the machine beyond the worker's own memory."""
    queues = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                queues.append(int(fields[4].split(":")[0], 16))
    return queues


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@dataclass
class Watch:
    """What the well-behaved client and the RSS sampler saw while an attack ran."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    @property
    def p99(self) -> float:
        if len(self.latencies) < 2:
            return float("inf")
        return statistics.quantiles(self.latencies, n=100)[98]

    @property
    def max_rss(self) -> int:
        return max(self.rss, default=0)

    def summary(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        return (
            f"good calls {len(lat)}, p50 {p50 * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, "
            f"max {max(lat, default=0) * 1000:.1f} ms, failures {len(self.failures)}, "
            f"max RSS {self.max_rss / 2**20:.0f} MiB"
        )


def good_client(port: int, stop: threading.Event, watch: Watch, timeout: float = 5.0) -> None:
    """A keep-alive API client that reads every answer, and /healthz on a fresh connection
    every tenth call; a reply that is not the expected one counts as a failure."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    calls = 0
    while not stop.is_set():
        calls += 1
        started = time.perf_counter()
        try:
            if calls % 10 == 0:
                fresh = http.client.HTTPConnection(HOST, port, timeout=timeout)
                fresh.request("GET", "/healthz")
                ok = fresh.getresponse().status == 200
                fresh.close()
            else:
                connection.request("POST", GOOD_PATH, body=GOOD_BODY)
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and b'"ErrorCode":0' in body
            if not ok:
                watch.failures.append(f"call {calls}: unexpected answer")
        except (OSError, http.client.HTTPException) as exc:
            watch.failures.append(f"call {calls}: {exc!r}")
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
        watch.latencies.append(time.perf_counter() - started)
        time.sleep(0.005)
    connection.close()


def rss_sampler(pid: int, stop: threading.Event, watch: Watch) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, RuntimeError):
            watch.rss.append(rss_bytes(pid))
        time.sleep(0.1)


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(2.0)
    sock.connect((HOST, port))
    return sock


def _send_until(sock: socket.socket, chunks: Iterator[bytes], stop: threading.Event) -> str:
    """Send until told to stop or the server closes; how it ended."""
    try:
        for chunk in chunks:
            if stop.is_set():
                return "stopped"
            sock.sendall(chunk)
    except TimeoutError:
        return "send blocked (server stopped reading)"
    except OSError as exc:
        return f"closed by the server ({exc.__class__.__name__})"
    return "done"


# Attacks -----------------------------------------------------------------------------------------
# Each takes the port, a stop event and a list to append how each connection ended.


def huge_header_value(port: int, stop: threading.Event, ends: list[str]) -> None:
    """`X-A: ` then 64 KiB of `x` after 64 KiB, never ending the header (point 1); again
    on a new connection whenever the server closes one."""

    def chunks() -> Iterator[bytes]:
        yield b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "
        while True:
            yield b"x" * 65536

    _again_and_again(port, stop, ends, chunks)


def many_header_lines(port: int, stop: threading.Event, ends: list[str]) -> None:
    """Small header lines without end (point 1: RSS to 2.78 GB in 12 s)."""
    block = b"".join(b"X-%d: v\r\n" % i for i in range(4096))

    def chunks() -> Iterator[bytes]:
        yield b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        while True:
            yield block

    _again_and_again(port, stop, ends, chunks)


def _again_and_again(
    port: int, stop: threading.Event, ends: list[str], chunks: Callable[[], Iterator[bytes]]
) -> None:
    while not stop.is_set():
        sock = _connect(port)
        ends.append(_send_until(sock, chunks(), stop))
        sock.close()


def pipeline_never_read(port: int, stop: threading.Event, ends: list[str], connections: int = 10) -> None:
    """Connections with a small receive buffer that pipeline calls and read nothing (point 2)."""
    request = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        b"/v4/group_open_http_svc/get_group_counter?sdkappid=1&random=1",
        len(GOOD_BODY),
        GOOD_BODY,
    )
    batch = request * 200

    def one() -> None:
        sock = _connect(port, rcvbuf=4096)
        ends.append(_send_until(sock, iter(lambda: batch, None), stop))
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    _fan_out(one, connections)


def idle_connections(port: int, stop: threading.Event, ends: list[str], connections: int = 2000) -> None:
    """Connections that send nothing (point 3)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(connections):
            if stop.is_set():
                break
            try:
                socks.append(_connect(port))
            except OSError as exc:
                ends.append(f"connect failed ({exc.__class__.__name__})")
        stop.wait()
        for sock in socks:
            ends.append(_closed_by_server(sock))
    finally:
        for sock in socks:
            sock.close()


def slowloris(port: int, stop: threading.Event, ends: list[str], connections: int = 300) -> None:
    """Connections that send a request a byte a second (point 3)."""
    request = b"POST /v4/group_open_http_svc/get_group_counter HTTP/1.1\r\nHost: x\r\n"
    request += b"Content-Length: 5\r\n\r\n{}   "
    socks = [_connect(port) for _ in range(connections)]
    for sock in socks:
        sock.setblocking(False)  # a socket with a timeout would wait for the peek below
    alive = {sock: 0 for sock in socks}
    ticks = 0
    try:
        # Look for an answer ten times a second: a byte sent after the server closed
        # would make it reset the connection, and the answer waiting here would be lost.
        while alive and not stop.wait(0.1):
            ticks += 1
            for sock, sent in list(alive.items()):
                try:
                    answer = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    answer = None
                except OSError:
                    answer = b""
                if answer is not None:
                    ends.append(f"answered {answer[:12]!r}" if answer else "closed by the server")
                    del alive[sock]
                    continue
                if ticks % 10:
                    continue
                try:
                    sock.send(request[sent : sent + 1])
                    alive[sock] = (sent + 1) % len(request)
                except OSError as exc:
                    ends.append(f"closed by the server ({exc.__class__.__name__})")
                    del alive[sock]
        ends.extend(_closed_by_server(sock) for sock in alive)
    finally:
        for sock in socks:
            sock.close()


def distinct_long_queries(port: int, stop: threading.Event, ends: list[str], calls: int = 4000) -> None:
    """Authenticated calls, each with its own 60 KB query string (point 4: the caches)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    base = GOOD_PATH + "&pad="
    answers: dict[str, int] = {}
    for index in range(calls):
        if stop.is_set():
            break
        try:
            connection.request("POST", f"{base}{index:08d}{'x' * 60_000}", body=GOOD_BODY)
            response = connection.getresponse()
            response.read()
            answers[f"HTTP {response.status}"] = answers.get(f"HTTP {response.status}", 0) + 1
        except (OSError, http.client.HTTPException) as exc:
            answers[exc.__class__.__name__] = answers.get(exc.__class__.__name__, 0) + 1
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
    connection.close()
    ends.extend(f"{count} x {answer}" for answer, count in answers.items())


def varying_random(port: int, stop: threading.Event, ends: list[str], calls: int = 4000) -> None:
    """Authenticated calls whose `random` changes every time (point 4: a cache it defeats)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    base = GOOD_PATH.replace("random=12345", "random=")
    assert base != GOOD_PATH
    codes: dict[str, int] = {}
    for index in range(calls):
        if stop.is_set():
            break
        connection.request("POST", base.replace("random=", f"random={index}"), body=GOOD_BODY)
        body = connection.getresponse().read()
        code = body.split(b'"ErrorCode":', 1)[1].split(b",", 1)[0].decode()
        codes[code] = codes.get(code, 0) + 1
    connection.close()
    ends.extend(f"{count} x ErrorCode {code}" for code, count in codes.items())


# Watchers (issue 25) ----------------------------------------------------------------------------

WATCH_PATH: Final = "/v4/group_open_http_svc/watch_group_counter"


def watch_request(group_id: str, sdkappid: int = IMPLICIT_APP, identifier: str = ADMIN) -> bytes:
    target = f"{WATCH_PATH}?{query(sdkappid, identifier)}&GroupId={group_id}"
    return f"GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()


def watch_reply(sock: socket.socket, timeout: float = 10.0) -> tuple[str, dict[str, Any] | None]:
    """How a watch was answered: "stream" (its first event came), "refused" (a refusal
    to retry, as an event stream) or "envelope" (the JSON envelope), with the envelope;
    or how it failed."""
    sock.settimeout(timeout)
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        if not (response.getheader("content-type") or "").startswith("text/event-stream"):
            return "envelope", json.loads(response.read())
        while line := response.readline():
            if line.startswith(b"event: refused"):
                return "refused", json.loads(response.readline().decode().removeprefix("data: "))
            if line.startswith(b"event: "):
                return "stream", None
    except (OSError, http.client.HTTPException) as exc:
        return f"failed ({exc.__class__.__name__})", None
    return "closed", None


def watch_answer(sock: socket.socket, timeout: float = 10.0) -> str:
    """`watch_reply` in a word or two: "stream", "refused <code>", "code <code>"..."""
    kind, envelope = watch_reply(sock, timeout)
    if envelope is None:
        return kind
    return f"{'refused' if kind == 'refused' else 'code'} {envelope['ErrorCode']}"


def watch_bursts(port: int, stop: threading.Event, ends: list[str], size: int = 1500) -> None:
    """Bursts of `size` watches, each of a group of its own, sent at once on connections
    opened beforehand and each closed once sent (issue 25: channels 1 -> 903 with no
    watcher left)."""
    burst = 0
    while not stop.is_set():
        socks = []
        for _ in range(size):
            try:
                socks.append(_connect(port))
            except OSError as exc:
                ends.append(f"connect failed ({exc.__class__.__name__})")
        sent = 0
        for n, sock in enumerate(socks):
            with contextlib.suppress(OSError):
                sock.sendall(watch_request(f"burst-{burst}-{n}"))
                sent += 1
        for sock in socks:
            sock.close()
        ends.append(f"burst of {sent}")
        burst += 1
        stop.wait(0.5)


def watch_churn(
    port: int, stop: threading.Event, ends: list[str], threads: int = 4, group: str = "churn"
) -> None:
    """Connect, watch one group until its snapshot, disconnect, again and again (issue 25:
    RSS 75 -> 229 MB; a loop on an unwatched group: a Redis connection per watch)."""

    def one() -> None:
        answers: dict[str, int] = {}
        while not stop.is_set():
            try:
                with _connect(port) as sock:
                    sock.sendall(watch_request(group))
                    answer = watch_answer(sock)
            except OSError as exc:
                answer = f"failed ({exc.__class__.__name__})"
            answers[answer] = answers.get(answer, 0) + 1
        ends.extend(f"{count} x {answer}" for answer, count in answers.items())

    _fan_out(one, threads)


def never_reading_watchers(
    port: int, stop: threading.Event, ends: list[str], watchers: int = 20, group: str = "firehose"
) -> None:
    """Watchers that never read, with a small receive buffer, while one writer changes
    their group with frames of about 3 KB as fast as it can (issue 25: 3.8 MiB of kernel
    buffer each)."""
    socks = []
    for _ in range(watchers):
        sock = _connect(port, rcvbuf=4096)
        sock.sendall(watch_request(group))
        socks.append(sock)
    keys = [f"{n:02d}" + "k" * 120 for n in range(20)]
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    path = "/v4/group_open_http_svc/update_group_counter?" + query(IMPLICIT_APP)
    updates = 0
    try:
        while not stop.is_set():
            items = [{"Key": key, "Value": 2**62 + updates} for key in keys]
            body = json.dumps({"GroupId": group, "Mode": "Set", "GroupCounter": items})
            connection.request("POST", path, body=body)
            connection.getresponse().read()
            updates += 1
    finally:
        connection.close()
        ends.append(f"{updates} updates")
        ends.extend(_closed_by_server(sock) for sock in socks)
        for sock in socks:
            sock.close()


def one_end_user_many_watchers(
    port: int, stop: threading.Event, ends: list[str], watchers: int = 60, group: str = "fan-club"
) -> None:
    """One end user opens watch after watch of one group and holds them (issue 25: 139)."""
    post_command(port, "create_group", {"Type": "Public", "Name": "g", "GroupId": group}, END_USER_APP)
    socks = []
    try:
        for _ in range(watchers):
            if stop.is_set():
                break
            sock = _connect(port)
            socks.append(sock)
            sock.sendall(watch_request(group, END_USER_APP, "fan"))
            ends.append(watch_answer(sock))
            time.sleep(0.05)  # under the end user's 20 reads per 5 s for the first few
        stop.wait()
    finally:
        for sock in socks:
            sock.close()


def _closed_by_server(sock: socket.socket) -> str:
    sock.settimeout(0.01)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return "still open"
    except OSError as exc:
        return f"closed by the server ({exc.__class__.__name__})"
    return "closed by the server" if not data else f"answered {data[:12]!r}"


def _fan_out(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def listing_walks(port: int, stop: threading.Event, ends: list[str]) -> None:
    """get_appid_group_list with Limit 1 for an app with no group, as fast as answered,
    in a Redis crowded with other keys (issue 25: one such call walked 26 s and 234k
    SCANs; every call is now bounded by the walk's budget, and one walk runs at a time)."""
    while not stop.is_set():
        try:
            reply = post_command(port, "get_appid_group_list", {"Limit": 1}, sdkappid=IMPLICIT_APP)
        except OSError as exc:
            ends.append(type(exc).__name__)
            continue
        ends.append(f"code {reply['ErrorCode']}")


def crowd(inspector: redis.Redis) -> None:
    """300,000 keys of nobody's, for the listing to walk past."""
    inspector.execute_command("DEBUG", "POPULATE", 300_000, "other")  # type: ignore[no-untyped-call]


def demo_anonymous(port: int, stop: threading.Event, ends: list[str]) -> None:
    """Anonymous page loads of /demo, each of another group and without the page's cookie
    (issue 25: 2,000 groups created at 617/s, a fresh identity a load, the app's rate
    limit used up; a load now creates nothing and counts in /demo's own limit)."""
    n = 0
    while not stop.is_set():
        connection = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            connection.request("GET", f"/demo?GroupId=anonymous-{n}")
            ends.append(f"HTTP {connection.getresponse().status}")
        except OSError as exc:
            ends.append(type(exc).__name__)
        finally:
            connection.close()
        n += 1


ATTACKS: Final[dict[str, Callable[[int, threading.Event, list[str]], None]]] = {
    "listing-walks": listing_walks,
    "demo-anonymous": demo_anonymous,
    "huge-header-value": huge_header_value,
    "many-header-lines": many_header_lines,
    "pipeline-never-read": pipeline_never_read,
    "idle-connections": idle_connections,
    "slowloris": slowloris,
    "distinct-long-queries": distinct_long_queries,
    "varying-random": varying_random,
    "watch-bursts": watch_bursts,
    "watch-churn": watch_churn,
    "watch-loop-unwatched": lambda port, stop, ends: watch_churn(port, stop, ends, 1, "lonely"),
    "never-reading-watchers": never_reading_watchers,
    "one-end-user-many-watchers": one_end_user_many_watchers,
}


@contextlib.contextmanager
def service_on_redis(
    workdir: Path, extra_config: str = "", extra_args: tuple[str, ...] = ()
) -> Iterator[ServiceProcess]:
    """A redis-server and one service process (one worker) on it."""
    server = RedisServer().start()
    service: ServiceProcess | None = None
    try:
        config = workdir / "config.toml"
        settings = f'redis_url = "{server.url}"\nlog_level = "warning"\n{extra_config}'
        config.write_text(CONFIG.replace('redis_url = "memory://"', settings), encoding="utf-8")
        service = ServiceProcess.start(config, *extra_args, log=workdir / "service.log")

        def ready() -> bool:
            connection = http.client.HTTPConnection(HOST, service.port, timeout=1)
            try:
                connection.request("GET", "/readyz")
                return connection.getresponse().status == 200
            finally:
                connection.close()

        service.wait_until(ready)
        yield service
    finally:
        if service is not None:
            service.stop(15)
        server.stop()


@dataclass
class Outcome:
    watch: Watch
    ends: list[str]
    rss_before: int
    rss_after: int


def under_attack(
    service: ServiceProcess,
    attack: Callable[[int, threading.Event, list[str]], None],
    seconds: float,
    settle: float = 0.0,
) -> Outcome:
    """Run `attack` for `seconds` while the good client and the RSS sampler watch."""
    rss_before = rss_bytes(service.pid)
    watch = Watch()
    ends: list[str] = []
    stop_attack, stop_watch = threading.Event(), threading.Event()
    attacker = threading.Thread(target=attack, args=(service.port, stop_attack, ends), daemon=True)
    watchers = [
        threading.Thread(target=good_client, args=(service.port, stop_watch, watch), daemon=True),
        threading.Thread(target=rss_sampler, args=(service.pid, stop_watch, watch), daemon=True),
    ]
    for thread in (attacker, *watchers):
        thread.start()
    time.sleep(seconds)
    stop_watch.set()
    for thread in watchers:
        thread.join(10)
    stop_attack.set()
    attacker.join(30)
    time.sleep(settle)
    return Outcome(watch, ends, rss_before, rss_bytes(service.pid))


# What an attack needs of the service's config, and of its Redis before it starts.
ATTACK_CONFIG: Final = {"demo-anonymous": "demo = true\n"}
ATTACK_SETUP: Final[dict[str, Callable[[redis.Redis], None]]] = {"listing-walks": crowd}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m tests.hostile")
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--config", default="", help="extra TOML lines for the service")
    args = parser.parse_args()
    extra = ATTACK_CONFIG.get(args.attack, "") + args.config
    with tempfile.TemporaryDirectory() as tmp, service_on_redis(Path(tmp), extra) as service:
        inspector = redis.Redis.from_url(redis_url_of(service))
        if args.attack in ATTACK_SETUP:
            ATTACK_SETUP[args.attack](inspector)
        connections_before = int(inspector.info("stats")["total_connections_received"])
        largest_queue = 0
        sampled = threading.Event()

        def sample_queues() -> None:
            nonlocal largest_queue
            while not sampled.wait(0.01):
                largest_queue = max([largest_queue, *kernel_send_queues(service.port)])

        sampler = threading.Thread(target=sample_queues, daemon=True)
        sampler.start()
        outcome = under_attack(service, ATTACKS[args.attack], args.seconds, settle=2.0)
        sampled.set()
        sampler.join()
        ended: dict[str, int] = {}
        for end in outcome.ends:
            ended[end] = ended.get(end, 0) + 1
        print(f"{args.attack} for {args.seconds:g} s:")
        print(f"  {outcome.watch.summary()}")
        print(
            f"  RSS before {outcome.rss_before / 2**20:.0f} MiB, "
            f"after (+2 s) {outcome.rss_after / 2**20:.0f} MiB; open fds now {open_fds(service.pid)}"
        )
        print(f"  attack connections ended: {ended}")
        print(
            f"  largest kernel send queue of one connection {largest_queue} bytes; "
            f"Redis: {len(inspector.pubsub_channels())} channels subscribed now, "
            f"{int(inspector.info('stats')['total_connections_received']) - connections_before} "
            "connections opened meanwhile (the subscriber's first one included)"
        )
        inspector.close()
        for failure in outcome.watch.failures[:5]:
            print(f"  failure: {failure}")


if __name__ == "__main__":
    main()
