"""Two real headless Chromium pages chat in one room through combined mode (``make run``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.services.conftest import StackFactory, serve
from tests.services.procs import Service
from tests.support.chat_pages import chromium

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's Chromium driven through the system chromedriver (no downloads)."""
    with chromium() as driver:
        yield driver


def open_chat(driver: object, front: Service, user: str) -> str:
    """Open the room page for ``user`` in a new tab; returns the tab's handle."""
    driver.switch_to.new_window("tab")  # type: ignore[attr-defined]
    driver.get(f"{front.url}/?room=browsers&user={user}")  # type: ignore[attr-defined]
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "state").text == "connected")
    handle: str = driver.current_window_handle  # type: ignore[attr-defined]
    return handle


def say(driver: object, handle: str, text: str) -> None:
    driver.switch_to.window(handle)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "text").send_keys(text)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "send").click()  # type: ignore[attr-defined]


def wait_for_line(driver: object, handle: str, line: str) -> None:
    driver.switch_to.window(handle)  # type: ignore[attr-defined]
    WebDriverWait(driver, 20).until(
        lambda d: line in [p.text for p in d.find_elements(By.CSS_SELECTOR, "#messages p")]
    )


def test_two_pages_chat_in_one_room(browser: object, stacks: StackFactory, tmp_path: Path) -> None:
    served = serve(
        stacks, "inmemory", tmp_path / "events.log", KIT_APP="services.demo.app:application"
    )
    alice = open_chat(browser, served.front, "alice")
    bob = open_chat(browser, served.front, "bob")
    say(browser, alice, "hello bob")
    wait_for_line(browser, bob, "alice: hello bob")
    say(browser, bob, "hi alice")
    wait_for_line(browser, alice, "bob: hi alice")
    wait_for_line(browser, alice, "alice: hello bob")
    browser.switch_to.window(alice)  # type: ignore[attr-defined]
    served_by = browser.find_element(By.ID, "served").text  # type: ignore[attr-defined]
    assert "InMemoryChannelLayer" in served_by and "combined" in served_by
