"""Reaching peers beyond plain UDP over the in-memory fakes, in virtual time: the TCP
transport (auto and tcp), NAT-to-NAT hole punching from a neighbour's hints, relaying,
hints that lie, DNS re-resolution, and bad TCP input."""

from __future__ import annotations

import trio
from fakesites import BCAST, Lab, SiteKeys, addr_of, config_for, frame, got, mac

from l2bridge.core import framing, wire
from l2bridge.core.noise import MSG_DATA
from l2bridge.io.fakes import FakeLink
from l2bridge.site import reach


def peer(lab: Lab, site: str, name: str) -> dict:
    return next(p for p in lab.bridges[site].status()["peers"] if p["name"] == name)


def udp_everything_lost(data: bytes, src: tuple, dst: tuple) -> bool:
    return True


async def wait_for(condition, limit_s: float) -> float:
    """Virtual seconds until ``condition()`` holds (fails after ``limit_s``)."""
    start = trio.current_time()
    with trio.fail_after(limit_s):
        while not condition():
            await trio.sleep(0.05)
    return trio.current_time() - start


def both(lab: Lab, a: str, b: str, path: str) -> bool:
    return all(peer(lab, x, y)["state"] == "up" and peer(lab, x, y)["path"] == path
               for x, y in ((a, b), (b, a)))


async def carries(lab: Lab, src: str, dst: str, marker: bytes) -> int:
    lab.taps[src].inject(frame(BCAST, mac(ord(src[0]) % 250), marker + b"\0" * 30))
    await trio.sleep(0.2)
    return got(lab.taps[dst], marker)


# ---------------------------------------------------------------- the TCP transport


async def test_udp_blocked_both_ways_joins_over_tcp_then_moves_back(lab, sites, autojump_clock):
    a, b, _ = sites
    lab.block = udp_everything_lost
    await lab.start(a, config_for(a, [b]))
    await lab.start(b, config_for(b, [a]))
    took = await wait_for(lambda: both(lab, "a", "b", "tcp"), 10)
    assert took < 10
    assert await carries(lab, "a", "b", b"over-tcp") == 1
    assert await carries(lab, "b", "a", b"back-tcp") == 1
    assert peer(lab, "a", "b")["endpoint"].startswith("tcp ")
    # UDP comes back: both sides probe it and move their data back.
    lab.block = None
    await wait_for(lambda: both(lab, "a", "b", "udp"), 15)
    before = len(lab.captured)
    assert await carries(lab, "a", "b", b"over-udp") == 1
    assert any(b"over-udp" not in d and d[:1] == bytes((MSG_DATA,))
               for d, _, _ in lab.captured[before:])
    assert peer(lab, "a", "b")["path_changes"] >= 2


async def test_transport_tcp_never_sends_data_over_udp(lab, sites, autojump_clock):
    a, b, _ = sites
    extra = {"a": {"transport": '"tcp"'}, "b": {"transport": '"tcp"'}}
    await lab.start(a, config_for(a, [b], extra=extra))
    await lab.start(b, config_for(b, [a], extra=extra))
    await wait_for(lambda: both(lab, "a", "b", "tcp"), 5)
    assert await carries(lab, "a", "b", b"tcp-only") == 1
    assert not lab.captured  # not one UDP datagram, handshakes included
    # Both dialled (both have endpoints): each side keeps the same one link.
    await trio.sleep(3)
    open_links = [link for name in "ab" for link in lab.bridges[name].state.links.links
                  if not link.closed]
    assert len(open_links) == 2
    assert open_links[0].other is open_links[1]


async def test_transport_udp_never_dials(lab, sites, autojump_clock):
    a, b, _ = sites
    lab.block = udp_everything_lost
    extra = {"b": {"transport": '"udp"'}, "a": {"transport": '"udp"'}}
    await lab.start(a, config_for(a, [b], extra=extra))
    await lab.start(b, config_for(b, [a], extra=extra))
    await trio.sleep(20)
    assert peer(lab, "a", "b")["state"] == "down"
    assert not lab.bridges["a"].state.links.counters["tcp_dialed"]


