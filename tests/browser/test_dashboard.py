"""The dashboard at / in Chromium, against a daemon whose MariaDB is being written to: it
renders without a JavaScript error, its numbers and charts move between two screenshots,
and its live tail shows a row inserted while it watches."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests.browser.conftest import Served, requests_sent, until
from tidings.sandbox import PrivateMariaDB

COUNTERS = ("events-total", "deliveries-total")


@contextmanager
def writing(db: PrivateMariaDB, table: str, every: float = 0.1) -> Iterator[None]:
    """Insert a row every `every` seconds in the background while the block runs."""
    stop = threading.Event()

    def run() -> None:
        n = 1000
        while not stop.wait(every):
            n += 1
            db.sql(f"INSERT INTO {table} VALUES ({n}, 'tick {n}')")

    writer = threading.Thread(target=run, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join(10)


def counters(page: WebDriver) -> dict[str, int]:
    return {name: int(page.find_element(By.ID, name).text.replace(",", "")) for name in COUNTERS}


def painted(page: WebDriver, canvas: str) -> int:
    """How many pixels of a chart are painted (its grid and line)."""
    return int(
        page.execute_script(
            "const c = document.getElementById(arguments[0]);"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
            canvas,
        )
    )


def test_the_dashboard_renders_moves_and_tails(
    page: WebDriver, serve: Callable[..., Served], mariadb: PrivateMariaDB, table: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    daemon = serve()
    page.get(f"{daemon.url}/")
    until(page, "document.getElementById('status').dataset.state === 'live'", "the first poll")
    for element in ("chart-events", "chart-deliveries", "connections", "busiest", "tail-form"):
        assert page.find_element(By.ID, element).is_displayed(), element
    assert page.find_element(By.ID, "binlog-state").text == "connected"
    server_file = mariadb.sql("SHOW MASTER STATUS").split("\t")[0]
    position = page.find_element(By.ID, "binlog-position").text
    assert position.startswith(f"{server_file}:"), (position, server_file)

    # tail the table the way a user does: type its name, press the button
    page.find_element(By.ID, "tail-channel").send_keys(table)
    page.find_element(By.ID, "tail-start").click()
    until(page, "document.getElementById('tail-state').textContent.startsWith('streaming')",
          "the tail's stream")  # fmt: skip
    with writing(mariadb, table):
        until(page, "document.querySelector('#tail-log li[data-type=insert]')", "a tailed row")
        until(page, f"document.querySelector('#busiest tr[data-channel=\"{table}\"]')",
              "the table among the busiest channels")  # fmt: skip
        until(page, "parseFloat(document.getElementById('events-rate').textContent) > 0",
              "a rate above 0")  # fmt: skip
        first = counters(page)
        page.save_screenshot(str(tmp_path / "dashboard-1.png"))
        total = "parseInt(document.getElementById('events-total').textContent.replace(/,/g, ''))"
        until(page, f"{total} >= {first['events-total'] + 10}", "ten more events")
        second = counters(page)
        page.save_screenshot(str(tmp_path / "dashboard-2.png"))
    assert all(second[name] > first[name] for name in COUNTERS), (first, second)
    moved = page.find_element(By.ID, "binlog-position").text
    assert int(moved.rpartition(":")[2]) > int(position.rpartition(":")[2]), (position, moved)
    assert second["deliveries-total"] >= second["events-total"] - first["events-total"]
    shots = [(tmp_path / f"dashboard-{i}.png").read_bytes() for i in (1, 2)]
    assert shots[0] != shots[1] and all(shot.startswith(b"\x89PNG") for shot in shots)
    for chart in ("chart-events", "chart-deliveries"):
        assert painted(page, chart) > 2000, chart  # more than the grid: a line and its fill

    tailed = page.find_elements(By.CSS_SELECTOR, "#tail-log li[data-type=insert]")
    assert "tick" in tailed[0].text and table in tailed[0].text
    connections = page.find_element(By.CSS_SELECTOR, "#connections tr[data-protocol=sse]")
    assert connections.get_attribute("data-open") == "1"  # the tail's own stream
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_a_token_in_the_page_url_goes_with_every_request(
    page: WebDriver, serve: Callable[..., Served], table: str
) -> None:
    daemon = serve()
    page.get(f"{daemon.url}/?token=s3cret&channel={table}")
    until(page, "document.getElementById('tail-state').textContent.startsWith('streaming')",
          "the tail's stream")  # fmt: skip
    sent = requests_sent(page)
    polls = [headers for url, headers in sent if url == f"{daemon.url}/stats"]
    assert polls and all(h.get("Authorization") == "Bearer s3cret" for h in polls), sent
    assert f"{daemon.url}/sse?channel={table}&token=s3cret" in [url for url, _ in sent], sent
    # the page's own files are fetched without it, and no request leaves the daemon
    assert all(url.startswith(f"{daemon.url}/") for url, _ in sent), sent
