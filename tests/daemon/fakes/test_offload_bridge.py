"""Super-frames through whole sites over in-memory fakes, in virtual time.

Offload on both sides (bursts), the fallbacks (a peer without offload, a tap
without vnet_hdr, ``offload = false``), loss of one datagram, a hub relaying a
burst, and the encrypted path.
"""

from __future__ import annotations

import random
import struct

import pytest
import trio
from superframes import (
    final,
    ipv4_tcp_superframe,
    tcp_checksum_ok,
    tcp_fields,
    udp_read,
)
from support import site_toml

from l2bridge.core import keys, noise
from l2bridge.core import offload as ol
from l2bridge.core.config import parse_config
from l2bridge.io.fakes import FakeNetwork, FakeTap
from l2bridge.ops.report import format_show
from l2bridge.site.site import Site

BCAST = b"\xff" * 6


def addr_of(name: str) -> tuple[str, int]:
    return (f"10.0.0.{ord(name[0])}", 55555)


def config(name: str, peers: list[str], *, secure: dict[str, bytes] | None = None,
           hub: bool = False, **site: str) -> object:
    host, port = addr_of(name)
    table = {"listen": f'"{host}:{port}"', "keepalive": "1", "dead_after": "3",
             "control": f'"/nonexistent/{name}.sock"', "hub": "true" if hub else "false",
             "wan_mtu": "1500"}
    table.update({"insecure": "true"} if secure is None else {"private_key_file": '"/unused"'})
    table.update(site)
    peer_tables = {}
    for peer in peers:
        h, p = addr_of(peer)
        peer_tables[peer] = {"endpoint": f'"{h}:{p}"'}
        if secure is not None:
            peer_tables[peer]["public_key"] = f'"{keys.encode_key(keys.public_key(secure[peer]))}"'
    return parse_config(site_toml(name, table, peer_tables), f"{name}.toml")


class Sites:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.net = FakeNetwork()
        self.taps: dict[str, FakeTap] = {}
        self.bridges: dict[str, Site] = {}
        self.sent: list[bytes] = []
        self.lose: set[int] = set()  # indexes (into self.sent) of datagrams to lose
        self.net.drop = self._drop

    def _drop(self, data: bytes, src: tuple, dst: tuple) -> bool:
        self.sent.append(data)
        return len(self.sent) - 1 in self.lose

    async def start(self, cfg, *, vnet: bool = True, private: bytes | None = None) -> Site:
        tap = FakeTap()
        tap.vnet_hdr = vnet
        transport = self.net.transport(*addr_of(cfg.name))
        identity = noise.Identity(private) if private is not None else None
        bridge = Site(cfg, tap=tap, transport=transport, identity=identity,
                        clock_unix=lambda: 1.7e9 + trio.current_time())
        await self.nursery.start(bridge.run)
        self.taps[cfg.name], self.bridges[cfg.name] = tap, bridge
        return bridge


@pytest.fixture
async def sites(nursery):
    yield Sites(nursery)
    nursery.cancel_scope.cancel()


async def pair(sites: Sites, *, a_vnet=True, b_vnet=True, b_offload=True, secure=False):
    privs = {n: keys.generate_private_key() for n in "ab"} if secure else None
    extra = {} if b_offload else {"offload": "false"}
    await sites.start(config("a", ["b"], secure=privs), vnet=a_vnet,
                      private=privs["a"] if privs else None)
    await sites.start(config("b", ["a"], secure=privs, **extra), vnet=b_vnet,
                      private=privs["b"] if privs else None)
    await trio.sleep(0.5)


