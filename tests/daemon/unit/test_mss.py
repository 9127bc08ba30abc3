"""TCP MSS clamping on hand-built SYN frames, checksums verified from scratch."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core.budget import MtuBudget
from l2bridge.core.mss import clamp_mss


def mss_for(wan_mtu: int, v6_underlay: bool, v6_inner: bool) -> int:
    budget = MtuBudget.of(mtu=1500, wan_mtu=wan_mtu, ipv6_underlay=v6_underlay, sealed=False)
    return budget.mss(ipv6_inner=v6_inner)

MAC_DST = bytes.fromhex("020000000002")
MAC_SRC = bytes.fromhex("020000000001")
SRC4, DST4 = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")
SYN, ACK = 0x02, 0x10


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~ones_sum(data) & 0xFFFF


def mss_option(value: int) -> bytes:
    return struct.pack("!BBH", 2, 4, value)


def tcp_segment(options: bytes, flags: int, pseudo: bytes, payload: bytes = b"") -> bytes:
    """A TCP header (ports 40000 -> 80) with a correct checksum over ``pseudo``."""
    assert len(options) % 4 == 0
    offset_words = (20 + len(options)) // 4
    header = struct.pack(
        "!HHIIBBHHH", 40000, 80, 0x01020304, 0, offset_words << 4, flags, 64240, 0, 0
    )
    segment = header + options + payload
    value = checksum(pseudo + segment)
    return segment[:16] + struct.pack("!H", value) + segment[18:]


def ethernet(ethertype: int, tags: tuple[int, ...] = ()) -> bytes:
    out = MAC_DST + MAC_SRC
    for vid, tpid in enumerate(tags, start=10):
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", ethertype)


def ipv4_syn(
    options: bytes,
    *,
    flags: int = SYN,
    tags: tuple[int, ...] = (),
    ip_options: bytes = b"",
    frag_field: int = 0,
    protocol: int = 6,
    padding: bytes = b"",
) -> bytes:
    pseudo_len = 20 + len(options)
    pseudo = SRC4 + DST4 + struct.pack("!BBH", 0, 6, pseudo_len)
    segment = tcp_segment(options, flags, pseudo)
    ihl = (20 + len(ip_options)) // 4
    total = ihl * 4 + len(segment)
    header = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, total, 1, frag_field, 64, protocol, 0)
    header += SRC4 + DST4 + ip_options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return ethernet(0x0800, tags) + header + segment + padding


def ipv6_syn(
    options: bytes, *, flags: int = SYN, tags: tuple[int, ...] = (), next_header: int = 6
) -> bytes:
    seg_len = 20 + len(options)
    pseudo = SRC6 + DST6 + struct.pack("!IxxxB", seg_len, 6)
    segment = tcp_segment(options, flags, pseudo)
    header = struct.pack("!IHBB", 0x60000000, len(segment), next_header, 64) + SRC6 + DST6
    return ethernet(0x86DD, tags) + header + segment


def tcp_checksum_ok(frame: bytes, ip_at: int) -> bool:
    """Recompute the TCP checksum with the pseudo-header from scratch."""
    if frame[ip_at] >> 4 == 4:
        ihl = (frame[ip_at] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, ip_at + 2)[0]
        segment = frame[ip_at + ihl : ip_at + total]
        pseudo = frame[ip_at + 12 : ip_at + 20] + struct.pack("!BBH", 0, 6, len(segment))
    else:
        length = struct.unpack_from("!H", frame, ip_at + 4)[0]
        segment = frame[ip_at + 40 : ip_at + 40 + length]
        pseudo = frame[ip_at + 8 : ip_at + 40] + struct.pack("!IxxxB", len(segment), 6)
    return ones_sum(pseudo + segment) == 0xFFFF


def mss_value(frame: bytes) -> int:
    at = frame.find(b"\x02\x04", frame.find(struct.pack("!HH", 40000, 80)) + 20)
    return struct.unpack_from("!H", frame, at + 2)[0]


def changed_offsets(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [i for i in range(len(a)) if a[i] != b[i]]


TYPICAL_OPTIONS = mss_option(1460) + b"\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"


# ---------------------------------------------------------------- mss_for


@pytest.mark.parametrize(
    ("wan_mtu", "v6_underlay", "v6_inner", "expected"),
    [
        (1500, False, False, 1414),
        (1500, False, True, 1394),
        (1500, True, False, 1394),
        (1500, True, True, 1374),
        (1400, False, False, 1314),
    ],
)
def test_mss_for(wan_mtu: int, v6_underlay: bool, v6_inner: bool, expected: int) -> None:
    assert mss_for(wan_mtu, v6_underlay, v6_inner) == expected


def test_mss_for_segment_fits_one_datagram() -> None:
    mss = mss_for(1500, False, False)
    datagram = 4 + 14 + 20 + 20 + mss
    assert datagram + 28 == 1500


# ---------------------------------------------------------------- clamping


def test_ipv4_syn_clamped_and_checksum_valid() -> None:
    frame = ipv4_syn(TYPICAL_OPTIONS)
    assert tcp_checksum_ok(frame, 14)
    out = clamp_mss(frame, 1360)
    assert isinstance(out, bytes)
    assert mss_value(out) == 1360
    assert tcp_checksum_ok(out, 14)
    tcp = 14 + 20
    assert set(changed_offsets(frame, out)) <= {tcp + 16, tcp + 17, tcp + 22, tcp + 23}


def test_ipv4_syn_ack_clamped() -> None:
    out = clamp_mss(ipv4_syn(mss_option(8960), flags=SYN | ACK), 1394)
    assert mss_value(out) == 1394
    assert tcp_checksum_ok(out, 14)


def test_ipv4_with_ip_options() -> None:
    frame = ipv4_syn(mss_option(1460), ip_options=b"\x01\x01\x01\x00")
    out = clamp_mss(frame, 1300)
    assert mss_value(out) == 1300
    assert tcp_checksum_ok(out, 14)


def test_ipv4_with_ethernet_padding() -> None:
    frame = ipv4_syn(mss_option(1460), padding=bytes(6))
    out = clamp_mss(frame, 1300)
    assert mss_value(out) == 1300
    assert out[-6:] == bytes(6)
    assert tcp_checksum_ok(out, 14)


def test_mss_at_odd_offset() -> None:
    options = b"\x01" + mss_option(1460) + b"\x01\x01\x01"
    frame = ipv4_syn(options)
    out = clamp_mss(frame, 1200)
    assert struct.unpack_from("!H", out, 14 + 20 + 20 + 3)[0] == 1200
    assert tcp_checksum_ok(out, 14)


@pytest.mark.parametrize("old", [536, 1201, 1460, 9000, 0xFFFF])
@pytest.mark.parametrize("new", [536, 1200, 1374])
def test_checksum_across_values(old: int, new: int) -> None:
    for options in (mss_option(old), b"\x01" + mss_option(old) + b"\x01\x01\x01"):
        frame = ipv4_syn(options)
        out = clamp_mss(frame, new)
        if old <= new:
            assert out is frame
        else:
            assert tcp_checksum_ok(out, 14)
            assert mss_value(out) == new


def test_ipv6_syn_clamped() -> None:
    frame = ipv6_syn(TYPICAL_OPTIONS)
    assert tcp_checksum_ok(frame, 14)
    out = clamp_mss(frame, 1374)
    assert mss_value(out) == 1374
    assert tcp_checksum_ok(out, 14)


@pytest.mark.parametrize(
    "tags", [(0x8100,), (0x88A8,), (0x9100,), (0x88A8, 0x8100), (0x9100, 0x8100)]
)
def test_vlan_tagged(tags: tuple[int, ...]) -> None:
    ip_at = 14 + 4 * len(tags)
    for frame in (ipv4_syn(TYPICAL_OPTIONS, tags=tags), ipv6_syn(TYPICAL_OPTIONS, tags=tags)):
        out = clamp_mss(frame, 1300)
        assert mss_value(out) == 1300
        assert tcp_checksum_ok(out, ip_at)
        assert out[:ip_at] == frame[:ip_at]


# ---------------------------------------------------------------- left alone (same object)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(ipv4_syn(mss_option(1460), flags=ACK), id="ack-not-syn"),
        pytest.param(ipv4_syn(mss_option(1200)), id="mss-already-small"),
        pytest.param(ipv4_syn(mss_option(1300)), id="mss-equal"),
        pytest.param(ipv4_syn(b"\x01\x01\x04\x02"), id="no-mss-option"),
        pytest.param(ipv4_syn(b""), id="no-options"),
        pytest.param(ipv4_syn(b"\x00\x00\x00\x00" + mss_option(1460)), id="eol-before-mss"),
        pytest.param(ipv4_syn(b"\x08\x00" + bytes(2) + mss_option(1460)), id="option-len-0"),
        pytest.param(ipv4_syn(b"\x01\x01\x08\x09"), id="option-past-header"),
        pytest.param(ipv4_syn(b"\x02\x05\x05\xb4"), id="mss-bad-length"),
        pytest.param(ipv4_syn(b"\x01\x01\x01\x02"), id="option-without-length"),
        pytest.param(ipv4_syn(mss_option(1460), frag_field=0x0010), id="ipv4-later-fragment"),
        pytest.param(ipv4_syn(mss_option(1460), protocol=17), id="udp"),
        pytest.param(ipv6_syn(mss_option(1460), next_header=0), id="ipv6-hop-by-hop"),
        pytest.param(ipv6_syn(mss_option(1460), flags=ACK), id="ipv6-ack"),
        pytest.param(
            ipv4_syn(mss_option(1460), tags=(0x8100, 0x8100, 0x8100)), id="three-tags"
        ),
        pytest.param(ethernet(0x0806) + bytes(28), id="arp"),
        pytest.param(ipv4_syn(mss_option(1460))[:-2], id="truncated-tcp"),
        pytest.param(ipv4_syn(mss_option(1460))[:30], id="truncated-ip"),
        pytest.param(b"", id="empty"),
        pytest.param(ethernet(0x8100), id="truncated-tag"),
    ],
)
def test_left_unchanged(frame: bytes) -> None:
    assert clamp_mss(frame, 1300) is frame


def test_ipv4_first_fragment_with_more_fragments_is_clamped() -> None:
    frame = ipv4_syn(mss_option(1460), frag_field=0x2000)  # MF set, offset 0
    out = clamp_mss(frame, 1300)
    assert mss_value(out) == 1300
    assert tcp_checksum_ok(out, 14)


def test_bad_data_offset_left_alone() -> None:
    frame = bytearray(ipv4_syn(mss_option(1460)))
    frame[14 + 20 + 12] = 0x40  # data offset 16 bytes < 20
    data = bytes(frame)
    assert clamp_mss(data, 1300) is data
    frame[14 + 20 + 12] = 0xF0  # 60 bytes, past the packet
    data = bytes(frame)
    assert clamp_mss(data, 1300) is data


# ---------------------------------------------------------------- properties


@given(st.binary(max_size=120), st.integers(0, 0xFFFF))
def test_random_bytes_never_raise(frame: bytes, mss: int) -> None:
    out = clamp_mss(frame, mss)
    assert out is frame or len(out) == len(frame)


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 3),
    st.booleans(),
)
def test_clamp_property(old: int, new: int, nops: int, v6: bool) -> None:
    options = b"\x01" * nops + mss_option(old)
    options += b"\x01" * (-len(options) % 4)
    frame = ipv6_syn(options) if v6 else ipv4_syn(options)
    out = clamp_mss(frame, new)
    if old <= new:
        assert out is frame
    else:
        assert mss_value(out) == new
        assert tcp_checksum_ok(out, 14)
        assert len(changed_offsets(frame, out)) <= 4


@given(st.binary(min_size=0, max_size=40), st.integers(0, 0xFFFF))
def test_random_options_never_raise(options: bytes, mss: int) -> None:
    options += b"\x00" * (-len(options) % 4)
    frame = ipv4_syn(options)
    out = clamp_mss(frame, mss)
    assert out is frame or tcp_checksum_ok(out, 14)
