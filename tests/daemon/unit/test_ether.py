"""Ethernet header helpers: VLAN IDs, MAC formatting and parsing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core.ether import (
    BROADCAST_MAC,
    ETH_ALEN,
    ETH_HLEN,
    PAUSE_MAC,
    TPID_8021AD,
    TPID_8021Q,
    TPID_QINQ_OLD,
    VLAN_HLEN,
    VLAN_TPIDS,
    ZERO_MAC,
    format_mac,
    is_multicast,
    parse_mac,
    vlan_id,
)

DST = bytes.fromhex("020000000002")
SRC = bytes.fromhex("020000000001")


def tagged(tpid: int, tci: int, rest: bytes = b"\x08\x00" + bytes(46)) -> bytes:
    return DST + SRC + tpid.to_bytes(2, "big") + tci.to_bytes(2, "big") + rest


def test_constants() -> None:
    assert (ETH_ALEN, ETH_HLEN, VLAN_HLEN) == (6, 14, 4)
    assert BROADCAST_MAC == b"\xff\xff\xff\xff\xff\xff"
    assert bytes(6) == ZERO_MAC
    assert PAUSE_MAC == b"\x01\x80\xc2\x00\x00\x01"
    assert (TPID_8021Q, TPID_8021AD, TPID_QINQ_OLD) == (0x8100, 0x88A8, 0x9100)
    assert {0x8100, 0x88A8, 0x9100} == VLAN_TPIDS


def test_vlan_id_untagged_is_zero() -> None:
    assert vlan_id(DST + SRC + b"\x08\x00" + bytes(46)) == 0
    assert vlan_id(DST + SRC + b"\x86\xdd") == 0


@pytest.mark.parametrize("tpid", [TPID_8021Q, TPID_8021AD, TPID_QINQ_OLD])
def test_vlan_id_reads_each_tpid(tpid: int) -> None:
    assert vlan_id(tagged(tpid, 100)) == 100
    assert vlan_id(tagged(tpid, 4095)) == 4095


def test_vlan_id_ignores_priority_and_dei_bits() -> None:
    # PCP 7, DEI 1, VID 42
    assert vlan_id(tagged(TPID_8021Q, 0xF000 | 42)) == 42


def test_vlan_id_priority_tag_is_zero() -> None:
    assert vlan_id(tagged(TPID_8021Q, 0x6000)) == 0


def test_vlan_id_qinq_uses_outer_tag() -> None:
    inner = TPID_8021Q.to_bytes(2, "big") + (20).to_bytes(2, "big") + b"\x08\x00"
    assert vlan_id(tagged(TPID_8021AD, 10, inner)) == 10


def test_vlan_id_truncated_tag_is_zero() -> None:
    full = tagged(TPID_8021Q, 7)
    assert vlan_id(full[:18]) == 7
    assert vlan_id(full[:17]) == 0
    assert vlan_id(full[:16]) == 0
    assert vlan_id(full[:14]) == 0
    assert vlan_id(b"") == 0


def test_is_multicast() -> None:
    assert is_multicast(BROADCAST_MAC)
    assert is_multicast(PAUSE_MAC)
    assert is_multicast(bytes.fromhex("01005e000001"))
    assert is_multicast(bytes.fromhex("333300000001"))
    assert not is_multicast(DST)
    assert not is_multicast(ZERO_MAC)


def test_format_mac() -> None:
    assert format_mac(bytes.fromhex("0200000000ab")) == "02:00:00:00:00:ab"
    assert format_mac(BROADCAST_MAC) == "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("bad", [b"", bytes(5), bytes(7)])
def test_format_mac_rejects_wrong_length(bad: bytes) -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        format_mac(bad)


def test_parse_mac_accepts_colon_hyphen_and_case() -> None:
    want = bytes.fromhex("02005e0000ab")
    assert parse_mac("02:00:5e:00:00:ab") == want
    assert parse_mac("02:00:5E:00:00:AB") == want
    assert parse_mac("02-00-5e-00-00-ab") == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:00:00",
        "2:00:00:00:00:01",
        "002:00:00:00:00:01",
        "02:00:00:00:00:0g",
        "02:00-00:00:00:01",
        "020000000001",
        "02:00:00:00:00:01 ",
        "+2:00:00:00:00:01",
    ],
)
def test_parse_mac_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid MAC address"):
        parse_mac(text)


@given(st.binary(min_size=6, max_size=6))
def test_format_parse_round_trip(mac: bytes) -> None:
    assert parse_mac(format_mac(mac)) == mac
    assert parse_mac(format_mac(mac).upper().replace(":", "-")) == mac
