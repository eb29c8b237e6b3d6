"""The README's browser snippet works as written: it is taken from README.md between its
markers, only the daemon's port is changed, and it runs in Chromium (in a page of another
origin, as on a real site) against a daemon while a row is inserted as the README shows."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver

from tests.browser.conftest import TIMEOUT, PageServer, Served, until
from tidings.sandbox import PrivateMariaDB

README = Path(__file__).parents[2] / "README.md"
SNIPPET = re.compile(
    r"<!-- browser-snippet[^>]*-->\n```js\n(?P<code>.*?)```\n<!-- /browser-snippet -->", re.S
)
# records what the snippet logs, and still logs it
CONSOLE = """
window.logged = [];
const log = console.log.bind(console);
console.log = (...args) => { window.logged.push(args); log(...args); };
"""


def readme_snippet() -> str:
    (code,) = [m["code"] for m in SNIPPET.finditer(README.read_text())]
    return code


def test_the_snippet_is_short_and_names_the_default_address() -> None:
    code = readme_snippet()
    assert len(code.splitlines()) <= 10
    assert code.count("http://127.0.0.1:8080/") == 1


def test_the_readme_browser_snippet_works_as_written(
    page: WebDriver, pages: PageServer, serve: Callable[..., Served], mariadb: PrivateMariaDB
) -> None:
    mariadb.sql(
        "CREATE DATABASE IF NOT EXISTS shop;"
        "CREATE TABLE IF NOT EXISTS shop.orders"
        " (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT, total DECIMAL(10,2))"
    )
    daemon = serve()
    code = readme_snippet().replace("127.0.0.1:8080", f"127.0.0.1:{daemon.port}")
    page.get(pages.page(CONSOLE + code))
    deadline = time.monotonic() + TIMEOUT
    while not json.loads(daemon.get("/channels")[2])["channels"].get("shop.orders"):
        assert time.monotonic() < deadline, "the snippet's EventSource did not subscribe"
        time.sleep(0.05)
    mariadb.sql("INSERT INTO shop.orders(customer_id,total) VALUES (42, 9.90)")  # as the README
    ((word, order_id, row),) = until(page, "window.logged.length && window.logged", "the log")
    assert word == "new order" and row == {"id": order_id, "customer_id": 42, "total": "9.90"}
    assert not [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
