"""The reader's feed over real unix sockets: every worker gets every event once, a late one
is seeded first, and a worker that stops reading is cut off without holding up the others."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from tidings.feed import FeedConsumer, FeedHub, FrameReader, seed_frames
from tidings.feed.codec import DecodedPublish, frame_publish
from tidings.hub import Hub
from tidings.workers.link import WorkerFeed, WorkerLink

TIMEOUT = 10


class Worker(asyncio.Protocol):
    """The worker's end: a hub fed from the socket."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.consumer = FeedConsumer(self.hub)
        self.frames = FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for message in self.frames.feed(data):
            assert self.consumer.message(message)


async def pair(feed: WorkerFeed, index: int) -> tuple[WorkerLink, Worker]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, link = await loop.create_unix_connection(lambda: WorkerLink(feed, index), sock=ours)
    _, worker = await loop.create_unix_connection(Worker, sock=theirs)
    return link, worker


async def until(condition: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.005)


async def test_every_worker_gets_every_event_once_and_a_late_one_its_seed_first() -> None:
    requests: list[DecodedPublish] = []
    feed = WorkerFeed(1 << 20, requests.append)
    hub = FeedHub(feed)
    early_link, early = await pair(feed, 1)
    feed.attach(early_link)  # waits: the ids are not settled yet
    assert not feed.links
    hub.epoch = hub.next_id = 500
    feed.open(lambda: seed_frames(hub))
    for n in range(100):
        hub.publish("c", b"%d" % n)
    late_link, late = await pair(feed, 2)
    feed.attach(late_link)  # mid-iteration: the queued events go out to the others first
    for n in range(100, 150):
        hub.publish("c", b"%d" % n)
    await until(lambda: early.hub.next_id == late.hub.next_id == 650, "both at id 650")
    for worker in (early, late):
        assert [e.id for e in worker.hub.history.after(0)] == list(range(500, 650))
        assert [e.body for e in worker.hub.history.after(0)] == [b"%d" % n for n in range(150)]
    # a worker's PUBLISH reaches the reader's callback
    assert late.transport is not None
    late.transport.write(frame_publish(9, "news", b"hi"))
    await until(lambda: bool(requests), "the PUBLISH request")
    assert (requests[0].ref, requests[0].channel, requests[0].payload) == (9, "news", b"hi")
    for link in (early_link, late_link):
        link.transport.close()


async def test_a_worker_that_stops_reading_is_cut_off_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = WorkerFeed(1 << 20, lambda request: None)
    hub = FeedHub(feed)
    feed.open(lambda: seed_frames(hub))
    reading_link, reading = await pair(feed, 1)
    stalled_link, stalled = await pair(feed, 2)
    feed.attach(reading_link)
    feed.attach(stalled_link)
    assert stalled.transport is not None
    stalled.transport.pause_reading()
    body = b"x" * 50_000
    caplog.set_level(logging.WARNING, "tidings.workers")
    for _ in range(100):  # 5 MB, in batches the reading worker keeps up with
        for _ in range(10):
            hub.publish("big", body)
        await asyncio.sleep(0.01)
    await until(lambda: reading.hub.next_id == hub.next_id, "the reading worker caught up")
    assert stalled_link not in feed.links and stalled_link.transport.is_closing()
    assert reading_link in feed.links
    assert "worker 2 is 1 MiB behind the event feed" in caplog.text
    reading_link.transport.close()
