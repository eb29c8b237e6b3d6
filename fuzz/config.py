"""Config files (tidings.config.load): the bytes of a TOML file, then every setting
checked; anything wrong must be a ConfigError naming it.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

from tidings.config import ConfigError, load

ERRORS = (ConfigError,)

_FILE = Path(tempfile.mkdtemp(prefix="tidings-fuzz-")) / "tidings.toml"
atexit.register(_FILE.parent.rmdir)


def fuzz_one(data: bytes) -> None:
    _FILE.write_bytes(data)
    try:
        load(_FILE, env={})
    finally:
        os.unlink(_FILE)
