"""What a flooded frame is, for the layer-2 policy (pure: no I/O).

Only flooded frames (broadcast, multicast, unknown unicast) and a few unicast
frames the policy asks about are ever classified: known unicast never comes
here.  ``classify(frame)`` reads the headers once and returns a ``Kind``:

  1. the destination: the loop probe address (``LOOP_PROBE_MAC``) or an STP
     bridge group address (BPDUs: never touched by the policy);
  2. the ethertype, behind up to ``MAX_VLAN_TAGS`` tags (0x8100, 0x88A8, 0x9100);
  3. ARP (0x0806): request or reply;
  4. IPv4 (header options skipped; a non-first fragment is OTHER): UDP 68 -> 67
     is a DHCPv4 client message, UDP 67 -> any a DHCPv4 server message;
  5. IPv6: the extension header chain is walked (hop-by-hop, routing,
     destination options, fragment, AH; at most ``MAX_IPV6_HEADERS``), as RA
     guard must (RFC 7113): ICMPv6 133 RS, 134 RA, 135 NS, 136 NA; UDP to 547
     from a client message type is a DHCPv6 client message, UDP from 547 with a
     server message type a DHCPv6 server message.  A chain that does not fit
     the frame (or is too long) is UNPARSED: a guard treats it as suspect.

``l3_offset(frame)`` gives (VLAN ID, ethertype, offset of the network header)
to the modules that read further (``l2bridge.core.neigh``).
"""

from __future__ import annotations

import enum

from l2bridge.core.budget import MAX_VLAN_TAGS
from l2bridge.core.ether import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPPROTO_UDP,
    IPV4_HLEN,
    IPV6_HLEN,
    UDP_HLEN,
    VLAN_HLEN,
    VLAN_TPIDS,
    VLAN_VID_MASK,
)

# Specification constants.
ETHERTYPE_ARP = 0x0806
ETHERTYPE_LOOP_PROBE = 0x88B6  # IEEE 802 local experimental ethertype 2
LOOP_PROBE_MAC = bytes.fromhex("034c32420001")
"""Where loop probes go: a locally administered group address bridges flood."""
STP_MACS = frozenset({bytes.fromhex("0180c2000000"), bytes.fromhex("01000ccccccd")})
"""IEEE STP/RSTP/MSTP bridge group address, Cisco PVST+: BPDUs cross untouched."""
IPPROTO_ICMPV6 = 58
IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44
IPV6_AH = 51
MAX_IPV6_HEADERS = 8
ICMPV6_RS, ICMPV6_RA, ICMPV6_NS, ICMPV6_NA = 133, 134, 135, 136
DHCP4_SERVER_PORT, DHCP4_CLIENT_PORT = 67, 68
DHCP6_SERVER_PORT, DHCP6_CLIENT_PORT = 547, 546
DHCP6_SERVER_TYPES = frozenset({2, 7, 10, 13})  # ADVERTISE, REPLY, RECONFIGURE, RELAY-REPL
DHCP6_CLIENT_TYPES = frozenset({1, 3, 4, 5, 6, 8, 9, 11, 12})  # SOLICIT ... RELAY-FORW
ARP_REQUEST, ARP_REPLY = 1, 2


class Kind(enum.Enum):
    """What a flooded frame is, as far as the policy cares."""

    OTHER = "other"
    PROBE = "probe"  # an l2bridge loop probe
    BPDU = "bpdu"  # spanning tree: crosses untouched
    ARP = "arp"
    DHCP_CLIENT = "dhcp_client"  # DHCPv4 or DHCPv6, client to server
    DHCP_SERVER = "dhcp_server"  # DHCPv4 or DHCPv6, server to client
    RS = "rs"  # IPv6 router solicitation
    RA = "ra"  # IPv6 router advertisement
    NS = "ns"  # IPv6 neighbour solicitation
    NA = "na"  # IPv6 neighbour advertisement
    UNPARSED = "unparsed"  # IPv6 whose header chain does not fit: suspect to a guard

    @property
    def server(self) -> bool:
        """A message only a DHCP server or a router sends (what a guard filters in)."""
        return self in _SERVER_KINDS

    @property
    def client(self) -> bool:
        """A request that asks a DHCP server or a router (what a guard keeps home)."""
        return self in _CLIENT_KINDS


_SERVER_KINDS = frozenset({Kind.DHCP_SERVER, Kind.RA, Kind.UNPARSED})
_CLIENT_KINDS = frozenset({Kind.DHCP_CLIENT, Kind.RS})


