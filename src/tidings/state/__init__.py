"""Durable state: the checkpoint (epoch, next id, binlog position) and the mark index.

See docs/topics/delivery.md for the design: ids are deterministic within an
epoch because the checkpoint ties a binlog position to the next id, and
replaying the binlog from there gives every later event its id again.
"""

from tidings.state.checkpoint import Checkpoint, CheckpointStore, ServerIdentity, StateError
from tidings.state.directory import StateDir
from tidings.state.index import Mark, MarkIndex, choose_warmup
from tidings.state.startup import ServerFacts, StartPlan, plan_start, read_server_facts
from tidings.state.writer import CheckpointWriter

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "CheckpointWriter",
    "Mark",
    "MarkIndex",
    "ServerFacts",
    "ServerIdentity",
    "StartPlan",
    "StateDir",
    "StateError",
    "choose_warmup",
    "plan_start",
    "read_server_facts",
]
