"""A page's `new EventSource(...)` and `new WebSocket(...)` receive rows inserted in MariaDB;
an EventSource comes back by itself after a daemon restart without losing or repeating a
row; the origins allow-list lets one page in and keeps another out. Pages are served from
another origin than the daemon's, as a web application's would be."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver

from tests.browser.conftest import TIMEOUT, PageServer, Served, until
from tidings.sandbox import PrivateMariaDB, free_port

EVENT_SOURCE_PAGE = """
window.received = [];
window.errors = 0;
const es = new EventSource(config.url);
es.onopen = () => { window.opened = (window.opened || 0) + 1; };
es.onerror = () => { window.errors += 1; window.state = es.readyState; };
es.addEventListener("insert", (e) => {
  window.received.push({id: e.lastEventId, event: JSON.parse(e.data)});
});
"""

WEBSOCKET_PAGE = """
window.received = [];
window.replies = [];
const ws = new WebSocket(config.url);
ws.onopen = () => {
  window.opened = true;
  ws.send(JSON.stringify({op: "subscribe", channel: config.channel}));
};
ws.onmessage = (m) => {
  const message = JSON.parse(m.data);
  (message.op ? window.replies : window.received).push(message);
};
ws.onclose = (e) => { window.wsClosed = e.code; };
"""


def test_an_event_source_page_receives_an_inserted_row(
    page: WebDriver, pages: PageServer, serve: Callable[..., Served], mariadb: PrivateMariaDB,
    table: str,
) -> None:  # fmt: skip
    daemon = serve()
    page.get(pages.page(EVENT_SOURCE_PAGE, url=f"{daemon.url}/sse?channel={table}"))
    until(page, "window.opened", "the stream to open")
    mariadb.sql(f"INSERT INTO {table} VALUES (1, 'from MariaDB to a browser')")
    (got,) = until(page, "window.received.length && window.received", "the row")
    event = got["event"]
    assert (event["type"], event["channel"], event["data"]) == (
        "insert",
        table,
        {"n": 1, "v": "from MariaDB to a browser"},
    )
    assert got["id"] == str(event["id"])  # the SSE id is the event id (resume key)
    assert page.execute_script("return window.errors") == 0


def test_a_websocket_page_receives_an_inserted_row(
    page: WebDriver, pages: PageServer, serve: Callable[..., Served], mariadb: PrivateMariaDB,
    table: str,
) -> None:  # fmt: skip
    daemon = serve()
    ws_url = daemon.url.replace("http://", "ws://") + "/ws"
    page.get(pages.page(WEBSOCKET_PAGE, url=ws_url, channel=table))
    replies = until(page, "window.replies.length && window.replies", "the subscription")
    assert replies == [{"op": "subscribed", "channel": table}]
    mariadb.sql(f"UPDATE {table} SET v = 'x' WHERE n = 0; INSERT INTO {table} VALUES (7, 'ws')")
    (event,) = until(page, "window.received.length && window.received", "the row")
    assert (event["type"], event["channel"], event["data"]) == (
        "insert",
        table,
        {"n": 7, "v": "ws"},
    )
    assert page.execute_script("return window.wsClosed === undefined")
    stats = json.loads(daemon.get("/stats")[2])  # counted as a WebSocket, with its bytes
    assert stats["connections"]["websocket"] == 1 and stats["bytes_out"]["websocket"] > 100


def test_an_event_source_resumes_by_itself_across_a_daemon_restart(
    page: WebDriver, pages: PageServer, serve: Callable[..., Served], mariadb: PrivateMariaDB,
    table: str, tmp_path: Path,
) -> None:  # fmt: skip
    daemon = serve("--state-dir", str(tmp_path / "state"), port=free_port())
    page.get(pages.page(EVENT_SOURCE_PAGE, url=f"{daemon.url}/sse?channel={table}"))
    until(page, "window.opened", "the stream to open")

    def insert(first: int, last: int) -> None:
        mariadb.sql(
            "".join(f"INSERT INTO {table} VALUES ({n}, 'row {n}');" for n in range(first, last + 1))
        )

    insert(1, 3)
    until(page, "window.received.length >= 3", "rows 1-3")
    daemon.stop()
    until(page, "window.errors >= 1", "the page to notice the daemon is gone")
    insert(4, 8)  # while the daemon is down
    daemon.start()  # same port, same state directory
    until(page, "window.opened >= 2", "the EventSource to reconnect by itself", timeout=60)
    insert(9, 10)
    until(page, "window.received.length >= 10", "rows 4-10")
    received = page.execute_script("return window.received")
    assert [r["event"]["data"]["n"] for r in received] == list(range(1, 11))  # each once, in order
    ids = [int(r["id"]) for r in received]
    assert ids == [r["event"]["id"] for r in received]
    assert ids == sorted(set(ids)) and ids[-1] - ids[0] == 9  # consecutive: nothing in between


# the three ways a page talks to the daemon, each recording what happened
ALL_WAYS_PAGE = """
window.sse = []; window.ws = []; window.replies = [];
const es = new EventSource(config.sse);
es.onopen = () => { window.sseOpen = true; };
es.onerror = () => { window.sseState = es.readyState; };
es.addEventListener("insert", (e) => window.sse.push(JSON.parse(e.data)));
const ws = new WebSocket(config.ws);
ws.onopen = () => ws.send(JSON.stringify({op: "subscribe", channel: config.channel}));
ws.onmessage = (m) => {
  const message = JSON.parse(m.data);
  (message.op ? window.replies : window.ws).push(message);
};
ws.onclose = (e) => { window.wsClosed = e.code; };
fetch(config.stats).then((r) => r.json()).then(
  (s) => { window.fetched = "events" in s ? "ok" : "odd"; },
  (e) => { window.fetched = e.name; });
