"""Optional C extensions; each falls back to pure Python when it cannot be built or
TIDINGS_PURE_PYTHON=1 is set. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tidings.wire._cresp", ["src/tidings/wire/_cresp.c"], optional=True),
    ]
)
