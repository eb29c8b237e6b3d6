"""The compiled parts of tidings (project metadata is in pyproject.toml).

Each extension is optional: without a C compiler the build skips it and the pure-Python
code it speeds up runs instead (tidings.wire.outbox and tidings.wire.resp fall back by
themselves; TIDINGS_PURE_PYTHON=1 turns both off).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tidings.wire._cflush", ["src/tidings/wire/_cflush.c"], optional=True),
        Extension("tidings.wire._cresp", ["src/tidings/wire/_cresp.c"], optional=True),
    ],
)
