"""Secure tunnels under attack, for real (root): real daemons, real namespaces, real tools.

Every test brings up its own lab (``lab_scenario``): two sites, London (site 1,
WAN 198.18.1.2) and Berlin (site 2, WAN 198.18.2.2), each gateway with its own
key, joined through the lab's WAN router ``P-wan``.  The numbers asserted are the
bar of issue 4 ("Tests that must exist and pass"):

1. an attacker namespace (``P-atk``, 198.18.250.2, a veth to the WAN router)
   sends 10^5 random datagrams and 10^4 forged DATA packets (valid receiver
   index, arbitrary counters): 0 frames on the LAN, 0 replies, replay window and
   endpoint unchanged, RSS growth < 5 MiB, legitimate pings answered throughout;
2. captured datagrams (data, initiations, responses) written back onto the
   router's interfaces byte for byte, before and after rekeys: 0 accepted;
3. a peer with the wrong key (an impostor key, or a wrong key for us) and a
   peer with no key (``insecure = true``): 0 marker frames either way;
4. roaming: a gateway's WAN address changes under a 0.1 s ping; traffic is back
   within 1 s of the peer's first datagram from the new address, ``roamed`` counts it;
5. SIGKILL and restart with the same key: traffic back within 3 s;
6. rekeys every 2 s under an iperf3 TCP transfer: no retransmission more than
   an identical transfer without rekeys;
7. the site behind NAT (``scenarios/site-behind-nat.toml``) with keys: every
   check passes, and its peers learned its translated endpoint only from
   authenticated datagrams (forged ones from the same NAT address move nothing).

The attacker namespace carries the lab's prefix, is recorded in the lab's state
file before it exists (so ``lab clean`` finds it after a crash) and is removed on
every exit path; every traffic loop is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import os
import random
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from pyroute2 import netns as pr_netns
from support import REPO, two_sites

from l2bridge.core import keys, noise
from l2bridge.core.secure import REKEY_TIMEOUT_S
from netns.checks import traffic
from netns.checks.frames import BROADCAST_MAC, ETHERTYPE_EXPERIMENTAL, make_frame, marker_payload
from netns.describe.scenario import parse_scenario
from netns.lab import Lab
from netns.realise.build import netlink
from netns.realise.nsenter import in_netns, netns_path, pids_in_netns
from netns.realise.registry import kill_namespace_processes, remove_namespace

pytestmark = pytest.mark.netns

NAT_SCENARIO = os.path.join(REPO, "scenarios", "site-behind-nat.toml")

PORT = 55555
ATTACKER_NET = ipaddress.ip_network("198.18.250.0/24")
ATTACKER_ROUTER_IP = "198.18.250.1"  # the WAN router's side of the attacker's veth
ATTACKER_IP = "198.18.250.2"
ATTACKER_WAN_IF = "atk"  # in the WAN namespace
ATTACKER_IF = "eth0"  # in the attacker namespace

RANDOM_DATAGRAMS = 100_000
FORGED_DATAGRAMS = 10_000
FLOOD_RATE_PER_S = 25_000  # paced so the daemon (not the kernel) judges every datagram
FLOOD_BATCH = 250
FLOOD_LIMIT_S = 30.0  # hard bound on the whole flood
RSS_GROWTH_MAX_BYTES = 5 * 1024 * 1024
ROAM_RESUME_MAX_S = 1.0
RESTART_WITHIN_S = 3.0
SETTLE_S = 0.3  # frames still in flight after a sender stopped
BOUND_S = 30.0  # a wait for something that must happen: clearly broken past this

ETH_HLEN = 14
ETH_P_IP = 0x0800
IPPROTO_UDP = 17


def london_berlin(*, rekey_after_s: float | None = None) -> str:
    """Two sites, two hosts each; ``rekey_after_s`` scales every session timer."""
    extra = "" if rekey_after_s is None else f"l2bridge = {{ rekey_after = {rekey_after_s:g} }}"
    return two_sites("london", "berlin", hosts=("h1", "h2"), site=extra,
                     lab="keepalive = 1\ndead_after = 3")


async def secure_lab(lab_scenario: Callable[..., Awaitable[Lab]], text: str) -> Lab:
    lab = await lab_scenario(parse_scenario(text, "security.toml"), gateway="l2bridge")
    status = await lab.show("london")
    assert status["security"].startswith("Noise_IKpsk2"), status["security"]
    return lab


# ---------------------------------------------------------------- lab facts


async def peer_of(lab: Lab, site: str, peer: str) -> dict[str, Any]:
    """The ``show`` entry of ``peer`` at ``site``."""
    for entry in (await lab.show(site))["peers"]:
        if entry["name"] == peer:
            return dict(entry)
    raise AssertionError(f"{site} has no peer {peer}")


async def sessions_settled(lab: Lab, sites: Sequence[str] = ("london", "berlin"),
                           timeout_s: float = BOUND_S) -> None:
    """Wait (bounded) until the start-up handshakes are over: every peer up at every
    site, and either two handshakes counted at each or no counter moving for longer
    than REKEY_TIMEOUT_S.

    Both sides may initiate at start (two handshakes each) or one may answer the
    other's first (one each); an initiation lost while the other daemon starts is
    retried REKEY_TIMEOUT_S later.  After that nothing handshakes until the next
    rekey, so a test can tell a handshake an attacker caused from one the
    protocol owed.
    """
    quiet_s = REKEY_TIMEOUT_S + 1.0
    with trio.fail_after(timeout_s):
        last: list[int] = []
        since = trio.current_time()
        while True:
            peers = [p for s in sites for p in (await lab.show(s))["peers"]]
            counts = [p["handshakes"] for p in peers]
            if not all(p["state"] == "up" and p["handshakes"] for p in peers):
                last, since = counts, trio.current_time()
            elif all(c >= 2 for c in counts):
                return
            elif counts != last:
                last, since = counts, trio.current_time()
            elif trio.current_time() - since >= quiet_s:
                return
            await trio.sleep(0.1)


def total(counters: dict[str, int]) -> int:
    return sum(counters.values())


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counters that grew, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def daemon_pid(lab: Lab, site: str) -> int:
    """The pid of the ``l2bridge up`` process in the site's gateway namespace."""
    found = []
    for pid in pids_in_netns(lab.plan.site(site).gw_ns):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"l2bridge" in argv and b"up" in argv:
            found.append(pid)
    assert len(found) == 1, f"expected one l2bridge daemon in {site}'s gateway, found {found}"
    return found[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


def udp_rcvbuf_errors(pid: int) -> int:
    """UDP datagrams the kernel dropped for a full receive buffer in ``pid``'s namespace."""
    with open(f"/proc/{pid}/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


# ---------------------------------------------------------------- packets (pure)


@dataclass(frozen=True)
class Udp:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def parse_udp(frame: bytes) -> Udp | None:
    """The UDP datagram of an untagged Ethernet/IPv4 frame, or None."""
    if len(frame) < ETH_HLEN + 28 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[ETH_HLEN:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != IPPROTO_UDP or len(ip) < ihl + 8:
        return None
    total_len = struct.unpack_from("!H", ip, 2)[0]
    sport, dport, udp_len = struct.unpack_from("!HHH", ip, ihl)
    payload = ip[ihl + 8 : min(ihl + udp_len, total_len)]
    return Udp(socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport, payload)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def with_udp_checksum(frame: bytes) -> bytes:
    """``frame`` with the UDP checksum a NIC would have written on the wire.

    A capture on a veth sees a sender's datagram before checksum offload fills
    in its checksum (CHECKSUM_PARTIAL: only the pseudo-header sum is there), and
    a receiver drops it as corrupt if it comes back that way.  Only those two
    bytes change; addresses, ports and the whole payload stay as captured.
    """
    ip = frame[ETH_HLEN:]
    ihl = (ip[0] & 0x0F) * 4
    udp_len = struct.unpack_from("!H", ip, ihl + 4)[0]
    segment = bytearray(ip[ihl : ihl + udp_len])
    segment[6:8] = b"\0\0"
    data = ip[12:20] + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len) + bytes(segment)
    if len(data) % 2:
        data += b"\0"
    checksum = 0xFFFF - _fold(sum(struct.unpack(f"!{len(data) // 2}H", data))) or 0xFFFF
    segment[6:8] = struct.pack("!H", checksum)
    start = ETH_HLEN + ihl
    return frame[:start] + bytes(segment) + frame[start + udp_len:]


def data_indices(frames: Sequence[bytes], dst: str, src: str | None = None) -> list[int]:
    """Receiver indices of the DATA packets toward ``dst`` (from ``src``), newest last."""
    indices = []
    for frame in frames:
        udp = parse_udp(frame)
        if udp is None or udp.dst != dst or noise.message_type(udp.payload) != noise.MSG_DATA:
            continue
        if src is not None and udp.src != src:
            continue
        index, _counter = noise.parse_data_header(udp.payload)
        if index not in indices:
            indices.append(index)
        else:
            indices.append(indices.pop(indices.index(index)))
    return indices


def random_datagrams(n: int, marker: bytes, rng: random.Random) -> list[bytes]:
    """``n`` random datagrams carrying ``marker``, in four equal kinds.

    Fully random bytes; type 1 and type 2 shaped (handshake lengths, random body:
    mac1 must reject them); type 4 with a random receiver index.
    """
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            body = rng.randbytes(rng.randrange(1, 1400))
        elif kind == 1:
            body = b"\x01\0\0\0" + rng.randbytes(noise.INITIATION_LEN - 4)
        elif kind == 2:
            body = b"\x02\0\0\0" + rng.randbytes(noise.RESPONSE_LEN - 4)
        else:
            body = b"\x04\0\0\0" + rng.randbytes(rng.randrange(12, 1400))
        at = rng.randrange(0, max(1, len(body) - len(marker)))
        out.append(body[:at] + marker + body[at + len(marker):])
    return out


def forged_data(n: int, indices: Sequence[int], low: int, marker: bytes,
                rng: random.Random) -> tuple[list[bytes], list[int]]:
    """``n`` DATA packets for real receiver ``indices``: garbage sealed by nobody.

    Counters in three equal kinds: inside and around the current window
    (``0 .. low + 8192``), far ahead (``low + 8192 .. 2^32``) and huge
    (``2^32 .. 2^60``); the payload is garbage holding ``marker`` plus a 16-byte
    "tag".  Returns the packets and their counters.
    """
    packets, counters = [], []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            counter = rng.randrange(0, low + 8192)
        elif kind == 1:
            counter = rng.randrange(low + 8192, 2**32)
        else:
            counter = rng.randrange(2**32, 2**60)
        index = indices[i % len(indices)]
        body = marker + rng.randbytes(rng.randrange(60, 1400)) + rng.randbytes(noise.TAG_LEN)
        packets.append(struct.pack("<BxxxIQ", noise.MSG_DATA, index, counter) + body)
        counters.append(counter)
    return packets, counters


def marker_frames(src_mac: str, marker: bytes, count: int) -> list[bytes]:
    src = bytes.fromhex(src_mac.replace(":", ""))
    return [make_frame(BROADCAST_MAC, src, ETHERTYPE_EXPERIMENTAL, marker_payload(marker, i))
            for i in range(count)]


def new_marker(lab: Lab, what: str) -> bytes:
    return f"L2B-{lab.prefix}-{what}-{random.randrange(1 << 32):08x}".encode()


# ---------------------------------------------------------------- traffic helpers


async def count_markers(lab: Lab, marker: bytes, action: Callable[[], Awaitable[None]],
                        expect: Mapping[str, int] | None = None) -> dict[str, int]:
    """Incoming frames carrying ``marker`` at every host's ``eth0`` while ``action`` runs.

    Afterwards counting goes on until every host in ``expect`` got at least that many
    (for at most ``BOUND_S``; the caller asserts the counts), then ``SETTLE_S`` more,
    so frames still in flight, wanted or not, are counted too.
    """
    async with contextlib.AsyncExitStack() as stack:
        counters = {}
        for node in lab.hosts():
            counters[node.ref] = await stack.enter_async_context(
                traffic.FrameCounter(node.ns, "eth0", marker, settle_s=0.0))
        await action()
        with trio.move_on_after(BOUND_S):
            while any(counters[ref].incoming < n for ref, n in (expect or {}).items()):
                await trio.sleep(0.05)
        await trio.sleep(SETTLE_S)
    for ref, counter in counters.items():
        assert counter.dropped == 0, f"{ref}: capture dropped {counter.dropped} frames"
    return {ref: c.incoming for ref, c in counters.items()}


async def markers_both_ways(lab: Lab, count: int = 20, *, across: bool = True
                            ) -> dict[str, dict[str, int]]:
    """``count`` marker broadcasts from london.h1 and from berlin.h1: who got them.

    The sender's site-mates are waited for, and with ``across`` the other site's hosts.
    """
    seen = {}
    for ref in ("london.h1", "berlin.h1"):
        node = lab.node(ref)
        marker = new_marker(lab, ref)
        frames = marker_frames(node.mac or "", marker, count)
        send = functools.partial(traffic.send_frames, node.ns, "eth0", frames, interval_s=0.005)
        expect = {h.ref: count for h in lab.hosts()
                  if h.ref != ref and (across or h.site == node.site)}
        seen[ref] = await count_markers(lab, marker, send, expect)
    return seen


def _send_udp(ns: str, dst: tuple[str, int], datagrams: Sequence[bytes], rate_per_s: float,
              limit_s: float, sport: int = 0) -> int:
    """Send ``datagrams`` from a UDP socket in ``ns``, paced at ``rate_per_s``; worker thread.

    Stops at ``limit_s`` whatever is left; returns how many were sent.
    """
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        if sport:
            sock.bind(("0.0.0.0", sport))
        started = time.monotonic()
        for i, datagram in enumerate(datagrams):
            if i % FLOOD_BATCH == 0:
                now = time.monotonic()
                if now - started > limit_s:
                    return i
                due = started + i / rate_per_s
                if due > now:
                    time.sleep(due - now)  # pacing a sender, not waiting for a result
            sock.sendto(datagram, dst)
        return len(datagrams)


async def send_udp(ns: str, dst: tuple[str, int], datagrams: Sequence[bytes], *,
                   rate_per_s: float = FLOOD_RATE_PER_S, limit_s: float = FLOOD_LIMIT_S,
                   sport: int = 0) -> int:
    return await trio.to_thread.run_sync(
        _send_udp, ns, dst, datagrams, rate_per_s, limit_s, sport)


async def capture_toward(lab: Lab, site: str, duration_s: float,
                         action: Callable[[], Awaitable[None]] | None = None) -> list[bytes]:
    """Frames the WAN router sends to ``site``'s gateway (UDP to its port) during ``action``."""
    s = lab.plan.site(site)
    return await traffic.tcpdump_count(
        lab.plan.wan_ns, s.wan_if, f"udp and dst host {s.underlay} and dst port {PORT}",
        duration_s=duration_s, action=action)


@dataclass(frozen=True)
class Attacker:
    ns: str
    ifname: str
    ip: str


def _make_attacker(wan_ns: str, ns: str) -> None:
    """A namespace with ``eth0`` 198.18.250.2/24, veth to the WAN router (``atk`` .1)."""
    pr_netns.create(ns)
    with netlink(wan_ns) as ipr:
        ipr.link("add", ifname=ATTACKER_WAN_IF, kind="veth",
                 peer={"ifname": ATTACKER_IF, "net_ns_fd": ns})
        idx = ipr.link_lookup(ifname=ATTACKER_WAN_IF)[0]
        ipr.addr("add", index=idx, address=ATTACKER_ROUTER_IP, prefixlen=ATTACKER_NET.prefixlen)
        ipr.link("set", index=idx, state="up")
    with netlink(ns) as ipr:
        for name in ("lo", ATTACKER_IF):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        idx = ipr.link_lookup(ifname=ATTACKER_IF)[0]
        ipr.addr("add", index=idx, address=ATTACKER_IP, prefixlen=ATTACKER_NET.prefixlen)
        ipr.route("add", dst="0.0.0.0/0", gateway=ATTACKER_ROUTER_IP)


def _remove_attacker(ns: str) -> None:
    kill_namespace_processes([ns])
    remove_namespace(ns)  # its veth goes with it


@contextlib.asynccontextmanager
async def attacker(lab: Lab) -> AsyncIterator[Attacker]:
    """An attacker on the internet: a namespace routed through the lab's WAN router.

    Recorded in the lab's state file before it exists, removed on every exit path.
    """
    ns = f"{lab.prefix}-atk"
    lab.registry.add_namespace(ns)
    try:
        await trio.to_thread.run_sync(_make_attacker, lab.plan.wan_ns, ns)
        yield Attacker(ns, ATTACKER_IF, ATTACKER_IP)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_attacker, ns)


# ---------------------------------------------------------------- 1. flood and forgery


async def test_attacker_flood_and_forged_data_change_nothing(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """10^5 random datagrams and 10^4 forged DATA packets at Berlin's gateway.

    Expected: 0 marker frames at any host; 0 datagrams from the gateway to the
    attacker; every datagram the daemon read counted as an auth drop; Berlin's
    replay window for London never above what London really sent, the endpoint
    and the session (handshakes) unchanged; RSS growth < 5 MiB; a 0.1 s ping
    across the sites answered during and after the flood.
    """
    lab = await secure_lab(lab_scenario, london_berlin())
    berlin, london = lab.plan.site("berlin"), lab.plan.site("london")
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    rng = random.Random(4)
    await sessions_settled(lab)

    # Real receiver indices: DATA packets the router forwards to Berlin's gateway.
    async def some_traffic() -> None:
        r = await traffic.ping(src.ns, dst.ip, count=5, interval_s=0.05)
        assert r.ok, r.output

    captured = await capture_toward(lab, "berlin", 0.5, some_traffic)
    indices = data_indices(captured, berlin.underlay)
    assert indices, f"no DATA packet toward berlin in {len(captured)} captured frames"

    pid = daemon_pid(lab, "berlin")
    marker = new_marker(lab, "flood")
    # Senders' counters before receivers' (and after them at the end), so a frame
    # in flight can only make the bounds below looser, never fail them.
    peer_l0 = await peer_of(lab, "london", "berlin")
    before_b = await lab.show("berlin")
    peer_b0 = next(p for p in before_b["peers"] if p["name"] == "london")
    low = max(peer_b0["rx_counter"], 0)
    junk = random_datagrams(RANDOM_DATAGRAMS, marker, rng)
    forged, counters = forged_data(FORGED_DATAGRAMS, indices, low, marker, rng)
    rss0, rcvbuf0 = rss_bytes(pid), udp_rcvbuf_errors(pid)

    sent = {"junk": 0, "forged": 0}
    pings: list[traffic.PingResult] = []  # during the flood
    after: list[traffic.PingResult] = []  # right after it

    async with attacker(lab) as atk:

        async def flood_then_ping() -> None:
            async def during() -> None:
                pings.append(await traffic.ping(src.ns, dst.ip, count=40, interval_s=0.1,
                                                deadline_s=15))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(during)
                target = (berlin.underlay, PORT)
                sent["junk"] = await send_udp(atk.ns, target, junk)
                sent["forged"] = await send_udp(atk.ns, target, forged)
            after.append(await traffic.ping(src.ns, dst.ip, count=5, interval_s=0.1))

        replies, at_hosts = await replies_and_markers(lab, atk, berlin.underlay, marker,
                                                       flood_then_ping)

    assert not os.path.exists(netns_path(atk.ns))  # the attacker is gone with its block
    assert sent == {"junk": RANDOM_DATAGRAMS, "forged": FORGED_DATAGRAMS}
    assert replies == 0
    assert at_hosts == {node.ref: 0 for node in lab.hosts()}
    assert pings[0].sent >= 40 and pings[0].received == pings[0].sent, pings[0].output
    assert after[0].ok, after[0].output

    after_b = await lab.show("berlin")
    peer_l1 = await peer_of(lab, "london", "berlin")
    peer_b1 = next(p for p in after_b["peers"] if p["name"] == "london")
    rss1, rcvbuf1 = rss_bytes(pid), udp_rcvbuf_errors(pid)
    drops = delta(after_b["auth_drops"], before_b["auth_drops"])
    kernel_dropped = rcvbuf1 - rcvbuf0
    read_by_daemon = RANDOM_DATAGRAMS + FORGED_DATAGRAMS - kernel_dropped
    assert total(drops) == read_by_daemon, (drops, kernel_dropped)
    assert kernel_dropped <= (RANDOM_DATAGRAMS + FORGED_DATAGRAMS) // 100, kernel_dropped
    assert drops.get("bad_tag", 0) + drops.get("replay_or_expired", 0) == FORGED_DATAGRAMS

    # The window moved only by what London really sent in the same session.
    legit = (peer_l1["datagrams_out"] + peer_l1["keepalives_out"]
             - peer_l0["datagrams_out"] - peer_l0["keepalives_out"])
    bound = low + legit
    assert peer_b1["rx_counter"] <= bound, (peer_b1["rx_counter"], bound)
    assert sum(c > bound for c in counters) >= FORGED_DATAGRAMS // 2
    assert (peer_b1["handshakes"], peer_l1["handshakes"]) == (
        peer_b0["handshakes"], peer_l0["handshakes"])
    assert peer_b1["endpoint"] == peer_b0["endpoint"] == f"{london.underlay}:{PORT}"
    assert peer_b1["roamed"] == peer_b0["roamed"]
    assert after_b["unknown_source"] == before_b["unknown_source"]
    # Nothing reached Berlin's LAN but what London sent.
    frames_to_lan = after_b["local"]["frames_out"] - before_b["local"]["frames_out"]
    assert frames_to_lan <= peer_l1["frames_out"] - peer_l0["frames_out"]
    assert rss1 - rss0 < RSS_GROWTH_MAX_BYTES, (rss0, rss1)
    print(f"flood: {sent}, kernel dropped {kernel_dropped}, auth drops {drops}, "
          f"rss {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, "
          f"ping during {pings[0].received}/{pings[0].sent}, rx_counter {low} -> "
          f"{peer_b1['rx_counter']} (bound {bound})")


async def replies_and_markers(lab: Lab, atk: Attacker, gateway_ip: str, marker: bytes,
                              action: Callable[[], Awaitable[None]]
                              ) -> tuple[int, dict[str, int]]:
    """While ``action`` runs (and frames settle): datagrams from ``gateway_ip``
    captured at the attacker, and frames carrying ``marker`` at every host."""
    at_hosts: dict[str, int] = {}

    async def watched() -> None:
        at_hosts.update(await count_markers(lab, marker, action))

    frames = await traffic.tcpdump_count(atk.ns, atk.ifname, f"ip src host {gateway_ip}",
                                         duration_s=1.0, action=watched)
    return len(frames), at_hosts


# ---------------------------------------------------------------- 2. replays


def kinds(frames: Sequence[bytes]) -> dict[int, int]:
    """How many captured datagrams of each message type."""
    out: dict[int, int] = {}
    for frame in frames:
        udp = parse_udp(frame)
        if udp is not None:
            kind = noise.message_type(udp.payload)
            out[kind] = out.get(kind, 0) + 1
    return out


async def replay(lab: Lab, captured: dict[str, list[bytes]], marker: bytes
                 ) -> tuple[dict[str, dict[str, int]], dict[str, int], dict[str, int]]:
    """Write each site's captured frames back onto the router's interface toward it.

    Returns per site the auth drops that grew, the growth of frames written to
    its LAN, and the marker frames seen at every host meanwhile.
    """
    # Senders first before, receivers first after: frames in flight only loosen the bound.
    sent_before = {site: await peer_of(lab, other, site) for site, other in
                   (("london", "berlin"), ("berlin", "london"))}
    before = {site: await lab.show(site) for site in captured}

    async def write_back() -> None:
        for site, frames in captured.items():
            await traffic.send_frames(lab.plan.wan_ns, lab.plan.site(site).wan_if,
                                      [with_udp_checksum(f) for f in frames], interval_s=0.001)

    at_hosts = await count_markers(lab, marker, write_back)
    # Every replayed datagram is judged, each one an auth drop (the caller checks that).
    with trio.move_on_after(BOUND_S):
        for site, frames in captured.items():
            while total(delta((await lab.show(site))["auth_drops"],
                              before[site]["auth_drops"])) < len(frames):
                await trio.sleep(0.05)
    drops, lan = {}, {}
    for site, other in (("berlin", "london"), ("london", "berlin")):
        after = await lab.show(site)
        sent_after = await peer_of(lab, other, site)
        drops[site] = delta(after["auth_drops"], before[site]["auth_drops"])
        grown = after["local"]["frames_out"] - before[site]["local"]["frames_out"]
        legit = sent_after["frames_out"] - sent_before[site]["frames_out"]
        lan[site] = grown - legit  # > 0: frames on the LAN that the peer did not send
    return drops, lan, at_hosts


async def wait_rekeys(lab: Lab, since: dict[str, int], more: int, timeout_s: float) -> None:
    """Wait (bounded) until the sites' handshakes grew by ``more`` each."""
    with trio.fail_after(timeout_s):
        while True:
            now = {s: (await peer_of(lab, s, o))["handshakes"]
                   for s, o in (("london", "berlin"), ("berlin", "london"))}
            if all(now[s] - since[s] >= more for s in since):
                return
            await trio.sleep(0.1)


async def handshake_counts(lab: Lab) -> dict[str, int]:
    return {s: (await peer_of(lab, s, o))["handshakes"]
            for s, o in (("london", "berlin"), ("berlin", "london"))}


async def test_captured_datagrams_replayed_before_and_after_rekeys_are_all_dropped(
        lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """Replay, byte for byte, what the router forwarded to each gateway.

    rekey_after = 2.  The router's interfaces toward both gateways are captured
    across one handshake (its initiation and response are in the capture) and
    the 20 marker broadcasts each way sent right after it (delivered once: 20
    at each host of the other site).  Written back onto the same interfaces (so
    source addresses are authentic):

    - before the next rekey, while the sessions are live: every replayed
      datagram is an auth drop, and at each site at least the 20 marker DATA
      packets are refused by the replay window itself (``replay_or_expired``);
    - after two more handshakes: every one is an auth drop again, the DATA ones
      now for keys that no longer exist (``unknown_index``).

    Both times 0 marker frames reach any host and no LAN gets a frame its peer
    did not send.
    """
    lab = await secure_lab(lab_scenario, london_berlin(rekey_after_s=2))
    marker = new_marker(lab, "replay")
    l1, b1 = lab.node("london.h1"), lab.node("berlin.h1")
    count = 20
    captured: dict[str, list[bytes]] = {}
    delivered: dict[str, int] = {}

    async def after_a_handshake() -> None:
        await wait_rekeys(lab, await handshake_counts(lab), 1, timeout_s=BOUND_S)

        async def send_both() -> None:
            async with trio.open_nursery() as nursery:
                for node in (l1, b1):
                    nursery.start_soon(functools.partial(
                        traffic.send_frames, node.ns, "eth0",
                        marker_frames(node.mac or "", marker, count), interval_s=0.005))

        delivered.update(await count_markers(lab, marker, send_both, {
            "london.h1": count, "london.h2": 2 * count,
            "berlin.h1": count, "berlin.h2": 2 * count}))

    async def capture_berlin() -> None:
        captured["berlin"] = await capture_toward(lab, "berlin", 0.1, after_a_handshake)

    captured["london"] = await capture_toward(lab, "london", 0.1, capture_berlin)
    # The originals crossed once: each host got the other site's 20 (and its site-mate's).
    assert delivered == {"london.h1": count, "london.h2": 2 * count,
                         "berlin.h1": count, "berlin.h2": 2 * count}, delivered
    seen = {site: kinds(frames) for site, frames in captured.items()}
    assert {k for site in seen.values() for k in site} == {
        noise.MSG_INITIATION, noise.MSG_RESPONSE, noise.MSG_DATA}, seen
    replayed = {site: len(frames) for site, frames in captured.items()}
    handshakes = await handshake_counts(lab)

    report = {}
    for phase in ("before", "after"):
        if phase == "after":
            await wait_rekeys(lab, handshakes, 2, timeout_s=BOUND_S)
        drops, lan, at_hosts = await replay(lab, captured, marker)
        report[phase] = drops
        assert at_hosts == {node.ref: 0 for node in lab.hosts()}, (phase, at_hosts)
        for site in captured:
            assert total(drops[site]) == replayed[site], (phase, site, drops[site], replayed)
            assert lan[site] <= 0, (phase, site, lan[site])
            if phase == "before":  # live sessions: the replay window itself said no
                assert drops[site].get("replay_or_expired", 0) >= count, (site, drops)
            else:  # those keys are gone
                assert drops[site].get("replay_or_expired", 0) == 0, (site, drops)
                assert drops[site].get("unknown_index", 0) >= seen[site][noise.MSG_DATA]
    print(f"replayed {replayed} (kinds {seen}); drops {report}")


# ---------------------------------------------------------------- 3. wrong key, no key


async def restart_with(lab: Lab, site: str, **changes: Any) -> None:
    """Stop ``site``'s daemon and start it again from a changed plan (config, key)."""
    gateway = lab.gateways[site]
    await lab.stop_site(site)
    gateway.site = dataclasses.replace(gateway.site, **changes)
    await lab.start_site(site)


async def wait_drops(lab: Lab, site: str, since: dict[str, int], reasons: Sequence[str],
                     timeout_s: float = BOUND_S) -> dict[str, int]:
    """Wait (bounded) until one of ``reasons`` grew in ``site``'s auth drops."""
    with trio.fail_after(timeout_s):
        while True:
            grown = delta((await lab.show(site))["auth_drops"], since)
            if any(grown.get(r, 0) > 0 for r in reasons):
                return grown
            await trio.sleep(0.1)


def without_keys(config_text: str) -> str:
    """A site config turned cleartext: no private key, no peer keys, ``insecure = true``."""
    lines = [line for line in config_text.splitlines()
             if not line.startswith(("private_key_file", "public_key"))]
    lines.insert(lines.index("[site]") + 1, "insecure = true")
    return "\n".join(lines) + "\n"


async def test_peer_with_wrong_key_or_no_key_never_gets_a_frame_in_or_out(
        lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """Berlin restarted three times as a peer London must not talk to.

    1. an impostor: a fresh private key (London knows the old public key): its
       initiations reach London from an unknown peer (``handshake_unknown_peer``);
    2. the right key but a wrong public key for London: its initiations fail
       London's mac1 (``bad_mac1``);
    3. no key at all (``insecure = true``): its cleartext greetings are ``bad_type``.
    In each case London counts the attempt, Berlin never completes a handshake
    and writes no frame to its LAN (London's DATA under the old session is an
    ``unknown_index`` there), and 20 marker broadcasts each way reach 0 hosts at
    the other site while the sender's site-mate gets all 20.  With the real key
    back, both directions cross again (20 each).
    """
    lab = await secure_lab(lab_scenario, london_berlin())
    original = lab.gateways["berlin"].site
    london_public = keys.encode_key(keys.public_key(lab.plan.site("london").private_key))
    wrong_public = keys.encode_key(keys.public_key(keys.generate_private_key()))
    assert london_public in original.config_text
    cases: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
        "impostor key": ({"private_key": keys.generate_private_key()},
                         ("handshake_unknown_peer",)),
        "wrong key for london": (
            {"config_text": original.config_text.replace(london_public, wrong_public)},
            ("bad_mac1",)),
        "no key": ({"config_text": without_keys(original.config_text), "private_key": b""},
                   ("bad_type",)),
    }
    count = 20
    fine = await markers_both_ways(lab, count)
    assert fine["london.h1"]["berlin.h1"] == fine["berlin.h1"]["london.h1"] == count, fine

    for case, (changes, reasons) in cases.items():
        since = (await lab.show("london"))["auth_drops"]
        await restart_with(lab, "berlin", **changes)
        grown = await wait_drops(lab, "london", since, reasons)
        seen = await markers_both_ways(lab, count, across=False)
        berlin = await lab.show("berlin")
        assert seen["london.h1"] == {"london.h1": 0, "london.h2": count,
                                     "berlin.h1": 0, "berlin.h2": 0}, (case, seen)
        assert seen["berlin.h1"] == {"london.h1": 0, "london.h2": 0,
                                     "berlin.h1": 0, "berlin.h2": count}, (case, seen)
        assert berlin["peers"][0].get("handshakes", 0) == 0, (case, berlin["peers"][0])
        assert berlin["local"]["frames_out"] == 0, (case, berlin["local"])
        print(f"{case}: london auth drops grew {grown}; berlin auth drops {berlin['auth_drops']}")

    await restart_with(lab, "berlin", config_text=original.config_text,
                       private_key=original.private_key)
    await lab.wait_ready()
    back = await markers_both_ways(lab, count)
    assert back["london.h1"]["berlin.h1"] == back["berlin.h1"]["london.h1"] == count, back


# ---------------------------------------------------------------- 4. roaming

PING_REPLY = re.compile(r"^\[(?P<ts>\d+\.\d+)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+)", re.M)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _open_ip_capture(ns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket for IPv4 frames on ``ifname`` in ``ns``, kernel-timestamped."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((ifname, ETH_P_IP))
    return sock


def _first_datagram_from(sock: socket.socket, src: str, sport: int, limit_s: float
                         ) -> float | None:
    """Kernel time (Unix seconds) of the first UDP datagram from ``src:sport``, or None."""
    deadline = time.monotonic() + limit_s
    sock.settimeout(0.1)
    ancsize = socket.CMSG_SPACE(16)
    while time.monotonic() < deadline:
        try:
            data, anc, _flags, _addr = sock.recvmsg(2048, ancsize)
        except TimeoutError:
            continue
        udp = parse_udp(data)
        if udp is None or udp.src != src or udp.sport != sport:
            continue
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                return sec + nsec / 1e9
        return time.time()
    return None


def _move_wan_address(gw_ns: str, old: str, new: str, router: str) -> float:
    """Add ``new`` on wan0, delete ``old``, restore the default route; return the time."""
    with in_netns(gw_ns), open("/proc/sys/net/ipv4/conf/wan0/promote_secondaries", "w") as f:
        f.write("1")  # deleting the primary address keeps the new one
    with netlink(gw_ns) as ipr:
        idx = ipr.link_lookup(ifname="wan0")[0]
        ipr.addr("add", index=idx, address=new, prefixlen=24)
        changed = time.time()
        ipr.addr("del", index=idx, address=old, prefixlen=24)
        ipr.route("replace", dst="0.0.0.0/0", gateway=router)
    return changed


async def test_roaming_gateway_resumes_within_a_second_of_its_next_datagram(
        lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """Berlin's gateway moves from 198.18.2.2 to .3 under a ping every 0.1 s.

    London keeps sending to the old address until Berlin's first datagram from
    the new one (a keepalive, at most ``keepalive`` = 1 s later) authenticates;
    the first echo reply after that datagram comes within 1 s (kernel timestamps
    of the router's capture and ``ping -D``), London's ``roamed`` grows by 1 and
    its endpoint for Berlin is the new address.
    """
    lab = await secure_lab(lab_scenario, london_berlin())
    berlin = lab.plan.site("berlin")
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    new = str(ipaddress.ip_address(berlin.underlay) + 1)
    before = await peer_of(lab, "london", "berlin")
    result: dict[str, Any] = {}

    async def pinger() -> None:
        result["ping"] = await traffic.run_command(
            src.ns, ["ping", "-4", "-n", "-D", "-i", "0.1", "-c", "60", "-W", "1", dst.ip],
            timeout_s=15)

    sock = await trio.to_thread.run_sync(_open_ip_capture, lab.plan.wan_ns, berlin.wan_if)
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger)
            await trio.sleep(1.5)  # the ping runs a while before the move
            changed = await trio.to_thread.run_sync(
                _move_wan_address, berlin.gw_ns, berlin.underlay, new, berlin.router)
            first = await trio.to_thread.run_sync(_first_datagram_from, sock, new, PORT, 5.0)
    assert first is not None, f"no datagram from {new}:{PORT} within 5 s"
    output = result["ping"].stdout
    replies = [(float(m["ts"]), int(m["seq"])) for m in PING_REPLY.finditer(output)]
    early = [ts for ts, _ in replies if ts < changed]
    resumed = [ts for ts, _ in replies if ts > first]
    assert early and resumed, output
    silent = [ts for ts, _ in replies if changed + 0.01 < ts <= first]
    after = await peer_of(lab, "london", "berlin")
    resume_s = resumed[0] - first
    print(f"roaming: first datagram from {new} {first - changed:.3f} s after the move, "
          f"echo back {resume_s:.3f} s after it; {len(replies)}/60 replies, "
          f"{len(silent)} between move and datagram")
    assert resume_s <= ROAM_RESUME_MAX_S
    assert silent == []  # London really lost Berlin until its next datagram
    assert after["roamed"] == before["roamed"] + 1
    assert after["endpoint"] == f"{new}:{PORT}"
    assert after["state"] == "up"


# ---------------------------------------------------------------- 5. kill and restart


async def test_peer_killed_and_restarted_with_the_same_key_is_back_within_3_s(
        lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL a gateway, start it again with the same key: pings answer within 3 s.

    Three rounds (Berlin, London, Berlin); the restarted site initiates at start
    and its peer answers the new initiation (its TAI64N timestamp is newer than
    any before the kill), so the old session's loss costs one round trip.
    """
    lab = await secure_lab(lab_scenario, london_berlin())
    times = []
    for site in ("berlin", "london", "berlin"):
        handshakes = (await peer_of(lab, "london", "berlin"))["handshakes"]
        result = await lab.check("restart", site=site, from_="london.h1", to="berlin.h1",
                                 within_s=RESTART_WITHIN_S)
        assert result.ok, result.summary
        times.append(result.numbers["back_in_s"])
        peer = await peer_of(lab, "london", "berlin")
        if site == "berlin":  # London kept its keys: a new handshake, same peer key
            assert peer["handshakes"] > handshakes
    print(f"restart: back in {times} s")
    assert max(times) <= RESTART_WITHIN_S


# ---------------------------------------------------------------- 6. rekey under iperf3


async def rekeys(lab: Lab) -> int:
    """Rekeys counted at both sites (each by the side that initiated the new keypair)."""
    count = 0
    for site in ("london", "berlin"):
        count += sum(p["rekeys"] for p in (await lab.show(site))["peers"])
    return count


@pytest.mark.slow
async def test_rekeys_under_iperf3_cost_no_tcp_retransmission(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """An 8 s iperf3 TCP transfer Berlin ← London, rekey_after = 2 vs 120.

    The same transfer runs in two labs that differ only in ``rekey_after``: with
    120 no rekey happens, with 2 at least three do.  Retransmissions with rekeys
    must be 0, or not more than without (a retransmission both runs share comes
    from the path, not from the rekey).  Why it holds: the old keypair keeps
    decrypting until it expires (REJECT_AFTER = 1.5 x REKEY_AFTER), a responder
    switches only once the new keypair is confirmed, only the initiator of the
    current keypair rekeys on time, and when handshakes crossed a completed
    handshake keeps the keypair the peer still sends with (the two tests above)
    - so no frame is ever sealed with keys the receiver lacks.  On a 2-core VM
    both runs see 0; before those last two rules, 3 of 8 runs with rekeys lost
    up to 600 datagrams to ``unknown_index`` and retransmitted up to 300 segments.
    """
    runs: dict[str, tuple[traffic.IperfResult, int]] = {}
    for label, rekey_after_s in (("without rekeys", 120), ("with rekeys", 2)):
        lab = await secure_lab(lab_scenario, london_berlin(rekey_after_s=rekey_after_s))
        await sessions_settled(lab)
        l1, b1 = lab.node("london.h1"), lab.node("berlin.h1")
        before = await rekeys(lab)
        result = await traffic.iperf3(b1.ns, b1.ip, l1.ns, seconds=8)
        runs[label] = (result, await rekeys(lab) - before)
    (plain, plain_rekeys), (rekeyed, rekeyed_count) = runs["without rekeys"], runs["with rekeys"]
    print("iperf3: " + "; ".join(f"{k}: {r.mbit_s:.0f} Mbit/s, {r.retransmits} retransmits, "
                                 f"{n} rekeys" for k, (r, n) in runs.items()))
    assert plain_rekeys == 0
    assert rekeyed_count >= 3
    assert plain.retransmits is not None and rekeyed.retransmits is not None
    assert rekeyed.retransmits == 0 or rekeyed.retransmits <= plain.retransmits


# ---------------------------------------------------------------- 7. behind NAT


async def test_site_behind_nat_with_keys_learns_endpoints_only_from_authenticated_datagrams(
        lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """The shipped NAT scenario with keys: every check passes, and the endpoint
    London and Berlin hold for "home" is its translated address, learned from
    authenticated datagrams (``roamed`` counts that first binding).  Then, from
    home's own gateway, through the same NAT, a socket on another port sends 1000
    random datagrams and 1000 DATA packets forged with London's real receiver
    index for home: they reach London from the same public address with another
    port, every one is an auth drop, and the endpoint and ``roamed`` stay put.
    """
    lab = await lab_scenario(NAT_SCENARIO, gateway="l2bridge")
    assert not lab.scenario.insecure
    results = await lab.run_checks()
    failed = [f"{r.name}: {r.summary}" for r in results if not r.ok]
    assert not failed
    london, home = lab.plan.site("london"), lab.plan.site("home")
    public = home.addresses.public4  # home's own NAT router's public address
    for site in ("london", "berlin"):
        peer = await peer_of(lab, site, "home")
        assert peer["state"] == "up" and peer["configured_endpoint"] is None, peer
        assert peer["endpoint"].startswith(f"{public}:"), peer  # translated, never 100.64.x
        assert peer["roamed"] >= 1 and peer["handshakes"] >= 1, peer

    async def some_traffic() -> None:
        r = await traffic.ping(lab.ns("home.h1"), lab.node("london.h1").ip, count=5,
                               interval_s=0.05)
        assert r.ok, r.output

    captured = await capture_toward(lab, "london", 0.5, some_traffic)
    indices = data_indices(captured, london.underlay, src=public)
    assert indices, "no DATA packet from home toward london"
    rng = random.Random(7)
    marker = new_marker(lab, "nat")
    low = max((await peer_of(lab, "london", "home"))["rx_counter"], 0)
    forged, _ = forged_data(1000, indices, low, marker, rng)
    junk = random_datagrams(1000, marker, rng)
    before = await lab.show("london")
    peer0 = next(p for p in before["peers"] if p["name"] == "home")
    sent = await send_udp(home.gw_ns, (london.underlay, PORT), junk + forged,
                          rate_per_s=5000, sport=PORT + 1)
    assert sent == 2000
    with trio.fail_after(BOUND_S):  # until London has judged all of them
        while total(delta((await lab.show("london"))["auth_drops"], before["auth_drops"])) < sent:
            await trio.sleep(0.05)
    after = await lab.show("london")
    peer1 = next(p for p in after["peers"] if p["name"] == "home")
    drops = delta(after["auth_drops"], before["auth_drops"])
    assert drops.get("bad_tag", 0) + drops.get("replay_or_expired", 0) >= 1000, drops
    assert (peer1["endpoint"], peer1["roamed"]) == (peer0["endpoint"], peer0["roamed"])
    print(f"nat: home at london {peer1['endpoint']}, forged from port {PORT + 1}: drops {drops}")
