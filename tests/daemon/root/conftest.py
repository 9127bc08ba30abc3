"""Shared fixtures for tests on real kernel devices inside network namespaces.

Every test here needs root (tests/conftest.py skips them, with the reason,
without it).  Each test gets its own namespace named ``l2bt-<random hex>``; the
namespace, and every process still inside it, is removed on every exit path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

SCRATCH_PREFIX = "l2bt-"
TUN_MAJOR, TUN_MINOR = 10, 200



def _kill_and_reap(ns: str) -> None:
    from netns.realise.nsenter import pids_in_netns

    own = os.getpid()
    for pid in pids_in_netns(ns):
        if pid == own:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    """A fresh namespace ``l2bt-<hex>`` with lo up and IPv6 off (no kernel chatter).

    IPv6 is disabled so that the kernel sends nothing on its own (no router
    solicitations, no MLD): every frame a test sees is one it caused.
    """
    from pyroute2 import IPRoute
    from pyroute2 import netns as pyroute2_netns

    from netns.realise.nsenter import create_netns, netns_preexec

    name = SCRATCH_PREFIX + secrets.token_hex(4)
    create_netns(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        subprocess.run(
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            preexec_fn=netns_preexec(name),
            check=True,
            timeout=10,
        )
        yield name
    finally:
        _kill_and_reap(name)
        pyroute2_netns.remove(name)


@pytest.fixture
def public_tun_node() -> Iterator[str]:
    """A private copy of the /dev/net/tun character device, mode 0666.

    The host's /dev/net/tun may be root-only; tests that attach as an unprivileged
    user pass this path as ``dev_path`` so that the kernel's own ownership checks
    (TUNSETIFF) are what is tested, not the file mode of the device node.
    """
    directory = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    try:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "tun")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(TUN_MAJOR, TUN_MINOR))
        os.chmod(path, 0o666)
        yield path
    finally:
        shutil.rmtree(directory)
