"""Fuzz targets, one module per parser that takes outside bytes; see fuzz/README.md.

A target module (fuzz/<name>.py) defines `ERRORS`, the exceptions its parser
documents for bad input, and `fuzz_one(data)`, which runs the parser on one input.
Anything else raised, a hang or runaway memory is a bug. `fuzz/run.py` drives a
target with atheris (libFuzzer); tests/test_fuzz.py runs every target under
hypothesis. Every module here is a target except the tools below and `_*` helpers.
"""

from __future__ import annotations

from pathlib import Path

_TOOLS = {"run", "make_corpus"}

#: every target, by name
TARGETS = tuple(
    sorted(
        path.stem
        for path in Path(__file__).parent.glob("*.py")
        if not path.stem.startswith("_") and path.stem not in _TOOLS
    )
)


def check_clear(exc: BaseException) -> None:
    """A documented error must say what is wrong."""
    assert str(exc).strip(), f"{type(exc).__name__} without a message"
