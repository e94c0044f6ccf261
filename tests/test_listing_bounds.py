"""Issue 25: what one get_appid_group_list call may cost, on a real redis-server holding
200,000 keys of no app beside the app's groups: a minimum SCAN COUNT whatever `Limit`
says, a budget (SCANs and seconds) that ends a call with a partial page whose `Next`
resumes, a cap on walks of an app in flight, and no walking once the client has left."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import msgspec
import pytest
from starlette.testclient import TestClient
from starlette.types import Message

from service.api.endpoint import CommandEndpoint
from service.api.listing import MIN_SCAN_COUNT, Budget, ListingBounds, list_page
from service.app import COMMAND_PREFIX, create_app
from service.config import Settings, parse_config
from service.storage.format import CURRENT_FORMAT
from service.storage.keys import FORMAT_KEY
from service.storage.store import Store, open_store
from tests.edge import served
from tests.support import (
    CONFIG,
    OTHER_APP,
    REGISTERED_APP,
    Api,
    RedisServer,
    ServiceProcess,
    assert_ok,
    group_key,
    query,
)

LIST: Final = "get_appid_group_list"
FOREIGN_KEYS: Final = 200_000
COMMUNITY: Final = [f"@TGS#_c{i:02d}" for i in range(10)]
OTHER_GROUPS: Final = 20_000
GROUPS: Final = sorted([f"g{i:03d}" for i in range(140)] + COMMUNITY)


@pytest.fixture(scope="module")
def crowded() -> Iterator[RedisServer]:
    """A redis-server with the registered app's GROUPS among FOREIGN_KEYS other keys."""
    server = RedisServer().start()
    client = server.client()
    # Marked as a served Redis is (`python -m service` marks a new store at its first start):
    # the groups below are written in this release's format, and a service started on it serves.
    client.set(FORMAT_KEY, CURRENT_FORMAT)
    client.execute_command("DEBUG", "POPULATE", FOREIGN_KEYS, "other")  # type: ignore[no-untyped-call]
    # Another app's many Public groups: listing its Work groups reads every one's type.
    filler = client.pipeline(transaction=False)
    for i in range(OTHER_GROUPS):
        filler.hset(group_key(OTHER_APP, f"p{i}"), b"\xff", "Public")
    filler.execute()
    settings = _settings()
    store = open_store(server.url, timeout=5.0)
    with TestClient(create_app(settings, store)) as http:
        api = Api(client=http, inspector=client)
        for group_id in GROUPS:
            api.create(group_id, "Community" if group_id in COMMUNITY else "Public")
    client.close()
    yield server
    server.stop()


def _settings(**top: Any) -> Settings:
    """CONFIG without the once-a-second limit on the registered app (these tests page
    quickly), and with the given top-level keys."""
    text = CONFIG.replace('groups = "registered"', 'groups = "registered"\nlist_rate_limit = 0', 1)
    lines = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in top.items())
    return parse_config(lines + text, environ={})


