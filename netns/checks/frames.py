"""Build marker frames and read pcap files, without any I/O.

The lab proves layer-2 behaviour ("this broadcast reached each site exactly
once", "this unicast never reached the third site") by sending frames that
carry a per-run marker and counting where the marker shows up.  This module
holds the pure half of that job:

- ``make_frame`` builds an Ethernet II frame (optionally 802.1Q tagged),
  padded to the 60-byte Ethernet minimum so the bytes sent are the bytes a
  receiver or a capture sees (no driver padding changes them on the way).
- ``marker_payload`` / ``marker_seq`` write and read ``marker | seq | padding``.
- ``parse_pcap`` / ``write_pcap`` read and write classic libpcap files
  (tcpdump ``-w``), both byte orders, microsecond and nanosecond timestamps.
- ``insert_vlan_tag`` puts back an 802.1Q tag the kernel moved into packet
  metadata (what a raw socket reports through ``PACKET_AUXDATA``).

Marker frames use the IEEE "local experimental" EtherType 0x88B5 and a source
MAC with the locally administered bit set, so they never collide with real
protocols or vendor addresses.
"""

from __future__ import annotations

import struct

ETH_ALEN = 6
ETH_HLEN = 14
ETH_ZLEN = 60  # minimum frame length without FCS; shorter frames are zero padded
VLAN_HLEN = 4
TPID_8021Q = 0x8100
VLAN_VID_MAX = 4095

ETHERTYPE_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental EtherType 1
BROADCAST_MAC = b"\xff" * ETH_ALEN
LOCAL_ADMIN_BIT = 0x02  # first octet: locally administered address

SEQ_LEN = 4  # marker sequence numbers are 32-bit big endian

# Classic libpcap file format (https://www.tcpdump.org/manpages/pcap-savefile.5.html)
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_GLOBAL_HEADER_LEN = 24
PCAP_RECORD_HEADER_LEN = 16
PCAP_MAX_RECORD_LEN = 262_144  # tcpdump's largest snapshot length
LINKTYPE_ETHERNET = 1


def make_mac(index: int) -> bytes:
    """A unicast, locally administered MAC ``02:00:<index as 4 bytes>``."""
    if not 0 <= index < 1 << 32:
        raise ValueError(f"MAC index {index} out of range 0..2**32-1")
    return bytes([LOCAL_ADMIN_BIT, 0]) + index.to_bytes(4, "big")


def make_frame(
    dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None
) -> bytes:
    """An Ethernet II frame ``dst | src | [8100 tci] | ethertype | payload``.

    The frame is zero padded to ``ETH_ZLEN`` (60) bytes; no FCS is added.
    ``vlan`` is a VLAN ID (0..4095) written as an 802.1Q tag with priority 0.
    """
    if len(dst) != ETH_ALEN or len(src) != ETH_ALEN:
        raise ValueError(f"MAC addresses must be 6 bytes, got dst={len(dst)} src={len(src)}")
    if not 0 <= ethertype <= 0xFFFF:
        raise ValueError(f"EtherType {ethertype:#x} does not fit in 16 bits")
    tag = b""
    if vlan is not None:
        if not 0 <= vlan <= VLAN_VID_MAX:
            raise ValueError(f"VLAN ID {vlan} out of range 0..{VLAN_VID_MAX}")
        tag = struct.pack("!HH", TPID_8021Q, vlan)
    frame = dst + src + tag + struct.pack("!H", ethertype) + payload
    if len(frame) < ETH_ZLEN:
        frame += bytes(ETH_ZLEN - len(frame))
    return frame


def marker_payload(marker: bytes, seq: int, size: int = 64) -> bytes:
    """``marker | seq (u32 big endian) | zero padding`` of exactly ``size`` bytes."""
    if not marker:
        raise ValueError("marker must not be empty")
    if not 0 <= seq < 1 << (8 * SEQ_LEN):
        raise ValueError(f"sequence number {seq} out of range 0..2**32-1")
    body = marker + seq.to_bytes(SEQ_LEN, "big")
    if size < len(body):
        raise ValueError(f"payload size {size} is shorter than marker + seq ({len(body)} bytes)")
    return body + bytes(size - len(body))


def marker_seq(frame: bytes, marker: bytes) -> int | None:
    """The sequence number following the first ``marker`` after the MAC header, or None."""
    at = frame.find(marker, ETH_HLEN)
    if at < 0:
        return None
    start = at + len(marker)
    seq = frame[start : start + SEQ_LEN]
    if len(seq) != SEQ_LEN:
        return None
    return int.from_bytes(seq, "big")


def insert_vlan_tag(frame: bytes, tci: int, tpid: int = TPID_8021Q) -> bytes:
    """``frame`` with the tag ``tpid | tci`` inserted after the source MAC."""
    if len(frame) < 2 * ETH_ALEN:
        raise ValueError(f"frame of {len(frame)} bytes has no MAC header")
    return frame[: 2 * ETH_ALEN] + struct.pack("!HH", tpid, tci) + frame[2 * ETH_ALEN :]


def parse_pcap(data: bytes) -> list[bytes]:
    """The captured bytes of every record in a classic pcap file.

    Accepts both byte orders and both the microsecond and nanosecond magic.
    Raises ``ValueError`` naming the offset for anything that is not a whole,
    well-formed pcap file (bad magic, truncated header or record, a record
    longer than any snapshot length).
    """
    if len(data) < PCAP_GLOBAL_HEADER_LEN:
        raise ValueError(f"pcap: {len(data)} bytes is shorter than the 24-byte file header")
    for order in ("<", ">"):
        (magic,) = struct.unpack_from(order + "I", data, 0)
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
    else:
        raise ValueError(f"pcap: bad magic {data[:4].hex()} (not a classic pcap file)")
    major, _minor = struct.unpack_from(order + "HH", data, 4)
    if major != 2:
        raise ValueError(f"pcap: unsupported format version {major}")
    record = struct.Struct(order + "IIII")
    frames: list[bytes] = []
    offset = PCAP_GLOBAL_HEADER_LEN
    while offset < len(data):
        if len(data) - offset < PCAP_RECORD_HEADER_LEN:
            raise ValueError(f"pcap: truncated record header at offset {offset}")
        _sec, _frac, incl_len, _orig_len = record.unpack_from(data, offset)
        if incl_len > PCAP_MAX_RECORD_LEN:
            raise ValueError(f"pcap: record at offset {offset} claims {incl_len} bytes")
        start = offset + PCAP_RECORD_HEADER_LEN
        end = start + incl_len
        if end > len(data):
            raise ValueError(f"pcap: truncated record at offset {offset}")
        frames.append(data[start:end])
        offset = end
    return frames


def write_pcap(
    frames: list[bytes],
    *,
    nanosecond: bool = False,
    big_endian: bool = False,
    linktype: int = LINKTYPE_ETHERNET,
) -> bytes:
    """A classic pcap file holding ``frames`` (timestamps count up from zero)."""
    order = ">" if big_endian else "<"
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, PCAP_MAX_RECORD_LEN, linktype)]
    for i, frame in enumerate(frames):
        out.append(struct.pack(order + "IIII", i, 0, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)