async def test_refused_dials_back_off(lab, sites, autojump_clock):
    a, b, _ = sites
    lab.block = udp_everything_lost
    lab.net.tcp_refused = lambda src, dst: True
    await lab.start(a, config_for(a, [b]))
    await lab.start(b, config_for(b, [a]))
    await trio.sleep(120)
    failures = peer(lab, "a", "b")["drops"]["tcp_dial_failed"]
    assert 4 <= failures <= 10  # 1, 2, 4, 8, 16, 30, 30, ... s apart: not one a second


async def test_a_dropped_link_falls_back_and_redials(lab, sites, autojump_clock):
    a, b, _ = sites
    lab.block = udp_everything_lost
    await lab.start(a, config_for(a, [b]))
    await lab.start(b, config_for(b, [a]))
    await wait_for(lambda: both(lab, "a", "b", "tcp"), 10)
    old = set(lab.bridges["a"].state.links.links)
    for link in old:
        link.close("tcp_econnreset")  # the middlebox resets the connection
    await trio.sleep(0.1)
    assert peer(lab, "a", "b")["path"] == "udp"  # fell back: UDP is the other way there is

    def relinked() -> bool:
        fresh = lab.bridges["a"].state.links.links - old
        return both(lab, "a", "b", "tcp") and any(not link.closed for link in fresh)

    await wait_for(relinked, 30)
    assert await carries(lab, "a", "b", b"after-reset") == 1


# ---------------------------------------------------------------- bad TCP input


async def _raw_link(lab: Lab, to: str) -> FakeLink:
    """A connection to site ``to``'s TCP port from a stranger (10.9.9.9)."""
    from l2bridge.io.fakes import FakeLinks

    stranger = FakeLinks(lab.net, ("10.9.9.9", 40000))
    return await stranger.dial(addr_of(to), 2)


async def test_bad_records_close_the_link_and_deliver_nothing(lab, sites, autojump_clock):
    a, b, _ = sites
    await lab.start(a, config_for(a, [b]))
    links = lab.bridges["a"].state.links
    for payload in (b"\x00\x00", b"\xff\xff" + b"x" * 100):  # length 0; length 65535
        link = await _raw_link(lab, "a")
        link.other._receive(payload)  # type: ignore[union-attr]
        await trio.sleep(0.1)
        assert link.closed, payload[:2]
    # Half a record, then silence: closed at the authentication deadline.
    link = await _raw_link(lab, "a")
    link.send_batch([b"\x04" + b"z" * 50])
    link.other._receive(b"\x00\x40abc")  # type: ignore[union-attr]
    await trio.sleep(6)
    assert link.closed
    assert links.counters["tcp_unauthenticated"] >= 1
    assert lab.taps["a"].delivered == []
    assert all(not x.peer for x in links.links)


async def test_garbage_records_are_counted_not_delivered(lab, sites, autojump_clock):
    a, b, _ = sites
    await lab.start(a, config_for(a, [b]))
    link = await _raw_link(lab, "a")
    link.send_batch([bytes((MSG_DATA,)) + b"\0" * 40, b"\x01" * 148, b"hello"])
    await trio.sleep(0.5)
    auth = lab.bridges["a"].status()["auth_drops"]
    assert sum(auth.values()) >= 3
    assert lab.taps["a"].delivered == []


# ---------------------------------------------------------------- NAT traversal, relays


def cone_nat(lab: Lab, natted: set[tuple]):
    """Datagrams into a NATed address get in only from where it sent one before (an
    address-and-port-restricted cone: a hole is punched by sending first)."""
    sent: set[tuple[tuple, tuple]] = set()

    def block(data: bytes, src: tuple, dst: tuple) -> bool:
        sent.add((src, dst))
        return dst in natted and (dst, src) not in sent

    return block


def three(sites, *, relay: str = "true"):
    a, b, m = sites[0], sites[1], sites[2]
    m.name = "m"
    return a, b, m, {
        "a": config_for(a, [m, b], dial_in=("b",)),
        "b": config_for(b, [m, a], dial_in=("a",)),
        "m": config_for(m, [a, b], dial_in=("a", "b"), extra={"site": {"relay": relay}}),
    }


