"""Real browsers against a real daemon: Debian's Chromium, driven through chromedriver.

One headless Chromium for the session (a fresh profile in the pytest tmp dir), driven by
Selenium through Debian's /usr/bin/chromedriver, so Selenium Manager downloads nothing.
The daemon is `tidings serve` as a user runs it, against the session's private MariaDB.
Test pages come from a separate tiny HTTP server on another port, so every request from
them is cross-origin, as from a real web application.

Chromium is installed by scripts/bootstrap: when it is missing the tests fail, they do not
skip.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from tidings.sandbox import PrivateMariaDB, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIDINGS = [sys.executable, "-m", "tidings.cli"]
TIMEOUT = 30
# as root in a container, without the background services that stall on a closed network
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
)

_schemas = itertools.count(1)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"{path} is missing: scripts/bootstrap installs Debian's chromium and "
                "chromium-driver (apt-get install chromium chromium-driver)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    # the console, and the DevTools network events (to see exactly what the page sent)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # both paths given: Selenium Manager is skipped, nothing is downloaded (and if it ran, it
    # would be /bin/false and fail)
    saved = os.environ.get("SE_MANAGER_PATH")
    os.environ["SE_MANAGER_PATH"] = "/bin/false"
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    finally:
        if saved is None:
            del os.environ["SE_MANAGER_PATH"]
        else:
            os.environ["SE_MANAGER_PATH"] = saved
    try:
        debian = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
        assert driver.capabilities["browserVersion"] in debian, (debian, driver.capabilities)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The session's browser, left on a blank page (closing the test's streams) after."""
    for log in ("browser", "performance"):  # drop what earlier tests logged
        browser.get_log(log)
    yield browser
    browser.get("about:blank")


def until(driver: WebDriver, script: str, what: str, timeout: float = TIMEOUT) -> Any:
    """Poll `script` (a JS expression) in the page until it is truthy; return its value."""

    def check(d: WebDriver) -> Any:
        return d.execute_script(f"return {script};")

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    except Exception:
        now = driver.execute_script(f"return {script};")
        raise AssertionError(f"timed out waiting for {what}: {script} -> {now!r}") from None


def requests_sent(driver: WebDriver) -> list[tuple[str, dict[str, str]]]:
    """(URL, headers) of each request the browser sent since the last call (DevTools log)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            sent.append((request["url"], request["headers"]))
    return sent


# -- pages from another origin ------------------------------------------------------------------
class PageServer:
    """A plain HTTP server for test pages, on a port (an origin) of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._names = itertools.count(1)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, body: str, **config: Any) -> str:
        """A page running `body` (JS) with `config` as a global object; returns its URL."""
        name = f"page{next(self._names)}.html"
        html = (
            '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{name}</title><script>const config = {json.dumps(config)};\n"
            f"{body}</script>"
        )
        (self.root / name).write_text(html)
        return f"{self.origin}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    server = PageServer(tmp_path_factory.mktemp("pages"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def other_pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    """Pages from yet another origin (for allow-list tests)."""
    server = PageServer(tmp_path_factory.mktemp("other-pages"))
    yield server
    server.close()


# -- the daemon as a process --------------------------------------------------------------------
class Served:
    """`tidings serve` on a fixed HTTP port; start() waits until /healthz says ready."""

    def __init__(
        self, db: PrivateMariaDB, server_id: int, log: Path, *extra: str, port: int = 0
    ) -> None:
        self.db = db
        self.server_id = server_id
        self.port = port or free_port()
        self.log = log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*TIDINGS, "serve", "--mysql", self.db.url(), "--server-id", str(self.server_id),
                 "--http", f"127.0.0.1:{self.port}", "--resp", "", *self.extra],
                stderr=out,
                env=env,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"tidings serve exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"tidings serve not ready:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(20) == 0, self.log.read_text()
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        self.proc = None

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def serve(
    mariadb: PrivateMariaDB, replica_server_id: int, tmp_path: Path
) -> Iterator[Callable[..., Served]]:
    """Start daemons with extra flags; every one is stopped after the test."""
    started: list[Served] = []

    def start(*extra: str, port: int = 0) -> Served:
        daemon = Served(mariadb, replica_server_id, tmp_path / "tidings.log", *extra, port=port)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def table(mariadb: PrivateMariaDB) -> str:
    """A fresh table `(n INT PRIMARY KEY, v TEXT)`; its channel name."""
    name = f"browser{next(_schemas)}"
    mariadb.sql(f"CREATE DATABASE {name}; CREATE TABLE {name}.t (n INT PRIMARY KEY, v TEXT)")
    return f"{name}.t"
