"""Offloaded super-frames: virtio_net_hdr, bursts of chunks, software segmentation.

A tap opened with IFF_VNET_HDR and TUNSETOFFLOAD hands the daemon TCP (and
UDP) *super-frames* of up to 64 KB, each preceded by a ``virtio_net_hdr``
(little endian: flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start
u16, csum_offset u16) whose NEEDS_CSUM flag says the L4 checksum field holds
only the pseudo-header sum.  This module is the pure logic around them:

Outbound (``burst_chunks``): a super-frame becomes one *burst* of SEGMENT
messages, each small enough for one WAN datagram.  Every chunk carries the
super-frame's headers (Ethernet … TCP/UDP) and its slice of the payload, so the
receiver can rebuild any subset that arrives::

    SEGMENT = type 0x14 | vflags u8 | burst u16 | index u8 | count u8 |
              gso_type u8 | 0 u8 | hdr_len u16 | gso_size u16 |
              csum_start u16 | csum_offset u16 | chunk_size u16 |
              headers[hdr_len] | payload[index*chunk_size : +chunk_size]

Inbound (``BurstAssembler``): chunks are collected per burst id.  A complete
burst is the sender's super-frame, byte for byte, written to the tap with its
virtio_net_hdr so the receiving kernel segments it (or hands it whole to a
local TCP).  A burst that stays incomplete (a datagram lost) is delivered as
smaller super-frames, one per run of consecutive chunks, with the TCP sequence
number, IP lengths, IPv4 ID and checksums rewritten, so one lost datagram costs
one chunk of payload, as it would for the unsegmented frames of a kernel
tunnel.  UDP runs are trimmed to whole datagrams (gso_size boundaries).

Fallbacks (``segment``, ``complete_checksum``): a peer or a tap without
offloads gets ordinary frames with final checksums, cut by the same header
rewriting at gso_size boundaries.

Checksums use the identity ones'-complement-sum(words) ≡ int(bytes) mod 0xFFFF
(2**16 ≡ 1), which runs in C.  A computed checksum is never 0 (0xFFFF instead),
which is valid for TCP and required for UDP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from l2bridge.core.ether import ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN, VLAN_TPIDS
from l2bridge.core.ether import ETHERTYPE_IPV4 as ETH_P_IPV4
from l2bridge.core.ether import ETHERTYPE_IPV6 as ETH_P_IPV6
from l2bridge.core.wire import TYPE_SEGMENT

# --- virtio_net_hdr (linux/virtio_net.h) -------------------------------------------
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
F_NEEDS_CSUM = 0x01
F_DATA_VALID = 0x02
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: never asked for, never produced
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)

# --- SEGMENT message -----------------------------------------------------------------
SEGMENT_HEADER = struct.Struct("!BBHBBBxHHHHH")
SEGMENT_HEADER_LEN = SEGMENT_HEADER.size  # 18
MAX_CHUNKS = 255
MAX_BURST_PAYLOAD = 65535
MIN_CHUNK_BYTES = 64  # below this a burst would be mostly headers: segment instead

# --- assembler limits ----------------------------------------------------------------
BURST_HOLD_S = 0.003  # an incomplete burst waits this long after its latest chunk
MAX_PENDING_BURSTS = 32  # per peer: at most 32 × 64 KB held

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80

_TCP_GSO = (GSO_TCPV4, GSO_TCPV6)
_GSO_TYPES = (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4)
MIN_HDR_LEN = ETH_HLEN + IPV4_HLEN + UDP_HLEN  # the smallest headers a burst carries
_H16 = struct.Struct("!H")


class OffloadError(Exception):
    """A super-frame or SEGMENT this module cannot handle; ``reason`` is a counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Meta:
    """The virtio_net_hdr of one super-frame, plus where its headers end."""

    flags: int
    gso_type: int
    hdr_len: int  # Ethernet + IP + L4 header bytes (computed, not the kernel's hint)
    gso_size: int
    csum_start: int
    csum_offset: int

    def pack(self) -> bytes:
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset)


# ------------------------------------------------------------------ checksums


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The ones'-complement sum of ``data`` as 16-bit big-endian words, mod 0xFFFF."""
    if len(data) & 1:
        return (int.from_bytes(data, "big") << 8) % 0xFFFF
    return int.from_bytes(data, "big") % 0xFFFF


def fold_checksum(total: int) -> int:
    """The checksum field for a (mod 0xFFFF) sum: its complement, never 0."""
    total %= 0xFFFF
    return 0xFFFF - total if total else 0xFFFF


