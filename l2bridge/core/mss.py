"""TCP MSS clamping on SYNs crossing the tunnel, so TCP avoids fragmentation.

Flow of ``clamp_mss`` (cheapest test first, bail out as soon as one fails):
  1. EtherType, skipping up to two VLAN tags (0x8100, 0x88A8, 0x9100).
  2. IPv4 (version 4, IHL >= 5, protocol TCP, fragment offset 0) or IPv6
     (next header TCP straight after the fixed header; extension headers are
     left alone).
  3. TCP with the SYN flag and a sane data offset.
  4. Walk the options (EOL ends, NOP is one byte, any malformed length leaves
     the frame unchanged); an MSS option above the limit is rewritten and the
     TCP checksum updated incrementally (RFC 1624), so the payload is never
     summed.

Invariant: when nothing changes the very same object is returned, so the
caller can test ``out is frame``; otherwise a new ``bytes`` of equal length.
"""

from __future__ import annotations

from l2bridge.core.budget import MAX_VLAN_TAGS
from l2bridge.core.ether import (
    ETH_HLEN,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPPROTO_TCP,
    IPV6_HLEN,
    VLAN_HLEN,
    VLAN_TPIDS,
)
from l2bridge.core.ether import IPV4_HLEN as IPV4_HLEN_MIN
from l2bridge.core.ether import TCP_HLEN as TCP_HLEN_MIN

# Specification constants.
TCP_FLAG_SYN = 0x02
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOLEN_MSS = 4


def _checksum_update(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') in ones' complement arithmetic."""
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def clamp_mss(frame: bytes, mss: int) -> bytes:
    """Lower the MSS option of a TCP SYN to ``mss``; return ``frame`` itself if unchanged."""
    size = len(frame)
    if size < ETH_HLEN + IPV4_HLEN_MIN + TCP_HLEN_MIN:
        return frame
    ethertype = (frame[12] << 8) | frame[13]
    offset = ETH_HLEN
    tags = 0
    while ethertype in VLAN_TPIDS:
        tags += 1
        if tags > MAX_VLAN_TAGS or offset + VLAN_HLEN > size:
            return frame
        ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
        offset += VLAN_HLEN

    # 2. Network header: find where TCP starts and where the IP packet ends.
    if ethertype == ETHERTYPE_IPV4:
        if offset + IPV4_HLEN_MIN > size or frame[offset + 9] != IPPROTO_TCP:
            return frame
        version_ihl = frame[offset]
        ihl = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or ihl < IPV4_HLEN_MIN:
            return frame
        if ((frame[offset + 6] & 0x1F) << 8) | frame[offset + 7]:
            return frame  # a non-first fragment: no TCP header here
        end = offset + ((frame[offset + 2] << 8) | frame[offset + 3])
        tcp = offset + ihl
    elif ethertype == ETHERTYPE_IPV6:
        if offset + IPV6_HLEN > size or frame[offset + 6] != IPPROTO_TCP:
            return frame
        if frame[offset] >> 4 != 6:
            return frame
        tcp = offset + IPV6_HLEN
        end = tcp + ((frame[offset + 4] << 8) | frame[offset + 5])
    else:
        return frame
    if end > size or tcp + TCP_HLEN_MIN > end:
        return frame

    # 3. TCP: a SYN (with or without ACK) whose options lie inside the packet.
    if not frame[tcp + 13] & TCP_FLAG_SYN:
        return frame
    options_end = tcp + (frame[tcp + 12] >> 4) * 4
    if options_end < tcp + TCP_HLEN_MIN or options_end > end:
        return frame

    # 4. Options.
    pos = tcp + TCP_HLEN_MIN
    while pos < options_end:
        kind = frame[pos]
        if kind == TCPOPT_EOL:
            return frame
        if kind == TCPOPT_NOP:
            pos += 1
            continue
        if pos + 1 >= options_end:
            return frame
        length = frame[pos + 1]
        if length < 2 or pos + length > options_end:
            return frame
        if kind == TCPOPT_MSS:
            if length != TCPOLEN_MSS:
                return frame
            old = (frame[pos + 2] << 8) | frame[pos + 3]
            if old <= mss:
                return frame
            return _rewrite(frame, tcp, pos + 2, old, mss)
        pos += length
    return frame


def _rewrite(frame: bytes, tcp: int, value_at: int, old: int, new: int) -> bytes:
    """Return a copy with the u16 at ``value_at`` set to ``new`` and the checksum fixed.

    The checksum sums 16-bit words aligned on the TCP header; a value at an
    odd offset straddles two words and contributes its byte-swapped self.
    """
    if not 0 <= new <= 0xFFFF:
        raise ValueError(f"mss {new}: expected 0..65535")
    if (value_at - tcp) & 1:
        old_word = ((old & 0xFF) << 8) | (old >> 8)
        new_word = ((new & 0xFF) << 8) | (new >> 8)
    else:
        old_word, new_word = old, new
    out = bytearray(frame)
    out[value_at] = new >> 8
    out[value_at + 1] = new & 0xFF
    checksum = (out[tcp + 16] << 8) | out[tcp + 17]
    checksum = _checksum_update(checksum, old_word, new_word)
    out[tcp + 16] = checksum >> 8
    out[tcp + 17] = checksum & 0xFF
    return bytes(out)
