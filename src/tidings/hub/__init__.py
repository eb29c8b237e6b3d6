"""Channels, subscriptions and fan-out."""

from tidings.hub.history import History, HistoryLimits
from tidings.hub.hub import Hub, Subscriber
from tidings.hub.patterns import GlobPattern
from tidings.hub.resume import Replay, ResumeError

__all__ = [
    "GlobPattern",
    "History",
    "HistoryLimits",
    "Hub",
    "Replay",
    "ResumeError",
    "Subscriber",
]
