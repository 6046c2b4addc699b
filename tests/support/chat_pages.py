"""The example Django chat (examples/django-chat) driven in real headless Chromium: the pages,
their static JavaScript and the WebSockets it opens, as a user's browser runs them. Shared by
the local test (tests/services/test_example.py) and the containers' (tests/integration)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django-chat"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 20.0  # bound on one page event; a hang fails the test instead of stalling it

Driver = Any  # selenium's WebDriver: untyped enough that Any says it honestly


@contextlib.contextmanager
def chromium() -> Iterator[Driver]:
    """One headless Chromium (Debian's, through the system chromedriver: no downloads); each
    instance is its own browser, with its own cookies."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise RuntimeError("chromium and chromium-driver are required (make system-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Room:
    """One tab of one browser, open on a chat room."""

    def __init__(self, driver: Driver, base_url: str, name: str) -> None:
        self.driver = driver
        self.name = name
        if driver.current_url in ("data:,", "about:blank"):
            driver.get(f"{base_url}/chat/")  # the index page: type the room's name, press Enter
        else:
            driver.switch_to.new_window("tab")
            driver.get(f"{base_url}/chat/")
        self.handle: str = driver.current_window_handle
        driver.find_element(By.ID, "room-name-input").send_keys(name + "\n")
        self._until(lambda d: d.find_element(By.ID, "state").text == "connected")

    def _until(self, condition: Any) -> None:
        self.driver.switch_to.window(self.handle)
        WebDriverWait(self.driver, WAIT).until(condition)

    def say(self, text: str) -> None:
        self.driver.switch_to.window(self.handle)
        self.driver.find_element(By.ID, "chat-message-input").send_keys(text + "\n")

    def announce(self, text: str) -> None:
        """Posts through the room's Django view (a form POST with the CSRF token)."""
        self.driver.switch_to.window(self.handle)
        self.driver.find_element(By.ID, "chat-message-input").send_keys(text)
        self.driver.find_element(By.ID, "chat-announce-submit").click()

    def lines(self) -> list[str]:
        self.driver.switch_to.window(self.handle)
        log: str = self.driver.find_element(By.ID, "chat-log").get_property("value")
        return log.splitlines()

    def hears(self, line: str) -> None:
        self._until(lambda d: line in self.lines())


def two_browsers_two_rooms(first: Driver, second: Driver, url_1: str, url_2: str) -> None:
    """Each browser opens the rooms red and blue (the first through ``url_1``, the second through
    ``url_2``: two protocol servers, when a topology has two). Each room hears its own chat, a
    background task's reply ("/shout") and a view's announcement, and nothing of the other."""
    red_1, blue_1 = Room(first, url_1, "red"), Room(first, url_1, "blue")
    red_2, blue_2 = Room(second, url_2, "red"), Room(second, url_2, "blue")
    red_1.say("hello red")
    for room in (red_1, red_2):
        room.hears("hello red")
    blue_2.say("hello blue")
    for room in (blue_1, blue_2):
        room.hears("hello blue")
    blue_1.say("/shout to the worker")
    for room in (blue_1, blue_2):
        room.hears("bot: TO THE WORKER!")
    red_2.announce("tea at five")
    for room in (red_1, red_2):
        room.hears("announcement: tea at five")
    red_1.say("last red")  # heard after everything above: the logs below are complete
    blue_1.say("last blue")
    for red, blue in ((red_1, blue_1), (red_2, blue_2)):
        red.hears("last red")
        blue.hears("last blue")
        assert red.lines() == ["hello red", "announcement: tea at five", "last red"]
        assert blue.lines() == ["hello blue", "bot: TO THE WORKER!", "last blue"]


def admin_login(driver: Driver, base_url: str, user: str, password: str) -> None:
    """Logs in to the Django admin (its static CSS, CSRF and session cookie included)."""
    driver.switch_to.new_window("tab")
    driver.get(f"{base_url}/admin/")
    driver.find_element(By.ID, "id_username").send_keys(user)
    driver.find_element(By.ID, "id_password").send_keys(password + "\n")
    WebDriverWait(driver, WAIT).until(lambda d: "Site administration" in d.page_source)
    # The admin's stylesheet applied: static files are served (by WhiteNoise, through the kit).
    assert driver.find_element(By.ID, "header").value_of_css_property("display") == "flex"


def admin_styled(driver: Driver, base_url: str) -> None:
    """The admin's login page renders with its stylesheet applied (static files served)."""
    driver.switch_to.new_window("tab")
    driver.get(f"{base_url}/admin/login/")
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.ID, "id_username"))
    assert driver.find_element(By.ID, "header").value_of_css_property("display") == "flex"
