"""Live counters (docs/API.md §8, watch_group_counter): each rule of the change stream.

The streams run on a real uvicorn (tests/live_support.py) against a real redis-server,
the embedded store and a real three-master Cluster, like the contract tests.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, cast

import fakeredis
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from service.app import CommandFirst, create_app
from service.config import Settings, parse_config
from service.live import feeds as feeds_module
from service.live import watch as watch_module
from service.live.feeds import Feeds
from service.ops import metrics as metrics_module
from service.ops.metrics import Tally, render
from service.storage.keys import changes_channel
from service.storage.keys import group_key as group_key_text
from service.storage.scripts import UPDATE_COUNTERS
from service.storage.store import Store, open_store
from service.storage.transports.embedded import RedisPyTransport
from tests.backends import empty_store, memory_store
from tests.hostile import service_on_redis
from tests.live_support import Event, Served, Tape, Watch, serving
from tests.support import CONFIG, IMPLICIT_APP, REGISTERED_APP, RedisServer, free_port, query, usersig_for
from tests.topologies import Cluster, wait_for


@pytest.fixture(params=["redis", "memory", "cluster"])
def live(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[Served, redis.Redis]]:
    """The service streaming on each backend, with a client that reads the store directly."""
    store, inspector = empty_store(request.param, request)
    with serving(settings, store) as served:
        yield served, inspector
    inspector.close()


def feeds_of(served: Served) -> Feeds:
    app = served.server.config.app
    assert isinstance(app, CommandFirst)
    return app.watch.feeds


# A frame of about 3 KB: 20 long keys with 19-digit values.
BIG: Final = {f"{n:02d}" + "k" * 120: 2**62 + n for n in range(20)}


def watched(
    served: Served, group_id: str, counters: dict[str, int] | None = None, watchers: int = 3
) -> tuple[list[Watch], list[Tape]]:
    """Creates the group (Set `counters` in it, if any), then `watchers` watchers of it,
    each past its snapshot, with the tape that played it."""
    served.create(group_id)
    if counters:
        served.update(group_id, counters)
    watches = [served.watch(group_id) for _ in range(watchers)]
    tapes = [Tape() for _ in watches]
    for watch, tape in zip(watches, tapes, strict=True):
        tape.play(watch.events(1)[0])
    return watches, tapes


def seen_by_one_who_left(served: Served, group_id: str, counters: dict[str, int]) -> Event:
    """Creates the group with `counters`; a watcher sees its snapshot and leaves: the event."""
    served.create(group_id)
    served.update(group_id, counters)
    first = served.watch(group_id)
    seen = first.events(1)[0]
    first.close()
    return seen


def send_watch_request(sock: socket.socket, port: int, group_id: str) -> None:
    """A watch of `group_id` on a raw socket, which then reads only what the test reads."""
    sock.connect(("127.0.0.1", port))
    path = f"/v4/group_open_http_svc/watch_group_counter?{query()}&GroupId={group_id}"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_a_watcher_gets_a_snapshot_then_each_change_with_its_version(
    live: tuple[Served, redis.Redis],
) -> None:
    served, _ = live
    served.create("g")
    served.update("g", {"b": 2, "a": 1})
    watch = served.watch("g")
    assert watch.reply is None, watch.reply
    snapshot = watch.events(1)[0]
    assert snapshot.event == "snapshot"
    assert snapshot.data == {
        "GroupId": "g",
        "Version": 1,
        "Resync": False,
        "GroupCounter": [{"Key": "a", "Value": 1}, {"Key": "b", "Value": 2}],
    }
    incarnation = snapshot.id.rsplit("-", 1)[0]
    assert snapshot.id == f"{incarnation}-1"

    served.update("g", {"a": 2**63 - 2, "c": -(2**63)}, "Increase")
    served.post("delete_group_counter", {"GroupId": "g", "GroupCounterKeys": ["b", "absent"]})
    served.post("delete_group_counter", {"GroupId": "g", "GroupCounterKeys": ["absent"]})  # changes nothing
    served.update("g", {"d": 4})
    change, deletion, last = watch.events(3)
    assert (change.event, change.id) == ("change", f"{incarnation}-2")
    assert change.data == {
        "GroupId": "g",
        "Version": 2,
        "GroupCounter": [{"Key": "a", "Value": 2**63 - 1}, {"Key": "c", "Value": -(2**63)}],
        "DeletedKeys": [],
    }
    assert deletion.data == {"GroupId": "g", "Version": 3, "GroupCounter": [], "DeletedKeys": ["b"]}
    assert last.data["Version"] == 4
    watch.close()


def test_the_version_is_hidden_from_get_and_does_not_count_toward_20_keys(
    live: tuple[Served, redis.Redis],
) -> None:
    served, inspector = live
    served.create("g")
    served.update("g", {f"k{n:02d}": n for n in range(20)})
    assert served.update("g", {"k00": 1}, "Increase")["ErrorCode"] == 0
    assert served.update("g", {"one-too-many": 1})["ErrorCode"] == 10063
    assert len(served.counters("g")) == 20
    held: bytes | None = inspector.hget(group_key_text(REGISTERED_APP, "g"), b"\xfd")  # type: ignore[assignment]
    assert held is not None
    assert held.startswith(b"2 ")


def test_concurrent_writers_every_watcher_sees_every_version_once_in_order(
    live: tuple[Served, redis.Redis],
) -> None:
    served, _ = live
    watches, tapes = watched(served, "busy")

    def write(writer: int) -> int:
        applied = 0
        for n in range(25):
            reply = served.update("busy", {"a": 1, f"w{writer}": n}, "Increase")
            applied += reply["ErrorCode"] == 0
        return applied

    with ThreadPoolExecutor(max_workers=4) as pool:
        applied = sum(pool.map(write, range(4)))
    assert applied == 100
    final = served.counters("busy")
    for watch, tape in zip(watches, tapes, strict=True):
        while tape.version < 100:
            event = watch.next()
            assert event is not None
            tape.play(event)
        assert tape.versions == list(range(101)), "every version once, in order"
        assert tape.resyncs == 0
        assert tape.state == final
        watch.close()


def test_destroy_ends_the_stream_with_a_final_event(live: tuple[Served, redis.Redis]) -> None:
    served, _ = live
    served.create("doomed")
    served.update("doomed", {"a": 1})
    watch = served.watch("doomed")
    snapshot = watch.events(1)[0]
    assert served.post("destroy_group", {"GroupId": "doomed"})["ErrorCode"] == 0
    final = watch.next()
    assert final is not None
    assert final.event == "destroyed"
    assert final.data == {"GroupId": "doomed", "Version": 2}
    assert final.id == snapshot.id[:-1] + "2"
    assert watch.next() is None, "the stream ends after the destroy"
    # and a new watch of the destroyed group is refused as a read would be
    assert served.watch("doomed").reply == {
        "ActionStatus": "FAIL",
        "ErrorCode": 10010,
        "ErrorInfo": "group 'doomed' does not exist",
    }


def test_last_event_id_that_is_current_continues_without_a_snapshot(live: tuple[Served, redis.Redis]) -> None:
    served, _ = live
    seen = seen_by_one_who_left(served, "g", {"a": 1})
    again = served.watch("g", last_event_id=seen.id)
    served.update("g", {"a": 2})
    event = again.next()
    assert event is not None
    assert (event.event, event.data["Version"]) == ("change", 2), "no snapshot: nothing was missed"


def test_last_event_id_of_a_group_that_moved_on_gets_a_resync_snapshot(
    live: tuple[Served, redis.Redis],
) -> None:
    served, _ = live
    seen = seen_by_one_who_left(served, "g", {"a": 1})
    served.update("g", {"a": 5, "b": 6})
    again = served.watch("g", last_event_id=seen.id)
    event = again.events(1)[0]
    assert event.event == "snapshot"
    assert event.data["Resync"] is True
    assert event.data["Version"] == 2
    assert event.data["GroupCounter"] == [{"Key": "a", "Value": 5}, {"Key": "b", "Value": 6}]


def test_last_event_id_of_a_destroyed_and_recreated_group_never_continues(
    live: tuple[Served, redis.Redis],
) -> None:
    served, _ = live
    seen = seen_by_one_who_left(served, "reborn", {"a": 1})
    served.post("destroy_group", {"GroupId": "reborn"})
    served.create("reborn")
    served.update("reborn", {"b": 9})  # version 1 again, of another life
    again = served.watch("reborn", last_event_id=seen.id)
    event = again.events(1)[0]
    assert event.event == "snapshot"
    assert event.data["Resync"] is True
    assert event.data["GroupCounter"] == [{"Key": "b", "Value": 9}]
    assert event.id != seen.id


def _update_without_notice(inspector: redis.Redis, group_id: str, key: str, value: int) -> None:
    """A change the watchers never hear of: the script with live counters off."""
    group = group_key_text(REGISTERED_APP, group_id)
    args = ["1", "0", "", "token", "", "", "set", "86400", key, str(value)]
    inspector.eval(UPDATE_COUNTERS.source, 3, group, group, group, *args)


def test_a_gap_in_versions_is_healed_by_a_resync_snapshot(live: tuple[Served, redis.Redis]) -> None:
    served, inspector = live
    (watch,), (tape,) = watched(served, "gappy", {"a": 1}, watchers=1)
    _update_without_notice(inspector, "gappy", "b", 2)  # version 2, unannounced
    served.update("gappy", {"c": 3})  # version 3: the watcher notices 2 is missing
    event = watch.events(1)[0]
    assert event.event == "snapshot"
    assert event.data["Resync"] is True
    tape.play(event)
    assert tape.version == 3
    assert tape.state == {"a": 1, "b": 2, "c": 3}
    served.update("gappy", {"a": 4})
    tape.play(watch.events(1)[0])
    assert tape.state == served.counters("gappy")


def test_the_groups_subscription_is_dropped_when_its_last_watcher_leaves(
    settings: Settings, redis_server: RedisServer
) -> None:
    inspector = redis.Redis.from_url(redis_server.url)
    inspector.flushall()
    channel = changes_channel(group_key_text(REGISTERED_APP, "g"), 0)
    with serving(settings, open_store(redis_server.url, timeout=2.0)) as served:
        served.create("g")
        watches = [served.watch("g") for _ in range(5)]
        for watch in watches:
            watch.events(1)
        feeds = feeds_of(served)

        def numsub() -> int:
            return int(inspector.pubsub_numsub(channel)[0][1])

        assert numsub() == 1, "five watchers, one subscription"
        assert len(feeds.feeds[channel].watchers) == 5
        for watch in watches[:4]:
            watch.close()
        wait_for(lambda: len(feeds.feeds[channel].watchers) == 1, 5, "four watchers to leave")
        assert numsub() == 1
        watches[4].close()
        wait_for(lambda: channel not in feeds.feeds and numsub() == 0, 5, "the subscription to go")
    inspector.close()


def test_a_slow_watcher_is_cut_off_with_its_buffer_bounded(
    settings: Settings, redis_server: RedisServer
) -> None:
    inspector = redis.Redis.from_url(redis_server.url)
    inspector.flushall()
    with serving(settings, open_store(redis_server.url, timeout=2.0)) as served:
        served.create("firehose")
        feeds = feeds_of(served)
        # A client that never reads, with small socket buffers: the service's queue fills.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        send_watch_request(sock, served.port, "firehose")
        reader = served.watch("firehose")  # a watcher that reads: it stays
        reader.events(1)
        channel = changes_channel(group_key_text(REGISTERED_APP, "firehose"), 0)
        wait_for(lambda: len(feeds.feeds[channel].watchers) == 2, 5, "both watchers")
        largest = 0
        done = threading.Event()

        def write(n: int) -> None:
            if not done.is_set():
                served.update("firehose", {key: value + n for key, value in BIG.items()})

        def watch_sizes() -> None:
            nonlocal largest
            while not done.is_set():
                watchers = list(feeds.feeds[channel].watchers)
                largest = max([largest, *(watcher.unsent() for watcher in watchers)])
                if len(watchers) == 1:
                    done.set()
                time.sleep(0.001)

        sizes = threading.Thread(target=watch_sizes)
        sizes.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(write, range(4000)))
        done.set()
        sizes.join()
        assert len(feeds.feeds[channel].watchers) == 1, "the slow watcher was cut off"
        # Bounded: what it held never passed the bound by more than the one chunk that crossed
        # it, and a chunk is the frames of one loop step: up to one frame (~3 KB) per writer.
        assert 0 < largest <= feeds.buffer_bytes + 8 * 4096, largest
        # The reader saw every change meanwhile, in order, without a resync.
        tape = Tape(version=0)
        tape.play_until(reader, served.counters("firehose"))
        assert tape.resyncs == 0
        # The cut-off client finds its stream ended once it reads what was sent.
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):  # dropped with what it held
            while sock.recv(65536):
                pass
        sock.close()
    inspector.close()


def test_a_comment_heartbeat_keeps_an_idle_stream(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feeds_module, "HEARTBEAT_SECONDS", 0.2)
    with serving(settings, memory_store()) as served:
        served.create("quiet")
        watch = served.watch("quiet")
        watch.events(1)
        lines = [watch.response.readline() for _ in range(2)]
        assert lines == [b": heartbeat\n", b"\n"]


# ---- refusals: the usual envelope, in the usual order, and nothing changes ----


def _watch_reply(
    client: TestClient, params: str, method: str = "GET", sdkappid: int = REGISTERED_APP, **over: Any
) -> dict[str, Any]:
    url = f"/v4/group_open_http_svc/watch_group_counter?{query(sdkappid, **over)}{params}"
    response = client.request(method, url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    reply: dict[str, Any] = response.json()
    return reply


@pytest.mark.parametrize(
    ("params", "over", "code"),
    [
        ("&GroupId=nope", {}, 10010),
        ("&GroupId=caf%C3%A9", {}, 10015),
        ("", {}, 10004),
        ("&GroupId=a&GroupId=b", {}, 60002),
        ("&GroupId=g", {"identifier": "stranger", "usersig": None}, 70002),
        ("&GroupId=g", {"random": "x"}, 60002),
    ],
    ids=["no-such-group", "malformed-group-id", "no-group-id", "group-id-twice", "no-usersig", "bad-random"],
)
def test_a_refused_watch_answers_its_documented_code(
    settings: Settings, params: str, over: dict[str, Any], code: int
) -> None:
    with TestClient(create_app(settings, memory_store())) as client:
        assert _watch_reply(client, params, **over)["ErrorCode"] == code


def test_a_watch_refused_for_a_fault_that_clears_tells_an_eventsource_to_come_back(
    settings: Settings,
) -> None:
    # No Redis on this port: the call's first Redis step fails, 10002, which clears by itself.
    store = open_store(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    with serving(settings, store) as served:
        watch = served.watch("g")
        assert watch.response.status == 200
        assert watch.response.getheader("content-type", "").startswith("text/event-stream")
        assert watch.reply is not None
        assert watch.reply["ErrorCode"] == 10002
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        connection.request("GET", f"/v4/group_open_http_svc/watch_group_counter?{query()}&GroupId=g")
        body = connection.getresponse().read().decode()
        connection.close()
        retry, blank, event, data, end = body.split("\n", 4)
        assert 1000 <= int(retry.removeprefix("retry: ")) <= 3000, body
        assert (blank, event, end) == ("", "event: refused", "\n"), body
        assert '"ErrorCode":10002' in data, body


def test_a_watch_needs_an_admin_and_a_get(settings: Settings) -> None:
    with TestClient(create_app(settings, memory_store())) as client:
        usersig = usersig_for(REGISTERED_APP, "stranger")
        assert (
            _watch_reply(client, "&GroupId=g", identifier="stranger", usersig=usersig)["ErrorCode"] == 60010
        )
        assert _watch_reply(client, "&GroupId=g", method="POST")["ErrorCode"] == 60009


def test_a_community_group_has_nothing_to_watch(settings: Settings) -> None:
    with TestClient(create_app(settings, memory_store())) as client:
        reply = _watch_reply(client, "&GroupId=%40TGS%23_community", sdkappid=IMPLICIT_APP)
        assert reply["ErrorCode"] == 10007


def test_with_live_counters_off_nothing_is_published_and_watch_is_unknown(redis_server: RedisServer) -> None:
    settings = parse_config("live_counters = false\n" + CONFIG, environ={})
    inspector = redis.Redis.from_url(redis_server.url)
    inspector.flushall()
    listener = inspector.pubsub()
    listener.psubscribe("*")
    listener.get_message(timeout=1)
    with TestClient(create_app(settings, open_store(redis_server.url, timeout=2.0))) as client:
        assert _watch_reply(client, "&GroupId=g")["ErrorCode"] == 60009
        url = f"/v4/group_open_http_svc/update_group_counter?{query(IMPLICIT_APP)}"
        body = b'{"GroupId": "g", "GroupCounter": [{"Key": "a", "Value": 1}]}'
        assert client.post(url, content=body).json()["ErrorCode"] == 0
    assert listener.get_message(timeout=0.5) is None, "no notice published"
    listener.close()
    inspector.close()


# ---- faults: the service resubscribes by itself and every watcher resyncs ----


def _resynced_after(
    served: Served, watches: list[Any], tapes: list[Tape], group_id: str, seconds: float
) -> None:
    """Every watcher gets a resync snapshot, then the next change, and ends equal to the store."""
    for watch, tape in zip(watches, tapes, strict=True):
        deadline = time.monotonic() + seconds
        while tape.resyncs == 0:
            assert time.monotonic() < deadline, "no resync snapshot"
            event = watch.next()
            assert event is not None
            tape.play(event)
    deadline = time.monotonic() + seconds
    while True:
        reply = served.update(group_id, {"after": 1}, "Increase")
        if reply["ErrorCode"] == 0:
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)
    final = served.counters(group_id)
    for watch, tape in zip(watches, tapes, strict=True):
        tape.play_until(watch, final)
        watch.close()


def test_redis_killed_and_restarted_mid_stream_every_watcher_resyncs(settings: Settings) -> None:
    server = RedisServer().start()
    try:
        with serving(settings, open_store(server.url, timeout=1.0)) as served:
            watches, tapes = watched(served, "phoenix", {"a": 1})
            server.kill()
            server.start()  # same port, empty: nothing was kept on disk
            # The group is gone with the data: watchers of a registered group end.
            for watch in watches:
                event = watch.next()
                assert event is not None
                assert event.event == "destroyed"
            # A group that survives a restart (re-created here) resyncs instead.
            watches, tapes = watched(served, "phoenix", {"b": 2})
            with server.client() as client:
                client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            _resynced_after(served, watches, tapes, "phoenix", 10)
    finally:
        server.stop()


def test_a_persistent_redis_restarted_mid_stream_every_watcher_resyncs(settings: Settings) -> None:
    server = RedisServer(persistence=("--appendonly", "yes", "--appendfsync", "always", "--save", "")).start()
    try:
        with serving(settings, open_store(server.url, timeout=1.0)) as served:
            watches, tapes = watched(served, "phoenix", {"a": 1})
            server.kill()
            time.sleep(0.3)
            server.start()
            _resynced_after(served, watches, tapes, "phoenix", 15)
    finally:
        server.stop()


def test_a_sentinel_failover_mid_stream_every_watcher_resyncs(settings: Settings) -> None:
    from tests.topologies import MASTER_NAME, SentinelSetup

    setup = SentinelSetup().start()
    try:
        assert setup.sentinel is not None
        assert setup.replica is not None
        with serving(settings, open_store(setup.url, timeout=1.0)) as served:
            watches, tapes = watched(served, "g", {"a": 1})
            assert setup.master is not None
            with setup.master.client() as master:  # what was acknowledged is on the replica
                assert master.execute_command("WAIT", 1, 1000) == 1
            with setup.sentinel.client() as sentinel_client:
                sentinel_client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
            replica_port = setup.replica.port
            wait_for(lambda: setup.master_port() == replica_port, 20, "the failover")
            _resynced_after(served, watches, tapes, "g", 15)
    finally:
        setup.stop()


def test_a_cluster_slot_migration_mid_stream_every_watcher_resyncs(
    settings: Settings, redis_cluster: Cluster
) -> None:
    from tests.test_cluster import node_id, slot_of, slot_owners

    inspector = redis_cluster.inspector()
    inspector.flushall(target_nodes=inspector.PRIMARIES)
    inspector.close()
    with serving(settings, open_store(redis_cluster.url, timeout=2.0)) as served:
        watches, tapes = watched(served, "mover", {"a": 1})
        slot = slot_of("mover")
        source = redis_cluster.node(slot_owners(redis_cluster)[slot])
        target = next(node for node in redis_cluster.nodes if node is not source)
        key = group_key_text(REGISTERED_APP, "mover")
        stop = threading.Event()

        def keep_writing() -> None:
            while not stop.is_set():
                served.update("mover", {"a": 1}, "Increase")

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            with source.client() as src, target.client() as dst:
                dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
                src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
                time.sleep(0.3)
                for node in redis_cluster.nodes:
                    with node.client() as client:
                        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))
            redis_cluster.wait_ok()
            time.sleep(0.3)
        finally:
            stop.set()
            writer.join()
        _resynced_after(served, watches, tapes, "mover", 15)


# ---- deployments on two databases of one Redis: pub/sub is per server, not per db ----


@pytest.fixture(params=["redis", "memory", "sentinel"])
def two_databases(
    request: pytest.FixtureRequest, settings: Settings
) -> Iterator[tuple[Served, Served, redis.Redis]]:
    """Two services on db 0 and db 1 of the same server, and a client of that server."""
    setup = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        inspector = redis.Redis.from_url(server.url)
        inspector.flushall()
        url = server.url.rsplit("/", 1)[0]
        stores = [open_store(f"{url}/{db}", timeout=2.0) for db in (0, 1)]
    elif request.param == "sentinel":
        from tests.topologies import SentinelSetup

        setup = SentinelSetup().start()
        assert setup.master is not None
        inspector = setup.master.client()
        stores = [open_store(f"{setup.url}/{db}", timeout=2.0) for db in (0, 1)]
    else:
        fake_server = fakeredis.FakeServer()
        inspector = fakeredis.FakeRedis(server=fake_server)
        stores = [
            Store(RedisPyTransport(fakeredis.FakeAsyncRedis(server=fake_server, db=db))) for db in (0, 1)
        ]
    try:
        with serving(settings, stores[0]) as first, serving(settings, stores[1]) as second:
            yield first, second, inspector
    finally:
        inspector.close()
        if setup is not None:
            setup.stop()


def test_deployments_on_two_databases_of_one_redis_never_see_each_others_changes(
    two_databases: tuple[Served, Served, redis.Redis],
) -> None:
    on_db0, on_db1, inspector = two_databases
    for served in (on_db0, on_db1):  # the same app and GroupId in both
        served.create("shared")
    watch0, watch1 = on_db0.watch("shared"), on_db1.watch("shared")
    assert [watch0.events(1)[0].data["Version"], watch1.events(1)[0].data["Version"]] == [0, 0]
    channels = {channel.decode() for channel in cast(list[bytes], inspector.pubsub_channels())}
    group = group_key_text(REGISTERED_APP, "shared")
    assert {f"{group}:changes", f"{group}:changes:1"} <= channels, channels

    # A change on db 1 first: were it heard on db 0, it would pass there for version 1.
    for n in (1, 2):
        assert on_db1.update("shared", {"db1": n})["ErrorCode"] == 0
        assert on_db0.update("shared", {"db0": n})["ErrorCode"] == 0
    seen0, seen1 = watch0.events(2), watch1.events(2)
    assert [(e.event, e.data["Version"], e.data["GroupCounter"]) for e in seen0] == [
        ("change", 1, [{"Key": "db0", "Value": 1}]),
        ("change", 2, [{"Key": "db0", "Value": 2}]),
    ]
    assert [(e.event, e.data["Version"], e.data["GroupCounter"]) for e in seen1] == [
        ("change", 1, [{"Key": "db1", "Value": 1}]),
        ("change", 2, [{"Key": "db1", "Value": 2}]),
    ]
    # Nor a destroy: the watcher on db 0 goes on with its own group.
    assert on_db1.post("destroy_group", {"GroupId": "shared"})["ErrorCode"] == 0
    assert watch1.events(1)[0].event == "destroyed"
    assert on_db0.update("shared", {"db0": 3})["ErrorCode"] == 0
    (event,) = watch0.events(1)
    assert (event.event, event.data["Version"]) == ("change", 3)


# ---- metrics (README, "Operations"): each moves with what it counts ----


@pytest.fixture
def tally(monkeypatch: pytest.MonkeyPatch) -> Tally:
    """A fresh tally for the watch path and /metrics: the process's own one carries the
    gauges of every earlier test's servers, so only a fresh one can show 1 then 0."""
    fresh = Tally()
    for module in (metrics_module, feeds_module, watch_module):
        monkeypatch.setattr(module, "TALLY", fresh)
    return fresh


