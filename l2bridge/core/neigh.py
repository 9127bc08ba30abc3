"""ARP and ND suppression: IP-to-MAC bindings learned from traffic, and local answers (pure).

As EVPN does (RFC 7432 section 10, RFC 9047), a site that knows which MAC an
IPv4 or IPv6 address belongs to answers its own LAN's ARP request or neighbour
solicitation itself, instead of flooding it to every site.

Learning (``Bindings.learn``; the policy calls it for flooded frames from the
LAN and from peers, and with ``arp_suppress`` on for ARP replies and neighbour
advertisements unicast to this site's hosts):
  - ARP request or reply: sender IP -> sender MAC (a probe's sender 0.0.0.0 is
    nothing); gratuitous (sender IP == target IP) is an announcement;
  - NS with a source link-layer option: source IP -> that MAC (never the
    unspecified source of duplicate address detection);
  - NA: target -> target link-layer option (else the frame's source), with its
    router flag; an unsolicited NA with the override flag is an announcement;
  - RA: source -> its source link-layer option, a router.
A binding lives ``ageing_s`` after it was last seen.  A different MAC for a
live binding is a **conflict** (two hosts claim one address): logged once,
counted, and the address is not answered for ``CONFLICT_HOLD_S`` (requests for
it flood, so the hosts sort it out); an announcement replaces the MAC at once
instead.  The table holds at most ``max_entries`` bindings: a new one evicts
the least recently seen (a flood of made-up bindings only costs answers, which
then flood).

Answering (``answer``): a fresh, unconflicted binding, whose MAC the caller
has learned behind a peer.  An IPv6 binding is only answered when its router
flag is known (from an NA or an RA): a wrong flag would make a host drop its
router.  Requests that probe for duplicates (ARP with sender 0.0.0.0, gratuitous
ARP, NS from ::) are never answered.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from l2bridge.core.classify import (
    ARP_REPLY,
    ARP_REQUEST,
    ETHERTYPE_ARP,
    ICMPV6_NA,
    ICMPV6_NS,
    ICMPV6_RA,
    IPPROTO_ICMPV6,
    ipv6_upper,
    l3_offset,
)
from l2bridge.core.ether import ETHERTYPE_IPV6
from l2bridge.core.offload import fold_checksum, ones_sum

# Specification constants.
ARP_LEN = 28
ND_OPT_SLLA, ND_OPT_TLLA = 1, 2
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
ND_HOP_LIMIT = 255
_ARP_HEAD = bytes.fromhex("0001080006040002")  # Ethernet, IPv4, 6, 4, reply
_ZERO4 = bytes(4)
_ZERO16 = bytes(16)

# Implementation constants.
DEFAULT_MAX_BINDINGS = 8192
CONFLICT_HOLD_S = 60.0
EVENTS_MAX = 256


@dataclass(frozen=True, slots=True)
class Learned:
    """What one frame says: ``ip`` (4 or 16 bytes) is at ``mac``."""

    vlan: int
    ip: bytes
    mac: bytes
    announce: bool = False  # gratuitous ARP, unsolicited NA with override
    router: bool | None = None  # IPv6: the router flag, when the frame says


@dataclass(frozen=True, slots=True)
class Request:
    """An ARP request or NS that could be answered: who asks, for which address."""

    vlan: int
    target: bytes
    asker_mac: bytes
    asker_ip: bytes
    offset: int  # of the network header (what precedes it is copied into the answer)


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two MACs for one address: logged by the site."""

    vlan: int
    ip: bytes
    old_mac: bytes
    new_mac: bytes


def parse(frame: bytes) -> tuple[Learned | None, Request | None]:
    """The binding a frame teaches and the request it makes, if any (never raises)."""
    vid, ethertype, off = l3_offset(frame)
    size = len(frame)
    if ethertype == ETHERTYPE_ARP:
        if off + ARP_LEN > size or frame[off:off + 6] != b"\x00\x01\x08\x00\x06\x04":
            return None, None
        op = (frame[off + 6] << 8) | frame[off + 7]
        sha, spa = frame[off + 8:off + 14], frame[off + 14:off + 18]
        tpa = frame[off + 24:off + 28]
        if op not in (ARP_REQUEST, ARP_REPLY) or spa == _ZERO4 or sha[0] & 1:
            return None, None  # a probe (RFC 5227) or nonsense
        gratuitous = spa == tpa
        learned = Learned(vid, bytes(spa), bytes(sha), announce=gratuitous)
        if op == ARP_REQUEST and not gratuitous:
            return learned, Request(vid, bytes(tpa), bytes(sha), bytes(spa), off)
        return learned, None
    if ethertype != ETHERTYPE_IPV6:
        return None, None
    proto, at = ipv6_upper(frame, off)
    if proto != IPPROTO_ICMPV6 or at + 4 > size or frame[off + 7] != ND_HOP_LIMIT:
        return None, None
    kind = frame[at]
    src = bytes(frame[off + 8:off + 24])
    if kind == ICMPV6_NS and at + 24 <= size:
        target = bytes(frame[at + 8:at + 24])
        if src == _ZERO16:
            return None, None  # duplicate address detection: never answered, teaches nothing
        slla = _option(frame, at + 24, ND_OPT_SLLA)
        taught = Learned(vid, src, slla) if slla else None
        return taught, Request(vid, target, bytes(frame[6:12]), src, off)
    if kind == ICMPV6_NA and at + 24 <= size:
        flags = frame[at + 4]
        target = bytes(frame[at + 8:at + 24])
        mac = _option(frame, at + 24, ND_OPT_TLLA) or bytes(frame[6:12])
        announce = not flags & NA_SOLICITED and bool(flags & NA_OVERRIDE)
        return Learned(vid, target, mac, announce, bool(flags & NA_ROUTER)), None
    if kind == ICMPV6_RA and at + 16 <= size:
        slla = _option(frame, at + 16, ND_OPT_SLLA)
        return (Learned(vid, src, slla, router=True) if slla else None), None
    return None, None


