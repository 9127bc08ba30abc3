"""l2bridge.io.tap on real /dev/net/tun devices inside scratch namespaces.

Kernel-side peers: an AF_PACKET socket bound to the tap (raw frames both ways), the
kernel's own ICMP echo on a tun address, and ``ping`` resolving a neighbour behind
the tap (ARP request → our reply → echo request → our reply).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from l2bridge.io.tap import (
    IFF_NO_PI,
    IFF_TAP,
    IFF_TUN,
    IFREQ_FORMAT,
    TUNGETIFF,
    TapDevice,
    TapError,
    delete_persistent,
    make_persistent,
    open_tap,
    tap_info,
)
from netns.realise.nsenter import in_netns, netns_preexec

NOBODY_UID = 65534
NOBODY_GID = 65534
DAEMON_UID = 1
ETH_P_TEST = 0x88B5  # IEEE 802 local experimental ethertype
STEP_TIMEOUT_S = 20.0  # a wait for something that must happen: clearly broken past this
TAP_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")

# --- helpers ---------------------------------------------------------------------------


def set_up(ns: str, name: str) -> int:
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, state="up")
        return index


def make_frame(payload: bytes, dst: bytes = b"\xff" * 6, src: bytes = PEER_MAC) -> bytes:
    return dst + src + struct.pack("!H", ETH_P_TEST) + payload


@contextlib.contextmanager
def packet_socket(ns: str, ifname: str) -> Iterator[socket.socket]:
    """An AF_PACKET socket in ``ns`` bound to ``ifname``, seeing only ETH_P_TEST."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
    try:
        sock.bind((ifname, ETH_P_TEST))
        sock.settimeout(STEP_TIMEOUT_S)
        yield sock
    finally:
        sock.close()


