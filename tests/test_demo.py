"""/demo under a hostile client (issue 25): a GET creates nothing, page loads are limited in
their own window (never the app's rate_limit), a browser keeps one identifier, a group
is created only by a POST from a browser that loaded the page, and the JSON embedded in
the page cannot end its script element."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Final

import pytest

from service.config import Settings, parse_config
from tests.support import CONFIG, END_USER_APP, Api, group_key

DEMO_LIMIT: Final = 4
APP_LIMIT: Final = 30
CONFIG_SCRIPT: Final = re.compile(r'<script type="application/json" id="demo-config">(.*?)</script>', re.S)


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def settings() -> Settings:
    text = CONFIG.replace(
        'client_keys = ["like", "gift"]', f'client_keys = ["like", "gift"]\nrate_limit = {APP_LIMIT}'
    )
    return parse_config(f"demo = true\ndemo_rate_limit = {DEMO_LIMIT}\n" + text, environ={})


def _fresh_second() -> None:
    """Wait for the start of a one-second window, so a test's calls share one."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def _config(page: str) -> dict[str, Any]:
    match = CONFIG_SCRIPT.search(page)
    assert match is not None, page
    config: dict[str, Any] = json.loads(match[1])
    return config


def _create_as_admin(api: Api, group_id: str) -> None:
    body = {"Type": "Public", "Name": "n", "GroupId": group_id}
    assert api.call("create_group", body, sdkappid=END_USER_APP)["ErrorCode"] == 0


def test_a_page_load_creates_no_group(api: Api) -> None:
    reply = api.client.get("/demo", params={"GroupId": "fresh"})
    assert reply.status_code == 200
    assert 'id="create"' in reply.text
    assert api.inspector.exists(group_key(END_USER_APP, "fresh")) == 0


def test_a_post_from_a_browser_that_loaded_the_page_creates_the_group(api: Api) -> None:
    api.client.get("/demo", params={"GroupId": "fresh"})
    reply = api.client.post("/demo?GroupId=fresh", follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == "/demo?GroupId=fresh"
    assert api.inspector.exists(group_key(END_USER_APP, "fresh")) == 1
    assert _config(api.client.get(reply.headers["location"]).text)["group"] == "fresh"


def test_a_post_without_the_pages_cookie_creates_nothing(api: Api) -> None:
    reply = api.client.post("/demo?GroupId=fresh", follow_redirects=False)
    assert reply.status_code == 403
    assert api.inspector.exists(group_key(END_USER_APP, "fresh")) == 0


def test_page_loads_have_their_own_limit_and_leave_the_apps_alone(api: Api) -> None:
    _create_as_admin(api, "g")
    _fresh_second()
    statuses = [api.client.get("/demo", params={"GroupId": "g"}).status_code for _ in range(DEMO_LIMIT + 1)]
    assert statuses == [200] * DEMO_LIMIT + [429]
    refused = api.client.post("/demo?GroupId=other", follow_redirects=False)
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
    # The app's own limit is untouched by the page loads: its calls in this second pass.
    codes = [
        api.call("get_group_counter", {"GroupId": "g"}, sdkappid=END_USER_APP)["ErrorCode"]
        for _ in range(APP_LIMIT)
    ]
    assert codes == [0] * APP_LIMIT


def test_a_browser_keeps_one_identifier_across_page_loads(api: Api) -> None:
    _create_as_admin(api, "g")
    first = api.client.get("/demo", params={"GroupId": "g"})
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    again = api.client.get("/demo", params={"GroupId": "g"})
    assert "set-cookie" not in again.headers
    assert _config(again.text)["identifier"] == _config(first.text)["identifier"]
    api.client.cookies.clear()
    api.client.cookies.set("demo_viewer", "administrator", path="/demo")  # not a value the page gave
    other = api.client.get("/demo", params={"GroupId": "g"})
    assert _config(other.text)["identifier"] not in (_config(first.text)["identifier"], "administrator")


def test_reloading_the_page_does_not_reset_the_end_users_write_limit(api: Api) -> None:
    _create_as_admin(api, "g")
    body = json.dumps({"GroupId": "g", "Mode": "Increase", "GroupCounter": [{"Key": "like", "Value": 1}]})
    time.sleep(5.0 - time.time() % 5.0 + 0.01)  # a fresh 5 s window of the end user's limit
    update = _config(api.client.get("/demo", params={"GroupId": "g"}).text)["update"]
    codes = [api.client.post(update, content=body).json()["ErrorCode"] for _ in range(20)]
    assert codes == [0] * 20
    reloaded = _config(api.client.get("/demo", params={"GroupId": "g"}).text)["update"]
    # The same browser is the same end user: its 21st write in 5 s is refused.
    assert api.client.post(reloaded, content=body).json()["ErrorCode"] == 61007


def test_the_embedded_json_cannot_end_its_script_element(api: Api) -> None:
    group_id = "</script><!--<script>&x"
    _create_as_admin(api, group_id)
    page = api.client.get("/demo", params={"GroupId": group_id}).text
    match = CONFIG_SCRIPT.search(page)
    assert match is not None
    assert not set("<>&") & set(match[1])
    assert _config(page)["group"] == group_id
    assert page.count("<script") == 2  # the config and the page's own code, nothing injected


def test_the_create_page_escapes_the_group_id(api: Api) -> None:
    page = api.client.get("/demo", params={"GroupId": "<b>&x"}).text
    assert "<b>" not in page
    assert "&lt;b&gt;&amp;x" in page
