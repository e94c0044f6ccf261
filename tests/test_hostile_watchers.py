"""Issue 25, point 1: hostile watchers against a real service process (one worker, real redis-server).

Each attack of tests/hostile.py runs for a few seconds against `python -m service`, and
the bound it must respect is read from outside, as an operator would: Redis's own
PUBSUB CHANNELS and connection count, the worker's /metrics, its RSS, and the kernel's
send queue of each of its sockets (/proc/net/tcp). Before the fixes these attacks left
903 channels subscribed with no watcher, 3.8 MiB queued in the kernel per watcher that
never reads, 95 MB of RSS after 5 s of churn, and a Redis connection per watch.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.hostile import (
    HOST,
    WATCH_PATH,
    kernel_send_queues,
    never_reading_watchers,
    redis_url_of,
    rss_bytes,
    service_on_redis,
    watch_answer,
    watch_bursts,
    watch_churn,
    watch_reply,
    watch_request,
)
from tests.support import ADMIN, END_USER_APP, ServiceProcess, post_command
from tests.test_openapi import document, validator
from tests.topologies import wait_for

SEND_BUFFER: Final = 65536  # watch_send_buffer_bytes, the default
WATCHERS_PER_END_USER: Final = 5
LIMITS: Final = f"""
max_connections = 8000
max_watchers_per_end_user = {WATCHERS_PER_END_USER}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with service_on_redis(tmp_path_factory.mktemp("hostile-watchers"), LIMITS) as started:
        yield started


@pytest.fixture
def inspector(service: ServiceProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url_of(service))
    yield client
    client.close()


Attack = Callable[[int, threading.Event, list[str]], None]


def attack_for(service: ServiceProcess, attack: Attack, seconds: float) -> list[str]:
    """Run `attack` for `seconds`; how its connections ended."""
    stop, ends = threading.Event(), list[str]()
    attacker = threading.Thread(target=attack, args=(service.port, stop, ends), daemon=True)
    attacker.start()
    time.sleep(seconds)
    stop.set()
    attacker.join(30)
    assert not attacker.is_alive(), "the attack did not stop"
    return ends


