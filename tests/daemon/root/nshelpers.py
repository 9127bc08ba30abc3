"""Helpers shared by the tap tests in namespaces: scratch namespaces, links, checksums."""

from __future__ import annotations

import contextlib
import secrets
import struct
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from netns.realise.nsenter import create_netns, in_netns

SCRATCH_PREFIX = "l2bt-"


@contextlib.contextmanager
def extra_ns() -> Iterator[str]:
    """One more scratch namespace with lo up and IPv6 off; removed on every exit path.

    Only threads of this process ever enter it, so removing it leaves nothing behind.
    """
    name = SCRATCH_PREFIX + secrets.token_hex(4)
    create_netns(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        disable_ipv6(name)
        yield name
    finally:
        pyroute2_netns.remove(name)


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
