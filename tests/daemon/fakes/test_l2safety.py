"""Layer-2 safety on running sites over in-memory fakes: loops through a second path
between LANs, storm control, the DHCP/RA guard, ARP/ND suppression, duplicate MACs,
forged probes and live reloads, all in virtual time."""

from __future__ import annotations

import struct

import pytest
import trio
from support import site_toml

from l2bridge.core import keys, noise, wire
from l2bridge.core.config import parse_config
from l2bridge.core.keys import Secrets
from l2bridge.core.loop import LoopGuard, site_mac
from l2bridge.core.reload import plan
from l2bridge.io.fakes import FakeNetwork, FakeTap
from l2bridge.ops.report import format_fdb, format_show
from l2bridge.site import reload as applying
from l2bridge.site.site import Site

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 46, ethertype: int = 0x88B5) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def addr_of(name: str) -> tuple[str, int]:
    return (f"10.0.0.{ord(name[0])}", 55555)


class Sites:
    """Sites on one FakeNetwork; secure (keys) unless ``insecure``."""

    def __init__(self, nursery: trio.Nursery, *, insecure: bool = False) -> None:
        self.nursery = nursery
        self.insecure = insecure
        self.net = FakeNetwork()
        self.taps: dict[str, FakeTap] = {}
        self.sites: dict[str, Site] = {}
        self.keys: dict[str, bytes] = {}

    def config(self, name: str, peers: list[str], **site: str) -> object:
        for n in [name, *peers]:
            self.keys.setdefault(n, keys.generate_private_key())
        host, port = addr_of(name)
        table = {"listen": f'"{host}:{port}"', "keepalive": "1", "dead_after": "3",
                 "control": f'"/nonexistent/{name}.sock"'}
        table.update({"insecure": "true"} if self.insecure else
                     {"private_key_file": '"/unused"'})
        table.update(site)
        peer_tables = {}
        for peer in peers:
            h, p = addr_of(peer)
            peer_tables[peer] = {"endpoint": f'"{h}:{p}"'}
            if not self.insecure:
                public = keys.public_key(self.keys[peer])
                peer_tables[peer]["public_key"] = f'"{keys.encode_key(public)}"'
        return parse_config(site_toml(name, table, peer_tables), f"{name}.toml")

    async def start(self, name: str, peers: list[str], **site: str) -> Site:
        cfg = self.config(name, peers, **site)
        tap = FakeTap()
        identity = None if self.insecure else noise.Identity(self.keys[name])
        s = Site(cfg, tap=tap, transport=self.net.transport(*addr_of(name)),
                 identity=identity, clock_unix=lambda: 1.7e9 + trio.current_time())
        await self.nursery.start(s.run)
        self.taps[name], self.sites[name] = tap, s
        return s

    async def mesh(self, names: list[str], **site: str) -> None:
        for n in names:
            await self.start(n, [p for p in names if p != n], **site)
        await trio.sleep(1.5)

    def lan(self, *names: str, f: bytes) -> None:
        """A host on a LAN that several sites share sends ``f``: each gateway reads it."""
        for name in names:
            self.taps[name].inject(f)

    def blocked(self, name: str) -> dict[str, str | None]:
        return {b["peer"]: b["reason"] for b in self.sites[name].status()["loop"]["blocked"]}


@pytest.fixture
async def sites(nursery):
    yield Sites(nursery)
    nursery.cancel_scope.cancel()


@pytest.fixture
async def clear(nursery):
    yield Sites(nursery, insecure=True)
    nursery.cancel_scope.cancel()


def marked(tap: FakeTap, marker: bytes) -> list[bytes]:
    return [f for f in tap.delivered if marker in f]


# ---------------------------------------------------------------- loops