def pseudo_sum(frame: bytes | bytearray, l3: int, ipv6: bool, proto: int, l4_len: int) -> int:
    """The pseudo-header sum (not complemented) the kernel leaves in a NEEDS_CSUM field."""
    addrs = frame[l3 + 8:l3 + 40] if ipv6 else frame[l3 + 12:l3 + 20]
    total = (ones_sum(addrs) + proto + l4_len) % 0xFFFF
    return total or 0xFFFF


def complete_checksum(frame: bytes, csum_start: int, csum_offset: int) -> bytes:
    """``frame`` with its NEEDS_CSUM field (holding the pseudo sum) made final."""
    at = csum_start + csum_offset
    if csum_start >= len(frame) or at + 2 > len(frame):
        raise OffloadError("bad_csum_offset")
    out = bytearray(frame)
    _H16.pack_into(out, at, fold_checksum(ones_sum(out[csum_start:])))
    return bytes(out)


def _ipv4_header_checksum(buf: bytearray, l3: int) -> None:
    ihl = (buf[l3] & 0x0F) * 4
    buf[l3 + 10:l3 + 12] = b"\0\0"
    _H16.pack_into(buf, l3 + 10, fold_checksum(ones_sum(buf[l3:l3 + ihl])))


# ------------------------------------------------------------------ parsing


def l3_offset(frame: bytes | bytearray) -> tuple[int, int]:
    """(offset of the L3 header, its ethertype), past up to two VLAN tags."""
    off = 12
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype in VLAN_TPIDS:
        off = 16
        ethertype = (frame[16] << 8) | frame[17]
        if ethertype in VLAN_TPIDS:
            off = 20
            ethertype = (frame[20] << 8) | frame[21]
    return off + 2, ethertype