class CountingStore(Store):
    """The store, with every SCAN's COUNT recorded (and each made `delay` slower)."""

    def __init__(self, url: str, delay: float = 0.0) -> None:
        super().__init__(open_store(url, timeout=5.0).transport)
        self.counts: list[int] = []
        self.delay = delay
        self.scanned = asyncio.Event()

    async def scans(self, at_least: int) -> None:
        """Returns once at least this many SCANs have started."""
        while len(self.counts) < at_least:
            self.scanned.clear()
            await self.scanned.wait()

    async def scan(self, master: int, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
        self.counts.append(count)
        self.scanned.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().scan(master, cursor, match, count)


def _page(store: Store, budget: Budget, *, limit: int, next_value: int, wanted: str | None = None) -> Any:
    async def page() -> Any:
        try:
            return await list_page(
                store,
                REGISTERED_APP,
                limit=limit,
                next_value=next_value,
                wanted_type=wanted,
                implicit=False,
                budget=budget,
            )
        finally:
            await store.close()

    return asyncio.run(page())


def _walk(api: Api, body: dict[str, Any]) -> tuple[list[str], int]:
    """Every page from Next 0 to a Next of 0: the GroupIds in order and the calls it took."""
    ids: list[str] = []
    next_value = 0
    for calls in range(1, 10_000):
        reply = assert_ok(api.call(LIST, {**body, "Next": next_value}))
        ids += [item["GroupId"] for item in reply["GroupIdList"]]
        next_value = reply["Next"]
        if next_value == 0:
            return ids, calls
    raise AssertionError("the listing never ended")


def test_a_small_limit_does_not_make_a_small_scan_count(crowded: RedisServer) -> None:
    store = CountingStore(crowded.url)
    found, _ = _page(store, Budget(ListingBounds(scans=50)), limit=1, next_value=0, wanted="Work")
    assert found == []  # no Work group: every SCAN found nothing it could keep
    assert store.counts
    assert min(store.counts) >= MIN_SCAN_COUNT


def test_a_page_stops_at_its_scan_budget_with_a_next_that_resumes(crowded: RedisServer) -> None:
    store = CountingStore(crowded.url)
    found, next_value = _page(store, Budget(ListingBounds(scans=5)), limit=10_000, next_value=0)
    assert len(store.counts) == 5
    assert next_value != 0
    assert len(found) < len(GROUPS)  # partial: 5 SCANs of ~1000 keys cannot see 200,150


def test_a_page_stops_at_its_deadline_after_one_scan_that_moved(crowded: RedisServer) -> None:
    store = CountingStore(crowded.url)
    # A Limit no batch can overfill: every SCAN moves the walk on.
    budget = Budget(ListingBounds(seconds=1e-9, scans=10**9))
    _, next_value = _page(store, budget, limit=10_000, next_value=0)
    assert len(store.counts) == 1
    assert next_value != 0


BUDGET_SCANS: Final = 20


def test_resuming_budgeted_pages_lists_every_group_exactly_once(crowded: RedisServer) -> None:
    store = open_store(crowded.url, timeout=5.0)
    with TestClient(create_app(_settings(list_walk_scans=BUDGET_SCANS), store)) as http:
        api = Api(client=http, inspector=crowded.client())
        ids, calls = _walk(api, {"Limit": 7})
        community, _ = _walk(api, {"Limit": 1, "GroupType": "Community"})
    assert sorted(ids) == GROUPS
    # The budget ended pages early: a page of 7 fills in far fewer calls without it.
    assert calls >= FOREIGN_KEYS // (BUDGET_SCANS * MIN_SCAN_COUNT)
    assert sorted(community) == COMMUNITY


def test_a_limit_of_1_on_an_app_without_groups_walks_at_the_minimum_count(crowded: RedisServer) -> None:
    """The finding: Limit=1 on an app with no groups took a SCAN per key. Every SCAN of
    the call (the page's and TotalCount's) now visits at least MIN_SCAN_COUNT keys."""
    store = CountingStore(crowded.url)
    with TestClient(create_app(_settings(list_walk_scans=10**6), store)) as http:
        api = Api(client=http, inspector=crowded.client())
        reply = assert_ok(api.call(LIST, {"Limit": 1, "GroupType": "Work"}))
    assert (reply["GroupIdList"], reply["Next"], reply["TotalCount"]) == ([], 0, len(GROUPS))
    assert min(store.counts) >= MIN_SCAN_COUNT
    assert len(store.counts) <= 2 * 2 * (FOREIGN_KEYS // MIN_SCAN_COUNT + 1)  # two walks, with margin


async def _asgi_call(
    endpoint: CommandEndpoint, leave_after: asyncio.Event | None = None
) -> tuple[list[Message], bool]:
    """One call of the listing straight into the endpoint: the messages it sent, and
    whether the client left (after `leave_after` is set) before the answer."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": COMMAND_PREFIX + LIST,
        "query_string": query(REGISTERED_APP).encode(),
        "headers": [],
    }
    body_sent = False
    sent: list[Message] = []
    left = False

    async def receive() -> Message:
        nonlocal body_sent, left
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b'{"Limit": 1}', "more_body": False}
        if leave_after is None:
            await asyncio.Event().wait()  # a client that stays until cancelled
        else:
            await leave_after.wait()
        left = True
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await endpoint(scope, receive, send)
    return sent, left


def test_a_walk_stops_when_its_client_leaves(crowded: RedisServer) -> None:
    store = CountingStore(crowded.url, delay=0.002)
    # A budget the walk cannot reach: only the client's leaving can stop it early.
    endpoint = CommandEndpoint(_settings(list_walk_scans=10**6, list_walk_seconds=60), store, COMMAND_PREFIX)

    async def scenario() -> tuple[list[Message], bool, int]:
        leave = asyncio.Event()
        call = asyncio.ensure_future(_asgi_call(endpoint, leave))
        await store.scans(5)
        scans_when_left = len(store.counts)
        leave.set()
        sent, left = await call
        await store.close()
        return sent, left, scans_when_left

    sent, left, scans_when_left = asyncio.run(scenario())
    assert left
    assert sent == []  # no one to answer
    # At most the SCAN already under way when the client left, and the one it had started.
    assert len(store.counts) <= scans_when_left + 2
    assert len(store.counts) < FOREIGN_KEYS // MIN_SCAN_COUNT  # far from a whole walk


def test_a_walk_over_a_real_connection_stops_when_its_client_leaves(crowded: RedisServer) -> None:
    """The same through the HTTP edge, where a command is answered on its request cycle
    (service/http/direct.py): the client closes its socket mid-walk."""
    store = CountingStore(crowded.url, delay=0.002)
    app = create_app(_settings(list_walk_scans=10**6, list_walk_seconds=60), store)
    with served(app) as client:
        body = b'{"Limit": 1}'
        request = (
            f"POST {COMMAND_PREFIX}{LIST}?{query(REGISTERED_APP)} HTTP/1.1\r\nhost: t\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", client.base_url.port or 0), timeout=10) as sock:
            sock.sendall(request)
            deadline = time.monotonic() + 10
            while len(store.counts) < 5 and time.monotonic() < deadline:
                time.sleep(0.002)
        scans_when_left = len(store.counts)
        time.sleep(0.5)  # at 2 ms a SCAN, a walk that went on would make ~250 more
        assert scans_when_left >= 5
        assert len(store.counts) <= scans_when_left + 3


def test_walks_of_an_app_in_flight_are_capped_and_the_one_over_answers_60007(
    crowded: RedisServer,
) -> None:
    store = CountingStore(crowded.url, delay=0.002)
    endpoint = CommandEndpoint(
        _settings(list_walks_in_flight=1, list_walk_scans=10**6, list_walk_seconds=60), store, COMMAND_PREFIX
    )

    async def scenario() -> list[list[Message]]:
        first = asyncio.ensure_future(_asgi_call(endpoint))
        await store.scans(1)
        refused, _ = await _asgi_call(endpoint)
        answered, _ = await first
        # The cap is of walks in flight: once the first ended, a walk is admitted again.
        again, _ = await _asgi_call(endpoint)
        await store.close()
        return [refused, answered, again]

    replies = [msgspec.json.decode(sent[1]["body"]) for sent in asyncio.run(scenario())]
    assert [reply["ErrorCode"] for reply in replies] == [60007, 0, 0]
    assert "in progress" in replies[0]["ErrorInfo"]


def _scans(client: Any) -> int:
    calls: int = client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)
    return calls


def _ready(service: ServiceProcess) -> bool:
    try:
        return httpx2.get(f"{service.base_url}/readyz", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


def test_a_served_walk_stops_when_its_client_closes_the_connection(
    crowded: RedisServer, tmp_path: Path
) -> None:
    """Through uvicorn and the HTTP edge: a closed connection reaches the walk."""
    config = tmp_path / "config.toml"
    top = "list_walk_seconds = 60\nlist_walk_scans = 1000000000\n"
    config.write_text(top + CONFIG.replace('"memory://"', f'"{crowded.url}"'), encoding="utf-8")
    service = ServiceProcess.start(config, log=tmp_path / "service.log")
    client = crowded.client()
    try:
        service.wait_until(lambda: _ready(service))
        body = json.dumps({"Limit": 1, "GroupType": "Work"}).encode()
        head = f"POST {COMMAND_PREFIX}{LIST}?{query(OTHER_APP)} HTTP/1.1\r\nHost: t\r\n"
        before = _scans(client)
        with socket.create_connection(("127.0.0.1", service.port)) as connection:
            connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            service.wait_until(lambda: _scans(client) > before)  # the walk has begun
        left = _scans(client)
        time.sleep(1.0)  # the walk notices before its next SCAN
        stopped = _scans(client)
        time.sleep(2.0)
        assert _scans(client) == stopped  # nothing walks any more
        # It had far to go: a whole walk is a SCAN per 1000 keys, reading 20,000 types.
        assert stopped - before < (FOREIGN_KEYS + OTHER_GROUPS) // MIN_SCAN_COUNT
        assert stopped - left <= 2
    finally:
        client.close()
        service.stop()