async def test_a_second_path_between_two_lans_is_blocked_at_both_ends_then_released(
        sites, autojump_clock):
    await sites.mesh(["a", "b"])
    sites.taps["a"].join(sites.taps["b"])  # a backup cable between the two LANs
    await trio.sleep(2.0)
    assert sites.blocked("a") == {"b": "segment"} and sites.blocked("b") == {"a": "segment"}
    loop_view = sites.sites["a"].status()["loop"]["blocked"][0]
    assert loop_view["path"] == "a-b" and "joined" in loop_view["why"]
    assert "loop" in format_show(sites.sites["a"].status())
    # one broadcast on the joined LAN: it never crosses the WAN, let alone loops
    before = sites.net.sent
    sites.lan("a", "b", f=frame(BCAST, mac(1), b"storm?" + b"\0" * 40))
    await trio.sleep(10.0)
    assert sites.net.sent - before < 50  # keepalives only (2 sites, 1/s, 10 s)
    assert marked(sites.taps["a"], b"storm?") == marked(sites.taps["b"], b"storm?") == []
    # the cable is gone: within the hold (3 probe intervals) the tunnel carries frames again
    sites.taps["a"].unjoin(sites.taps["b"])
    await trio.sleep(3.5)
    assert sites.blocked("a") == sites.blocked("b") == {}
    sites.taps["a"].inject(frame(BCAST, mac(1), b"again" + b"\0" * 41))
    await trio.sleep(0.1)
    assert len(marked(sites.taps["b"], b"again")) == 1
    assert sites.sites["a"].state.peers.by_name["b"].loop_blocks == 1


async def test_bpdus_cross_a_blocked_tunnel_untouched(sites, autojump_clock):
    await sites.mesh(["a", "b"])
    sites.taps["a"].join(sites.taps["b"])
    await trio.sleep(2.0)
    assert sites.blocked("a") == {"b": "segment"}
    bpdu = bytes.fromhex("0180c2000000") + mac(1) + b"\x00\x26" + b"\x42\x42\x03" + b"\0" * 43
    sites.taps["a"].unjoin(sites.taps["b"])  # (so the copy seen is the tunnel's)
    sites.taps["a"].inject(bpdu)
    await trio.sleep(0.1)
    assert sites.taps["b"].delivered.count(bpdu) == 1  # STP, where it runs, sees this path
    assert sites.sites["a"].state.policy.counters["bpdus"] == 1


async def test_three_sites_two_lans_joined_one_gateway_serves_the_pair(sites, autojump_clock):
    await sites.mesh(["a", "b", "c"])
    sites.taps["a"].join(sites.taps["b"])
    await trio.sleep(2.0)
    # a sorts first: it serves the joined LAN; b stands by; c follows b's flag
    assert sites.blocked("a") == {"b": "segment"}
    assert sites.blocked("b") == {"a": "segment", "c": "standby"}
    assert sites.blocked("c") == {"b": "peer"}
    assert sites.sites["b"].status()["loop"]["designated"] == "a"
    # a broadcast from c's LAN reaches the joined LAN exactly once (through a)
    sites.taps["c"].inject(frame(BCAST, mac(3), b"from-c" + b"\0" * 40))
    await trio.sleep(0.5)
    writes = marked(sites.taps["a"], b"from-c") + marked(sites.taps["b"], b"from-c")
    assert len(writes) == 1
    # and one from the joined LAN reaches c exactly once
    sites.lan("a", "b", f=frame(BCAST, mac(4), b"from-ab" + b"\0" * 39))
    await trio.sleep(0.5)
    assert len(marked(sites.taps["c"], b"from-ab")) == 1