"""


def test_the_origins_allow_list_in_a_real_browser(
    page: WebDriver, pages: PageServer, other_pages: PageServer, serve: Callable[..., Served],
    mariadb: PrivateMariaDB, table: str,
) -> None:  # fmt: skip
    daemon = serve("--origins", f"{pages.origin},https://app.example")
    config = {
        "sse": f"{daemon.url}/sse?channel={table}",
        "ws": daemon.url.replace("http://", "ws://") + "/ws",
        "stats": f"{daemon.url}/stats",
        "channel": table,
    }
    # a page of an allowed origin: all three work
    page.get(pages.page(ALL_WAYS_PAGE, **config))
    until(page, "window.sseOpen && window.replies.length && window.fetched", "the allowed page")
    assert page.execute_script("return window.fetched") == "ok"
    mariadb.sql(f"INSERT INTO {table} VALUES (1, 'allowed')")
    until(page, "window.sse.length && window.ws.length", "the row on SSE and WebSocket")

    # another origin: the browser withholds the SSE and fetch answers, the daemon refuses
    # the WebSocket handshake
    page.get(other_pages.page(ALL_WAYS_PAGE, **config))
    until(page, "window.fetched && window.wsClosed && window.sseState === 2", "the refusals")
    assert page.execute_script("return window.fetched") == "TypeError"
    assert page.execute_script("return window.wsClosed") == 1006  # failed before opening
    assert page.execute_script("return window.replies.length") == 0
    mariadb.sql(f"INSERT INTO {table} VALUES (2, 'refused')")
    deadline = time.monotonic() + TIMEOUT
    while json.loads(daemon.get("/stats")[2])["events"] < 2:  # published: it would be here
        assert time.monotonic() < deadline, "the second row was not published"
        time.sleep(0.05)
    time.sleep(0.5)
    assert page.execute_script("return window.sse.length + window.ws.length") == 0
    logs = " ".join(entry["message"] for entry in page.get_log("browser"))
    assert "CORS policy" in logs and "403" in logs, logs
