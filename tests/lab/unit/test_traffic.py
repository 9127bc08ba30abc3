"""Traffic primitives: pure frame/pcap/output parsing, then real tools in namespaces.

The netns tests build their own topology (``l2btr-<hex>-{s,a,b,c}``): a
bridge ``br0`` in namespace ``s`` with one veth port per host namespace::

    a eth0 (10.250.0.1, fd00:250::1) ─┐
    b eth0 (10.250.0.2, fd00:250::2) ─┼─ br0 in s
    c eth0 (no address: DHCP client) ─┘

Nothing leaves those namespaces; teardown kills whatever still runs in them
and deletes them.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netns.checks.frames import (
    BROADCAST_MAC,
    ETH_ZLEN,
    ETHERTYPE_EXPERIMENTAL,
    insert_vlan_tag,
    make_frame,
    make_mac,
    marker_payload,
    marker_seq,
    parse_pcap,
    write_pcap,
)
from netns.checks.traffic import (
    ToolMissing,
    TrafficError,
    dhcp_lease,
    iperf3,
    parse_iperf3_json,
    parse_ping_output,
    ping,
    run_command,
    tcpdump_count,
)

SRC = bytes.fromhex("020000000001")
DST = bytes.fromhex("020000000002")
IFA_F_NODAD = 0x02

# --- pure: frames ---------------------------------------------------------------


def test_make_frame_header_and_padding() -> None:
    frame = make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, b"hi")
    assert frame == BROADCAST_MAC + SRC + b"\x88\xb5" + b"hi" + bytes(44)
    assert len(frame) == ETH_ZLEN


def test_make_frame_vlan_tag() -> None:
    frame = make_frame(DST, SRC, 0x0800, bytes(range(50)), vlan=42)
    assert frame == DST + SRC + b"\x81\x00\x00\x2a" + b"\x08\x00" + bytes(range(50))


def test_make_frame_long_payload_not_padded() -> None:
    payload = b"x" * 1500
    assert make_frame(DST, SRC, 0x88B5, payload) == DST + SRC + b"\x88\xb5" + payload


@pytest.mark.parametrize(
    ("dst", "ethertype", "vlan", "message"),
    [
        (b"\x00" * 5, 0x88B5, None, "6 bytes"),
        (DST, 0x10000, None, "16 bits"),
        (DST, -1, None, "16 bits"),
        (DST, 0x88B5, 4096, "VLAN ID 4096"),
        (DST, 0x88B5, -1, "VLAN ID -1"),
    ],
)
def test_make_frame_rejects(dst: bytes, ethertype: int, vlan: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_frame(dst, SRC, ethertype, b"", vlan=vlan)


def test_make_mac_is_local_unicast() -> None:
    mac = make_mac(0x01020304)
    assert mac == bytes.fromhex("020001020304")
    assert mac[0] & 0x02 and not mac[0] & 0x01


def test_marker_payload_layout_and_seq() -> None:
    payload = marker_payload(b"MARK", 258, size=16)
    assert payload == b"MARK" + b"\x00\x00\x01\x02" + bytes(8)
    frame = make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, payload)
    assert marker_seq(frame, b"MARK") == 258
    assert marker_seq(frame, b"OTHER") is None


@pytest.mark.parametrize(
    ("marker", "seq", "size", "message"),
    [
        (b"", 0, 64, "empty"),
        (b"M", -1, 64, "sequence"),
        (b"M", 2**32, 64, "sequence"),
        (b"MARK", 0, 7, "shorter"),
    ],
)
def test_marker_payload_rejects(marker: bytes, seq: int, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        marker_payload(marker, seq, size)


def test_insert_vlan_tag() -> None:
    untagged = make_frame(DST, SRC, 0x88B5, b"p" * 50)
    tagged = make_frame(DST, SRC, 0x88B5, b"p" * 50, vlan=7)
    assert insert_vlan_tag(untagged, 7) == tagged


# --- pure: pcap -----------------------------------------------------------------


def _pcap_by_hand(order: str, magic: int, records: list[bytes]) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for i, rec in enumerate(records):
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 999, len(rec), len(rec) + 10) + rec
    return out


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("magic", [0xA1B2C3D4, 0xA1B23C4D])
def test_parse_pcap_both_orders_and_resolutions(order: str, magic: int) -> None:
    records = [b"\x01" * 60, b"", b"\x02\x03" * 700]
    assert parse_pcap(_pcap_by_hand(order, magic, records)) == records


def test_parse_pcap_header_only_is_empty() -> None:
    assert parse_pcap(_pcap_by_hand("<", 0xA1B2C3D4, [])) == []


@given(
    frames=st.lists(st.binary(max_size=1600), max_size=20),
    nanosecond=st.booleans(),
    big_endian=st.booleans(),
)
def test_parse_pcap_round_trip(frames: list[bytes], nanosecond: bool, big_endian: bool) -> None:
    data = write_pcap(frames, nanosecond=nanosecond, big_endian=big_endian)
    assert parse_pcap(data) == frames


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 24-byte"),
        (b"\x00" * 24, "bad magic"),
        (b"GIF89a" + bytes(40), "bad magic"),
        (bytes.fromhex("0a0d0d0a") + bytes(40), "bad magic"),  # pcapng is not classic pcap
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 0, 65535, 1), "version 1"),
        (_pcap_by_hand("<", 0xA1B2C3D4, [b"abc"])[:-1], "truncated record at offset 24"),
        (_pcap_by_hand("<", 0xA1B2C3D4, [b"abc"]) + b"\x00" * 5, "truncated record header"),
        (
            _pcap_by_hand("<", 0xA1B2C3D4, []) + struct.pack("<IIII", 0, 0, 10**9, 10**9),
            "claims 1000000000 bytes",
        ),
    ],
)
def test_parse_pcap_rejects_garbage(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pcap(data)


# --- pure: tool output ------------------------------------------------------------

PING_OK = """PING 10.250.0.1 (10.250.0.1) 1472(1500) bytes of data.
1480 bytes from 10.250.0.1: icmp_seq=1 ttl=64 time=0.082 ms
1480 bytes from 10.250.0.1: icmp_seq=2 ttl=64 time=0.050 ms