async def test_forged_and_tunnelled_probes_change_nothing(sites, autojump_clock):
    await sites.mesh(["a", "b"])
    a = sites.sites["a"].state
    forger = LoopGuard(name="b")
    # a LAN host makes up a probe "from b" (it has no session key) and replays garbage
    for stamp in range(1, 20):
        forged = forger.probes(site_mac("b"), stamp, active=True, entries=[(7, b"k" * 32)])[0]
        sites.taps["a"].inject(forged)
    sites.taps["a"].inject(b"\x03L2B\x00\x01" + mac(9) + b"\x88\xb6" + b"L2BP" + b"\0" * 40)
    await trio.sleep(0.1)
    counters = a.l2.loop.counters
    assert counters["unverified"] == 19 and counters["malformed"] == 1
    assert sites.blocked("a") == sites.blocked("b") == {}
    # b's real probes, recorded on b's LAN: the newest, carried into a's LAN at once, is
    # what another path would carry (a live relay is one); an older one never counts
    await trio.sleep(1.0)
    older, newest = sites.taps["b"].probes[-2:]
    sites.taps["a"].inject(newest)
    sites.taps["a"].inject(older)
    sites.taps["a"].inject(newest)
    await trio.sleep(0.1)
    assert counters["replayed"] == 2 and counters["seen"] == 1
    await trio.sleep(3.5)  # no more of them: released
    assert sites.blocked("a") == sites.blocked("b") == {}
    # a probe sent through the tunnel (as a frame from peer a) is never delivered
    b = sites.sites["b"].state
    probe = a.l2.loop.probes(a.l2.probe_mac, 10**19, active=True, entries=[])[0]
    a_peer_b = a.peers.by_name["b"]
    packet = a.sessions.seal(a_peer_b.sessions, wire.encode_frame(probe), trio.current_time())
    sites.net.deliver(packet, addr_of("a"), addr_of("b"))
    await trio.sleep(0.1)
    assert b.l2.loop.counters["via_peer"] == 1
    assert sites.taps["b"].probes.count(probe) == 0
    assert sites.blocked("b") == {}


# ---------------------------------------------------------------- storm control


async def test_storm_control_bounds_flooded_frames_but_never_known_unicast(
        clear, autojump_clock):
    await clear.mesh(["a", "b"], storm_broadcast="100", storm_burst="1")
    for i in range(2000):
        clear.taps["a"].inject(frame(BCAST, mac(1), b"bc" + struct.pack("!I", i) + b"\0" * 40))
    await trio.sleep(0.5)
    got = len(marked(clear.taps["b"], b"bc"))
    assert 100 <= got <= 100 + 100 * 0.6  # the burst, plus what the rate refilled meanwhile
    peer = clear.sites["a"].state.peers.by_name["b"]
    assert peer.drops["storm_broadcast_out"] == 2000 - got
    # known unicast: all of it (mac(2) learned behind b)
    clear.taps["b"].inject(frame(mac(1), mac(2), b"hi" + b"\0" * 44))
    await trio.sleep(0.1)
    for i in range(2000):
        clear.taps["a"].inject(frame(mac(2), mac(1), b"uc" + struct.pack("!I", i) + b"\0" * 40))
    await trio.sleep(0.5)
    assert len(marked(clear.taps["b"], b"uc")) == 2000
    view = clear.sites["a"].status()["peers"][0]
    assert view["flooded_by_class"]["out"]["broadcast"] == got


async def test_a_site_limits_what_it_accepts_from_a_peer(clear, autojump_clock):
    await clear.start("a", ["b"], storm_multicast="1000000")
    await clear.start("b", ["a"], storm_multicast="50", storm_burst="1")
    await trio.sleep(1.5)
    for i in range(1000):
        clear.taps["a"].inject(frame(b"\x01\x00\x5e\x00\x00\x01", mac(1),
                                     b"mc" + struct.pack("!I", i) + b"\0" * 40))
    await trio.sleep(0.5)
    got = len(marked(clear.taps["b"], b"mc"))
    assert 50 <= got <= 80
    assert clear.sites["b"].state.peers.by_name["a"].drops["storm_multicast_in"] == 1000 - got


# ---------------------------------------------------------------- DHCP and RA guard


def udp4(dst_mac: bytes, src_mac: bytes, sport: int, dport: int, tag: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(tag), 0, 0, 64, 17, 0, bytes(4),
                     b"\xff" * 4)
    return dst_mac + src_mac + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport,
                                                               8 + len(tag), 0) + tag


