"""The live demo page (/demo) in a real headless Chromium: two pages open, a click on
"Like" in one, and the number changes in both within a second; int64 values beyond
2^53 shown exactly."""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx2
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from service.api.auth import mint_usersig
from service.config import load_config
from tests.support import REPO, ServiceProcess

DEV_CONFIG: Final = REPO / "deploy" / "config" / "dev.toml"
DELIVERY_BOUND: Final = 1.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: `make test` installs it (apt-get install chromium chromium-driver)"
        )
    return path


@pytest.fixture
def chromium() -> Iterator[list[webdriver.Chrome]]:
    """Two headless Chromium windows (each its own browser, as two viewers would be)."""
    drivers: list[webdriver.Chrome] = []
    try:
        for _ in range(2):
            options = webdriver.ChromeOptions()
            options.binary_location = _binary("chromium")
            for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
                options.add_argument(flag)
            drivers.append(webdriver.Chrome(service=Service(_binary("chromedriver")), options=options))
        yield drivers
    finally:
        for driver in drivers:
            driver.quit()


def _ready(service: ServiceProcess) -> bool:
    try:
        return httpx2.get(f"{service.base_url}/readyz", timeout=1).status_code == 200
    except httpx2.TransportError:
        return False


def _wait(condition: functools.partial[bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{what} not within {seconds} s")


def _shows(driver: webdriver.Chrome, likes: int) -> bool:
    return driver.find_element(By.ID, "like-count").text == str(likes)


def _live(driver: webdriver.Chrome) -> bool:
    try:
        return driver.find_element(By.ID, "status").text == "live"
    except WebDriverException:  # between two pages (a form's POST and its redirect)
        return False


def _table(driver: webdriver.Chrome) -> dict[str, str]:
    """The page's table of counters: Key -> the value as shown."""
    cells = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#counters td")]
    return dict(zip(cells[0::2], cells[1::2], strict=True))


def _admin(service: ServiceProcess, command: str, body: dict[str, object]) -> dict[str, object]:
    """A command as the dev config's admin of the demo's app."""
    app = load_config(DEV_CONFIG).apps[1400000000]
    usersig = mint_usersig(app.sdkappid, app.secret_key, "administrator")
    url = (
        f"{service.base_url}/v4/group_open_http_svc/{command}?sdkappid={app.sdkappid}"
        f"&identifier=administrator&usersig={usersig}&random=1&contenttype=json"
    )
    reply: dict[str, object] = httpx2.post(url, content=json.dumps(body), timeout=5).json()
    assert reply["ErrorCode"] == 0, reply
    return reply


def test_a_like_in_one_page_shows_in_both_within_a_second(
    chromium: list[webdriver.Chrome], tmp_path: Path
) -> None:
    service = ServiceProcess.start(DEV_CONFIG, log=tmp_path / "service.log")
    try:
        service.wait_until(functools.partial(_ready, service))
        first, second = chromium
        # A fresh service has no group "demo": a page load creates nothing, its button does.
        first.get(f"{service.base_url}/demo")
        first.find_element(By.ID, "create").click()
        _wait(functools.partial(_live, first), 10, "the created group's page")
        second.get(f"{service.base_url}/demo")
        _wait(functools.partial(_live, second), 10, "the page's snapshot")
        likes = int(first.find_element(By.ID, "like-count").text)
        first.find_element(By.ID, "like").click()
        for driver in chromium:
            elapsed = _wait(
                functools.partial(_shows, driver, likes + 1), DELIVERY_BOUND, "the like on both pages"
            )
            assert elapsed < DELIVERY_BOUND
        second.find_element(By.ID, "like").click()
        for driver in chromium:
            _wait(
                functools.partial(_shows, driver, likes + 2), DELIVERY_BOUND, "the second like on both pages"
            )
    finally:
        service.stop()


def test_the_page_shows_int64_values_beyond_2_to_the_53_exactly(
    chromium: list[webdriver.Chrome], tmp_path: Path
) -> None:
    service = ServiceProcess.start(DEV_CONFIG, log=tmp_path / "service.log")
    try:
        service.wait_until(functools.partial(_ready, service))
        _admin(service, "create_group", {"Type": "Public", "Name": "big", "GroupId": "big"})
        counters = [{"Key": "like", "Value": 2**63 - 1}, {"Key": "near", "Value": 2**53 + 1}]
        _admin(service, "update_group_counter", {"GroupId": "big", "Mode": "Set", "GroupCounter": counters})
        driver = chromium[0]
        driver.get(f"{service.base_url}/demo?GroupId=big")
        _wait(functools.partial(_live, driver), 10, "the page's snapshot")
        assert driver.find_element(By.ID, "like-count").text == "9223372036854775807"
        assert _table(driver)["near"] == "9007199254740993"
        # A change event too, not only the snapshot.
        change = [{"Key": "near", "Value": -(2**63)}]
        _admin(service, "update_group_counter", {"GroupId": "big", "Mode": "Set", "GroupCounter": change})
        shown = functools.partial(lambda: _table(driver).get("near") == "-9223372036854775808")
        _wait(shown, 5, "the change's exact value")
    finally:
        service.stop()


def test_the_demo_page_is_off_by_default(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(DEV_CONFIG.read_text().replace("demo = true", "demo = false"), encoding="utf-8")
    service = ServiceProcess.start(config, log=tmp_path / "service.log")
    try:
        service.wait_until(functools.partial(_ready, service))
        reply = httpx2.get(f"{service.base_url}/demo", timeout=5)
        assert reply.json()["ErrorCode"] == 60009
    finally:
        service.stop()
