"""The soak run, short (bench/soak.py): a few hundred subscribers, steady writes and
reconnect churn against a real `tidings serve` and a private MariaDB, every event of every
connection checked for order, gaps and duplicates.

The long run (30 minutes, 19,000 subscribers) is in docs/reliability-soak.md. These runs
assert no timings: the machine is shared and slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "bench" / "soak.py"


def soak(tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    """Run bench/soak.py with the venv's python: exit code, printed table, JSON figures."""
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(SOAK), "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert out.exists(), result.stderr[-3000:]
    return result.returncode, result.stdout, json.loads(out.read_text())


def test_short_soak_accounts_for_every_event(tmp_path: Path) -> None:
    code, table, r = soak(
        tmp_path,
        *("--minutes", "0.4", "--subscribers", "300", "--rate", "10", "--churn", "5"),
        *("--timed", "20", "--sample", "4", "--warmup", "8"),
    )
    assert code == 0, (r["failures"], r["notes"], r["daemon_log_tail"])
    assert r["failures"] == []
    # every subscriber got every row of its table, in order, once, across its reconnects
    assert r["written"] == 240
    assert r["expected"] == 240 * 300
    assert r["accounted"] == r["expected"]
    assert r["received"] == r["expected"]  # no duplicate either
    assert r["lost"] == 0
    assert r["violations"] == 0
    assert r["server_closes"] == 0 and r["connect_failures"] == 0 and r["behind"] == 0
    # the churn happened, both ways of closing
    assert r["reconnects"] > 50
    assert 0 < r["resets"] < r["reconnects"]
    # figures were sampled and printed
    samples = r["samples"]
    assert len(samples) >= 4
    assert all(s["rss_kib"] > 0 and s["fds"] > 0 for s in samples)
    assert sum(s["latency_samples"] for s in samples) > 0
    assert r["p99_ms"]["max"] > 0
    assert r["daemon_exit"] == 0 and r["daemon_log_errors"] == 0
    for row in ("| events lost | 0 |", "| sequence violations | 0 |", "| verdict | pass |"):
        assert row in table
    assert "RSS slope KiB/min" in table and "p99 ms per window" in table


def test_the_check_catches_a_skipped_event(tmp_path: Path) -> None:
    """Resuming one id too far skips an event on every reconnect: the run must say so."""
    code, table, r = soak(
        tmp_path,
        *("--minutes", "0.2", "--subscribers", "100", "--rate", "10", "--churn", "10"),
        *("--timed", "10", "--sample", "4", "--drain", "5", "--resume-offset", "1"),
        *("--filler", "0"),  # then ids are consecutive within the channel
    )
    assert code == 1
    assert r["gaps"] > 0 and r["lost"] > 0
    assert r["duplicates"] == 0
    assert any("events lost" in f for f in r["failures"])
    assert "| verdict | pass |" not in table


def test_the_check_catches_a_repeated_event(tmp_path: Path) -> None:
    code, _, r = soak(
        tmp_path,
        *("--minutes", "0.2", "--subscribers", "100", "--rate", "10", "--churn", "10"),
        *("--timed", "10", "--sample", "4", "--drain", "5", "--resume-offset", "-1"),
        *("--filler", "0"),
    )
    assert code == 1
    assert r["duplicates"] > 0 and r["received"] > r["accounted"]
    assert r["lost"] == 0  # a repeat loses nothing: only the sequence check catches it
    assert any("sequence violations" in f for f in r["failures"])