async def test_two_nated_sites_punch_a_direct_path(lab, sites, autojump_clock):
    a, b, m, configs = three(sites)
    lab.block = cone_nat(lab, {addr_of("a"), addr_of("b")})
    await lab.start(m, configs["m"])
    await lab.start(a, configs["a"])
    await lab.start(b, configs["b"])
    took = await wait_for(lambda: both(lab, "a", "b", "udp"), 20)
    assert took < 20
    relayed = peer(lab, "m", "a")["relayed_in"] + peer(lab, "m", "b")["relayed_in"]
    for i in range(50):
        lab.taps["a"].inject(frame(mac(66), mac(65), b"bulk%02d" % i + b"\0" * 500))
        await trio.sleep(0.01)
    await trio.sleep(0.5)
    assert got(lab.taps["b"], b"bulk") == 50
    # The neighbour carried none of it.
    assert peer(lab, "m", "a")["relayed_in"] + peer(lab, "m", "b")["relayed_in"] == relayed


async def test_symmetric_nats_are_relayed_and_sealed_end_to_end(lab, sites, autojump_clock):
    a, b, m, configs = three(sites)
    direct = {addr_of("a"), addr_of("b")}
    lab.block = lambda data, src, dst: src in direct and dst in direct  # no hole ever opens
    await lab.start(m, configs["m"])
    await lab.start(a, configs["a"])
    await lab.start(b, configs["b"])
    await wait_for(lambda: both(lab, "a", "b", "relay"), 20)
    assert peer(lab, "a", "b")["via"] == "m" and peer(lab, "b", "a")["via"] == "m"
    assert await carries(lab, "b", "a", b"hello-from-b") == 1  # a learns b's MAC there
    assert peer(lab, "m", "b")["relayed_in"] > 0 and peer(lab, "m", "a")["relayed_out"] > 0
    lab.taps["a"].inject(frame(mac(ord("b") % 250), mac(7), b"unicast-via-m" + b"\0" * 30))
    await trio.sleep(0.2)
    assert got(lab.taps["b"], b"unicast-via-m") == 1
    # m passed it on without its switch ever seeing it (it is sealed for b) ...
    assert got(lab.taps["m"], b"unicast-via-m") == 0
    # ... and never in the clear: every datagram on the wire is sealed.
    assert not any(b"via-m" in d or b"hello-from-b" in d for d, _, _ in lab.captured)
    # The direct path keeps being tried (probes every few seconds).
    sent_direct = sum(1 for _, s, d in lab.captured if s in direct and d in direct)
    await trio.sleep(12)
    assert sum(1 for _, s, d in lab.captured if s in direct and d in direct) > sent_direct


async def test_a_relay_switched_off_relays_nothing(lab, sites, autojump_clock):
    a, b, m, configs = three(sites, relay="false")
    direct = {addr_of("a"), addr_of("b")}
    lab.block = lambda data, src, dst: src in direct and dst in direct
    await lab.start(m, configs["m"])
    await lab.start(a, configs["a"])
    await lab.start(b, configs["b"])
    await trio.sleep(20)
    assert peer(lab, "a", "b")["state"] == "down"
    assert peer(lab, "m", "a")["relayed_in"] == 0


async def test_relay_requests_for_unknown_sites_are_refused_silently(lab, sites,
                                                                    autojump_clock):
    a, b, m, configs = three(sites)
    await lab.start(m, configs["m"])
    await lab.start(a, configs["a"])
    await wait_for(lambda: peer(lab, "a", "m")["state"] == "up", 5)
    state = lab.bridges["a"].state
    to_m = state.peers.by_name["m"]
    sent = len(lab.captured)
    stranger_key = SiteKeys("x").public
    reach.send_inner(state, to_m, wire.encode_relay(stranger_key, b"\x04" * 60, to=True),
                     trio.current_time())
    await trio.sleep(0.5)
    assert peer(lab, "m", "a")["drops"].get("relay_unknown") == 1
    answered = [d for d, s, _ in lab.captured[sent:] if s == addr_of("m")]
    assert answered == []  # not even an error goes back


async def test_lying_hints_are_ignored(lab, sites, autojump_clock):
    a, b, m, configs = three(sites)
    await lab.start(m, configs["m"])
    await lab.start(a, configs["a"])
    await wait_for(lambda: peer(lab, "a", "m")["state"] == "up", 5)
    m_state = lab.bridges["m"].state
    to_a = m_state.peers.by_name["a"]
    now = trio.current_time()
    for address, port in (("127.0.0.1", 55555), ("224.0.0.1", 55555), ("0.0.0.0", 1),
                          (addr_of("m")[0], 55555), (addr_of("a")[0], 55555),
                          ("fe80::1", 55555)):
        reach.send_inner(m_state, to_a, wire.encode_hint(b.public, address, port, True), now)
    await trio.sleep(0.5)
    assert peer(lab, "a", "m")["drops"]["hint_ignored"] == 6
    assert lab.bridges["a"].state.peers.by_name["b"].reach.hint is None


