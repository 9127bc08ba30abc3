"""Storm control's kernel stage and the bridge flush, on a real bridge and tap (root).

A host's veth and a tap on one bridge in a scratch namespace: what the host sends
is what the bridge hands the tap, read back without blocking.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

from nshelpers import extra_ns, link_up
from pyroute2 import IPRoute

from l2bridge.core.classify import LOOP_PROBE_MAC
from l2bridge.core.config import parse_config
from l2bridge.core.storm import StormLimits
from l2bridge.io.netctl import BridgePlumbing
from l2bridge.io.stormguard import (
    MIN_LIMIT,
    NO_LIMIT,
    StormGuard,
    kernel_limit,
    program,
    site_limit,
)
from l2bridge.io.tap import open_tap
from netns.realise.nsenter import in_netns

SRC = bytes.fromhex("020000000001")


def frame(dst: bytes, marker: bytes) -> bytes:
    return dst + SRC + b"\x88\xb5" + marker.ljust(46, b"\0")


@contextlib.contextmanager
def lan() -> Iterator[tuple[str, int, socket.socket]]:
    """(namespace, the tap's fd, a raw socket on the host's veth) with the tap on br0."""
    with extra_ns() as ns:
        with IPRoute(netns=ns) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("add", ifname="host", kind="veth", peer="port")
        with in_netns(ns):
            tap = open_tap("l2b0", "tap")
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind(("host", 0))
        try:
            for name, master in (("br0", None), ("port", "br0"), ("host", None),
                                 ("l2b0", "br0")):
                link_up(ns, name, master=master)
            os.set_blocking(tap.fd, False)
            yield ns, tap.fd, sock
        finally:
            sock.close()
            tap.close()


def drain(fd: int) -> dict[bytes, int]:
    """Frames read from the tap, counted by their marker byte (the payload's first)."""
    time.sleep(0.2)
    got: dict[bytes, int] = {}
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return got
        key = data[14:15]
        got[key] = got.get(key, 0) + 1


def test_group_frames_beyond_the_limit_never_reach_the_tap_and_unicast_always_does() -> None:
    with lan() as (ns, fd, sock):
        with in_netns(ns), StormGuard("l2b0", 50) as guard:
            for _ in range(1000):
                sock.send(frame(b"\xff" * 6, b"B"))
            for _ in range(300):
                sock.send(frame(bytes.fromhex("020000000009"), b"U"))
            for _ in range(20):
                sock.send(frame(LOOP_PROBE_MAC, b"P"))
                sock.send(frame(bytes.fromhex("0180c2000000"), b"S"))
            got = drain(fd)
            assert got[b"B"] <= 50 * os.cpu_count()  # a window's worth per CPU
            assert (got[b"U"], got[b"P"], got[b"S"]) == (300, 20, 20)
            guard.set_limit(5000)  # a reload: the new limit at once
            for _ in range(400):  # (fewer than the tap's queue holds)
                sock.send(frame(b"\xff" * 6, b"C"))
            assert drain(fd)[b"C"] == 400
        with IPRoute(netns=ns) as ipr:  # it removed what it added
            index = ipr.link_lookup(ifname="l2b0")[0]
            kinds = {q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index)}
        assert "clsact" not in kinds


def test_the_kernel_limit_follows_the_rates() -> None:
    assert kernel_limit([StormLimits()]) == 400  # 2 x (1000 + 1000) frames/s x 0.1 s
    assert kernel_limit([StormLimits(broadcast=5, multicast=5)]) == MIN_LIMIT
    assert kernel_limit([StormLimits(), StormLimits(broadcast=9000)]) == 2000
    assert len(program(400, 3)) % 8 == 0
    site = parse_config('[site]\nname = "a"\ninsecure = true\nstorm_broadcast = 3000\n'
                        '[[peer]]\nname = "b"\nstorm_multicast = 9000\n')
    assert site_limit(site) == 2 * (3000 + 9000) // 10  # the peer's own limits count
    off = parse_config('[site]\nname = "a"\ninsecure = true\nstorm_control = false\n')
    assert site_limit(off) == NO_LIMIT


def test_the_bridge_forgets_what_it_learned_when_asked() -> None:
    with lan() as (ns, fd, sock):
        for _ in range(3):
            sock.send(frame(b"\xff" * 6, b"L"))  # br0 learns SRC on "port"
        time.sleep(0.1)
        with IPRoute(netns=ns) as ipr:
            port = ipr.link_lookup(ifname="port")[0]

            def learned() -> bool:
                return any(m.get_attr("NDA_LLADDR") == "02:00:00:00:00:01"
                           for m in ipr.fdb("dump", ifindex=port))

            assert learned()
            with in_netns(ns):
                BridgePlumbing(bridge="br0", tap="l2b0").flush_fdb()
            assert not learned()