def metric(service: ServiceProcess, name: str) -> float:
    connection = http.client.HTTPConnection(HOST, service.port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def assert_nothing_watched(service: ServiceProcess, inspector: redis.Redis) -> None:
    wait_for(
        lambda: inspector.pubsub_channels() == [] and metric(service, "group_counter_watched_groups") == 0,
        15,
        "every subscription to go",
    )
    assert metric(service, "group_counter_watchers") == 0


def test_bursts_of_watches_closed_at_once_leave_no_subscription_behind(
    service: ServiceProcess, inspector: redis.Redis
) -> None:
    ends = attack_for(service, watch_bursts, 4.0)
    assert len([end for end in ends if end.startswith("burst of")]) >= 2, ends[:5]
    assert_nothing_watched(service, inspector)


def test_watch_churn_on_one_group_gives_its_memory_back(
    service: ServiceProcess, inspector: redis.Redis
) -> None:
    attack_for(service, watch_churn, 1.0)  # what the first watches allocate for good
    time.sleep(2.0)
    before = rss_bytes(service.pid)
    ends = attack_for(service, watch_churn, 5.0)
    watches = sum(int(end.split(" x ")[0]) for end in ends if end.endswith("x stream"))
    assert watches > 1000, ends
    time.sleep(2.0)  # the collection and malloc_trim that follow costly connections
    after = rss_bytes(service.pid)
    assert after <= before * 1.1, (before >> 20, after >> 20, watches)
    assert_nothing_watched(service, inspector)


def test_watching_and_leaving_an_unwatched_group_in_a_loop_opens_no_redis_connection(
    service: ServiceProcess, inspector: redis.Redis
) -> None:
    before = int(inspector.info("stats")["total_connections_received"])
    ends = attack_for(service, lambda port, stop, ends: watch_churn(port, stop, ends, 1, "lonely"), 2.0)
    watches = sum(int(end.split(" x ")[0]) for end in ends if end.endswith("x stream"))
    assert watches > 100, ends
    opened = int(inspector.info("stats")["total_connections_received"]) - before
    # At most the subscriber's own (when no test before opened it), and one to spare.
    assert opened <= 2, f"{opened} Redis connections for {watches} watches"
    assert_nothing_watched(service, inspector)


def test_a_watcher_that_never_reads_holds_at_most_its_send_buffer_in_the_kernel(
    service: ServiceProcess, inspector: redis.Redis
) -> None:
    stop, ends = threading.Event(), list[str]()
    attacker = threading.Thread(
        target=never_reading_watchers, args=(service.port, stop, ends, 20), daemon=True
    )
    attacker.start()
    largest = 0
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        largest = max([largest, *kernel_send_queues(service.port)])
        time.sleep(0.01)
    stop.set()
    attacker.join(30)
    updates = int(next(end for end in ends if end.endswith(" updates")).split()[0])
    assert updates > 100, ends  # 300 KB or more for each watcher: far beyond its bounds
    assert 0 < largest <= SEND_BUFFER, largest
    assert_nothing_watched(service, inspector)


def test_an_end_user_beyond_max_watchers_per_end_user_is_refused_61007_and_told_to_retry(
    service: ServiceProcess,
) -> None:
    group = "fan-club"
    post_command(
        service.port, "create_group", {"Type": "Public", "Name": "g", "GroupId": group}, END_USER_APP
    )
    held: list[socket.socket] = []
    try:
        answers = []
        for _ in range(WATCHERS_PER_END_USER + 2):
            sock = socket.create_connection((HOST, service.port), timeout=10)
            held.append(sock)
            sock.sendall(watch_request(group, END_USER_APP, "fan"))
            answers.append(watch_answer(sock))
        assert answers == ["stream"] * WATCHERS_PER_END_USER + ["refused 61007"] * 2
        # The refusal is an event stream that ends, with a `retry:`: an EventSource comes back.
        with socket.create_connection((HOST, service.port), timeout=10) as sock:
            sock.sendall(watch_request(group, END_USER_APP, "fan"))
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200
            assert response.getheader("content-type", "").startswith("text/event-stream")
            body = response.read().decode()
            assert body.startswith("retry: "), body
            assert "\nevent: refused\ndata: " in body, body
            assert '"ErrorCode":61007' in body, body
            data = body.split("data: ", 1)[1].split("\n", 1)[0]
            items = document()["paths"][WATCH_PATH]["get"]["responses"]["200"]["content"]["text/event-stream"]
            validator(items["x-itemSchema"]).validate({"event": "refused", "data": data})
            validator(document()["components"]["schemas"]["WatchRetryRefusal"]).validate(json.loads(data))
        # Others are not bounded by this end user's streams; their own streams come back.
        other = socket.create_connection((HOST, service.port), timeout=10)
        held.append(other)
        other.sendall(watch_request(group, END_USER_APP, "someone-else"))
        assert watch_answer(other) == "stream"
        admin = socket.create_connection((HOST, service.port), timeout=10)
        held.append(admin)
        admin.sendall(watch_request(group, END_USER_APP, ADMIN))
        assert watch_answer(admin) == "stream"
        held.pop(0).close()
        time.sleep(5.0)  # past the end user's window of 20 reads per 5 s
        again = socket.create_connection((HOST, service.port), timeout=10)
        held.append(again)
        again.sendall(watch_request(group, END_USER_APP, "fan"))
        assert watch_answer(again) == "stream", "one stream closed: room for one more"
    finally:
        for sock in held:
            sock.close()


def test_a_burst_beyond_max_watch_joins_is_refused_at_once_and_told_to_retry(tmp_path: Path) -> None:
    with service_on_redis(tmp_path, "max_watch_joins = 20\nmax_connections = 4000\n") as small:
        socks = []
        try:
            # Every connection first, then every request at once: a burst, whatever the
            # machine's speed (sent as each connects, a fast worker starts each feed
            # before the next watch arrives, and none ever waits).
            for _ in range(600):
                socks.append(socket.create_connection((HOST, small.port), timeout=15))
            requests = [watch_request(f"distinct-{n}") for n in range(len(socks))]
            for sock, request in zip(socks, requests, strict=True):
                sock.sendall(request)
            replies = [watch_reply(sock, 15) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        kinds = [kind for kind, _ in replies]
        refusals = [envelope for kind, envelope in replies if kind == "refused"]
        assert kinds.count("stream") + len(refusals) == len(kinds), sorted(set(kinds))
        assert refusals, "600 joins at once and not one beyond the 20 allowed to wait"
        # Each refused by the bound, at once: none waited for the join's deadline.
        for envelope in refusals:
            assert envelope is not None
            assert envelope["ErrorCode"] == 10002
            assert "watches are starting on this worker" in envelope["ErrorInfo"], envelope
        log = small.log.read_text()
        assert "Traceback" not in log, log[-3000:]