# ---------------------------------------------------------------- DNS


async def test_a_renamed_address_is_found_by_resolving_again(lab, sites, autojump_clock):
    a, b, _ = sites
    lab.net.names["b.example"] = addr_of("b")[0]
    to_b = {"b": {"endpoint": '"b.example:55555"'}, "site": {"resolve_interval": "2"}}
    await lab.start(a, config_for(a, [b], extra=to_b))
    await lab.start(b, config_for(b, [a], dial_in=("a",)))  # b never sends to a first
    await wait_for(lambda: both(lab, "a", "b", "udp"), 5)
    # b moves to a new address; only the name says where.
    lab.stop("b")
    moved = ("10.0.1.98", 55555)
    lab.net.names["b.example"] = moved[0]
    await lab.start(b, config_for(b, [a], dial_in=("a",)), addr=moved)
    took = await wait_for(lambda: both(lab, "a", "b", "udp"), 15)
    assert took <= 2 + 3 + 1  # resolve_interval (down: at once) + dead peer + a handshake
    assert peer(lab, "a", "b")["endpoint"] == "10.0.1.98:55555"
    assert await carries(lab, "a", "b", b"moved") == 1


async def test_an_unknown_name_is_retried_not_fatal(lab, sites, autojump_clock):
    a, b, _ = sites
    to_b = {"b": {"endpoint": '"later.example:55555"'}, "site": {"resolve_interval": "1"}}
    await lab.start(a, config_for(a, [b], extra=to_b))
    await lab.start(b, config_for(b, [a], dial_in=("a",)))
    await trio.sleep(3)
    assert peer(lab, "a", "b")["state"] == "down"
    lab.net.names["later.example"] = addr_of("b")[0]
    await wait_for(lambda: both(lab, "a", "b", "udp"), 10)


def test_records_of_the_fake_links_are_the_real_framing() -> None:
    assert framing.encode([b"ab", b"c"]) == b"\x00\x02ab\x00\x01c"


async def test_one_neighbour_relays_to_several_peers_at_once(lab, autojump_clock):
    a, b, c, m = SiteKeys("a"), SiteKeys("b"), SiteKeys("c"), SiteKeys("m")
    natted = {addr_of("a"), addr_of("b"), addr_of("c")}
    lab.block = lambda data, src, dst: src in natted and dst in natted
    others = {"a": (b, c), "b": (a, c), "c": (a, b)}
    await lab.start(m, config_for(m, [a, b, c], dial_in=("a", "b", "c")))
    for site in (a, b, c):
        peers = [m, *others[site.name]]
        await lab.start(site, config_for(site, peers,
                                         dial_in=tuple(p.name for p in others[site.name])))
    await wait_for(lambda: both(lab, "a", "b", "relay") and both(lab, "a", "c", "relay"), 30)
    assert await carries(lab, "a", "b", b"to-all") == 1
    assert got(lab.taps["c"], b"to-all") == 1
    assert peer(lab, "a", "b")["via"] == peer(lab, "a", "c")["via"] == "m"


# ---------------------------------------------------------------- layer-2 safety on every path


async def flood_broadcasts(lab: Lab, src: str, dst: str, count: int) -> int:
    """``count`` broadcasts from a host at ``src``: how many reached ``dst``'s LAN."""
    for i in range(count):
        lab.taps[src].inject(frame(BCAST, mac(9), b"storm%05d" % i + b"\0" * 30))
    await trio.sleep(0.5)
    return got(lab.taps[dst], b"storm")


