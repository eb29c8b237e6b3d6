"""The compiled parts of tidings (project metadata is in pyproject.toml).

Each extension is optional: without a C compiler the build skips it and the pure-Python
code it speeds up runs instead (tidings.wire.outbox falls back by itself).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tidings.wire._cflush", ["src/tidings/wire/_cflush.c"], optional=True),
    ],
)
