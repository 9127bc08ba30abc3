"""Traffic primitives: pure frame/pcap/output parsing, then real tools in namespaces.

The netns tests build their own topology (scratch namespaces ``<prefix>-{s,a,b,c}``): a
bridge ``br0`` in namespace ``s`` with one veth port per host namespace::

    a eth0 (10.250.0.1, fd00:250::1) ─┐
    b eth0 (10.250.0.2, fd00:250::2) ─┼─ br0 in s
    c eth0 (no address: DHCP client) ─┘

Nothing leaves those namespaces; teardown kills whatever still runs in them
and deletes them (``lab clean`` does, if the runner was killed).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trio

from netns.checks.frames import (
    BROADCAST_MAC,
    ETHERTYPE_EXPERIMENTAL,
    make_frame,
    marker_payload,
    marker_seq,
)
from netns.checks.traffic import (
    FrameCounter,
    TrafficError,
    _spawn,
    dhcp_lease,
    iperf3,
    ping,
    run_command,
    send_frames,
    tcpdump_count,
)
from netns.realise.nsenter import in_netns, pids_in_netns
from netns.realise.registry import scratch_namespaces

SRC = bytes.fromhex("020000000001")
DST = bytes.fromhex("020000000002")
IFA_F_NODAD = 0x02


# --- pure: pcap -----------------------------------------------------------------


def _pcap_by_hand(order: str, magic: int, records: list[bytes]) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for i, rec in enumerate(records):
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 999, len(rec), len(rec) + 10) + rec
    return out


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


# --- netns topology ---------------------------------------------------------------


@dataclass(frozen=True)
class Topo:
    s: str
    a: str
    b: str
    c: str

    @property
    def hosts(self) -> tuple[str, str, str]:
        return (self.a, self.b, self.c)

    def leftovers(self) -> dict[str, list[int]]:
        """Processes still running in any of the namespaces (should always be none)."""
        return {ns: pids for ns in (self.s, *self.hosts) if (pids := pids_in_netns(ns))}


def _build(topo: Topo) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=topo.s) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        br = ipr.link_lookup(ifname="br0")[0]
        for port, host in (("pa", topo.a), ("pb", topo.b), ("pc", topo.c)):
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host})
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=br, state="up")
        ipr.link("set", index=br, state="up")
    for host, last in ((topo.a, 1), (topo.b, 2), (topo.c, None)):
        with IPRoute(netns=host) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            idx = ipr.link_lookup(ifname="eth0")[0]
            if last is not None:
                ipr.addr("add", index=idx, address=f"10.250.0.{last}", prefixlen=24)
                ipr.addr(
                    "add", index=idx, address=f"fd00:250::{last}", prefixlen=64, flags=IFA_F_NODAD
                )
            ipr.link("set", index=idx, state="up")


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces, veths and a bridge")
    with scratch_namespaces("traffic primitives' topology (tests/lab/root/test_traffic_netns.py)",
                            ["s", "a", "b", "c"]) as (s, a, b, c):
        t = Topo(s=s, a=a, b=b, c=c)
        _build(t)
        yield t


@pytest.fixture
def clean(topo: Topo) -> Iterator[Topo]:
    """The topology, with a check that the test left no process behind."""
    yield topo
    assert topo.leftovers() == {}


def _marker() -> bytes:
    return b"l2btr" + secrets.token_bytes(8)


netns_test = pytest.mark.netns
# Past this a test is clearly broken; every tool also has its own, shorter limit.
BOUND_S = 30.0


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds, for at most ``BOUND_S`` (callers assert after)."""
    with trio.move_on_after(BOUND_S):
        while not condition():
            await trio.sleep(0.01)


# --- ping -----------------------------------------------------------------------


