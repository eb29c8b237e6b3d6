"""plan_start: new epochs, resume, warm-up from a mark, and the fatal cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.source.changes import Position
from tidings.state import (
    Checkpoint,
    Mark,
    ServerFacts,
    ServerIdentity,
    StartPlan,
    StateError,
    plan_start,
)

SERVER = ServerIdentity(1, None, "db1")
END = Position("binlog.000009", 800, "0-1-900")
FILES = frozenset({"binlog.000007", "binlog.000008", "binlog.000009"})
FACTS = ServerFacts(SERVER, FILES, END)
NOW = 1_760_000_000_000_000
CP = Checkpoint(
    1_700_000_000_000_000, 1_700_000_000_050_000, Position("binlog.000008", 4000), SERVER, 1.0
)
MARKS = [
    Mark(CP.epoch, Position("binlog.000006", 4)),  # purged since
    Mark(CP.epoch + 10_000, Position("binlog.000007", 500)),
    Mark(CP.epoch + 40_000, Position("binlog.000008", 100)),
]


def plan(
    checkpoint: Checkpoint | None,
    facts: ServerFacts = FACTS,
    *,
    new_epoch: bool = False,
    start: Position | None = None,
    history: int = 10_000,
    marks: list[Mark] = MARKS,
) -> StartPlan:
    return plan_start(
        checkpoint,
        facts,
        marks,
        state_dir=Path("/var/lib/tidings"),
        new_epoch=new_epoch,
        start=start,
        history=history,
        now_us=NOW,
    )


def test_no_checkpoint_is_a_new_epoch_at_the_end() -> None:
    p = plan(None)
    assert (p.epoch, p.first_id, p.live_from, p.read_from, p.new_epoch) == (
        NOW,
        NOW,
        NOW,
        END,
        True,
    )
    start = Position("binlog.000007", 4)
    assert plan(None, start=start).read_from == start


def test_resume_with_warmup_from_the_mark_history_events_back() -> None:
    p = plan(CP)
    assert not p.new_epoch
    assert p.epoch == CP.epoch
    assert p.first_id == CP.epoch + 40_000
    assert p.read_from == Position("binlog.000008", 100)
    assert p.live_from == CP.next_id
    far = plan(CP, history=30_000)
    assert far.first_id == CP.epoch + 10_000
    # the mark in a purged file is never chosen: the oldest readable one instead
    assert plan(CP, history=10**9).first_id == CP.epoch + 10_000


def test_resume_without_warmup() -> None:
    for p in (plan(CP, history=0), plan(CP, marks=[])):
        assert (p.first_id, p.live_from, p.read_from) == (
            CP.next_id,
            CP.next_id,
            CP.position,
        )
    # the server would not list its binlogs: no warm-up (cannot tell what is readable)
    p = plan(CP, ServerFacts(SERVER, None, END))
    assert p.read_from == CP.position


def test_purged_checkpoint_is_fatal_unless_new_epoch() -> None:
    facts = ServerFacts(SERVER, frozenset({"binlog.000009"}), END)
    with pytest.raises(StateError) as info:
        plan(CP, facts)
    message = str(info.value)
    assert "no longer has binlog file binlog.000008" in message
    assert "its oldest is binlog.000009" in message
    assert "--new-epoch" in message and "binlog_expire_logs_seconds" in message
    p = plan(CP, facts, new_epoch=True)
    assert p.new_epoch and p.read_from == END
    assert p.epoch == NOW and p.epoch > CP.next_id


def test_another_server_is_fatal_unless_new_epoch() -> None:
    other = ServerFacts(ServerIdentity(2, None, "db2"), FILES, END)
    with pytest.raises(StateError, match=r"belongs to another server.*server_id 2 instead of 1"):
        plan(CP, other)
    assert plan(CP, other, new_epoch=True).new_epoch
    # a new hostname alone (containers) is the same server
    renamed = ServerFacts(ServerIdentity(1, None, "f00d"), FILES, END)
    assert not plan(CP, renamed).new_epoch


def test_new_epoch_stays_above_old_ids_when_the_clock_went_back() -> None:
    future = Checkpoint(NOW + 5_000_000, NOW + 5_000_100, CP.position, SERVER, 1.0)
    p = plan(future, new_epoch=True)
    assert p.epoch == NOW + 5_000_101


def test_changed_event_options_are_fatal_unless_new_epoch() -> None:
    before = {"ddl_events": False, "outbox": "tidings.outbox"}
    after = {"ddl_events": True, "outbox": "tidings.outbox"}
    cp = Checkpoint(CP.epoch, CP.next_id, CP.position, SERVER, 1.0, before)

    def with_events(events: dict[str, object] | None, new_epoch: bool = False) -> StartPlan:
        return plan_start(
            cp, FACTS, MARKS, state_dir=Path("/s"), new_epoch=new_epoch, start=None,
            history=0, now_us=NOW, events=events,
        )  # fmt: skip

    assert with_events(before).first_id == cp.next_id
    with pytest.raises(StateError, match=r"ddl_events False -> True.*--new-epoch"):
        with_events(after)
    assert with_events(after, new_epoch=True).new_epoch
    # a checkpoint that does not say (or a caller that does not) is not second-guessed
    assert not with_events(None).new_epoch
    old = Checkpoint(CP.epoch, CP.next_id, CP.position, SERVER, 1.0)
    assert not plan_start(
        old, FACTS, [], state_dir=Path("/s"), new_epoch=False, start=None, history=0,
        now_us=NOW, events=after,
    ).new_epoch  # fmt: skip
