"""Super-frames for the offload tests: builders and checks of TCP/UDP segments and bursts."""

from __future__ import annotations

import struct

from l2bridge.core import offload as ol

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
MSS = 1448


def word_checksum(data: bytes) -> int:
    """RFC 1071, the slow obvious way."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_tcp_superframe(payload: bytes, *, seq: int = 1000, flags: int = 0x18,
                        vlan: int | None = None, ip_id: int = 7) -> tuple[ol.Meta, bytes]:
    """A TSO super-frame as the kernel hands it to a vnet tap (pseudo sum in the field)."""
    eth = DST_MAC + SRC_MAC
    if vlan is not None:
        eth += struct.pack("!HH", 0x8100, vlan)
    eth += b"\x08\x00"
    tcp_opts = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamps
    thl = 20 + len(tcp_opts)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 55, (thl // 4) << 4, flags | 0x80, 500,
                      0, 0) + tcp_opts
    frame = bytearray(eth + ip + tcp + payload)
    l3 = len(eth)
    ol._ipv4_header_checksum(frame, l3)
    l4 = l3 + 20
    struct.pack_into("!H", frame, l4 + 16,
                     ol.pseudo_sum(frame, l3, False, 6, len(frame) - l4))
    raw = struct.pack("<BBHHHH", ol.F_NEEDS_CSUM, ol.GSO_TCPV4 | ol.GSO_ECN, l4 + thl, MSS,
                      l4, 16) + bytes(frame)
    return ol.parse_vnet(raw), bytes(frame)


def ipv6_udp_superframe(datagrams: int, size: int) -> tuple[ol.Meta, bytes]:
    payload = bytes(range(256)) * (datagrams * size // 256 + 1)
    payload = payload[:datagrams * size - size // 2]  # the last datagram is shorter
    eth = DST_MAC + SRC_MAC + b"\x86\xdd"
    ip = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 64,
                     bytes(15) + b"\x01", bytes(15) + b"\x02")
    udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0)
    frame = bytearray(eth + ip + udp + payload)
    struct.pack_into("!H", frame, 54 + 6, ol.pseudo_sum(frame, 14, True, 17, len(frame) - 54))
    raw = struct.pack("<BBHHHH", ol.F_NEEDS_CSUM, ol.GSO_UDP_L4, 62, size, 54, 6) + bytes(frame)
    return ol.parse_vnet(raw), bytes(frame)


def tcp_fields(frame: bytes) -> dict:
    l3, _ = ol.l3_offset(frame)
    ihl = (frame[l3] & 15) * 4
    l4 = l3 + ihl
    thl = (frame[l4 + 12] >> 4) * 4
    return {
        "tot_len": struct.unpack_from("!H", frame, l3 + 2)[0],
        "ip_id": struct.unpack_from("!H", frame, l3 + 4)[0],
        "ip_ok": word_checksum(frame[l3:l3 + ihl]) == 0,
        "seq": struct.unpack_from("!I", frame, l4 + 4)[0],
        "flags": frame[l4 + 13],
        "payload": frame[l4 + thl:],
        "l4": l4,
        "l3": l3,
    }


def tcp_checksum_ok(frame: bytes) -> bool:
    f = tcp_fields(frame)
    l3, l4 = f["l3"], f["l4"]
    seg = frame[l4:]
    pseudo = frame[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, 6, len(seg))
    return word_checksum(pseudo + seg) == 0


def udp_read(payload: bytes, *, ip_id: int, df: bool = True, sport: int = 4000,
             ipv6: bool = False) -> bytes:
    """One UDP datagram as a vnet tap reads it: NEEDS_CSUM, pseudo sum in the field."""
    if ipv6:
        eth = DST_MAC + SRC_MAC + b"\x86\xdd"
        ip = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 64,
                         bytes(15) + b"\x01", bytes(15) + b"\x02")
    else:
        eth = DST_MAC + SRC_MAC + b"\x08\x00"
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), ip_id,
                         0x4000 if df else 0, 64, 17, 0, bytes([10, 0, 0, 1]),
                         bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", sport, 5201, 8 + len(payload), 0)
    frame = bytearray(eth + ip + udp + payload)
    l4 = 14 + len(ip)
    if not ipv6:
        ol._ipv4_header_checksum(frame, 14)
    struct.pack_into("!H", frame, l4 + 6, ol.pseudo_sum(frame, 14, ipv6, 17, 8 + len(payload)))
    return struct.pack("<BBHHHH", ol.F_NEEDS_CSUM, 0, 0, 0, l4, 6) + bytes(frame)


def final(raw: bytes) -> bytes:
    """What the datagram looks like on a wire: its checksum completed."""
    meta = ol.parse_vnet(raw)
    return ol.complete_checksum(raw[ol.VNET_HDR_LEN:], meta.csum_start, meta.csum_offset)