def parse_vnet(raw: bytes) -> Meta:
    """The Meta of a super-frame read from a vnet tap (``raw`` = header + frame).

    ``hdr_len`` is recomputed from the frame (the kernel's value is only a hint):
    csum_start plus the TCP data offset, or plus 8 for UDP.  Raises
    ``OffloadError`` for what the daemon cannot cut safely.
    """
    flags, gso_type, _hint, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(raw)
    frame_len = len(raw) - VNET_HDR_LEN
    base = gso_type & ~GSO_ECN
    if base == GSO_NONE:
        return Meta(flags, gso_type, 0, 0, csum_start, csum_offset)
    if not flags & F_NEEDS_CSUM or gso_size == 0 or csum_start + 20 > frame_len:
        raise OffloadError("bad_gso_frame")
    if base in _TCP_GSO:
        hdr_len = csum_start + ((raw[VNET_HDR_LEN + csum_start + 12] >> 4) * 4)
    elif base == GSO_UDP_L4:
        hdr_len = csum_start + 8
    else:
        raise OffloadError("unsupported_gso")
    if hdr_len > frame_len:
        raise OffloadError("bad_gso_frame")
    return Meta(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


# ------------------------------------------------------------------ rewriting


def sub_frame(meta: Meta, headers: bytes, payload: bytes, start: int, total: int) -> bytes:
    """Headers + ``payload`` for payload bytes [start, start+len) of a ``total``-byte burst.

    The result is a valid (smaller) super-frame of the same flow: IP lengths,
    IPv4 ID (advanced by the segments before ``start``), TCP sequence number
    and the flags that belong only to the first (CWR) or last (FIN, PSH)
    segment are rewritten; the L4 checksum field holds the new pseudo-header
    sum (NEEDS_CSUM), the IPv4 header checksum is final.
    """
    buf = bytearray(headers)
    buf += payload
    l3, ethertype = l3_offset(buf)
    l4 = meta.csum_start
    l4_len = len(buf) - l4
    end = start + len(payload)
    base = meta.gso_type & ~GSO_ECN
    ipv6 = ethertype == ETH_P_IPV6
    if ipv6:
        _H16.pack_into(buf, l3 + 4, len(buf) - l3 - 40)
    else:
        _H16.pack_into(buf, l3 + 2, len(buf) - l3)
        if start and meta.gso_size:
            ip_id = (_H16.unpack_from(buf, l3 + 4)[0] + start // meta.gso_size) & 0xFFFF
            _H16.pack_into(buf, l3 + 4, ip_id)
        _ipv4_header_checksum(buf, l3)
    if base == GSO_UDP_L4:
        _H16.pack_into(buf, l4 + 4, l4_len)
        proto = IPPROTO_UDP
    else:
        proto = IPPROTO_TCP
        if start:
            seq = (int.from_bytes(buf[l4 + 4:l4 + 8], "big") + start) & 0xFFFFFFFF
            buf[l4 + 4:l4 + 8] = seq.to_bytes(4, "big")
            buf[l4 + 13] &= ~TCP_CWR & 0xFF
        if end < total:
            buf[l4 + 13] &= ~(TCP_FIN | TCP_PSH) & 0xFF
    _H16.pack_into(buf, l4 + meta.csum_offset, pseudo_sum(buf, l3, ipv6, proto, l4_len))
    return bytes(buf)


def segment(meta: Meta, frame: bytes) -> list[bytes]:
    """A super-frame as ordinary frames with final checksums (the no-offload path).

    A frame without GSO comes back alone, its checksum completed if NEEDS_CSUM.
    """
    if meta.gso_type == GSO_NONE:
        if meta.flags & F_NEEDS_CSUM:
            return [complete_checksum(frame, meta.csum_start, meta.csum_offset)]
        return [frame]
    headers = frame[:meta.hdr_len]
    payload = frame[meta.hdr_len:]
    total = len(payload)
    size = meta.gso_size
    return [
        complete_checksum(sub_frame(meta, headers, payload[start:start + size], start, total),
                          meta.csum_start, meta.csum_offset)
        for start in range(0, total, size)
    ]


def single(meta: Meta, frame: bytes) -> bytes:
    """A super-frame as one vnet write: header + frame (the tap does the rest)."""
    return meta.pack() + frame


# ------------------------------------------------------------------ UDP coalescing

MAX_COALESCED = 64  # datagrams in one USO super-frame
_IPV4_DF = 0x4000
_IPV4_MF_OFFSET = 0x3FFF


def _udp_run_key(raw: bytes) -> tuple[bytes, int, int, int] | None:
    """(flow key, L4 offset, payload length, IPv4 ID or -1) of a coalescable UDP read.

    Coalescable: no GSO, NEEDS_CSUM at the UDP checksum, IPv4 without options
    or fragmentation, or IPv6 without extension headers, no trailing bytes.
    The key is every header byte except lengths, IPv4 ID and checksums.
    """
    if raw[1] or not raw[0] & F_NEEDS_CSUM or raw[8] != 6 or raw[9]:
        return None
    frame_l3, ethertype = l3_offset(raw[VNET_HDR_LEN:VNET_HDR_LEN + 22])
    l3 = VNET_HDR_LEN + frame_l3
    if ethertype == ETH_P_IPV4:
        if raw[l3] != 0x45 or raw[l3 + 9] != IPPROTO_UDP:
            return None
        frag = (raw[l3 + 6] << 8) | raw[l3 + 7]
        if frag & _IPV4_MF_OFFSET:
            return None
        l4 = l3 + 20
        ip_id = -1 if frag & _IPV4_DF else (raw[l3 + 4] << 8) | raw[l3 + 5]
        key = raw[VNET_HDR_LEN:l3 + 2] + raw[l3 + 6:l3 + 10] + raw[l3 + 12:l4 + 4]
    elif ethertype == ETH_P_IPV6:
        if raw[l3 + 6] != IPPROTO_UDP:
            return None
        l4 = l3 + 40
        ip_id = -1
        key = raw[VNET_HDR_LEN:l3 + 4] + raw[l3 + 6:l4 + 4]
    else:
        return None
    if ((raw[6] | raw[7] << 8) != l4 - VNET_HDR_LEN) or len(raw) < l4 + 8:
        return None
    payload = len(raw) - l4 - 8
    if ((raw[l4 + 4] << 8) | raw[l4 + 5]) != payload + 8 or payload == 0:
        return None
    return key, l4 - VNET_HDR_LEN, payload, ip_id


def coalesce_udp(raws: list[bytes]) -> list[bytes]:
    """Vnet reads with runs of same-flow UDP datagrams merged into USO super-frames.

    A run: consecutive coalescable datagrams (``_udp_run_key``) of one flow,
    all of the first one's payload size but the last (which may be shorter),
    IPv4 IDs consecutive unless DF is set (RFC 6864: an atomic datagram's ID
    means nothing), at most MAX_COALESCED and 64 KB.  The super-frame
    (gso_type UDP_L4, gso_size = that size) segments back into the same
    datagrams, checksums made by the kernel that segments it.  Everything
    else passes through untouched, in order.
    """
    out: list[bytes] = []
    i, n = 0, len(raws)
    while i < n:
        first = _udp_run_key(raws[i])
        if first is None:
            out.append(raws[i])
            i += 1
            continue
        key, l4, size, ip_id = first
        j = i + 1
        total = size
        while j < n and j - i < MAX_COALESCED:
            nxt = _udp_run_key(raws[j])
            if nxt is None or nxt[0] != key or nxt[2] > size or total + nxt[2] > 65000:
                break
            if ip_id >= 0 and nxt[3] != (ip_id + j - i) & 0xFFFF:
                break
            total += nxt[2]
            j += 1
            if nxt[2] < size:
                break  # a shorter datagram ends the run
        if j - i == 1:
            out.append(raws[i])
        else:
            out.append(_merge_udp(raws[i:j], l4, size, total))
        i = j
    return out


def _merge_udp(raws: list[bytes], l4: int, size: int, total: int) -> bytes:
    start = VNET_HDR_LEN + l4 + 8
    buf = bytearray(raws[0][VNET_HDR_LEN:start])
    buf += b"".join([raw[start:] for raw in raws])
    l3, ethertype = l3_offset(buf)
    ipv6 = ethertype == ETH_P_IPV6
    if ipv6:
        _H16.pack_into(buf, l3 + 4, 8 + total)
    else:
        _H16.pack_into(buf, l3 + 2, len(buf) - l3)
        _ipv4_header_checksum(buf, l3)
    _H16.pack_into(buf, l4 + 4, 8 + total)
    _H16.pack_into(buf, l4 + 6, pseudo_sum(buf, l3, ipv6, IPPROTO_UDP, 8 + total))
    return VNET_HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, l4 + 8, size, l4, 6) + bytes(buf)


# ------------------------------------------------------------------ bursts out


def chunk_size_for(max_plaintext: int, hdr_len: int) -> int:
    """Payload bytes per chunk when a datagram may carry ``max_plaintext`` bytes."""
    return max_plaintext - SEGMENT_HEADER_LEN - hdr_len


def burst_chunks(meta: Meta, frame: bytes, burst_id: int, chunk_size: int) -> list[bytes]:
    """The SEGMENT messages of one super-frame (each fits one datagram).

    Raises ``OffloadError("too_many_chunks")`` when the burst would need more
    than MAX_CHUNKS chunks or chunks below MIN_CHUNK_BYTES: the caller then
    segments instead.
    """
    hdr_len = meta.hdr_len
    payload_len = len(frame) - hdr_len
    if chunk_size < MIN_CHUNK_BYTES or payload_len > MAX_BURST_PAYLOAD:
        raise OffloadError("too_many_chunks")
    count = -(-payload_len // chunk_size) or 1
    if count > MAX_CHUNKS:
        raise OffloadError("too_many_chunks")
    headers = frame[:hdr_len]
    pack = SEGMENT_HEADER.pack
    out = []
    for index in range(count):
        start = hdr_len + index * chunk_size
        out.append(
            pack(TYPE_SEGMENT, meta.flags, burst_id, index, count, meta.gso_type,
                 hdr_len, meta.gso_size, meta.csum_start, meta.csum_offset, chunk_size)
            + headers
            + frame[start:start + chunk_size]
        )
    return out


# ------------------------------------------------------------------ bursts in


@dataclass(slots=True)
class _Burst:
    meta: Meta
    key: bytes  # the SEGMENT header bytes after the index: equal in every chunk
    headers: bytes
    prefix: bytes  # virtio_net_hdr + headers: the start of the rebuilt super-frame
    count: int
    chunk_size: int
    chunk_at: int  # where the payload starts in each SEGMENT message
    chunks: list[bytes | None]
    received: int = 0
    last_s: float = 0.0


def _new_burst(message: bytes, key: bytes) -> _Burst:
    """The state of a burst from its first chunk to arrive, its fields checked."""
    (_, flags, _, _, count, gso_type, hdr_len, gso_size, csum_start, csum_offset,
     chunk_size) = SEGMENT_HEADER.unpack_from(message)
    chunk_at = SEGMENT_HEADER_LEN + hdr_len
    if (
        count == 0
        or chunk_size == 0
        or count * chunk_size > MAX_BURST_PAYLOAD + chunk_size
        or gso_type & ~GSO_ECN not in _GSO_TYPES
        or gso_size == 0
        or hdr_len < MIN_HDR_LEN
        or csum_start + csum_offset + 2 > hdr_len
        or chunk_at > len(message)
    ):
        raise OffloadError("bad_segment")
    meta = Meta(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    headers = message[SEGMENT_HEADER_LEN:chunk_at]
    return _Burst(meta, key, headers, meta.pack() + headers, count, chunk_size, chunk_at,
                  [None] * count)


@dataclass
class BurstAssembler:
    """Per peer: SEGMENT messages in, vnet writes (header + frame) out.

    ``feed`` returns what is ready: a completed burst, preceded by every older
    burst still incomplete (delivered partially: the network lost or reordered
    its missing chunks).  ``expire`` delivers bursts idle for ``hold_s``.
    Memory: at most ``max_pending`` bursts of at most 64 KB each.
    """

    hold_s: float = BURST_HOLD_S
    max_pending: int = MAX_PENDING_BURSTS
    pending: dict[int, _Burst] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def _count(self, reason: str, n: int = 1) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + n

    def feed(self, message: bytes, now: float) -> list[bytes]:
        """Take one SEGMENT message; raise ``OffloadError`` if it is malformed.

        The burst's fields are parsed and checked once, at its first chunk; a
        later chunk is matched by its header bytes (all but the index).
        """
        size = len(message)
        if size < SEGMENT_HEADER_LEN:
            raise OffloadError("truncated")
        burst_id = (message[2] << 8) | message[3]
        index = message[4]
        key = message[5:SEGMENT_HEADER_LEN]
        pending = self.pending
        burst = pending.get(burst_id)
        out: list[bytes] = []
        if burst is None or burst.key != key:
            if burst is not None:
                out = self._flush(burst_id)  # a new burst under a reused id
            burst = _new_burst(message, key)
            if burst.count > 1:
                if len(pending) >= self.max_pending:
                    self._count("evicted_bursts")
                    out += self._flush(next(iter(pending)))
                pending[burst_id] = burst
        count = burst.count
        chunk_len = size - burst.chunk_at
        if (
            index >= count
            or chunk_len <= 0
            or chunk_len > burst.chunk_size
            or (index < count - 1 and chunk_len != burst.chunk_size)
        ):
            if count > 1 and not burst.received:
                del pending[burst_id]
            raise OffloadError("bad_segment")
        chunks = burst.chunks
        if chunks[index] is not None:
            self._count("duplicate_chunks")
            return out
        chunks[index] = message[burst.chunk_at:]
        burst.received += 1
        burst.last_s = now
        if burst.received < count:
            return out
        if count > 1:
            for older in list(pending):
                if older == burst_id:
                    break
                out += self._flush(older)
            del pending[burst_id]
        self._count("bursts")
        out.append(burst.prefix + b"".join(chunks))  # type: ignore[arg-type]
        return out

    def expire(self, now: float) -> list[bytes]:
        """Deliver (partially) every burst idle for ``hold_s`` or longer."""
        out: list[bytes] = []
        for burst_id, burst in list(self.pending.items()):
            if burst.last_s + self.hold_s <= now:
                out += self._flush(burst_id)
        return out

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work (None: nothing pending)."""
        if not self.pending:
            return None
        return min(b.last_s for b in self.pending.values()) + self.hold_s

    def _flush(self, burst_id: int) -> list[bytes]:
        """Deliver what arrived of an incomplete burst, one super-frame per run of chunks."""
        burst = self.pending.pop(burst_id)
        meta = burst.meta
        self._count("partial_bursts")
        self._count("lost_chunks", burst.count - burst.received)
        size = burst.chunk_size
        last_chunk = burst.chunks[-1]
        out = []
        for first, last in _runs(burst.chunks):
            start = first * size
            payload = b"".join(burst.chunks[first:last + 1])  # type: ignore[arg-type]
            end = start + len(payload)
            # Without the last chunk the burst's length is unknown; only the final
            # segment's flags (FIN, PSH) and UDP datagram depend on it.
            total = (burst.count - 1) * size + len(last_chunk) if last_chunk else end + 1
            if meta.gso_type & ~GSO_ECN == GSO_UDP_L4:
                # Only whole datagrams: trim to gso_size boundaries.
                gs = meta.gso_size
                lo = -(-start // gs) * gs
                hi = end if end == total else (end // gs) * gs
                if hi <= lo:
                    continue
                payload = payload[lo - start:hi - start]
                start = lo
            frame = sub_frame(meta, burst.headers, payload, start, total)
            gso_type = meta.gso_type if len(payload) > meta.gso_size else GSO_NONE
            out.append(VNET_HDR.pack(meta.flags, gso_type, meta.hdr_len,
                                     meta.gso_size if gso_type else 0,
                                     meta.csum_start, meta.csum_offset) + frame)
        return out


def _runs(chunks: list[bytes | None]) -> list[tuple[int, int]]:
    """(first, last) index of every run of received chunks."""
    runs = []
    first = None
    for i, chunk in enumerate(chunks):
        if chunk is not None:
            if first is None:
                first = i
        elif first is not None:
            runs.append((first, i - 1))
            first = None
    if first is not None:
        runs.append((first, len(chunks) - 1))
    return runs