def ipv6(dst_mac: bytes, src_mac: bytes, nxt: int, body: bytes) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(body), nxt, 255,
                     bytes.fromhex("fe80" + "00" * 13 + "01"), bytes.fromhex("ff02" + "00" * 14)
                     + b"")
    return dst_mac + src_mac + b"\x86\xdd" + ip + body


ALL_NODES = bytes.fromhex("333300000001")
DHCP6_SERVERS = bytes.fromhex("333300010002")
GUARDED = {
    "discover": (udp4(BCAST, mac(1), 68, 67, b"discover"), "client"),
    "offer": (udp4(BCAST, mac(1), 67, 68, b"offer"), "server"),
    "solicit": (ipv6(DHCP6_SERVERS, mac(1), 17, struct.pack("!HHHH", 546, 547, 20, 0)
                     + b"\x01solicit" + b"\0" * 4), "client"),
    "advertise": (ipv6(ALL_NODES, mac(1), 17, struct.pack("!HHHH", 547, 546, 20, 0)
                       + b"\x02advertise" + b"\0" * 2), "server"),
    "rs": (ipv6(ALL_NODES, mac(1), 58, b"\x85\x00\x00\x00" + b"\0" * 4 + b"rs"), "client"),
    "ra": (ipv6(ALL_NODES, mac(1), 58, b"\x86\x00\x00\x00" + b"\0" * 12 + b"ra"), "server"),
}


@pytest.mark.parametrize("servers", [None, "[]"])
async def test_dhcp_and_router_advertisements_stay_local_when_asked(clear, autojump_clock,
                                                                    servers):
    extra = {} if servers is None else {"dhcp_servers": servers}
    await clear.mesh(["a", "b"], **extra)
    for f, _ in GUARDED.values():
        clear.taps["a"].inject(f)
    clear.taps["a"].inject(frame(BCAST, mac(1), b"plain-broadcast" + b"\0" * 31))
    await trio.sleep(0.3)
    got = clear.taps["b"].delivered
    crossed = {name for name, (f, _) in GUARDED.items() if f in got}
    assert any(b"plain-broadcast" in f for f in got)
    if servers is None:  # the default: one shared segment, as before
        assert crossed == set(GUARDED)
        return
    # a keeps its clients' requests home; b refuses a's servers and routers
    assert crossed == set()
    assert clear.sites["a"].state.policy.counters["dhcp_kept_local"] == 3
    drops = clear.sites["b"].state.peers.by_name["a"].drops
    assert (drops["dhcp_guard"], drops["ra_guard"]) == (2, 1)


# ---------------------------------------------------------------- ARP/ND suppression


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str, dst: bytes = BCAST) -> bytes:
    ip = [bytes(map(int, x.split("."))) for x in (spa, tpa)]
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, ip[0], tha, ip[1])
    return dst + sha + b"\x08\x06" + body  # 42 bytes, as hosts send it (no padding)


async def test_an_arp_request_for_a_host_behind_a_peer_is_answered_locally(
        clear, autojump_clock):
    await clear.mesh(["a", "b"], arp_suppress="true")
    # b's host (10.0.0.2, mac 2) asks for someone: every site learns its binding
    clear.taps["b"].inject(arp(1, mac(2), "10.0.0.2", bytes(6), "10.0.0.9"))
    await trio.sleep(0.1)
    # a's host asks for 10.0.0.2: a answers itself, nothing crosses
    before = len(clear.taps["b"].delivered)
    clear.taps["a"].inject(arp(1, mac(1), "10.0.0.1", bytes(6), "10.0.0.2"))
    await trio.sleep(0.1)
    assert len(clear.taps["b"].delivered) == before
    [answer] = clear.taps["a"].delivered[-1:]
    assert answer[:12] == mac(1) + mac(2) and answer[20:22] == b"\x00\x02"
    assert answer[22:28] == mac(2) and answer[28:32] == bytes([10, 0, 0, 2])
    # a second MAC claims 10.0.0.2 (not announced): a conflict, so requests flood again
    clear.taps["b"].inject(arp(1, mac(7), "10.0.0.2", bytes(6), "10.0.0.9"))
    await trio.sleep(0.1)
    clear.taps["a"].inject(arp(1, mac(1), "10.0.0.1", bytes(6), "10.0.0.2"))
    await trio.sleep(1.1)
    assert len(clear.taps["b"].delivered) == before + 1
    neigh = clear.sites["a"].status()["neigh"]
    assert (neigh["answered_arp"], neigh["conflicts"]) == (1, 1)
    # a gratuitous ARP moves the address at once: answered again, with the new MAC
    clear.taps["b"].inject(arp(1, mac(7), "10.0.0.2", bytes(6), "10.0.0.2"))
    await trio.sleep(0.1)
    clear.taps["a"].inject(arp(1, mac(1), "10.0.0.1", bytes(6), "10.0.0.2"))
    await trio.sleep(0.1)
    assert clear.taps["a"].delivered[-1][6:12] == mac(7)


