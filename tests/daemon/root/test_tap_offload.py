"""IFF_VNET_HDR and TUNSETOFFLOAD on real taps inside scratch namespaces.

Topology of the data-path tests (scratch namespaces, ``nshelpers.extra_ns``):

    host ns            bridge ns (scratch_ns)                    server ns
    vh 10.9.0.1 ── vb ── br0 ── l2ba (tap, vnet_hdr)  ⇄ relay ⇄  l2bb (tap, vnet_hdr) 10.9.0.2

The relay is this test: it reads raw (virtio_net_hdr + frame) items from one tap
and writes them unchanged to the other, as the bridge does across the tunnel.
A TCP transfer from host to server then crosses the taps as TSO super-frames
(read side) and is handed back to a kernel that takes them whole (write side).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from nshelpers import checksum, extra_ns, link_up
from pyroute2 import IPRoute

from l2bridge.io.tap import (
    ALL_OFFLOADS,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_USO4,
    VNET_HDR_FORMAT,
    VNET_HDR_LEN,
    VNET_READ_BUFSIZE,
    TapDevice,
    TapError,
    open_tap,
)
from netns.realise.nsenter import in_netns

STEP_TIMEOUT_S = 20.0  # a wait for something that must happen: clearly broken past this
TRANSFER_TIMEOUT_S = 30.0
TRANSFER_BYTES = 4 * 1024 * 1024
MAX_RELAYED_ITEMS = 200_000
HOST_IP, SERVER_IP = "10.9.0.1", "10.9.0.2"
SERVER_PORT = 5201
SERVER_MAC = bytes.fromhex("020000000b0b")

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
ETH_P_IP = 0x0800
ETH_HLEN = 14

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # legacy ethtool_value commands (linux/ethtool.h)
ETHTOOL_STSO = 0x1F


# --- helpers -----------------------------------------------------------------------------


def link_mac(ns: str, name: str) -> bytes:
    with IPRoute(netns=ns) as ipr:
        link = ipr.link("get", index=ipr.link_lookup(ifname=name)[0])[0]
    return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


def ethtool_off(ns: str, ifname: str, command: int) -> None:
    """Turn one legacy ethtool feature off (no ethtool binary needed): SIOCETHTOOL."""
    value = ctypes.create_string_buffer(struct.pack("=II", command, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return checksum(src + dst + struct.pack("!HH", proto, length))


@contextlib.contextmanager
def bridged_tap(br_ns: str, host_ns: str) -> Iterator[TapDevice]:
    """br0 in ``br_ns`` with veth vb (peer vh in ``host_ns``, HOST_IP) and tap l2ba.

    The tap is opened with vnet_hdr and every offload the kernel accepts.
    """
    with IPRoute(netns=br_ns) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="vb", kind="veth", peer={"ifname": "vh", "net_ns_fd": host_ns})
    with in_netns(br_ns):
        tap = open_tap("l2ba", vnet_hdr=True)
    with tap:
        assert tap.enable_offloads() == ALL_OFFLOADS
        link_up(br_ns, "br0")
        link_up(br_ns, "vb", master="br0")
        link_up(br_ns, "l2ba", master="br0")
        link_up(host_ns, "vh", address=HOST_IP)
        yield tap


def parse_vnet(item: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack(VNET_HDR_FORMAT, item[:VNET_HDR_LEN])


# --- control path ------------------------------------------------------------------------


def test_enable_offloads_on_this_kernel_and_its_fallbacks(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        tap = open_tap("l2b0", vnet_hdr=True)
        plain = open_tap("l2b1")
    with tap, plain:
        assert (tap.vnet_hdr, plain.vnet_hdr) == (True, False)
        # Linux >= 6.2 takes every flag, USO included
        assert tap.enable_offloads() == ALL_OFFLOADS
        assert tap.offloads == ALL_OFFLOADS
        # USO4 without USO6 is EINVAL: the retry without USO keeps the rest
        wanted = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_USO4
        assert tap.enable_offloads(wanted) == TUN_F_CSUM | TUN_F_TSO4
        # TSO without checksum offload is EINVAL, and so is the retry: CSUM-only
        # is then nothing at all, which the kernel takes: offloads off
        assert tap.enable_offloads(TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) == 0
        assert tap.offloads == 0
        with pytest.raises(ValueError, match='tap "l2b1" was opened without vnet_hdr'):
            plain.enable_offloads()
    with pytest.raises(TapError, match='tap "l2b0" is closed') as info:
        tap.enable_offloads()
    assert info.value.errno == errno.EBADF


def test_vnet_hdr_without_offloads_reads_plain_frames_behind_a_zero_header(
    scratch_ns: str,
) -> None:
    with in_netns(scratch_ns):
        tap = open_tap("l2b0", vnet_hdr=True)
    with tap:
        link_up(scratch_ns, "l2b0")
        frame = b"\xff" * 6 + bytes.fromhex("020000000001") + b"\x88\xb5" + bytes(range(200))
        with in_netns(scratch_ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        with sock:
            sock.bind(("l2b0", 0x88B5))
            sock.send(frame)
            # written with a header: the kernel strips it and sends the frame on
            sock.settimeout(STEP_TIMEOUT_S)
            tap.write(bytes(VNET_HDR_LEN) + frame[:12] + b"\x88\xb5" + b"back")
            assert sock.recv(2048) == frame[:12] + b"\x88\xb5" + b"back"
        select.select([tap.fd], [], [], STEP_TIMEOUT_S)
        items = tap.read_batch(64, bufsize=100)  # grown to VNET_READ_BUFSIZE: not truncated
        ours = [item for item in items if item[VNET_HDR_LEN:] == frame]
        assert ours and ours[0][:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
        assert VNET_READ_BUFSIZE >= 65536 + ETH_HLEN + VNET_HDR_LEN


# --- data path ---------------------------------------------------------------------------


def test_tcp_crosses_the_taps_as_tso_super_frames(scratch_ns: str) -> None:
    with extra_ns() as host_ns, extra_ns() as server_ns, bridged_tap(scratch_ns, host_ns) as a:
        with in_netns(server_ns):
            b = open_tap("l2bb", vnet_hdr=True)
        with b:
            assert b.enable_offloads() == ALL_OFFLOADS
            with IPRoute(netns=server_ns) as ipr:
                index = ipr.link_lookup(ifname="l2bb")[0]
                ipr.link("set", index=index, address=SERVER_MAC.hex(":"))
            link_up(server_ns, "l2bb", address=SERVER_IP)
            headers, received_digest, sent_digest = relay_tcp_transfer(a, b, host_ns, server_ns)

    assert received_digest == sent_digest
    supers = [h for h in headers if h[1] == VIRTIO_NET_HDR_GSO_TCPV4 and h[6] > 1514 + 10]
    assert supers, f"no TSO super-frame among {len(headers)} reads from the tap"
    for flags, _gso_type, hdr_len, gso_size, csum_start, csum_offset, length, ihl in supers:
        assert flags & VIRTIO_NET_HDR_F_NEEDS_CSUM
        assert csum_start == ETH_HLEN + ihl
        assert csum_offset == 16  # the TCP checksum field
        assert hdr_len >= csum_start + 20
        assert 0 < gso_size <= 1500 - 40
        assert length - VNET_HDR_LEN - hdr_len > gso_size  # more than one segment's payload


def relay_tcp_transfer(
    a: TapDevice, b: TapDevice, host_ns: str, server_ns: str
) -> tuple[list[tuple[int, ...]], bytes, bytes]:
    """Send TRANSFER_BYTES host → server while relaying a ⇄ b; bounded in time and count.

    Returns the parsed header of every IPv4 item read from ``a`` (plus its
    length and IP header length) and the digests of what was sent and received.
    """
    payload = secrets.token_bytes(TRANSFER_BYTES)
    with in_netns(server_ns):
        listener = socket.create_server((SERVER_IP, SERVER_PORT))
    with in_netns(host_ns):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    received = hashlib.sha256()
    done = threading.Event()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            listener.settimeout(TRANSFER_TIMEOUT_S)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TRANSFER_TIMEOUT_S)
                while chunk := conn.recv(1 << 16):
                    received.update(chunk)
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    def send() -> None:
        try:
            client.settimeout(TRANSFER_TIMEOUT_S)
            client.connect((SERVER_IP, SERVER_PORT))
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            failures.append(exc)

    headers: list[tuple[int, ...]] = []
    threads = [threading.Thread(target=serve), threading.Thread(target=send)]
    with listener, client:
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + TRANSFER_TIMEOUT_S
            relayed = 0
            while not done.is_set() and relayed < MAX_RELAYED_ITEMS:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "the transfer did not finish in time"
                readable, _, _ = select.select([a.fd, b.fd], [], [], min(remaining, 0.2))
                for src, dst in ((a, b), (b, a)):
                    if src.fd not in readable:
                        continue
                    for item in src.read_batch(64):
                        relayed += 1
                        if src is a and item[VNET_HDR_LEN + 12 : VNET_HDR_LEN + 14] == b"\x08\x00":
                            ihl = (item[VNET_HDR_LEN + ETH_HLEN] & 0x0F) * 4
                            headers.append((*parse_vnet(item), len(item), ihl))
                        dst.write(item)
        finally:
            client.close()  # unblocks the sender if the relay gave up
            listener.close()
            for thread in threads:
                thread.join(TRANSFER_TIMEOUT_S)
    assert not failures, failures
    return headers, received.digest(), hashlib.sha256(payload).digest()


def test_a_written_super_frame_leaves_the_bridge_as_three_tcp_segments(scratch_ns: str) -> None:
    """One 3000-byte TCP super-frame (gso_size 1000) written to the tap reaches the
    host as three ordinary segments with correct IP and TCP checksums.

    The bridge-side veth has checksum and segmentation offload turned off, so the
    kernel cuts the super-frame (and completes the checksums) in software on its
    way out of the bridge, as it would for a LAN NIC without TSO.
    """
    with extra_ns() as host_ns, bridged_tap(scratch_ns, host_ns) as tap:
        ethtool_off(scratch_ns, "vb", ETHTOOL_STSO)
        ethtool_off(scratch_ns, "vb", ETHTOOL_STXCSUM)
        host_mac = link_mac(host_ns, "vh")
        src, dst = socket.inet_aton(SERVER_IP), socket.inet_aton(HOST_IP)
        sport, dport, seq = 40000, 5555, 100_000
        data = secrets.token_bytes(3000)

        tcp_len = 20 + len(data)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 0x1234, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", ~checksum(ip) & 0xFFFF) + ip[12:]
        # NEEDS_CSUM: the checksum field holds the pseudo-header sum, the kernel adds the rest
        tcp = struct.pack(
            "!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, 0x18, 512,
            pseudo_sum(src, dst, 6, tcp_len), 0,
        )
        frame = host_mac + SERVER_MAC + struct.pack("!H", ETH_P_IP) + ip + tcp + data
        vnet = struct.pack(
            VNET_HDR_FORMAT, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
            ETH_HLEN + 40, 1000, ETH_HLEN + 20, 16,
        )

        with in_netns(host_ns):
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        with capture:
            capture.bind(("vh", ETH_P_IP))
            capture.settimeout(STEP_TIMEOUT_S)
            tap.write(vnet + frame)
            segments = []
            deadline = time.monotonic() + STEP_TIMEOUT_S
            while len(segments) < 3 and time.monotonic() < deadline:
                got = capture.recv(65536)
                if got[ETH_HLEN + 9] == 6 and got[ETH_HLEN + 20 : ETH_HLEN + 24] == struct.pack(
                    "!HH", sport, dport
                ):
                    segments.append(got)

    assert [len(s) for s in segments] == [ETH_HLEN + 40 + 1000] * 3
    for index, segment in enumerate(segments):
        assert segment[:ETH_HLEN] == frame[:ETH_HLEN]
        ip_h, tcp_h = segment[ETH_HLEN : ETH_HLEN + 20], segment[ETH_HLEN + 20 : ETH_HLEN + 40]
        total_len, ident = struct.unpack("!HH", ip_h[2:6])
        assert (total_len, ident) == (1040, 0x1234 + index)
        assert checksum(ip_h) == 0xFFFF  # valid IPv4 header checksum
        seq_n, flags = struct.unpack("!I", tcp_h[4:8])[0], tcp_h[13]
        assert seq_n == seq + 1000 * index
        assert flags == (0x18 if index == 2 else 0x10)  # PSH only on the last segment
        body = segment[ETH_HLEN + 40 :]
        assert body == data[1000 * index : 1000 * (index + 1)]
        assert checksum(tcp_h + body, pseudo_sum(src, dst, 6, 1020)) == 0xFFFF  # valid TCP sum
