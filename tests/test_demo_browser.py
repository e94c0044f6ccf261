"""The live demo page (/demo) in a real headless Chromium: two pages open, a click on
"Like" in one, and the number changes in both within a second."""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

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
    return driver.find_element(By.ID, "status").text == "live"


def test_a_like_in_one_page_shows_in_both_within_a_second(
    chromium: list[webdriver.Chrome], tmp_path: Path
) -> None:
    service = ServiceProcess.start(DEV_CONFIG, log=tmp_path / "service.log")
    try:
        service.wait_until(functools.partial(_ready, service))
        first, second = chromium
        for driver in chromium:
            driver.get(f"{service.base_url}/demo")
            _wait(functools.partial(_live, driver), 10, "the page's snapshot")
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