async def test_a_unicast_arp_reply_from_a_peer_teaches_a_binding(clear, autojump_clock):
    await clear.mesh(["a", "b", "c"], arp_suppress="true")
    clear.taps["a"].inject(arp(1, mac(1), "10.0.0.1", bytes(6), "10.0.0.2"))
    await trio.sleep(0.1)
    clear.taps["b"].inject(arp(2, mac(2), "10.0.0.2", mac(1), "10.0.0.1", dst=mac(1)))
    await trio.sleep(0.1)
    assert clear.sites["a"].state.policy.bindings.answer(0, bytes([10, 0, 0, 2]),
                                                          trio.current_time())
    before = len(clear.taps["c"].delivered)
    clear.taps["a"].inject(arp(1, mac(5), "10.0.0.5", bytes(6), "10.0.0.2"))
    await trio.sleep(0.1)
    assert len(clear.taps["c"].delivered) == before  # answered at a, not flooded


# ---------------------------------------------------------------- duplicate MACs


async def test_a_mac_at_two_sites_alternately_is_held_and_reported(clear, autojump_clock,
                                                                     caplog):
    await clear.mesh(["a", "b"], mac_flap_moves="5", mac_flap_window="180",
                     mac_flap_hold="60")
    dup = mac(0x42)
    for i in range(8):
        clear.taps["a" if i % 2 == 0 else "b"].inject(frame(BCAST, dup, b"dup" + b"\0" * 43))
        await trio.sleep(0.2)
    await trio.sleep(1.5)
    for name in ("a", "b"):
        status = clear.sites[name].status()
        assert status["fdb"]["dup_mac"] == 1 and status["fdb"]["held_macs"] == 1
        [entry] = [e for e in clear.sites[name].fdb() if e["mac"] == "02:00:00:00:00:42"]
        assert entry["also_at"] in ("local", "a", "b") and entry["held_s"] > 50
        assert "held" in format_fdb(clear.sites[name].fdb())
    assert any("duplicate MAC 02:00:00:00:00:42" in r.message and "held at" in r.message
               for r in caplog.records)


# ---------------------------------------------------------------- reloads


async def test_the_layer2_settings_change_live(clear, autojump_clock):
    await clear.mesh(["a", "b"])
    a = clear.sites["a"].state
    new = clear.config("a", ["b"], storm_broadcast="10", storm_burst="1",
                       dhcp_servers="[]", loop_protect="false", mac_flap_detect="false",
                       arp_suppress="true")
    change = plan(a.config, new, Secrets(None, {}), Secrets(None, {}))
    assert not change.refused and "storm limits" in change.describe()
    applying.apply(a, change, new, Secrets(None, {}))
    assert a.l2.storm.limits.broadcast == 10 and a.policy.dhcp_servers == frozenset()
    assert not a.l2.loop.enabled and a.policy.bindings is not None
    for i in range(100):
        clear.taps["a"].inject(frame(BCAST, mac(1), b"rl" + struct.pack("!I", i) + b"\0" * 40))
    await trio.sleep(0.3)
    assert len(marked(clear.taps["b"], b"rl")) <= 10 + 5