def payload_of(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def delivered_stream(tap: FakeTap, base_seq: int = 1000) -> dict[int, bytes]:
    """TCP payload by offset, from whatever the tap got (segmenting super-frames)."""
    got: dict[int, bytes] = {}
    for raw in tap.delivered:
        frames = ol.segment(ol.parse_vnet(raw), raw[ol.VNET_HDR_LEN:]) if tap.vnet_hdr else [raw]
        for f in frames:
            if f[12:14] != b"\x08\x00":
                continue
            assert tcp_checksum_ok(f)
            fields = tcp_fields(f)
            got[fields["seq"] - base_seq] = fields["payload"]
    return got


async def test_both_sides_offload_a_super_frame_crosses_whole(sites, autojump_clock):
    await pair(sites)
    a, b = sites.bridges["a"], sites.bridges["b"]
    assert a.state.peers.by_name["b"].offload is True and b.state.peers.by_name["a"].offload is True
    meta, frame = ipv4_tcp_superframe(payload_of(60000))
    before = len(sites.sent)
    sites.taps["a"].inject(meta.pack() + frame)
    await trio.sleep(0.01)
    assert sites.taps["b"].delivered == [meta.pack() + frame]
    chunk = ol.chunk_size_for(a.state.budget.max_plaintext, meta.hdr_len)
    assert len(sites.sent) - before == -(-60000 // chunk)  # one datagram per chunk
    assert a.status()["peers"][0]["bursts_out"] == 1
    assert b.status()["peers"][0]["bursts_in"] == 1
    assert b.status()["local"]["super_frames_out"] == 1


@pytest.mark.parametrize(
    ("b_vnet", "b_offload"), [(False, True), (True, False)], ids=["tap-without-vnet", "offload-off"]
)
async def test_a_peer_without_offload_gets_ordinary_frames(sites, autojump_clock, b_vnet,
                                                           b_offload):
    await pair(sites, b_vnet=b_vnet, b_offload=b_offload)
    assert sites.bridges["a"].state.peers.by_name["b"].offload is False
    payload = payload_of(20000)
    meta, frame = ipv4_tcp_superframe(payload)
    sites.taps["a"].inject(meta.pack() + frame)
    await trio.sleep(0.01)
    tap = sites.taps["b"]
    assert len(tap.delivered) == -(-20000 // 1448)
    if b_vnet:
        assert all(raw[:ol.VNET_HDR_LEN] == ol.PLAIN_VNET_HDR for raw in tap.delivered)
        tap.delivered = [raw[ol.VNET_HDR_LEN:] for raw in tap.delivered]
        tap.vnet_hdr = False
    got = delivered_stream(tap)
    assert b"".join(got[k] for k in sorted(got)) == payload
    assert sites.bridges["a"].status()["peers"][0]["bursts_out"] == 0


async def test_a_tap_without_vnet_sends_plain_frames_to_an_offload_peer(sites, autojump_clock):
    await pair(sites, a_vnet=False)
    assert sites.bridges["b"].state.peers.by_name["a"].offload is False
    assert sites.bridges["a"].state.peers.by_name["b"].offload is True
    plain = BCAST + bytes.fromhex("020000000009") + b"\x88\xb5" + b"p" * 100
    sites.taps["a"].inject(plain)
    await trio.sleep(0.01)
    assert sites.taps["b"].delivered == [ol.PLAIN_VNET_HDR + plain]


async def test_one_lost_datagram_costs_one_chunk(sites, autojump_clock):
    await pair(sites)
    payload = payload_of(50000)
    meta, frame = ipv4_tcp_superframe(payload)
    sites.lose = {len(sites.sent) + 5}
    sites.taps["a"].inject(meta.pack() + frame)
    await trio.sleep(0.01)
    tap = sites.taps["b"]
    assert len(tap.delivered) == 2  # the runs before and after the hole
    got = delivered_stream(tap)
    chunk = ol.chunk_size_for(sites.bridges["a"].state.budget.max_plaintext, meta.hdr_len)
    assert sum(map(len, got.values())) == 50000 - chunk
    for at, data in got.items():
        assert data == payload[at:at + len(data)]
    counters = sites.bridges["b"].status()["peers"][0]["burst_counters"]
    assert counters["lost_chunks"] == 1 and counters["partial_bursts"] == 1


async def test_a_checksum_offloaded_small_frame_arrives_with_a_final_checksum(sites,
                                                                             autojump_clock):
    await pair(sites, b_vnet=False)
    meta, frame = ipv4_tcp_superframe(b"ack")
    raw = struct.pack("<BBHHHH", ol.F_NEEDS_CSUM, ol.GSO_NONE, 0, 0, meta.csum_start,
                      meta.csum_offset) + frame
    sites.taps["a"].inject(raw)
    await trio.sleep(0.01)
    [got] = sites.taps["b"].delivered
    assert tcp_checksum_ok(got) and got != frame and len(got) == len(frame)


async def test_a_hub_relays_a_burst_between_spokes(sites, autojump_clock):
    await sites.start(config("h", ["x", "y"], hub=True))
    await sites.start(config("x", ["h"]))
    await sites.start(config("y", ["h"]))
    await trio.sleep(0.5)
    meta, frame = ipv4_tcp_superframe(payload_of(30000))
    sites.taps["x"].inject(meta.pack() + frame)  # unknown destination: flooded
    await trio.sleep(0.01)
    assert sites.taps["y"].delivered == [meta.pack() + frame]
    assert sites.taps["h"].delivered == [meta.pack() + frame]
    assert sites.bridges["h"].status()["peers"][1]["bursts_out"] == 1


async def test_encrypted_bursts_cross_and_nothing_is_in_the_clear(sites, autojump_clock):
    await pair(sites, secure=True)
    marker = b"SECRET-PAYLOAD" * 3000
    meta, frame = ipv4_tcp_superframe(marker)
    sites.taps["a"].inject(meta.pack() + frame)
    await trio.sleep(0.01)
    assert sites.taps["b"].delivered == [meta.pack() + frame]
    assert not any(b"SECRET" in d for d in sites.sent)
    assert sites.bridges["a"].state.peers.by_name["b"].offload is True


@pytest.mark.parametrize("b_vnet", [True, False], ids=["offload-peer", "plain-peer"])
async def test_small_udp_datagrams_of_one_flow_cross_as_one_burst(sites, autojump_clock, b_vnet):
    await pair(sites, b_vnet=b_vnet)
    reads = [udp_read(bytes([i]) * 64, ip_id=i) for i in range(40)]
    before = len(sites.sent)
    for raw in reads:
        sites.taps["a"].inject(raw)
    await trio.sleep(0.01)
    tap = sites.taps["b"]
    if b_vnet:
        assert len(sites.sent) - before == 2  # 40 × 106-byte frames in two chunks
        [raw] = tap.delivered
        frames = ol.segment(ol.parse_vnet(raw), raw[ol.VNET_HDR_LEN:])
    else:
        frames = tap.delivered  # one frame per datagram, each checksum final
    assert frames == [final(r) for r in reads]


async def test_show_reports_offload_and_workers(sites, autojump_clock):
    await pair(sites)
    meta, frame = ipv4_tcp_superframe(payload_of(5000))
    sites.taps["a"].inject(meta.pack() + frame)
    await trio.sleep(0.01)
    a = sites.bridges["a"]
    a.state.status_sections["workers"] = lambda: {
        "count": 2, "followers": [{"lane": 1, "pid": 4242,
                                   "local": {"frames_in": 7, "frames_out": 9}}]}
    text = format_show(a.status())
    assert "  offload: super-frames in 1, out 0; UDP GSO off, GRO off" in text
    assert "  bursts: 0 received, 1 sent (peer accepts bursts)" in text
    assert "  workers: 2 (this one is worker 0)" in text
    assert "    worker 1 (pid 4242): from LAN 7 frames, to LAN 9 frames" in text
