"""Frame headers: Ethernet constants, VLAN tags, MAC addresses, and the IP/TCP/UDP
header facts the switch, the MSS clamp, offloads and the MTU budget share.

Pure module: no I/O, no trio, no socket.

Header layout (all offsets in bytes)::

    0      6      12       14       16         18
    | dst  | src  | TPID/  | TCI    | inner    |
    |      |      | type   | (tag)  | type     |

An 802.1Q, 802.1ad or old-QinQ (0x9100) TPID at offset 12 marks a tagged
frame; the 12 low bits of the TCI that follows are the VLAN ID (VID).  Only
the outer tag matters to l2bridge; tags are read, never rewritten.
"""

from __future__ import annotations

# --- specification constants (IEEE 802.3 / 802.1Q) ---
ETH_ALEN = 6
"""Length of a MAC address, bytes."""
ETH_HLEN = 14
"""Length of an untagged Ethernet header (dst, src, type), bytes."""
VLAN_HLEN = 4
"""Length of one VLAN tag (TPID + TCI), bytes."""
VLAN_VID_MASK = 0x0FFF
"""Bits of the TCI that hold the VLAN ID."""

TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
TPID_QINQ_OLD = 0x9100
VLAN_TPIDS = frozenset({TPID_8021Q, TPID_8021AD, TPID_QINQ_OLD})
"""Ethertypes that announce a VLAN tag at offset 12."""

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV4_HLEN = 20  # without options
IPV6_HLEN = 40  # the fixed header
TCP_HLEN = 20  # without options
UDP_HLEN = 8

BROADCAST_MAC = b"\xff" * ETH_ALEN
ZERO_MAC = b"\x00" * ETH_ALEN
PAUSE_MAC = bytes.fromhex("0180c2000001")
"""802.3x flow control destination: link-local, never forwarded."""

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def vlan_id(frame: bytes) -> int:
    """Return the outer VLAN ID of ``frame``.

    0 when the frame is untagged, priority-tagged (VID 0), or when the tagged
    header is truncated (shorter than ``ETH_HLEN + VLAN_HLEN`` bytes).
    """
    if len(frame) < ETH_HLEN + VLAN_HLEN:
        return 0
    if (frame[12] << 8 | frame[13]) not in VLAN_TPIDS:
        return 0
    return (frame[14] << 8 | frame[15]) & VLAN_VID_MASK


def is_multicast(mac: bytes) -> bool:
    """True when the group bit of ``mac`` is set (broadcast included).

    Precondition: ``mac`` is at least one byte long (a MAC or a whole frame,
    whose first six bytes are the destination).
    """
    return bool(mac[0] & 1)


def format_mac(mac: bytes) -> str:
    """Format a 6-byte MAC as lower-case ``"02:00:00:00:00:01"``.

    Raises ``ValueError`` when ``mac`` is not exactly six bytes long.
    """
    if len(mac) != ETH_ALEN:
        raise ValueError(f"a MAC address is {ETH_ALEN} bytes, got {len(mac)}")
    return mac.hex(":")


def parse_mac(text: str) -> bytes:
    """Parse ``"02:00:00:00:00:01"`` (or with ``-`` separators) into 6 bytes.

    Exactly six groups of two hexadecimal digits, either case, all separated
    by the same character.  Anything else raises ``ValueError`` naming the
    input.
    """
    sep = ":" if ":" in text else "-"
    groups = text.split(sep)
    if len(groups) != ETH_ALEN or not all(
        len(g) == 2 and g[0] in _HEX_DIGITS and g[1] in _HEX_DIGITS for g in groups
    ):
        raise ValueError(
            f"invalid MAC address {text!r}: expected six hex pairs like 02:00:5e:00:00:01"
        )
    return bytes(int(g, 16) for g in groups)
