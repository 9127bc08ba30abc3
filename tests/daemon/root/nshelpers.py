"""Helpers shared by the tap tests in namespaces: scratch namespaces, links, checksums."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
from collections.abc import Iterator

from pyroute2 import IPRoute

from netns.realise.nsenter import in_netns, pids_in_netns
from netns.realise.registry import scratch_namespaces


@contextlib.contextmanager
def extra_ns(purpose: str = "a daemon test's scratch namespace") -> Iterator[str]:
    """A scratch namespace with lo up and IPv6 off (no kernel chatter); removed, with every
    process still inside (killed and reaped), on every exit path.

    It is recorded as a scratch lab state (``scratch_namespaces``) before it exists, so
    ``l2bridge lab clean`` removes it if the test runner is killed.  IPv6 is off so that
    the kernel sends nothing on its own (no router solicitations, no MLD): every frame a
    test sees is one it caused.
    """
    with scratch_namespaces(purpose, ["t"]) as (name,):
        try:
            with IPRoute(netns=name) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            disable_ipv6(name)
            yield name
        finally:
            kill_and_reap(name)


def kill_and_reap(ns: str) -> None:
    """SIGKILL every process in ``ns`` but this one, and reap those that are our children."""
    own = os.getpid()
    for pid in pids_in_netns(ns):
        if pid == own:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def disable_ipv6(ns: str) -> None:
    with in_netns(ns):
        for scope in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "w") as f:
                f.write("1")


def link_up(ns: str, name: str, address: str | None = None, master: str | None = None) -> None:
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        if master is not None:
            ipr.link("set", index=index, master=ipr.link_lookup(ifname=master)[0])
        if address is not None:
            ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.link("set", index=index, state="up")


def checksum(data: bytes, start: int = 0) -> int:
    """The Internet checksum's one's-complement sum (not inverted), folded to 16 bits."""
    if len(data) % 2:
        data += b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