--- 10.250.0.1 ping statistics ---
2 packets transmitted, 2 received, 0% packet loss, time 204ms
rtt min/avg/max/mdev = 0.050/0.066/0.082/0.016 ms
"""
PING_TOO_BIG = """PING 10.250.0.1 (10.250.0.1) 1473(1501) bytes of data.
ping: local error: message too long, mtu=1500

--- 10.250.0.1 ping statistics ---
1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms
"""
PING_DUP = """--- x ping statistics ---
3 packets transmitted, 3 received, +2 duplicates, 0% packet loss, time 400ms
rtt min/avg/max/mdev = 1.000/2.500/4.000/0.100 ms
"""


def test_parse_ping_output() -> None:
    ok = parse_ping_output(PING_OK)
    assert (ok.sent, ok.received, ok.ok, ok.errors) == (2, 2, True, 0)
    assert (ok.rtt_min_ms, ok.rtt_avg_ms, ok.rtt_max_ms) == (0.050, 0.066, 0.082)
    big = parse_ping_output(PING_TOO_BIG)
    assert (big.sent, big.received, big.ok, big.errors, big.rtt_avg_ms) == (1, 0, False, 1, None)
    dup = parse_ping_output(PING_DUP)
    assert (dup.sent, dup.received, dup.duplicates, dup.ok) == (3, 3, 2, True)
    nothing = parse_ping_output("ping: connect: Network is unreachable\n")
    assert (nothing.sent, nothing.received, nothing.ok) == (0, 0, False)


def test_parse_iperf3_json() -> None:
    tcp_doc = {
        "end": {
            "sum_sent": {"seconds": 1.0, "bits_per_second": 2e9, "retransmits": 7},
            "sum_received": {"seconds": 1.0002, "bits_per_second": 1.5e9},
        }
    }
    tcp = parse_iperf3_json(tcp_doc, udp=False)
    assert (tcp.mbit_s, tcp.retransmits, tcp.lost_percent) == (1500.0, 7, None)
    assert (tcp.seconds, tcp.protocol, tcp.raw) == (1.0002, "TCP", tcp_doc)
    udp_doc = {
        "end": {
            "sum": {"seconds": 1.0, "bits_per_second": 9e6, "lost_percent": 0},
            "sum_received": {"seconds": 1.0, "bits_per_second": 8e6, "lost_percent": 12.5},
        }
    }
    udp = parse_iperf3_json(udp_doc, udp=True)
    assert (udp.mbit_s, udp.retransmits, udp.lost_percent, udp.protocol) == (8.0, None, 12.5, "UDP")
    old_udp = parse_iperf3_json({"end": {"sum": udp_doc["end"]["sum"]}}, udp=True)
    assert (old_udp.mbit_s, old_udp.lost_percent) == (9.0, 0.0)
    with pytest.raises(TrafficError, match="unable to connect"):
        parse_iperf3_json({"error": "unable to connect to server: Connection refused"}, udp=False)
    with pytest.raises(TrafficError, match="no receiver summary"):
        parse_iperf3_json({"end": {}}, udp=False)


# --- missing tools (no root needed: the PATH check comes first) ------------------


@pytest.mark.parametrize(
    ("call", "program", "package"),
    [
        (lambda: ping("l2btr-none", "10.250.0.1"), "ping", "iputils-ping"),
        (lambda: iperf3("l2btr-none", "10.250.0.1", "l2btr-none"), "iperf3", "iperf3"),
        (
            lambda: dhcp_lease(
                "l2btr-none",
                "eth0",
                range_start="10.250.0.100",
                range_end="10.250.0.150",
                netmask="255.255.255.0",
                client_ns="l2btr-none",
                client_if="eth0",
            ),
            "dnsmasq",
            "dnsmasq-base",
        ),
        (lambda: tcpdump_count("l2btr-none", "eth0", "", duration_s=1), "tcpdump", "tcpdump"),
    ],
)
async def test_tool_missing_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, call, program: str, package: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing) as caught:
        await call()
    assert (caught.value.program, caught.value.package) == (program, package)
    assert str(caught.value) == (
        f"{program}: not found on PATH; install the Debian package {package} "
        f"(apt-get install {package})"
    )


async def test_dhcp_without_busybox_names_busybox(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    os.symlink("/usr/sbin/dnsmasq", os.path.join(tmp_path, "dnsmasq"))
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    with pytest.raises(ToolMissing, match="busybox"):
        await dhcp_lease(
            "l2btr-none",
            "eth0",
            range_start="10.250.0.100",
            range_end="10.250.0.150",
            netmask="255.255.255.0",
            client_ns="l2btr-none",
            client_if="eth0",
        )


# --- output of a running tool ----------------------------------------------------

# Writes numbered lines to stdout and stderr, one write(2) each, as fast as it can.
NUMBERED_LINES = 50_000
WRITER = f"""
import os
for i in range({NUMBERED_LINES}):
    line = b"%d\\n" % i
    os.write(1, line)
    os.write(2, line)
"""


async def test_run_command_unknown_program(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    with pytest.raises(ToolMissing, match="^sleep: not found on PATH; install it or fix PATH$"):
        await run_command("l2btr-none", ["sleep", "1"], timeout_s=1)
