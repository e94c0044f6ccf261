"""End users (docs/API.md, "End users"): where an app allows them, any identifier with a
valid usersig of the app may read counters and Increase or Decrease the app's
`client_keys`, at most 20 reads and 20 writes per 5 s each, exact across replicas."""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest
import redis

from tests.support import (
    ADMIN,
    CLIENT_KEYS,
    CONFIG,
    END_USER_APP,
    REGISTERED_APP,
    Api,
    RedisServer,
    ServiceProcess,
    query,
)

VIEWER: Final = "viewer-1"
UPDATE: Final = "update_group_counter"
LIMIT: Final = 20
WINDOW: Final = 5


def _as_viewer(api: Api, command: str, body: Any, identifier: str = VIEWER) -> dict[str, Any]:
    return api.call(command, body, sdkappid=END_USER_APP, identifier=identifier)


def _like(group: str, mode: str = "Increase", key: str = "like", value: int = 1) -> dict[str, Any]:
    return {"GroupId": group, "Mode": mode, "GroupCounter": [{"Key": key, "Value": value}]}


def _wait_for_a_fresh_window(api: Api) -> None:
    """Start right after a 5 s window of Redis's clock begins, so a burst fits in one."""
    while True:
        seconds, _ = api.inspector.time()
        if seconds % WINDOW == 0:
            return
        time.sleep(0.05)


@pytest.fixture
def group(api: Api) -> str:
    api.create("live", sdkappid=END_USER_APP)
    assert api.update("live", {"like": 10, "views": 7}, "Set", sdkappid=END_USER_APP)["ErrorCode"] == 0
    return "live"


def test_an_end_user_reads_the_counters(api: Api, group: str) -> None:
    reply = _as_viewer(api, "get_group_counter", {"GroupId": group})
    assert reply["ErrorCode"] == 0
    assert reply["GroupCounter"] == [{"Key": "like", "Value": 10}, {"Key": "views", "Value": 7}]


@pytest.mark.parametrize(("mode", "after"), [("Increase", 11), ("Decrease", 9)])
def test_an_end_user_increases_or_decreases_a_client_key(api: Api, group: str, mode: str, after: int) -> None:
    reply = _as_viewer(api, UPDATE, _like(group, mode))
    assert reply["ErrorCode"] == 0
    assert reply["GroupCounter"] == [{"Key": "like", "Value": after}]


def test_an_end_user_may_not_set_and_changes_nothing(api: Api, group: str) -> None:
    before = api.state()
    reply = _as_viewer(api, UPDATE, _like(group, "Set", value=1000))
    assert reply["ErrorCode"] == 60010
    assert api.counters(group, sdkappid=END_USER_APP) == {"like": 10, "views": 7}
    assert {k: v for k, v in api.state().items() if not k.startswith(b"{enduser:")} == before


def test_an_end_user_may_not_change_a_key_the_app_does_not_allow(api: Api, group: str) -> None:
    assert "views" not in CLIENT_KEYS
    reply = _as_viewer(api, UPDATE, _like(group, key="views"))
    assert reply["ErrorCode"] == 60010
    mixed = {
        "GroupId": group,
        "Mode": "Increase",
        "GroupCounter": [{"Key": "like", "Value": 1}, {"Key": "x", "Value": 1}],
    }
    assert _as_viewer(api, UPDATE, mixed)["ErrorCode"] == 60010
    assert api.counters(group, sdkappid=END_USER_APP) == {"like": 10, "views": 7}


@pytest.mark.parametrize(
    ("command", "body"),
    [
        ("delete_group_counter", {"GroupId": "live", "GroupCounterKeys": ["like"]}),
        ("create_group", {"Type": "Public", "Name": "n", "GroupId": "other"}),
        ("destroy_group", {"GroupId": "live"}),
    ],
    ids=["delete", "create", "destroy"],
)
def test_an_end_user_may_not_delete_or_run_group_lifecycle(
    api: Api, group: str, command: str, body: Any
) -> None:
    before = api.state()
    assert _as_viewer(api, command, body)["ErrorCode"] == 60010
    assert api.state() == before  # refused before any count: nothing written at all


def test_without_end_users_a_non_admin_is_still_60010(api: Api) -> None:
    api.create("g")
    reply = api.call("get_group_counter", {"GroupId": "g"}, sdkappid=REGISTERED_APP, identifier="ops2")
    assert reply["ErrorCode"] == 60010


def test_admins_of_an_end_user_app_are_unchanged(api: Api, group: str) -> None:
    for _ in range(LIMIT + 5):  # no end-user limit for an admin
        assert api.update(group, {"views": 1}, "Increase", sdkappid=END_USER_APP)["ErrorCode"] == 0
    assert api.update(group, {"views": 0}, "Set", sdkappid=END_USER_APP)["ErrorCode"] == 0


def test_the_21st_write_in_5_seconds_is_61007_and_reads_count_apart(api: Api, group: str) -> None:
    _wait_for_a_fresh_window(api)
    writes = [_as_viewer(api, UPDATE, _like(group))["ErrorCode"] for _ in range(LIMIT + 1)]
    assert writes == [0] * LIMIT + [61007]
    assert api.counters(group, sdkappid=END_USER_APP)["like"] == 10 + LIMIT
    reads = [_as_viewer(api, "get_group_counter", {"GroupId": group})["ErrorCode"] for _ in range(LIMIT + 1)]
    assert reads == [0] * LIMIT + [61007]
    # Another end user has a window of their own.
    assert _as_viewer(api, UPDATE, _like(group), identifier="viewer-2")["ErrorCode"] == 0


def _ready(service: ServiceProcess) -> bool:
    try:
        return httpx2.get(f"{service.base_url}/readyz", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


def test_the_end_user_limit_holds_exactly_across_two_replicas(tmp_path: Path) -> None:
    server = RedisServer().start()
    services: list[ServiceProcess] = []
    try:
        config = tmp_path / "config.toml"
        settings = f'redis_url = "{server.url}"\nlog_level = "error"'
        config.write_text(CONFIG.replace('redis_url = "memory://"', settings), encoding="utf-8")
        services = [ServiceProcess.start(config, log=tmp_path / f"service-{n}.log") for n in range(2)]
        for service in services:
            service.wait_until(functools.partial(_ready, service))
        admin_query = query(END_USER_APP, ADMIN)
        create = {"Type": "Public", "Name": "n", "GroupId": "race"}
        url = f"{services[0].base_url}/v4/group_open_http_svc/create_group?{admin_query}"
        assert httpx2.post(url, json=create).json()["ErrorCode"] == 0
        inspector = redis.Redis(port=server.port)
        while inspector.time()[0] % WINDOW not in (0, 1):
            time.sleep(0.05)

        async def burst() -> list[int]:
            async with httpx2.AsyncClient(timeout=5.0) as client:
                viewer_query = query(END_USER_APP, VIEWER)
                calls = [
                    client.post(
                        f"{services[n % 2].base_url}/v4/group_open_http_svc/{UPDATE}?{viewer_query}",
                        json=_like("race"),
                    )
                    for n in range(3 * LIMIT)
                ]
                return [(await response).json()["ErrorCode"] for response in asyncio.as_completed(calls)]

        codes = asyncio.run(burst())
        assert sorted(codes) == [0] * LIMIT + [61007] * (2 * LIMIT)
        assert inspector.hget(b"{1400000004:race}", b"like") == str(LIMIT).encode()
        inspector.close()
    finally:
        for service in services:
            service.stop()
        server.stop()
