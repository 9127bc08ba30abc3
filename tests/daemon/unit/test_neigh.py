"""ARP/ND suppression and the classification of flooded frames: parsing, bindings,
conflicts, answers, and a table that stays bounded under a flood of made-up bindings."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from l2bridge.core import neigh
from l2bridge.core.classify import Kind, classify, ipv6_upper, l3_offset
from l2bridge.core.neigh import Bindings, Learned, parse, reply
from l2bridge.core.offload import ones_sum

BCAST = b"\xff" * 6
A, B, C = (bytes([2, 0, 0, 0, 0, n]) for n in (1, 2, 3))


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def arp(op: int, sha: bytes, spa: str, tpa: str, *, tha: bytes = bytes(6), dst: bytes = BCAST,
        vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, ip4(spa), tha, ip4(tpa))
    return dst + sha + tag + b"\x08\x06" + body + bytes(18)


def nd(kind: int, src_mac: bytes, src: str, dst: str, body: bytes, *, hop: int = 255,
       ext: bytes = b"", first: int = 0) -> bytes:
    """An ICMPv6 message; ``ext`` an extension header of type ``first`` ahead of it."""
    icmp = bytes([kind, 0, 0, 0]) + body
    nxt = 58 if not ext else first
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(icmp), nxt, hop, ip6(src),
                     ip6(dst))
    return bytes.fromhex("333300000001") + src_mac + b"\x86\xdd" + ip + ext + icmp


def ns(src_mac: bytes, src: str, target: str, *, slla: bool = True) -> bytes:
    opt = bytes([1, 1]) + src_mac if slla else b""
    return nd(135, src_mac, src, "ff02::1:ff00:1", bytes(4) + ip6(target) + opt)


def na(src_mac: bytes, target: str, flags: int) -> bytes:
    return nd(136, src_mac, target, "ff02::1", bytes([flags, 0, 0, 0]) + ip6(target)
              + bytes([2, 1]) + src_mac)


# ---------------------------------------------------------------- classification


def test_classify_sees_through_tags_options_and_extension_headers() -> None:
    assert classify(arp(1, A, "10.0.0.1", "10.0.0.2", vlan=5)) is Kind.ARP
    assert l3_offset(arp(1, A, "10.0.0.1", "10.0.0.2", vlan=5))[:2] == (5, 0x0806)
    hbh = bytes([58, 0]) + bytes(6)  # hop-by-hop, then ICMPv6
    assert classify(nd(134, A, "fe80::1", "ff02::1", bytes(12), ext=hbh)) is Kind.RA
    assert classify(nd(133, A, "fe80::1", "ff02::2", bytes(4))) is Kind.RS
    frag_first = bytes([58, 0, 0, 0, 0, 0, 0, 1])  # fragment header, offset 0
    assert classify(nd(134, A, "fe80::1", "ff02::1", bytes(12), ext=frag_first,
                       first=44)) is Kind.RA
    frag_later = bytes([58, 0, 0, 8, 0, 0, 0, 1])  # offset 1: no ICMPv6 header here
    later = nd(134, A, "fe80::1", "ff02::1", bytes(12), ext=frag_later, first=44)
    assert classify(later) is Kind.OTHER
    # a chain that claims more than the frame holds: suspect to a guard
    long_ext = bytes([58, 200]) + bytes(6)
    assert classify(nd(134, A, "fe80::1", "ff02::1", bytes(12), ext=long_ext)) is Kind.UNPARSED
    assert Kind.UNPARSED.server and Kind.RA.server and Kind.RS.client
    assert ipv6_upper(b"\x00" * 20, 14) == (-2, 0)


@pytest.mark.parametrize("cut", range(0, 60, 3))
def test_classify_never_raises_on_truncated_frames(cut: int) -> None:
    for f in (arp(1, A, "10.0.0.1", "10.0.0.2", vlan=5), ns(A, "fe80::1", "fe80::2"),
              na(A, "fe80::2", 0x60)):
        classify(f[:cut])
        parse(f[:cut])


# ---------------------------------------------------------------- parsing


def test_what_arp_and_nd_frames_teach_and_ask() -> None:
    learned, request = parse(arp(1, A, "10.0.0.1", "10.0.0.2", vlan=7))
    assert learned == Learned(7, ip4("10.0.0.1"), A)
    assert request is not None and (request.vlan, request.target) == (7, ip4("10.0.0.2"))
    assert parse(arp(1, A, "0.0.0.0", "10.0.0.2")) == (None, None)  # a probe
    gratuitous, none = parse(arp(1, A, "10.0.0.1", "10.0.0.1"))
    assert gratuitous is not None and gratuitous.announce and none is None
    learned, request = parse(ns(B, "fd00::2", "fd00::1"))
    assert learned == Learned(0, ip6("fd00::2"), B) and request.target == ip6("fd00::1")
    assert parse(ns(B, "::", "fd00::1", slla=False)) == (None, None)  # DAD
    learned, _ = parse(na(C, "fd00::3", 0xA0))  # router, override, unsolicited
    assert learned == Learned(0, ip6("fd00::3"), C, announce=True, router=True)
    assert parse(nd(136, C, "fd00::3", "ff02::1", bytes(4) + ip6("fd00::3"), hop=64)) == (
        None, None)  # not a neighbour message: hop limit below 255


# ---------------------------------------------------------------- bindings


def test_bindings_age_conflict_and_announce() -> None:
    table = Bindings(max_entries=10, ageing_s=100.0)
    table.learn(Learned(0, ip4("10.0.0.2"), B), 0.0)
    assert table.answer(0, ip4("10.0.0.2"), 50.0) == (B, None)
    assert table.answer(0, ip4("10.0.0.2"), 100.0) is None  # aged
    table.learn(Learned(0, ip4("10.0.0.2"), B), 100.0)
    table.learn(Learned(0, ip4("10.0.0.2"), C), 101.0)  # a second MAC: a conflict
    assert table.answer(0, ip4("10.0.0.2"), 102.0) is None
    assert [(c.old_mac, c.new_mac) for c in table.events] == [(B, C)]
    table.learn(Learned(0, ip4("10.0.0.2"), B), 103.0)  # still conflicted: no second report
    assert table.counters["conflicts"] == 1
    assert table.answer(0, ip4("10.0.0.2"), 103.0 + neigh.CONFLICT_HOLD_S) == (B, None)
    table.learn(Learned(0, ip4("10.0.0.2"), C, announce=True), 200.0)  # gratuitous ARP
    assert table.answer(0, ip4("10.0.0.2"), 200.0) == (C, None)
    assert table.answer(5, ip4("10.0.0.2"), 200.0) is None  # another VLAN


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_flood_of_a_million_fake_arp_replies_stays_within_the_cap() -> None:
    """Each a new address at a new MAC, parsed as the policy parses them."""
    table = Bindings(max_entries=4096, ageing_s=300.0)
    head = C + A + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
    tail = C + ip4("10.0.0.9") + bytes(18)
    now = 0.0
    before = 0
    for i in range(1_000_000):
        if i == 20_000:  # the table has long been full: what the rest costs
            before = rss_bytes()
        now += 1e-6
        sender = struct.pack("!HI", 0x0200, i)
        learned, _ = parse(head + sender + struct.pack("!I", 0x0B000000 + i) + tail)
        table.learn(learned, now)
    assert len(table) == 4096
    assert table.counters["evicted"] == 1_000_000 - 4096
    assert rss_bytes() - before < 4 * 1024 * 1024  # bounded: nothing grows per frame


def test_replies_carry_the_binding_the_tags_and_a_valid_checksum() -> None:
    request_frame = arp(1, A, "10.0.0.1", "10.0.0.2", vlan=9)
    _, request = parse(request_frame)
    answer = reply(request_frame, request, B, None)
    assert answer[:12] == A + B and answer[12:16] == b"\x81\x00\x00\x09"
    learned, none = parse(answer)
    assert learned == Learned(9, ip4("10.0.0.2"), B) and none is None
    ns_frame = ns(A, "fd00::1", "fd00::2")
    _, request = parse(ns_frame)
    answer = reply(ns_frame, request, B, True)
    learned, _ = parse(answer)
    assert learned == Learned(0, ip6("fd00::2"), B, router=True)
    icmp = answer[14 + 40:]
    pseudo = answer[22:54] + struct.pack("!I3xB", len(icmp), 58)
    assert ones_sum(pseudo + icmp) == 0  # a receiver's check passes: the sum is -0
