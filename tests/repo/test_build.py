"""The optional compiled sealer is built wherever tools/setup has put the tools for it."""

from __future__ import annotations

import os
import shutil

from l2bridge.core import noise


def test_the_compiled_sealer_is_built_wherever_the_tools_are() -> None:
    """tools/setup installs gcc and libcrypto's and Python's headers; setup.py then builds
    l2bridge/core/_sealer.c (optional only for machines without them)."""
    if shutil.which("gcc") and os.path.exists("/usr/include/openssl/evp.h"):
        assert noise._sealer is not None, "run tools/setup: the extension did not build"
        assert noise.COMPILED or os.environ.get("L2BRIDGE_SEALER") == "python"
