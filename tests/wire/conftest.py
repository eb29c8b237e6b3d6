"""Shared by the wire tests: run the RESP parser's tests with and without its C part."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.native import require_native
from tidings.wire import resp


@pytest.fixture(params=["c", "python"])
def resp_parser_kind(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Every RespParser made in the test: with the C fast path ("c") or pure Python."""
    if request.param == "c":
        require_native()
    else:
        monkeypatch.setattr(resp, "NATIVE", None)
    yield request.param
