"""Super-frames: software segmentation, bursts out and in, partial delivery under loss.

Checksums are verified with an independent word-by-word implementation, and
every delivered byte is compared with the byte stream the sender offered.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from superframes import (
    MSS,
    final,
    ipv4_tcp_superframe,
    ipv6_udp_superframe,
    tcp_checksum_ok,
    tcp_fields,
    udp_read,
    word_checksum,
)

from l2bridge.core import offload as ol

# ------------------------------------------------------------------ checksums


@given(st.binary(max_size=3000))
def test_ones_sum_matches_the_word_by_word_checksum(data: bytes) -> None:
    assert ol.fold_checksum(ol.ones_sum(data)) in (word_checksum(data), 0xFFFF)
    if word_checksum(data) != 0:
        assert ol.fold_checksum(ol.ones_sum(data)) == word_checksum(data)


def test_complete_checksum_makes_a_valid_tcp_segment() -> None:
    meta, frame = ipv4_tcp_superframe(b"x" * 100)
    done = ol.complete_checksum(frame, meta.csum_start, meta.csum_offset)
    assert tcp_checksum_ok(done)
    assert done[:meta.csum_start + 16] == frame[:meta.csum_start + 16]


def test_complete_checksum_names_a_bad_offset() -> None:
    with pytest.raises(ol.OffloadError) as err:
        ol.complete_checksum(b"\0" * 40, 38, 16)
    assert err.value.reason == "bad_csum_offset"


# ------------------------------------------------------------------ parse_vnet


def test_parse_vnet_computes_the_header_length_from_the_tcp_data_offset() -> None:
    meta, frame = ipv4_tcp_superframe(b"a" * 5000, vlan=10)
    assert meta.csum_start == 18 + 20
    assert meta.hdr_len == 18 + 20 + 32
    assert meta.gso_size == MSS


def test_parse_vnet_plain_frame() -> None:
    meta = ol.parse_vnet(ol.PLAIN_VNET_HDR + b"\xff" * 60)
    assert meta.gso_type == ol.GSO_NONE and meta.hdr_len == 0


def test_parse_vnet_refuses_gso_without_needs_csum() -> None:
    raw = struct.pack("<BBHHHH", 0, ol.GSO_TCPV4, 66, 1448, 34, 16) + bytes(200)
    with pytest.raises(ol.OffloadError) as err:
        ol.parse_vnet(raw)
    assert err.value.reason == "bad_gso_frame"


def test_parse_vnet_refuses_ufo() -> None:
    raw = struct.pack("<BBHHHH", 1, ol.GSO_UDP, 42, 1000, 34, 6) + bytes(3000)
    with pytest.raises(ol.OffloadError) as err:
        ol.parse_vnet(raw)
    assert err.value.reason == "unsupported_gso"


# ------------------------------------------------------------------ segment


def test_segment_cuts_at_gso_size_with_valid_headers_and_checksums() -> None:
    payload = bytes(random.Random(1).randbytes(10 * MSS + 77))
    meta, frame = ipv4_tcp_superframe(payload, seq=0xFFFFF000, flags=0x19)  # PSH FIN ACK
    frames = ol.segment(meta, frame)
    assert len(frames) == 11
    fields = [tcp_fields(f) for f in frames]
    assert b"".join(f["payload"] for f in fields) == payload
    for i, (f, raw) in enumerate(zip(fields, frames, strict=True)):
        assert f["ip_ok"] and tcp_checksum_ok(raw)
        assert f["seq"] == (0xFFFFF000 + i * MSS) & 0xFFFFFFFF  # wraps
        assert f["ip_id"] == 7 + i
        assert f["tot_len"] == len(raw) - 14
        last = i == 10
        assert bool(f["flags"] & ol.TCP_FIN) == last and bool(f["flags"] & ol.TCP_PSH) == last
        assert bool(f["flags"] & ol.TCP_CWR) == (i == 0)
        assert f["flags"] & 0x10  # ACK everywhere


def test_segment_udp_l4_gives_whole_datagrams_with_valid_checksums() -> None:
    meta, frame = ipv6_udp_superframe(5, 1000)
    frames = ol.segment(meta, frame)
    assert [len(f) - 62 for f in frames] == [1000, 1000, 1000, 1000, 500]
    for f in frames:
        udp_len = struct.unpack_from("!H", f, 58)[0]
        assert udp_len == len(f) - 54 == struct.unpack_from("!H", f, 18)[0]
        pseudo = f[22:54] + struct.pack("!IxxxB", udp_len, 17)
        assert word_checksum(pseudo + f[54:]) == 0


def test_segment_of_a_plain_frame_is_the_frame() -> None:
    meta = ol.Meta(0, ol.GSO_NONE, 0, 0, 0, 0)
    assert ol.segment(meta, b"abc" * 30) == [b"abc" * 30]


# ------------------------------------------------------------------ bursts


def chunks_of(payload_len: int, chunk: int = 1300, **kw) -> tuple[ol.Meta, bytes, list[bytes]]:
    payload = random.Random(payload_len).randbytes(payload_len)
    meta, frame = ipv4_tcp_superframe(payload, **kw)
    return meta, frame, ol.burst_chunks(meta, frame, 9, chunk)


def test_a_complete_burst_is_the_super_frame_byte_for_byte() -> None:
    meta, frame, chunks = chunks_of(60000)
    assert len(chunks) == 47
    assert all(len(c) == ol.SEGMENT_HEADER_LEN + meta.hdr_len + 1300 for c in chunks[:-1])
    asm = ol.BurstAssembler()
    out = []
    for c in reversed(chunks):  # any order
        out += asm.feed(c, 0.0)
    assert out == [meta.pack() + frame]
    assert not asm.pending and asm.counters == {"bursts": 1}


def test_a_lost_chunk_costs_that_chunk_only() -> None:
    meta, frame, chunks = chunks_of(20 * 1300 + 5, flags=0x19)
    asm = ol.BurstAssembler()
    for i, c in enumerate(chunks):
        if i != 7:
            assert asm.feed(c, 1.0) == []
    assert asm.next_deadline() == pytest.approx(1.0 + ol.BURST_HOLD_S)
    assert asm.expire(1.0) == []
    out = asm.expire(1.0 + ol.BURST_HOLD_S)
    assert len(out) == 2 and not asm.pending
    payload = frame[meta.hdr_len:]
    delivered = []
    for raw in out:
        sub = ol.parse_vnet(raw)
        for seg in ol.segment(sub, raw[ol.VNET_HDR_LEN:]):
            assert tcp_checksum_ok(seg) and tcp_fields(seg)["ip_ok"]
            delivered.append(tcp_fields(seg))
    # Every delivered byte sits at its sequence number; only chunk 7 is missing.
    got = bytearray(len(payload))
    for f in delivered:
        at = f["seq"] - 1000
        got[at:at + len(f["payload"])] = f["payload"]
    hole = slice(7 * 1300, 8 * 1300)
    assert got[:hole.start] == payload[:hole.start] and got[hole.stop:] == payload[hole.stop:]
    assert sum(len(f["payload"]) for f in delivered) == len(payload) - 1300
    assert delivered[-1]["flags"] & ol.TCP_FIN and not delivered[0]["flags"] & ol.TCP_FIN
    assert asm.counters == {"partial_bursts": 1, "lost_chunks": 1}


def test_an_incomplete_burst_goes_out_before_the_next_complete_one() -> None:
    _, _, first = chunks_of(5000)
    meta2, frame2 = ipv4_tcp_superframe(b"z" * 3000, seq=9000)
    second = ol.burst_chunks(meta2, frame2, 10, 1300)
    asm = ol.BurstAssembler()
    for c in first[:-1]:
        asm.feed(c, 0.0)
    out = []
    for c in second:
        out += asm.feed(c, 0.0)
    assert len(out) == 2
    assert tcp_fields(out[0][ol.VNET_HDR_LEN:])["seq"] == 1000
    assert out[1] == meta2.pack() + frame2


def test_udp_partial_delivery_keeps_whole_datagrams_only() -> None:
    meta, frame = ipv6_udp_superframe(6, 1000)
    chunks = ol.burst_chunks(meta, frame, 3, 700)  # chunks straddle datagrams
    asm = ol.BurstAssembler()
    for i, c in enumerate(chunks):
        if i != 3:  # bytes 2100..2800: datagram 2 (2000..3000) is lost
            asm.feed(c, 0.0)
    out = asm.expire(1.0)
    frames = [f for raw in out for f in ol.segment(ol.parse_vnet(raw), raw[ol.VNET_HDR_LEN:])]
    payloads = [f[62:] for f in frames]
    original = frame[62:]
    expect = [original[i:i + 1000] for i in (0, 1000, 3000, 4000, 5000)]
    assert payloads == expect


def test_duplicate_chunks_are_counted_not_delivered_twice() -> None:
    _, _, chunks = chunks_of(3000)
    asm = ol.BurstAssembler()
    asm.feed(chunks[0], 0.0)
    asm.feed(chunks[0], 0.0)
    assert asm.counters["duplicate_chunks"] == 1


def test_pending_bursts_are_bounded() -> None:
    asm = ol.BurstAssembler(max_pending=4)
    for burst in range(10):
        meta, frame = ipv4_tcp_superframe(b"q" * 3000, seq=burst * 3000)
        asm.feed(ol.burst_chunks(meta, frame, burst, 1300)[0], 0.0)
    assert len(asm.pending) == 4
    assert asm.counters["evicted_bursts"] == 6


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m[:10], "truncated"),
        (lambda m: m[:4] + b"\x05" + m[5:], "bad_segment"),  # index >= count
        (lambda m: m[:6] + b"\x03" + m[7:], "bad_segment"),  # UFO
        (lambda m: m[:8] + b"\x00\x10" + m[10:], "bad_segment"),  # headers too short
        (lambda m: m[:ol.SEGMENT_HEADER_LEN + 66], "bad_segment"),  # no payload
    ],
)
def test_malformed_segments_are_named(mutate, reason) -> None:
    _, _, chunks = chunks_of(3000)
    with pytest.raises(ol.OffloadError) as err:
        ol.BurstAssembler().feed(mutate(chunks[0]), 0.0)
    assert err.value.reason == reason


def test_too_small_chunks_are_refused_so_the_caller_segments() -> None:
    meta, frame = ipv4_tcp_superframe(b"x" * 60000)
    with pytest.raises(ol.OffloadError):
        ol.burst_chunks(meta, frame, 1, 40)
    with pytest.raises(ol.OffloadError):
        ol.burst_chunks(meta, frame, 1, 200)  # 300 chunks


@settings(max_examples=60, deadline=None)
@given(
    payload_len=st.integers(1, 65000 - 100),
    chunk=st.integers(300, 1500),
    lost=st.sets(st.integers(0, 250), max_size=6),
    seed=st.integers(0, 1000),
)
def test_any_loss_delivers_exactly_the_bytes_that_arrived(payload_len, chunk, lost, seed) -> None:
    payload = random.Random(seed).randbytes(payload_len)
    meta, frame = ipv4_tcp_superframe(payload, seq=seed * 1000)
    chunks = ol.burst_chunks(meta, frame, seed & 0xFFFF, chunk)
    asm = ol.BurstAssembler()
    out = []
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    for i in order:
        if i not in lost:
            out += asm.feed(chunks[i], 0.0)
    out += asm.expire(10.0)
    got: dict[int, bytes] = {}
    for raw in out:
        for seg in ol.segment(ol.parse_vnet(raw), raw[ol.VNET_HDR_LEN:]):
            f = tcp_fields(seg)
            assert tcp_checksum_ok(seg) and f["ip_ok"] and f["tot_len"] == len(seg) - 14
            got[(f["seq"] - seed * 1000) & 0xFFFFFFFF] = f["payload"]
    arrived = bytearray(payload_len)
    for i in range(len(chunks)):
        if i not in lost:
            arrived[i * chunk:i * chunk + chunk] = payload[i * chunk:i * chunk + chunk]
    rebuilt = bytearray(payload_len)
    for at, data in got.items():
        assert data == payload[at:at + len(data)]
        rebuilt[at:at + len(data)] = data
    assert rebuilt == arrived
    assert sum(map(len, got.values())) == sum(
        len(payload[i * chunk:i * chunk + chunk]) for i in range(len(chunks)) if i not in lost
    )


# ------------------------------------------------------------------ UDP coalescing






@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_run_of_one_flow_becomes_one_uso_super_frame_that_segments_back(ipv6) -> None:
    reads = [udp_read(bytes([i]) * 64, ip_id=100 + i, ipv6=ipv6) for i in range(9)]
    reads.append(udp_read(b"end", ip_id=109, ipv6=ipv6))  # shorter: ends the run
    [merged] = ol.coalesce_udp(reads)
    meta = ol.parse_vnet(merged)
    assert (meta.gso_type, meta.gso_size) == (ol.GSO_UDP_L4, 64)
    assert ol.segment(meta, merged[ol.VNET_HDR_LEN:]) == [final(r) for r in reads]


def test_only_same_flow_consecutive_datagrams_merge() -> None:
    a = [udp_read(b"a" * 50, ip_id=i) for i in range(3)]
    other = udp_read(b"b" * 50, ip_id=3, sport=4001)
    bigger = udp_read(b"c" * 60, ip_id=4)
    tcp_meta, tcp_frame = ipv4_tcp_superframe(b"x" * 5000)
    tcp = tcp_meta.pack() + tcp_frame
    out = ol.coalesce_udp([*a, other, bigger, tcp, a[0]])
    assert [ol.parse_vnet(r).gso_type for r in out] == [ol.GSO_UDP_L4, 0, 0, tcp_meta.gso_type, 0]
    assert out[1:] == [other, bigger, tcp, a[0]]


def test_ipv4_ids_must_be_consecutive_unless_df() -> None:
    gap = [udp_read(b"q" * 40, ip_id=i, df=False) for i in (1, 2, 5)]
    assert len(ol.coalesce_udp(gap)) == 2
    atomic = [udp_read(b"q" * 40, ip_id=0, df=True) for _ in range(3)]
    assert len(ol.coalesce_udp(atomic)) == 1


def test_a_uso_burst_loses_whole_datagrams_only() -> None:
    reads = [udp_read(bytes([i]) * 100, ip_id=i) for i in range(30)]
    [merged] = ol.coalesce_udp(reads)
    meta = ol.parse_vnet(merged)
    chunks = ol.burst_chunks(meta, merged[ol.VNET_HDR_LEN:], 1, 1000)  # 10 datagrams each
    asm = ol.BurstAssembler()
    for i, c in enumerate(chunks):
        if i != 1:
            asm.feed(c, 0.0)
    out = asm.expire(1.0)
    got = [f for raw in out for f in ol.segment(ol.parse_vnet(raw), raw[ol.VNET_HDR_LEN:])]
    assert [f[42:] for f in got] == [bytes([i]) * 100 for i in (*range(10), *range(20, 30))]
    assert all(word_checksum(f[26:34] + struct.pack("!BBH", 0, 17, len(f) - 34) + f[34:]) == 0
               for f in got)
