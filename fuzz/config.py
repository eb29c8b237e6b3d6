"""Config files (tidings.config.load): the bytes of a TOML file, then every setting
checked; anything wrong must be a ConfigError naming it.
"""

from __future__ import annotations

import tempfile

from tidings.config import ConfigError, load

ERRORS = (ConfigError,)


def fuzz_one(data: bytes) -> None:
    # a file of its own per input, gone after it (libFuzzer's exit skips atexit handlers)
    with tempfile.NamedTemporaryFile(prefix="tidings-fuzz-", suffix=".toml") as file:
        file.write(data)
        file.flush()
        load(file.name, env={})
