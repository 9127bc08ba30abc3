"""Shared fixtures for tests on real kernel devices inside network namespaces.

Every test here needs root (tests/conftest.py skips them, with the reason,
without it).  Each test gets its own namespace (``scratch_ns``: a scratch lab state's
``<prefix>-t``); the namespace, and every process still inside it, is removed on every
exit path, and by ``l2bridge lab clean`` after a killed runner.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

import pytest
from nshelpers import extra_ns

TEMP_PREFIX = "l2bt-"
TUN_MAJOR, TUN_MINOR = 10, 200


@pytest.fixture
def scratch_ns(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh scratch namespace with lo up and IPv6 off (``nshelpers.extra_ns``)."""
    with extra_ns(f"scratch namespace of {request.node.nodeid}") as name:
        yield name


@pytest.fixture
def public_tun_node() -> Iterator[str]:
    """A private copy of the /dev/net/tun character device, mode 0666.

    The host's /dev/net/tun may be root-only; tests that attach as an unprivileged
    user pass this path as ``dev_path`` so that the kernel's own ownership checks
    (TUNSETIFF) are what is tested, not the file mode of the device node.
    """
    directory = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "tun")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(TUN_MAJOR, TUN_MINOR))
        os.chmod(path, 0o666)
        yield path
    finally:
        shutil.rmtree(directory)
