"""Channels, subscriptions and fan-out."""

from tidings.hub.hub import Hub, Subscriber
from tidings.hub.patterns import GlobPattern

__all__ = ["GlobPattern", "Hub", "Subscriber"]
