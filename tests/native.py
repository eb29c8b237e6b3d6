"""The optional C extensions in tests: required when built, skipped only when switched off."""

from __future__ import annotations

import os

import pytest

from tidings.wire import resp


def require_native() -> None:
    """The C helpers (tidings.wire._cresp) must be built, unless TIDINGS_PURE_PYTHON=1 says
    they are not wanted: a missing build fails rather than skips."""
    if os.environ.get("TIDINGS_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("TIDINGS_PURE_PYTHON is set: the C helpers are off")
    assert resp.NATIVE is not None, (
        "tidings.wire._cresp is not built: `pip install -e .` with a C compiler and headers"
    )