@netns_test
async def test_ping_ok(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await ping(clean.a, "10.250.0.2", count=3, interval_s=0.05)
    assert (r.sent, r.received, r.ok, r.errors) == (3, 3, True, 0), r.output
    assert r.rtt_min_ms is not None and r.rtt_avg_ms is not None and r.rtt_max_ms is not None
    assert 0 < r.rtt_min_ms <= r.rtt_avg_ms <= r.rtt_max_ms


@netns_test
async def test_ping_unreachable_fails_in_bounded_time(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await ping(clean.a, "10.250.0.99", count=2, interval_s=0.2, deadline_s=2)
    assert not r.ok
    assert r.received == 0 and r.sent >= 1
    assert r.rtt_avg_ms is None
    assert "killed after" not in r.output  # ping stopped at its own deadline (-w 2)


@netns_test
async def test_ping_ipv6(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await ping(clean.b, "fd00:250::1", count=2, interval_s=0.05)
    assert (r.sent, r.received, r.ok) == (2, 2, True), r.output
    assert "fd00:250::1" in r.output


@netns_test
async def test_ping_dont_fragment_size(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        fits = await ping(
            clean.a, "10.250.0.2", count=2, interval_s=0.05, size=1472, dont_fragment=True
        )
        too_big = await ping(
            clean.a,
            "10.250.0.2",
            count=2,
            interval_s=0.05,
            size=1473,
            dont_fragment=True,
            deadline_s=2,
        )
    assert fits.ok and fits.received == 2, fits.output
    assert not too_big.ok and too_big.received == 0
    assert too_big.errors >= 1 and "message too long" in too_big.output


@netns_test
async def test_ping_missing_namespace() -> None:
    message = r"^network namespace 'l2btr-no-such-ns' does not exist \(ENOENT\); create it"
    with pytest.raises(TrafficError, match=message):
        await ping("l2btr-no-such-ns", "10.250.0.1")
    with pytest.raises(TrafficError, match=message):
        await send_frames("l2btr-no-such-ns", "eth0", [])


# --- iperf3 ---------------------------------------------------------------------


@netns_test
async def test_iperf3_tcp(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await iperf3(clean.a, "10.250.0.1", clean.b, seconds=1)
    assert r.protocol == "TCP"
    assert r.mbit_s > 10
    assert isinstance(r.retransmits, int) and r.retransmits >= 0
    assert r.lost_percent is None
    assert 0.9 < r.seconds < 5
    assert r.raw["start"]["test_start"]["protocol"] == "TCP"


@netns_test
async def test_iperf3_udp(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await iperf3(
            clean.a,
            "10.250.0.1",
            clean.b,
            seconds=1,
            udp=True,
            bitrate="20M",
            length=1200,
            port=5301,
        )
    assert r.protocol == "UDP"
    assert 5 < r.mbit_s < 25
    assert r.retransmits is None
    assert r.lost_percent is not None and 0 <= r.lost_percent < 50
    assert r.raw["start"]["test_start"]["blksize"] == 1200


@netns_test
async def test_iperf3_ipv6_parallel(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await iperf3(clean.b, "fd00:250::2", clean.a, seconds=1, parallel=2)
    assert r.mbit_s > 10
    assert len(r.raw["end"]["streams"]) == 2


@netns_test
async def test_iperf3_timeout_kills_server_and_client(clean: Topo) -> None:
    # A 60 s run ends well inside BOUND_S only because timeout_s cut it short.
    with trio.fail_after(BOUND_S), pytest.raises(TrafficError, match="no result within 1 s"):
        await iperf3(clean.a, "10.250.0.1", clean.b, seconds=60, timeout_s=1.0)
    # the `clean` fixture asserts no iperf3 is left in either namespace


@netns_test
async def test_iperf3_no_server_address(clean: Topo) -> None:
    with trio.fail_after(BOUND_S), pytest.raises(TrafficError, match=r"iperf3 in .*-a: exited"):
        await iperf3(clean.a, "10.250.0.77", clean.b, seconds=1)


# --- DHCP -----------------------------------------------------------------------


@netns_test
async def test_dhcp_lease_in_range(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await dhcp_lease(
            clean.a,
            "eth0",
            range_start="10.250.0.100",
            range_end="10.250.0.150",
            netmask="255.255.255.0",
            client_ns=clean.c,
            client_if="eth0",
            timeout_s=10,
        )
    assert r.ok, r.output
    assert r.address is not None
    addr = ipaddress.IPv4Address(r.address)
    assert ipaddress.IPv4Address("10.250.0.100") <= addr <= ipaddress.IPv4Address("10.250.0.150")
    assert 0 < r.elapsed_s < 10
    assert "DHCPACK" in r.output  # the server's log is part of the output


@netns_test
async def test_dhcp_no_lease_when_range_is_unreachable(clean: Topo) -> None:
    # dnsmasq serves only on lo of a: the client on c never hears an offer.
    with trio.fail_after(BOUND_S):
        r = await dhcp_lease(
            clean.a,
            "lo",
            range_start="127.0.0.100",
            range_end="127.0.0.150",
            netmask="255.0.0.0",
            client_ns=clean.c,
            client_if="eth0",
            timeout_s=2,
        )
    assert not r.ok and r.address is None
    assert "no lease" in r.output


@netns_test
async def test_dhcp_bad_server_interface(clean: Topo) -> None:
    with trio.fail_after(BOUND_S), pytest.raises(TrafficError, match=r"dnsmasq in .*-a: exited"):
        await dhcp_lease(
            clean.a,
            "nosuch0",
            range_start="10.250.0.100",
            range_end="10.250.0.150",
            netmask="255.255.255.0",
            client_ns=clean.c,
            client_if="eth0",
            timeout_s=2,
        )


# --- raw frames -----------------------------------------------------------------


@netns_test
async def test_broadcast_marker_frames_counted_exactly(clean: Topo) -> None:
    marker = _marker()
    n = 25
    frames = [
        make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, marker_payload(marker, i))
        for i in range(n)
    ]
    with trio.fail_after(BOUND_S):
        async with (
            FrameCounter(clean.a, "eth0", marker, settle_s=0.1) as at_a,
            FrameCounter(clean.b, "eth0", marker, settle_s=0.1) as at_b,
            FrameCounter(clean.c, "eth0", marker, settle_s=0.1) as at_c,
        ):
            await send_frames(clean.a, "eth0", frames)
            await until(lambda: min(at_a.outgoing, at_b.incoming, at_c.incoming) >= n)
    assert (at_a.incoming, at_a.outgoing, at_a.frames) == (0, n, [])
    assert (at_b.incoming, at_b.outgoing) == (n, 0)
    assert (at_c.incoming, at_c.outgoing) == (n, 0)
    assert at_b.frames == frames and at_c.frames == frames
    assert [marker_seq(f, marker) for f in at_b.frames] == list(range(n))
    assert at_a.dropped == at_b.dropped == at_c.dropped == 0


@netns_test
async def test_frame_counter_ignores_other_markers_and_keeps_vlan_tag(clean: Topo) -> None:
    marker = _marker()
    tagged = make_frame(
        BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, marker_payload(marker, 1), vlan=42
    )
    other = make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, marker_payload(_marker(), 2))
    with trio.fail_after(BOUND_S):
        async with FrameCounter(clean.b, "eth0", marker, settle_s=0.1, max_frames=1) as at_b:
            await send_frames(clean.a, "eth0", [other, tagged, other, tagged], interval_s=0.01)
            await until(lambda: at_b.incoming >= 2)
    assert (at_b.incoming, at_b.outgoing) == (2, 0)
    assert at_b.frames == [tagged]  # bounded by max_frames, tag restored from aux data


@netns_test
async def test_frame_counter_lets_the_block_error_through(clean: Topo) -> None:
    counter = FrameCounter(clean.b, "eth0", _marker())
    with trio.fail_after(BOUND_S), pytest.raises(KeyError, match="boom"):
        async with counter:
            raise KeyError("boom")
    assert (counter.incoming, counter.outgoing) == (0, 0)
    with pytest.raises(TrafficError, match=r"'nosuch0' in .*-b: .*\(ENODEV\)"):
        async with FrameCounter(clean.b, "nosuch0", b"m"):
            pass


@netns_test
async def test_send_frames_errors_are_named(clean: Topo) -> None:
    frame = make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, b"x")
    with pytest.raises(TrafficError, match=r"'nosuch0' in .*-a: .*\(ENODEV\)"):
        await send_frames(clean.a, "nosuch0", [frame])
    jumbo = make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, bytes(1600))
    with pytest.raises(TrafficError, match=r"sending frame 0 on 'eth0' .*\(EMSGSIZE\)"):
        await send_frames(clean.a, "eth0", [jumbo])


# --- tcpdump --------------------------------------------------------------------


@netns_test
async def test_tcpdump_sees_frames_bytes_equal(clean: Topo) -> None:
    marker = _marker()
    frames = [
        make_frame(BROADCAST_MAC, SRC, ETHERTYPE_EXPERIMENTAL, marker_payload(marker, i, 100))
        for i in range(5)
    ] + [make_frame(DST, SRC, ETHERTYPE_EXPERIMENTAL, marker_payload(marker, 5), vlan=9)]

    async def send() -> None:
        await send_frames(clean.a, "eth0", frames)

    with trio.fail_after(BOUND_S):
        captured = await tcpdump_count(
            clean.b,
            "eth0",
            "ether proto 0x88b5 or (vlan and ether proto 0x88b5)",
            duration_s=0.5,
            action=send,
        )
    assert captured == frames


@netns_test
async def test_tcpdump_bad_filter_is_named(clean: Topo) -> None:
    with trio.fail_after(BOUND_S), pytest.raises(TrafficError, match=r"tcpdump in .*-b: exited.*"):
        await tcpdump_count(clean.b, "eth0", "ether proto nonsense(", duration_s=0.2)


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


@netns_test
async def test_reading_output_never_disturbs_the_writer(clean: Topo) -> None:
    # The reader polls while the child writes through the same open file:
    # every read is a prefix of what the child writes, and nothing is overwritten.
    expected = "".join(f"{i}\n" for i in range(NUMBERED_LINES))
    with trio.fail_after(BOUND_S):
        async with _spawn(clean.a, [sys.executable, "-c", WRITER]) as child:
            reads = 0
            while child.running:
                for seen in (child.stdout(), child.stderr()):
                    assert expected.startswith(seen), f"read {reads}: not a prefix"
                reads += 1
                await trio.lowlevel.checkpoint()
            assert await child.wait(10)
            assert child.proc.returncode == 0
            assert (child.stdout(), child.stderr()) == (expected, expected)
    assert clean.leftovers() == {}


# --- timeouts and cancellation kill the child ---------------------------------------


@netns_test
async def test_run_command_timeout_kills_child(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await run_command(clean.a, ["sleep", "30"], timeout_s=0.3)
    assert r.timed_out
    assert r.returncode == -signal.SIGKILL
    assert clean.leftovers() == {}


@netns_test
async def test_timeout_kills_the_tools_own_children(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await run_command(clean.a, ["sh", "-c", "sleep 30 & sleep 30"], timeout_s=0.3)
    assert r.timed_out
    assert clean.leftovers() == {}


def _listen_in(ns: str, addr: str, port: int) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((addr, port))
    sock.listen()
    return sock


@netns_test
async def test_iperf3_port_held_by_another_listener(clean: Topo) -> None:
    # A foreign listener on the port must not pass for our server being ready.
    foreign = await trio.to_thread.run_sync(_listen_in, clean.a, "10.250.0.1", 5401)
    with (
        foreign,
        trio.fail_after(BOUND_S),
        pytest.raises(TrafficError, match=r"iperf3 in .*-a: exited before listening"),
    ):
        await iperf3(clean.a, "10.250.0.1", clean.b, seconds=1, port=5401)


@netns_test
async def test_run_command_output(clean: Topo) -> None:
    with trio.fail_after(BOUND_S):
        r = await run_command(
            clean.b, ["busybox", "ip", "-o", "addr", "show", "dev", "eth0"], timeout_s=3
        )
    assert (r.returncode, r.timed_out) == (0, False)
    assert "10.250.0.2/24" in r.stdout


@netns_test
async def test_cancelled_ping_leaves_no_process(clean: Topo) -> None:
    with trio.move_on_after(0.5) as scope:
        await ping(clean.a, "10.250.0.99", count=100, deadline_s=30)
    assert scope.cancelled_caught
    assert clean.leftovers() == {}


@netns_test
async def test_cancelled_dhcp_leaves_no_process(clean: Topo) -> None:
    with trio.move_on_after(1.0) as scope:
        await dhcp_lease(
            clean.a,
            "lo",
            range_start="127.0.0.100",
            range_end="127.0.0.150",
            netmask="255.0.0.0",
            client_ns=clean.c,
            client_if="eth0",
            timeout_s=10,
        )
    assert scope.cancelled_caught
    assert clean.leftovers() == {}
