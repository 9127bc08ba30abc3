"""Build of the optional C extension ``l2bridge.core._sealer`` (everything else is in
pyproject.toml).  ``optional=True``: without a compiler, libcrypto's headers or Python's,
the package installs without it and l2bridge seals in pure Python (same bytes)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("l2bridge.core._sealer", ["l2bridge/core/_sealer.c"], libraries=["crypto"],
              extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
              optional=True),
])
