"""Shared fixtures: a throwaway MariaDB with binlog on (ROW, FULL metadata)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.sandbox import PrivateMariaDB

_server_ids = itertools.count(100)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    """One private MariaDB for the session; tests use databases of their own."""
    db = PrivateMariaDB(tmp_path_factory.mktemp("mariadb"))
    db.start()
    yield db
    db.stop()


@pytest.fixture
def own_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A private MariaDB for one test: for tests that stop, kill or reconfigure it."""
    db = PrivateMariaDB(tmp_path / "mariadb")
    db.start()
    yield db
    db.stop()


@pytest.fixture
def replica_server_id() -> int:
    """A server_id unique within the test session, for replica connections."""
    return next(_server_ids)