async def test_storm_control_holds_on_a_tcp_link(lab, sites, autojump_clock):
    a, b, _ = sites
    limits = {"storm_broadcast": "100", "storm_burst": "1"}
    extra = {"site": limits, "a": {"transport": '"tcp"'}, "b": {"transport": '"tcp"'}}
    await lab.start(a, config_for(a, [b], extra=extra))
    await lab.start(b, config_for(b, [a], extra=extra))
    await wait_for(lambda: both(lab, "a", "b", "tcp"), 5)
    crossed = await flood_broadcasts(lab, "a", "b", 2000)
    assert 100 <= crossed <= 160  # the burst, plus what the rate refilled meanwhile
    assert peer(lab, "a", "b")["drops"]["storm_broadcast_out"] == 2000 - crossed
    assert peer(lab, "b", "a")["flooded_by_class"]["in"]["broadcast"] == crossed
    assert not lab.captured  # all of it over the TCP link


async def test_storm_control_holds_on_a_relayed_path(lab, sites, autojump_clock):
    a, b, m, _ = three(sites)
    limits = {"site": {"storm_broadcast": "100", "storm_burst": "1"}}
    configs = {"a": config_for(a, [m, b], dial_in=("b",), extra=limits),
               "b": config_for(b, [m, a], dial_in=("a",), extra=limits),
               "m": config_for(m, [a, b], dial_in=("a", "b"))}
    direct = {addr_of("a"), addr_of("b")}
    lab.block = lambda data, src, dst: src in direct and dst in direct  # relayed by m
    for site in (m, a, b):
        await lab.start(site, configs[site.name])
    await wait_for(lambda: both(lab, "a", "b", "relay"), 20)
    from_a = got(lab.taps["b"], b"storm")
    crossed = await flood_broadcasts(lab, "a", "b", 2000) - from_a
    # b hears a's broadcasts once: straight from a (relayed by m), never m's copy too
    assert 100 <= crossed <= 160
    assert peer(lab, "a", "b")["drops"]["storm_broadcast_out"] == 2000 - crossed
    assert peer(lab, "b", "a")["flooded_by_class"]["in"]["broadcast"] == crossed


async def test_roamed_counts_the_first_direct_endpoint_after_a_relay(lab, sites, autojump_clock):
    """Relayed first (no direct hole yet), then the direct path opens: the peer's UDP
    endpoint is learned then, and ``roamed`` counts that first binding once."""
    a, b, m, configs = three(sites)
    direct = {addr_of("a"), addr_of("b")}
    lab.block = lambda data, src, dst: src in direct and dst in direct
    await lab.start(m, configs["m"])
    await lab.start(a, configs["a"])
    await lab.start(b, configs["b"])
    await wait_for(lambda: both(lab, "a", "b", "relay"), 20)
    assert (peer(lab, "a", "b")["roamed"], peer(lab, "b", "a")["roamed"]) == (0, 0)
    lab.block = None
    await wait_for(lambda: both(lab, "a", "b", "udp"), 30)
    await trio.sleep(5)
    assert peer(lab, "a", "b")["endpoint"] == "{}:{}".format(*addr_of("b"))
    assert (peer(lab, "a", "b")["roamed"], peer(lab, "b", "a")["roamed"]) == (1, 1)


async def test_a_peer_started_over_by_a_reload_has_not_roamed(lab, sites, autojump_clock):
    """A reload that starts a peer over (its transport changed: new paths, a new
    handshake) keeps the endpoint it is bound to: its datagrams from there are no roam."""
    from l2bridge.core import reload as planning
    from l2bridge.core.keys import Secrets
    from l2bridge.site import reload as applying

    a, b, _ = sites
    old = config_for(a, [b], dial_in=("b",))
    await lab.start(a, old)
    await lab.start(b, config_for(b, [a]))
    await wait_for(lambda: both(lab, "a", "b", "udp"), 10)
    assert peer(lab, "a", "b")["roamed"] == 1  # b dialled in: its endpoint learned
    new = config_for(a, [b], dial_in=("b",), extra={"b": {"transport": '"udp"'}})
    secrets = Secrets(a.private, {})
    plan = planning.plan(old, new, secrets, secrets)
    assert [c.what for c in plan.changed] == [["transport"]]
    applying.apply(lab.bridges["a"].state, plan, new, secrets)
    await wait_for(lambda: both(lab, "a", "b", "udp"), 10)
    assert await carries(lab, "b", "a", b"after-reload") == 1
    assert peer(lab, "a", "b")["endpoint"] == "{}:{}".format(*addr_of("b"))
    assert peer(lab, "a", "b")["roamed"] == 1