def l3_offset(frame: bytes) -> tuple[int, int, int]:
    """(outer VLAN ID, ethertype, offset of the network header); ethertype -1 if truncated."""
    size = len(frame)
    if size < ETH_HLEN:
        return 0, -1, size
    ethertype = (frame[12] << 8) | frame[13]
    offset = ETH_HLEN
    vid = -1
    tags = 0
    while ethertype in VLAN_TPIDS:
        tags += 1
        if tags > MAX_VLAN_TAGS or offset + VLAN_HLEN > size:
            return max(vid, 0), -1, size
        if vid < 0:
            vid = ((frame[14] << 8) | frame[15]) & VLAN_VID_MASK
        ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
        offset += VLAN_HLEN
    return max(vid, 0), ethertype, offset


def ipv6_upper(frame: bytes, offset: int) -> tuple[int, int]:
    """(upper-layer protocol, its offset) behind the IPv6 header at ``offset``.

    (-1, 0): a later fragment (no upper-layer header in it); (-2, 0): the chain
    does not fit the frame or is longer than ``MAX_IPV6_HEADERS``.
    """
    size = len(frame)
    if offset + IPV6_HLEN > size or frame[offset] >> 4 != 6:
        return -2, 0
    nxt = frame[offset + 6]
    at = offset + IPV6_HLEN
    for _ in range(MAX_IPV6_HEADERS):
        if nxt in IPV6_EXTENSIONS:
            if at + 8 > size:
                return -2, 0
            nxt, at = frame[at], at + (frame[at + 1] + 1) * 8
        elif nxt == IPV6_FRAGMENT:
            if at + 8 > size:
                return -2, 0
            if ((frame[at + 2] << 8) | frame[at + 3]) & 0xFFF8:
                return -1, 0  # offset != 0: a later fragment
            nxt, at = frame[at], at + 8
        elif nxt == IPV6_AH:
            if at + 8 > size:
                return -2, 0
            nxt, at = frame[at], at + (frame[at + 1] + 2) * 4
        else:
            return (nxt, at) if at <= size else (-2, 0)
    return -2, 0


def classify(frame: bytes) -> Kind:
    """The ``Kind`` of ``frame`` (module flow).  Never raises on malformed input."""
    dst = frame[:6]
    if dst == LOOP_PROBE_MAC:
        return Kind.PROBE
    if dst in STP_MACS:
        return Kind.BPDU
    _, ethertype, off = l3_offset(frame)
    size = len(frame)
    if ethertype == ETHERTYPE_ARP:
        return Kind.ARP
    if ethertype == ETHERTYPE_IPV4:
        if off + IPV4_HLEN > size or frame[off] >> 4 != 4 or frame[off + 9] != IPPROTO_UDP:
            return Kind.OTHER
        if ((frame[off + 6] & 0x1F) << 8) | frame[off + 7]:
            return Kind.OTHER  # a later fragment
        udp = off + (frame[off] & 0x0F) * 4
        if udp + UDP_HLEN > size:
            return Kind.OTHER
        sport = (frame[udp] << 8) | frame[udp + 1]
        dport = (frame[udp + 2] << 8) | frame[udp + 3]
        if sport == DHCP4_SERVER_PORT:
            return Kind.DHCP_SERVER
        if dport == DHCP4_SERVER_PORT and sport == DHCP4_CLIENT_PORT:
            return Kind.DHCP_CLIENT
        return Kind.OTHER
    if ethertype == ETHERTYPE_IPV6:
        proto, at = ipv6_upper(frame, off)
        if proto == -2:
            return Kind.UNPARSED
        if proto == IPPROTO_ICMPV6 and at < size:
            return _ICMPV6.get(frame[at], Kind.OTHER)
        if proto == IPPROTO_UDP and at + UDP_HLEN < size:
            sport = (frame[at] << 8) | frame[at + 1]
            dport = (frame[at + 2] << 8) | frame[at + 3]
            msg = frame[at + UDP_HLEN]
            if sport == DHCP6_SERVER_PORT and msg in DHCP6_SERVER_TYPES:
                return Kind.DHCP_SERVER
            if dport == DHCP6_SERVER_PORT and msg in DHCP6_CLIENT_TYPES:
                return Kind.DHCP_CLIENT
        return Kind.OTHER
    return Kind.OTHER


_ICMPV6 = {ICMPV6_RS: Kind.RS, ICMPV6_RA: Kind.RA, ICMPV6_NS: Kind.NS, ICMPV6_NA: Kind.NA}
