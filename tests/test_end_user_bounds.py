"""End users change a counter by a bounded step (docs/API.md, "End users"): a bare Key of
`client_keys` by -1 to 1 per call, a `{key, min, max}` entry by min to max; beyond, 60010
and nothing changes, so a usersig of the app cannot set "likes" to anything. Admins are
not bounded. The access log names who called."""

from __future__ import annotations

import json
from typing import Any, Final

import pytest

from service.config import ConfigError, Settings, parse_config
from tests.support import ADMIN, CONFIG, END_USER_APP, Api, access_lines

VIEWER: Final = "viewer-7"
BOUNDED_KEYS: Final = (
    'client_keys = ["like", { key = "gift", min = 0, max = 5 }, { key = "stars", min = -3, max = 10 }]'
)


@pytest.fixture
def settings() -> Settings:
    return parse_config(CONFIG.replace('client_keys = ["like", "gift"]', BOUNDED_KEYS), environ={})


@pytest.fixture
def group(api: Api) -> str:
    api.create("bounded", sdkappid=END_USER_APP)
    assert (
        api.update("bounded", {"like": 10, "gift": 10, "stars": 10}, "Set", sdkappid=END_USER_APP)[
            "ErrorCode"
        ]
        == 0
    )
    return "bounded"


def change(
    api: Api, key: str, value: int, mode: str = "Increase", identifier: str = VIEWER
) -> dict[str, Any]:
    body = {"GroupId": "bounded", "Mode": mode, "GroupCounter": [{"Key": key, "Value": value}]}
    return api.call("update_group_counter", body, sdkappid=END_USER_APP, identifier=identifier)


def counters(api: Api) -> dict[str, int]:
    reply = api.call("get_group_counter", {"GroupId": "bounded"}, sdkappid=END_USER_APP)
    return {c["Key"]: c["Value"] for c in reply["GroupCounter"]}


@pytest.mark.parametrize(("mode", "value"), [("Increase", 1), ("Decrease", 1), ("Increase", 0)])
def test_a_bare_client_key_takes_a_step_of_one(api: Api, group: str, mode: str, value: int) -> None:
    assert change(api, "like", value, mode)["ErrorCode"] == 0


@pytest.mark.parametrize(
    ("mode", "value"), [("Increase", 2), ("Decrease", 2), ("Increase", 10**12), ("Decrease", -5000)]
)
def test_a_bare_client_key_beyond_one_is_60010_and_changes_nothing(
    api: Api, group: str, mode: str, value: int
) -> None:
    before = counters(api)
    reply = change(api, "like", value, mode)
    assert reply["ErrorCode"] == 60010, reply
    assert "by -1 to +1 per call" in reply["ErrorInfo"]
    assert counters(api) == before


def test_a_bounded_key_takes_its_steps_and_refuses_beyond(api: Api, group: str) -> None:
    assert change(api, "gift", 5)["ErrorCode"] == 0
    assert change(api, "gift", 6)["ErrorCode"] == 60010
    assert change(api, "gift", 1, "Decrease")["ErrorCode"] == 60010, "min = 0: no taking back"
    assert change(api, "stars", 3, "Decrease")["ErrorCode"] == 0
    assert change(api, "stars", 4, "Decrease")["ErrorCode"] == 60010
    assert change(api, "stars", 10)["ErrorCode"] == 0
    assert counters(api) == {"like": 10, "gift": 15, "stars": 17}


def test_one_item_beyond_its_bound_fails_the_whole_call(api: Api, group: str) -> None:
    body = {
        "GroupId": "bounded",
        "Mode": "Increase",
        "GroupCounter": [{"Key": "like", "Value": 1}, {"Key": "gift", "Value": 9}],
    }
    reply = api.call("update_group_counter", body, sdkappid=END_USER_APP, identifier=VIEWER)
    assert reply["ErrorCode"] == 60010
    assert counters(api) == {"like": 10, "gift": 10, "stars": 10}


def test_an_admin_is_not_bounded(api: Api, group: str) -> None:
    assert change(api, "like", 10**12, identifier=ADMIN)["ErrorCode"] == 0


def test_the_access_log_names_the_end_user_who_called(api: Api, group: str) -> None:
    with access_lines("json") as lines:
        change(api, "like", 1)
        (line,) = lines()
    assert json.loads(line)["identifier"] == VIEWER


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('{ key = "gift", min = 1, max = 5 }', "min"),
        ('{ key = "gift", min = -1, max = -1 }', "max"),
        ('{ key = "gift", mni = 0 }', "did you mean `min`?"),
        ('"like", { key = "like", max = 3 }', "names a Key twice"),
    ],
)
def test_a_client_key_bound_that_makes_no_sense_is_a_config_error(entry: str, message: str) -> None:
    text = CONFIG.replace('client_keys = ["like", "gift"]', f"client_keys = [{entry}]")
    with pytest.raises(ConfigError, match=message):
        parse_config(text, environ={})
