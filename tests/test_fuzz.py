"""Every fuzz target (fuzz/*.py) for a short run under hypothesis; fuzz/run runs them long.

Per target: each seed (fuzz/corpus/<target>/) and each input that once found a bug
(fuzz/regressions/<target>/) runs with at most the parser's documented error; then a
few hundred inputs, the seeds mutated as a fuzzer would (cut short, bytes flipped,
lengths changed, pieces repeated, seeds spliced) or plain random bytes, must too,
each within a deadline. The targets themselves assert their parser's bounds (buffered
bytes, sizes) and that what they return is usable (e.g. encodes as event JSON).
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import TARGETS, check_clear

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"


def target(name: str) -> ModuleType:
    return importlib.import_module(f"fuzz.{name}")


def inputs(name: str, folder: str) -> list[bytes]:
    path = FUZZ / folder / name
    return [f.read_bytes() for f in sorted(path.iterdir())] if path.is_dir() else []


def run(module: ModuleType, data: bytes) -> None:
    try:
        module.fuzz_one(data)
    except module.ERRORS as exc:
        check_clear(exc)


def test_every_parser_has_a_target() -> None:
    assert set(TARGETS) >= {"resp", "http", "websocket", "ws_message", "sse_query", "filters"}
    assert set(TARGETS) >= {"patterns", "config", "mysqlwire", "binlog", "token"}


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_and_inputs_that_found_bugs_run_cleanly(name: str) -> None:
    module = target(name)
    seeds = inputs(name, "corpus")
    assert seeds, f"fuzz/corpus/{name}/ has no seeds: run fuzz/make_corpus.py"
    for data in [*seeds, *inputs(name, "regressions")]:
        run(module, data)


# values that make length fields interesting: zero, sign bits, all ones, just past a bound
_EDGES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xfb", b"\xfc", b"\xfd", b"\xfe",
          b"\xff\xff", b"\x00\x80", b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.integers(0, 5))
        if how == 0:  # cut short
            del data[at:]
        elif how == 1 and at < len(data):  # flip a byte
            data[at] = draw(st.integers(0, 255))
        elif how == 2:  # a length field, or any field, set to an edge value
            edge = draw(st.sampled_from(_EDGES))
            data[at : at + len(edge)] = edge
        elif how == 3:  # insert bytes
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == 4:  # repeat a piece
            piece = data[at : at + draw(st.integers(1, 64))]
            data[at:at] = piece * draw(st.integers(1, 8))
        else:  # splice with another seed
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


@pytest.mark.parametrize("name", TARGETS)
def test_mutated_and_random_inputs_raise_only_the_documented_error(name: str) -> None:
    module = target(name)
    seeds = inputs(name, "corpus")

    @settings(
        max_examples=300,
        deadline=timedelta(seconds=2),  # generous for a shared machine; hangs take far longer
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.one_of(mutated(seeds), st.binary(max_size=512)))
    def check(data: bytes) -> None:
        run(module, data)

    check()
