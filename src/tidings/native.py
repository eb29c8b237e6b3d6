"""The optional C extensions (tidings.wire._cflush, tidings.wire._cresp): whether to use them.

Each one has a pure-Python fallback that runs when it was not built (no compiler at
install time) or when `TIDINGS_PURE_PYTHON` is set to anything but "" or "0", which the
benchmarks use to compare both builds in one run.
"""

from __future__ import annotations

import os

__all__ = ["PURE_PYTHON_ENV", "pure_python"]

PURE_PYTHON_ENV = "TIDINGS_PURE_PYTHON"


def pure_python() -> bool:
    """Whether the environment asks for the pure-Python code instead of the C parts."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")
