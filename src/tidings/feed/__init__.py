"""A hub fed from an event feed: one process gives ids, others replay its events.

Theory of operation. The process that reads the binlog (or, without a
database, takes every client PUBLISH) gives each event its id as ever, on a
`FeedHub`: a `Hub` whose events and position marks also go to an `EventSink`.
Any number of other hubs are fed from that sink's messages (`codec`) by a
`FeedConsumer`, which publishes each event with the id it came with
(`Hub.apply`) and records each mark, so that history, resume, gaps and filters
behave the same on every consumer as on a single process. A consumer that
joins late is first sent a seed (`seed_frames`): the producer's history,
including what each channel has lost, and its marks.

`tidings serve --workers N` carries these messages over a unix socket per
worker (tidings.workers); a cluster (issue #6) would carry the same messages
through Redis Streams or NATS.
"""

from tidings.feed.codec import FeedError, FrameReader
from tidings.feed.consumer import FeedConsumer
from tidings.feed.hub import EventSink, FeedHub, seed_frames
from tidings.feed.status import RemoteSource, source_status

__all__ = [
    "EventSink",
    "FeedConsumer",
    "FeedError",
    "FeedHub",
    "FrameReader",
    "RemoteSource",
    "seed_frames",
    "source_status",
]
