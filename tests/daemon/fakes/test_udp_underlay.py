"""Two sites over the real UDP transport on loopback: IPv4, IPv6 and dual-stack underlays."""

from __future__ import annotations

import socket

import pytest
import trio
from support import have_ipv6_loopback, site_toml

from l2bridge.core.config import parse_config
from l2bridge.io.fakes import FakeTap
from l2bridge.io.transport import TransportError, UdpTransport
from l2bridge.site.site import Site

BCAST = b"\xff" * 6


def free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def config(name: str, listen: str, peer: str, endpoint: str):
    return parse_config(site_toml(
        name, {"listen": f'"{listen}"', "keepalive": "0.2", "dead_after": "1", "insecure": "true",
               "control": f'"/nonexistent/{name}.sock"'},
        {peer: {"endpoint": f'"{endpoint}"'}}))


CASES = [
    pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
    pytest.param("[::1]", "[::1]", id="ipv6",
                 marks=pytest.mark.skipif(not have_ipv6_loopback(), reason="no ::1 here")),
    pytest.param("[::]", "127.0.0.1", id="dual-stack-listen-ipv4-peer"),
]


@pytest.mark.parametrize(("listen_host", "peer_host"), CASES)
async def test_frames_cross_a_real_udp_underlay(listen_host, peer_host):
    family = socket.AF_INET if peer_host == "127.0.0.1" else socket.AF_INET6
    bare = peer_host.strip("[]")
    pa, pb = free_port(family, bare), free_port(family, bare)
    a_cfg = config("a", f"{listen_host}:{pa}", "b", f"{peer_host}:{pb}")
    b_cfg = config("b", f"{peer_host}:{pb}", "a", f"{peer_host}:{pa}")
    taps = {"a": FakeTap(), "b": FakeTap()}
    sites = {}
    try:
        async with trio.open_nursery() as nursery:
            for cfg in (a_cfg, b_cfg):
                transport = UdpTransport.open(cfg.listen)
                sites[cfg.name] = Site(cfg, tap=taps[cfg.name], transport=transport)
                await nursery.start(sites[cfg.name].run)
            with trio.fail_after(20):  # clearly broken past this
                while not all(p.up for s in sites.values() for p in s.state.peers):
                    await trio.sleep(0.01)
                payload = bytes(range(256)) * 5 + b"!" * 220
                big = BCAST + bytes([2, 0, 0, 0, 0, 1]) + b"\x88\xb5" + payload
                assert len(big) == 1514
                taps["a"].inject(big)
                while not taps["b"].delivered:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        for site in sites.values():
            site.state.transport.close()
    assert taps["b"].delivered == [big]
    status = sites["b"].status()["peers"][0]
    assert status["reassembled"] == 1 and status["state"] == "up"


def test_busy_port_is_a_named_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        cfg = config("a", f"127.0.0.1:{port}", "b", "127.0.0.1:9")
        expected = rf"cannot listen on 127.0.0.1:{port}: .*EADDRINUSE"
        with pytest.raises(TransportError, match=expected):
            UdpTransport.open(cfg.listen)
