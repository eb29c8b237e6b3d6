"""Shared by the wire tests: run the RESP parser's tests with and without its C part."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tidings.wire import resp


def require_native() -> None:
    """The C parser must be built, unless TIDINGS_PURE_PYTHON=1 says it is not wanted."""
    if os.environ.get("TIDINGS_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("TIDINGS_PURE_PYTHON is set: the C parser is off")
    assert resp.NATIVE is not None, (
        "tidings.wire._cresp is not built: `pip install -e .` with a C compiler and headers"
    )


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
