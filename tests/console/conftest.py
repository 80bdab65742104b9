"""Console fixtures: the team registry server (with its console) as a subprocess, tokens, and headless Chromium
(Debian's chromium + chromium-driver) driven by Selenium, with screenshots kept per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

import tether
from tests.processes import issue_team_tokens, registry_server

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TETHER_CHROMEDRIVER", "/usr/bin/chromedriver")


@dataclass
class Team:
    url: str
    db: str
    tokens: dict[str, str]


@pytest.fixture(autouse=True)
def console_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "tether-home"
    home.mkdir()
    monkeypatch.setenv("TETHER_HOME", str(home))
    monkeypatch.setenv("TETHER_USER", "alice")
    for key in ("TETHER_REGISTRY_URL", "TETHER_TOKEN", "TETHER_REGISTRY_DB", "TETHER_NAMESPACE", "TETHER_OPENLINEAGE"):
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def team(tmp_path: Path) -> Iterator[Team]:
    """``tether registry serve`` (SQLite) with tokens for alice, bob (team ml-platform) and carol."""
    db = str(tmp_path / "registry.db")
    tokens = issue_team_tokens(db)
    with registry_server(db, tmp_path) as (url, _proc):
        yield Team(url=url, db=db, tokens=tokens)


@pytest.fixture
def as_alice(team: Team, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This process saves and calls as alice through the team server, on the embedded local daemon."""
    monkeypatch.setenv("TETHER_REGISTRY_URL", team.url)
    monkeypatch.setenv("TETHER_TOKEN", team.tokens["alice"])
    c = tether.cluster()
    try:
        yield c
    finally:
        tether.registry.get_registry().flush()
        tether.cluster().teardown()


@pytest.fixture(scope="session")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``TETHER_CONSOLE_SHOTS`` if set (kept), else a session temp dir."""
    wanted = os.environ.get("TETHER_CONSOLE_SHOTS")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("console-shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Browser:
    """One headless Chromium: ``open``, ``login``, ``shot``, and waits for text."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path, name: str) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        self.name = name
        self.taken: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def login(self, token: str, *, wait: bool = True) -> None:
        """Sign in with ``token``; ``wait``: until signed in (a page opened at once would race the login POST)."""
        self.open("/console/login")
        box = self.driver.find_element(By.ID, "token")
        box.clear()
        box.send_keys(token)
        self.driver.find_element(By.ID, "login").click()
        if wait:
            WebDriverWait(self.driver, 60).until(lambda d: d.find_elements(By.ID, "whoami"))

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait_text(self, needle: str, css: str = "body", timeout: float = 60) -> None:
        try:
            WebDriverWait(self.driver, timeout).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), needle))
        except TimeoutException:
            raise AssertionError(f"{needle!r} not in {css!r} of {self.driver.current_url} after {timeout} s; the page "
                                 f"says:\n{self.text()[:2000]}") from None

    def find(self, css: str) -> list[object]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def shot(self, label: str) -> Path:
        path = self.shots / f"{self.name}-{len(self.taken) + 1:02d}-{label}.png"
        self.driver.save_screenshot(str(path))
        self.taken.append(path)
        return path


@pytest.fixture
def browsers(team: Team, shots_dir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], Browser]]:
    """Make headless Chromium browsers (each its own cookie jar) on the team server; all quit at the end."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run scripts/system-deps.sh (Debian chromium, chromium-driver)")
    made: list[webdriver.Chrome] = []
    profile_root = Path(request.getfixturevalue("tmp_path")) / "chromium"

    def make() -> Browser:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,1000", f"--user-data-dir={profile_root / str(len(made))}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        made.append(driver)
        return Browser(driver, team.url, shots_dir, f"{request.node.name}-{len(made)}")

    try:
        yield make
    finally:
        for driver in made:
            driver.quit()
        shutil.rmtree(profile_root, ignore_errors=True)


Browsers = Callable[[], Browser]
