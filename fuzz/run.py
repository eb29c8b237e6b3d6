"""Run one fuzz target under atheris: `fuzz/run <target> [libFuzzer flags] [corpus dirs]`.

Without corpus directories it reads the committed seeds in fuzz/corpus/<target>/
and keeps what it finds in fuzz/.work/<target>/corpus/ (crash and timeout
reproducers go to fuzz/.work/<target>/). The defaults below bound every input's
time and the process's memory; flags given on the command line win. Re-running a
reproducer: `fuzz/run <target> fuzz/.work/<target>/crash-...`.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# run as a script, this directory comes first on sys.path: its http.py and config.py
# would shadow the standard library's modules of those names
sys.path[0] = str(HERE.parent)

import importlib  # noqa: E402
from collections.abc import Callable  # noqa: E402

import atheris  # noqa: E402

#: an input that runs longer than -timeout seconds is reported as a hang
DEFAULTS = ("-timeout=10", "-rss_limit_mb=2048", "-max_len=8192", "-print_final_stats=1")


def main(argv: list[str]) -> None:
    from fuzz import TARGETS, check_clear

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz/run TARGET [libFuzzer flags] [corpus dirs]\nTARGET: {TARGETS}")
    name, rest = argv[1], argv[2:]
    # coverage feedback from tidings, and from the stdlib parsers it hands bytes to
    with atheris.instrument_imports(include=["tidings", "tomllib", "urllib.parse"]):
        target = importlib.import_module(f"fuzz.{name}")
    fuzz_one: Callable[[bytes], None] = target.fuzz_one
    errors: tuple[type[BaseException], ...] = target.ERRORS

    def one_input(data: bytes) -> None:
        try:
            fuzz_one(data)
        except errors as exc:  # the parser's documented answer to bad input
            check_clear(exc)

    work = HERE / ".work" / name
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    given = {flag.split("=")[0] for flag in rest if flag.startswith("-")}
    flags = [f for f in DEFAULTS if f.split("=")[0] not in given]
    flags.append(f"-artifact_prefix={work}/")
    if not any(not arg.startswith("-") for arg in rest):  # no corpus or reproducer given
        rest = [*rest, str(work / "corpus"), str(HERE / "corpus" / name)]
    atheris.Setup([argv[0], *flags, *rest], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