def _option(frame: bytes, at: int, wanted: int) -> bytes | None:
    """The 6-byte link-layer address of ND option ``wanted`` from ``at`` on, or None."""
    size = len(frame)
    for _ in range(16):
        if at + 8 > size:
            return None
        kind, units = frame[at], frame[at + 1]
        if not units:
            return None
        if kind == wanted:
            mac = bytes(frame[at + 2:at + 8])
            return None if mac[0] & 1 else mac
        at += units * 8
    return None


class Bindings:
    """IP-to-MAC bindings per VLAN (module docstring), bounded and aged."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_BINDINGS, ageing_s: float = 300.0
                 ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.ageing_s = ageing_s
        # (vlan, ip) -> [mac, last seen, router flag or None, conflicted until]
        self._table: OrderedDict[tuple[int, bytes], list] = OrderedDict()
        self.events: list[Conflict] = []
        self.counters: dict[str, int] = {
            "learned": 0, "updated": 0, "conflicts": 0, "evicted": 0, "expired": 0,
            "answered_arp": 0, "answered_nd": 0,
        }

    def __len__(self) -> int:
        return len(self._table)

    def configure(self, *, max_entries: int, ageing_s: float) -> None:
        self.max_entries = max_entries
        self.ageing_s = ageing_s
        while len(self._table) > max_entries:
            self._table.popitem(last=False)
            self.counters["evicted"] += 1

    def learn(self, fact: Learned, now: float) -> None:
        key = (fact.vlan, fact.ip)
        table = self._table
        row = table.get(key)
        if row is None or now - row[1] >= self.ageing_s:
            if row is None and len(table) >= self.max_entries:
                table.popitem(last=False)
                self.counters["evicted"] += 1
            table[key] = [fact.mac, now, fact.router, 0.0]
            table.move_to_end(key)
            self.counters["learned"] += 1
            return
        if row[0] != fact.mac:
            if fact.announce:
                row[0], row[2], row[3] = fact.mac, fact.router, 0.0
                self.counters["updated"] += 1
            else:
                if now >= row[3]:  # a new conflict (not one still held): report it
                    self.counters["conflicts"] += 1
                    if len(self.events) < EVENTS_MAX:
                        self.events.append(Conflict(fact.vlan, fact.ip, row[0], fact.mac))
                row[0] = fact.mac
                row[3] = now + CONFLICT_HOLD_S
        if fact.router is not None:
            row[2] = fact.router
        row[1] = now
        table.move_to_end(key)

    def answer(self, vlan: int, ip: bytes, now: float) -> tuple[bytes, bool | None] | None:
        """(MAC, router flag) of a fresh, unconflicted binding, or None."""
        row = self._table.get((vlan, ip))
        if row is None or now - row[1] >= self.ageing_s or now < row[3]:
            return None
        return row[0], row[2]

    def expire(self, now: float) -> None:
        ageing = self.ageing_s
        doomed = [key for key, row in self._table.items() if now - row[1] >= ageing]
        for key in doomed:
            del self._table[key]
        self.counters["expired"] += len(doomed)

    def rows(self, now: float) -> list[tuple[int, bytes, bytes, float, bool]]:
        """(vlan, ip, mac, age, conflicted) of every live binding."""
        return [(vlan, ip, row[0], now - row[1], now < row[3])
                for (vlan, ip), row in self._table.items() if now - row[1] < self.ageing_s]


def reply(frame: bytes, request: Request, mac: bytes, router: bool | None) -> bytes:
    """The ARP reply or NA that ``mac`` would send to ``request`` (same VLAN tags)."""
    head = request.asker_mac + mac + frame[12:request.offset - 2]
    if len(request.target) == 4:
        body = (_ARP_HEAD + mac + request.target + request.asker_mac + request.asker_ip)
        out = head + ETHERTYPE_ARP.to_bytes(2, "big") + body
        return out + bytes(max(0, 60 - len(out)))
    flags = NA_SOLICITED | NA_OVERRIDE | (NA_ROUTER if router else 0)
    icmp = bytearray(struct.pack("!BBHB3x16sBB6s", ICMPV6_NA, 0, 0, flags, request.target,
                                 ND_OPT_TLLA, 1, mac))
    pseudo = request.target + request.asker_ip + struct.pack("!I3xB", len(icmp),
                                                              IPPROTO_ICMPV6)
    struct.pack_into("!H", icmp, 2, fold_checksum(ones_sum(pseudo + icmp)))
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), IPPROTO_ICMPV6, ND_HOP_LIMIT,
                     request.target, request.asker_ip)
    return head + ETHERTYPE_IPV6.to_bytes(2, "big") + ip + bytes(icmp)