def exported(name: str, **labels: str) -> float:
    """A sample of /metrics as Prometheus parses it (0 when the series is not there)."""
    for family in text_string_to_metric_families(render()[0].decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_the_watcher_and_group_gauges_follow_streams_opening_and_closing(
    live: tuple[Served, redis.Redis], tally: Tally
) -> None:
    served, _ = live
    served.create("one")
    served.create("two")
    assert exported("group_counter_watchers") == 0
    first = served.watch("one")
    first.events(1)
    assert exported("group_counter_watchers") == 1
    assert exported("group_counter_watched_groups") == 1
    more = [served.watch("one"), served.watch("two")]
    for watch in more:
        watch.events(1)
    assert exported("group_counter_watchers") == 3
    assert exported("group_counter_watched_groups") == 2, "two groups, one subscription each"
    first.close()
    wait_for(lambda: exported("group_counter_watchers") == 2, 5, "the watcher to leave")
    assert exported("group_counter_watched_groups") == 2, "group one keeps a watcher"
    for watch in more:
        watch.close()
    wait_for(lambda: exported("group_counter_watchers") == 0, 5, "every watcher to leave")
    assert exported("group_counter_watched_groups") == 0
    # A refused watch is no watcher, and a destroyed group's watchers leave with it.
    assert served.watch("never-created").reply is not None
    last = served.watch("two")
    last.events(1)
    served.post("destroy_group", {"GroupId": "two"})
    assert [event.event for event in last.events(1)] == ["destroyed"]
    wait_for(lambda: exported("group_counter_watchers") == 0, 5, "the destroyed group's watcher to leave")
    assert exported("group_counter_watched_groups") == 0


def test_sigterm_ends_every_stream_at_once_and_the_service_exits_zero(tmp_path: Path) -> None:
    # A graceful timeout far longer than the test: the streams must end at the signal,
    # not when uvicorn's patience runs out.
    with service_on_redis(tmp_path, "live_counters = true\n", ("--graceful-timeout", "60")) as one:
        created = one.post("create_group", {"Type": "Public", "Name": "g", "GroupId": "g1"})
        assert created["ErrorCode"] == 0, created
        path = f"/v4/group_open_http_svc/watch_group_counter?{query()}&GroupId=g1"
        streams = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", one.port), timeout=10)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = b""
            while b"event: snapshot" not in received:
                received += sock.recv(65536)
            streams.append(sock)
        one.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for sock in streams:
            with sock:
                while sock.recv(65536):  # to the end of the stream
                    pass
        assert one.process.wait(10) == 0
        assert time.monotonic() - signalled < 5
        log_text = one.log.read_text(errors="replace")
        assert "Traceback" not in log_text, log_text[-3000:]
        assert "ERROR" not in log_text, log_text[-3000:]


def _cut_off_a_watcher_that_never_reads(served: Served, group_id: str) -> Watch:
    """Streams `group_id` to a client that never reads until the service cuts it off;
    returns a watcher of the group that reads, which must stay."""
    feeds = feeds_of(served)
    channel = changes_channel(group_key_text(REGISTERED_APP, group_id), 0)
    before = exported("group_counter_watchers_cut_off_total")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        send_watch_request(sock, served.port, group_id)

        def attached() -> bool:
            feed = feeds.feeds.get(channel)
            return feed is not None and any(watcher.transport is not None for watcher in feed.watchers)

        wait_for(attached, 5, "the watcher's stream")
        # Loopback send buffers grow to megabytes on their own; the not-reading client's is
        # pinned small so that the service's own bound, not the kernel's, is what fills.
        (slow,) = feeds.feeds[channel].watchers
        slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        reader = served.watch(group_id)  # reads, if only after the writes: never cut off
        reader.events(1)
        deadline = time.monotonic() + 30
        step = 0
        while exported("group_counter_watchers_cut_off_total") == before:
            assert time.monotonic() < deadline, "the slow watcher was never cut off"
            served.update(group_id, {key: value + step for key, value in BIG.items()})
            step += 1
        wait_for(lambda: len(feeds.feeds[channel].watchers) == 1, 5, "the slow watcher's stream to end")
    return reader


def test_a_watcher_cut_off_for_not_reading_is_counted_once(
    live: tuple[Served, redis.Redis], tally: Tally
) -> None:
    served, _ = live
    served.create("firehose")
    before = exported("group_counter_watchers_cut_off_total")
    reader = _cut_off_a_watcher_that_never_reads(served, "firehose")
    assert exported("group_counter_watchers_cut_off_total") == before + 1
    assert exported("group_counter_watchers") == 1, "the reader stays"
    Tape(version=0).play_until(reader, served.counters("firehose"))
    assert exported("group_counter_watchers_cut_off_total") == before + 1


def test_a_watcher_cut_off_ends_its_response_without_a_server_error(
    live: tuple[Served, redis.Redis], tally: Tally, caplog: pytest.LogCaptureFixture
) -> None:
    served, _ = live
    served.create("firehose")
    _cut_off_a_watcher_that_never_reads(served, "firehose")
    time.sleep(0.2)  # the server's complaint, if any, comes once the endpoint has returned
    # uvicorn's own loggers: what the server says of an app that left a response unfinished.
    assert [record.getMessage() for record in caplog.records if record.name.startswith("uvicorn")] == []


def test_each_resync_snapshot_sent_is_counted_with_its_reason(
    live: tuple[Served, redis.Redis], tally: Tally
) -> None:
    served, inspector = live
    gaps = exported("group_counter_resync_snapshots_total", reason="gap")
    reconnects = exported("group_counter_resync_snapshots_total", reason="reconnect")
    served.create("gappy")
    served.update("gappy", {"a": 1})
    watch = served.watch("gappy")
    first = watch.events(1)[0]
    _update_without_notice(inspector, "gappy", "b", 2)
    served.update("gappy", {"c": 3})
    assert watch.events(1)[0].data["Resync"] is True
    assert exported("group_counter_resync_snapshots_total", reason="gap") == gaps + 1
    # Back with an id the group has moved on from: one more, for that watcher alone.
    again = served.watch("gappy", last_event_id=first.id)
    current = again.events(1)[0]
    assert current.data["Resync"] is True
    assert exported("group_counter_resync_snapshots_total", reason="reconnect") == reconnects + 1
    # A current id, or none at all, is no resync.
    served.watch("gappy", last_event_id=current.id)
    served.watch("gappy").events(1)
    assert exported("group_counter_resync_snapshots_total", reason="reconnect") == reconnects + 1
    assert exported("group_counter_resync_snapshots_total", reason="gap") == gaps + 1