def wait_frame(tap: TapDevice, accept: Callable[[bytes], bool], max_frames: int = 64) -> bytes:
    """The first frame read from ``tap`` that ``accept`` likes; bounded in time and count."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    seen = 0
    while seen < max_frames:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([tap.fd], [], [], remaining)
        if not readable:
            break
        for frame in tap.read_batch(max_frames - seen):
            seen += 1
            if accept(frame):
                return frame
    raise AssertionError(f"no matching frame on {tap.name} after {seen} frames")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_as(uid: int, gid: int, ns: str, action: Callable[[], None]) -> str:
    """Run ``action`` in a forked child inside ``ns`` as uid/gid; "ok" or the error text."""
    enter = netns_preexec(ns)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            try:
                enter()  # needs CAP_SYS_ADMIN: before dropping privileges
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                action()
                result = "ok"
            except BaseException as exc:
                result = f"{type(exc).__name__}: {exc}"
            os.write(write_end, result.encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        readable, _, _ = select.select([read_end], [], [], STEP_TIMEOUT_S)
        assert readable, "child did not answer in time"
        answer = os.read(read_end, 4096).decode()
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


def ip_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(src: bytes, dst: bytes, icmp_type: int, ident: int, seq: int, data: bytes) -> bytes:
    """An IPv4 packet carrying an ICMP echo request (8) or reply (0)."""
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + data
    icmp = icmp[:2] + struct.pack("!H", ip_checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0x1234, 0, 64, 1, 0, src, dst)
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    return header + icmp


# --- data path -------------------------------------------------------------------------


def test_tap_frames_both_ways_bytes_equal(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        tap = open_tap("l2b0")
    with tap:
        assert (tap.name, tap.mode) == ("l2b0", "tap")
        assert os.get_blocking(tap.fd) is False
        assert os.get_inheritable(tap.fd) is False
        flags = struct.unpack(IFREQ_FORMAT, _tungetiff(tap.fd))[1]
        assert flags & (IFF_TAP | IFF_NO_PI | IFF_TUN) == IFF_TAP | IFF_NO_PI
        set_up(scratch_ns, "l2b0")
        with packet_socket(scratch_ns, "l2b0") as sock:
            # user space → kernel: written to the tap, received on the interface
            out = make_frame(b"to the kernel " + bytes(range(40)))
            tap.write(out)
            assert sock.recv(2048) == out
            # kernel → user space: sent on the interface, read from the tap
            back = make_frame(b"to user space " + bytes(range(100)), src=TAP_MAC)
            sock.send(back)
            assert wait_frame(tap, lambda f: True) == back


def _tungetiff(fd: int) -> bytes:
    import fcntl

    return fcntl.ioctl(fd, TUNGETIFF, bytes(40))


def test_read_batch_drains_and_returns_empty_without_blocking(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        tap = open_tap("l2b0")
    with tap:
        assert tap.read_batch(8) == []  # down, nothing queued: returns at once
        set_up(scratch_ns, "l2b0")
        frames = [make_frame(bytes([i]) * (60 + i), src=TAP_MAC) for i in range(7)]
        with packet_socket(scratch_ns, "l2b0") as sock:
            for frame in frames:
                sock.send(frame)
        select.select([tap.fd], [], [], STEP_TIMEOUT_S)
        assert tap.read_batch(5) == frames[:5]  # capped at max_frames
        assert tap.read_batch(64) == frames[5:]  # the rest, stopping at EAGAIN
        started = time.monotonic()
        assert tap.read_batch(64) == []
        assert time.monotonic() - started < 10.0  # at once, not blocking for a frame


def test_ping_neighbour_behind_tap(scratch_ns: str) -> None:
    """The kernel pings 192.0.2.2; this test answers ARP and ICMP from user space."""
    local_ip, peer_ip = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    with in_netns(scratch_ns):
        tap = open_tap("l2b0")
    with tap, IPRoute(netns=scratch_ns) as ipr:
        index = ipr.link_lookup(ifname="l2b0")[0]
        ipr.link("set", index=index, address="02:00:00:00:00:01", state="up")
        ipr.addr("add", index=index, address="192.0.2.1", prefixlen=24)
        ping = subprocess.Popen(
            ["ping", "-n", "-c", "1", "-W", "4", "192.0.2.2"],
            preexec_fn=netns_preexec(scratch_ns),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            arp = wait_frame(tap, lambda f: f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01")
            assert arp[:6] == b"\xff" * 6 and arp[6:12] == TAP_MAC
            assert arp[28:32] == local_ip and arp[38:42] == peer_ip
            reply = (
                TAP_MAC
                + PEER_MAC
                + b"\x08\x06"
                + arp[14:20]
                + b"\x00\x02"
                + PEER_MAC
                + peer_ip
                + TAP_MAC
                + local_ip
            )
            tap.write(reply)
            echo = wait_frame(tap, lambda f: f[12:14] == b"\x08\x00" and f[23] == 1)
            assert echo[:6] == PEER_MAC
            ip = echo[14:]
            ihl = (ip[0] & 0x0F) * 4
            assert ip[12:16] == local_ip and ip[16:20] == peer_ip and ip[ihl] == 8
            ident, seq = struct.unpack("!HH", ip[ihl + 4 : ihl + 8])
            pong = icmp_echo(peer_ip, local_ip, 0, ident, seq, ip[ihl + 8 :])
            tap.write(TAP_MAC + PEER_MAC + b"\x08\x00" + pong)
            output, _ = ping.communicate(timeout=STEP_TIMEOUT_S)
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.wait()
        assert ping.returncode == 0, output.decode()
        assert b"1 received" in output


def test_tun_mode_carries_ip_packets(scratch_ns: str) -> None:
    """An echo request written to a tun comes back as the kernel's echo reply."""
    local_ip, peer_ip = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9])
    with in_netns(scratch_ns):
        tun = open_tap("l2t0", "tun")
    with tun, IPRoute(netns=scratch_ns) as ipr:
        assert tun.mode == "tun"
        flags = struct.unpack(IFREQ_FORMAT, _tungetiff(tun.fd))[1]
        assert flags & (IFF_TAP | IFF_TUN) == IFF_TUN
        index = ipr.link_lookup(ifname="l2t0")[0]
        ipr.addr("add", index=index, address="192.0.2.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
        data = b"l2bridge tun " + bytes(range(32))
        tun.write(icmp_echo(peer_ip, local_ip, 8, 0x4242, 7, data))
        reply = wait_frame(tun, lambda p: p[0] >> 4 == 4 and p[9] == 1)
        ihl = (reply[0] & 0x0F) * 4
        assert reply[12:16] == local_ip and reply[16:20] == peer_ip
        assert reply[ihl:] == icmp_echo(local_ip, peer_ip, 0, 0x4242, 7, data)[20:]


def test_multi_queue_opens_several_queues(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        first = open_tap("l2q0", multi_queue=True)
        second = open_tap("l2q0", multi_queue=True)
        with first, second:
            info = tap_info("l2q0")
            assert info is not None and info.multi_queue


def test_close_is_idempotent_and_removes_transient_device(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        tap = open_tap("l2b0")
        assert tap_info("l2b0") is not None
        before = fd_count()
        tap.close()
        tap.close()
        assert tap.closed and fd_count() == before - 1
        assert tap_info("l2b0") is None
        with pytest.raises(TapError, match='tap "l2b0" is closed'):
            tap.write(b"x" * 60)


# --- persistence and ownership ---------------------------------------------------------


def test_persistent_device_survives_with_owner_and_group(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        make_persistent("l2p0", user="nobody", group=NOBODY_GID)
        info = tap_info("l2p0")
    assert info is not None
    assert (info.mode, info.persistent, info.owner, info.group) == (
        "tap",
        True,
        NOBODY_UID,
        NOBODY_GID,
    )
    # sysfs as the namespace itself sees it (ip netns exec remounts /sys)
    for attribute, expected in (("owner", NOBODY_UID), ("group", NOBODY_GID)):
        text = subprocess.run(
            ["ip", "netns", "exec", scratch_ns, "cat", f"/sys/class/net/l2p0/{attribute}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        assert int(text) == expected
    flags = subprocess.run(
        ["ip", "netns", "exec", scratch_ns, "cat", "/sys/class/net/l2p0/tun_flags"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert int(flags, 16) & (IFF_TAP | IFF_NO_PI) == IFF_TAP | IFF_NO_PI


def test_owner_attaches_without_privileges(scratch_ns: str, public_tun_node: str) -> None:
    with in_netns(scratch_ns):
        make_persistent("l2p0", user=NOBODY_UID)
        make_persistent("l2p1", group="nogroup")

    def attach(name: str) -> Callable[[], None]:
        def action() -> None:
            with open_tap(name, dev_path=public_tun_node) as tap:
                assert tap.read_batch(4) == []

        return action

    assert run_as(NOBODY_UID, NOBODY_GID, scratch_ns, attach("l2p0")) == "ok"
    assert run_as(NOBODY_UID, NOBODY_GID, scratch_ns, attach("l2p1")) == "ok"


def test_non_owner_gets_permission_error(scratch_ns: str, public_tun_node: str) -> None:
    with in_netns(scratch_ns):
        make_persistent("l2p0", user=DAEMON_UID)

    def attach() -> None:
        open_tap("l2p0", dev_path=public_tun_node)

    def create() -> None:
        open_tap("l2new0", dev_path=public_tun_node)

    expected = (
        'TapError: opening tap "l2p0": permission denied (EPERM): run as root, or create it '
        'persistent for your user with "l2bridge tap add l2p0 --user USER"'
    )
    assert run_as(NOBODY_UID, NOBODY_GID, scratch_ns, attach) == expected
    assert run_as(NOBODY_UID, NOBODY_GID, scratch_ns, create).startswith(
        'TapError: opening tap "l2new0": permission denied (EPERM)'
    )
    with in_netns(scratch_ns):
        assert tap_info("l2new0") is None


def test_delete_persistent_removes_it(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        make_persistent("l2p0")
        make_persistent("l2t0", "tun")
        delete_persistent("l2p0")
        delete_persistent("l2t0")  # its own mode, found over netlink
        assert tap_info("l2p0") is None and tap_info("l2t0") is None
    with IPRoute(netns=scratch_ns) as ipr:
        assert ipr.link_lookup(ifname="l2p0") == [] and ipr.link_lookup(ifname="l2t0") == []


def test_delete_persistent_refuses_missing_and_foreign_devices(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        with pytest.raises(TapError, match='tap "nosuch0" does not exist in the current namespace'):
            delete_persistent("nosuch0")
        with pytest.raises(TapError, match=r'device "lo" exists and is not a tun/tap device'):
            delete_persistent("lo")


def test_make_persistent_rejects_unknown_user(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        with pytest.raises(TapError, match='unknown user "no-such-user-l2bt"'):
            make_persistent("l2p0", user="no-such-user-l2bt")
        with pytest.raises(TapError, match='unknown group "no-such-group-l2bt"'):
            make_persistent("l2p0", group="no-such-group-l2bt")
        assert tap_info("l2p0") is None


# --- errors ----------------------------------------------------------------------------


def test_wrong_mode_is_named(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        make_persistent("x", "tun")
        with pytest.raises(TapError) as caught:
            open_tap("x")
    assert str(caught.value) == (
        'tap "x" exists as a tun device (layer 3); l2bridge needs mode "tap": delete it '
        '("l2bridge tap del x") or choose another name'
    )


def test_busy_device_is_named_and_fd_not_leaked(scratch_ns: str) -> None:
    with in_netns(scratch_ns), open_tap("l2b0"):
        before = fd_count()
        with pytest.raises(TapError, match='device "l2b0" is in use by another process'):
            open_tap("l2b0")
        assert fd_count() == before


def test_failed_setiff_closes_fd(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        make_persistent("x", "tun")
        before = fd_count()
        for _ in range(3):
            with pytest.raises(TapError):
                open_tap("x", "tap")
        assert fd_count() == before


def test_missing_dev_path(scratch_ns: str, tmp_path) -> None:
    missing = str(tmp_path / "tun")
    with in_netns(scratch_ns), pytest.raises(TapError) as caught:
        open_tap("l2b0", dev_path=missing)
    assert str(caught.value) == (
        f"{missing} not found: load the tun module (modprobe tun) or run where {missing} exists"
    )


@pytest.mark.parametrize("name", ["l2bridge-too-long", "", "a/b", "a b", ".."])
def test_bad_name_is_refused_before_any_syscall(name: str, tmp_path) -> None:
    before = fd_count()
    # dev_path does not exist: a syscall would give the /dev/net/tun error instead
    with pytest.raises(TapError, match="tap name"):
        open_tap(name, dev_path=str(tmp_path / "tun"))
    assert fd_count() == before


def test_bad_mode_is_refused() -> None:
    with pytest.raises(TapError, match='unknown device mode "tab"'):
        open_tap("l2b0", "tab", dev_path="/nonexistent/tun")
