"""A site's MTU budget: what fits in one datagram and in one frame, from the wire constants.

Every size the site works with is derived here, once, from the LAN MTU, the WAN
path MTU, the underlay family and whether datagrams are sealed::

    WAN datagram (wan_mtu) = underlay IP + UDP (28 / 48) | DATA header + tag (32, sealed)
                             | inner message (max_plaintext)
    inner message          = wire header (4) | frame (frame_room) ... or FRAGMENTs
    largest LAN frame      = mtu + Ethernet header (14) + room for two VLAN tags (8)

The config refuses a budget whose largest frame needs more than ``MAX_FRAGMENTS``
fragments; the site builds its fragmenter, switch and bursts from it; ``mss``
is the TCP MSS whose segment fits one FRAME datagram.  Two paths have other
room for a frame: a relayed one less (``relay_room``: the relay's envelope),
a TCP link more (``tcp_room``: a record is not bound by the path MTU, so a
frame always crosses whole).
"""

from __future__ import annotations

from dataclasses import dataclass

from l2bridge.core.ether import ETH_HLEN, IPV4_HLEN, IPV6_HLEN, TCP_HLEN, UDP_HLEN, VLAN_HLEN
from l2bridge.core.framing import MAX_RECORD_BYTES
from l2bridge.core.noise import DATA_HEADER_LEN, TAG_LEN
from l2bridge.core.wire import HEADER_LEN, KEY_LEN, MAX_FRAGMENTS

UNDERLAY_IPV4_UDP_LEN = IPV4_HLEN + UDP_HLEN  # 28
UNDERLAY_IPV6_UDP_LEN = IPV6_HLEN + UDP_HLEN  # 48
SEALED_OVERHEAD = DATA_HEADER_LEN + TAG_LEN  # 32: what sealing adds around an inner message
MAX_VLAN_TAGS = 2  # QinQ
FRAME_OVERHEAD = ETH_HLEN + MAX_VLAN_TAGS * VLAN_HLEN  # 22: a frame's bytes beyond the MTU
# A relayed datagram travels inside a RELAY_TO / RELAYED message of a second session.
RELAY_OVERHEAD = HEADER_LEN + KEY_LEN + SEALED_OVERHEAD  # 68


@dataclass(frozen=True, slots=True)
class MtuBudget:
    """The sizes of one site (module docstring); build it with ``MtuBudget.of``."""

    mtu: int  # LAN MTU
    wan_mtu: int  # underlay path MTU
    underlay: int  # IP + UDP header bytes of the underlay
    sealing: int  # DATA header + AEAD tag bytes (0 in cleartext)
    max_frame: int  # the largest LAN frame: mtu + FRAME_OVERHEAD
    max_plaintext: int  # the largest inner message one datagram carries
    frame_room: int  # the largest frame one FRAME datagram carries

    @classmethod
    def of(cls, *, mtu: int, wan_mtu: int, ipv6_underlay: bool, sealed: bool) -> MtuBudget:
        underlay = UNDERLAY_IPV6_UDP_LEN if ipv6_underlay else UNDERLAY_IPV4_UDP_LEN
        sealing = SEALED_OVERHEAD if sealed else 0
        max_plaintext = wan_mtu - underlay - sealing
        return cls(mtu=mtu, wan_mtu=wan_mtu, underlay=underlay, sealing=sealing,
                   max_frame=mtu + FRAME_OVERHEAD, max_plaintext=max_plaintext,
                   frame_room=max_plaintext - HEADER_LEN)

    @property
    def fragments(self) -> int:
        """How many datagrams the largest frame needs (1: it fits one FRAME)."""
        return -(-self.max_frame // self.frame_room)

    @property
    def highest_mtu(self) -> int:
        """The largest LAN MTU whose frames fit in ``MAX_FRAGMENTS`` datagrams."""
        return MAX_FRAGMENTS * self.frame_room - FRAME_OVERHEAD

    @property
    def relay_room(self) -> int:
        """The room for a frame in one datagram to a relayed peer."""
        return self.frame_room - RELAY_OVERHEAD

    @property
    def tcp_room(self) -> int:
        """The room for a frame in one record of a TCP link (any LAN frame fits)."""
        return MAX_RECORD_BYTES - self.sealing - HEADER_LEN

    def mss(self, *, ipv6_inner: bool = True) -> int:
        """The TCP MSS whose untagged segment fits one FRAME datagram.

        A VLAN-tagged segment of that size is 4 bytes over and gets
        fragmented, which still delivers it.
        """
        inner = IPV6_HLEN if ipv6_inner else IPV4_HLEN
        return self.frame_room - ETH_HLEN - inner - TCP_HLEN
