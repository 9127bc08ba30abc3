"""Secure sites over in-memory fakes: handshakes, replay, forgery, rekeys, roaming,
timers and layer-2 protections, in virtual time."""

from __future__ import annotations

import random

import trio
from fakesites import BCAST, Lab, SiteKeys, addr_of, config_for, frame, got, mac, pair

from l2bridge.core import noise
from l2bridge.core.secure import Timers


async def test_sites_handshake_at_start_and_carry_frames(lab, sites, autojump_clock):
    a, b, _ = sites
    await pair(lab, a, b)
    for name in "ab":
        peer = lab.bridges[name].status()["peers"][0]
        assert peer["state"] == "up" and peer["handshakes"] >= 1, peer
    lab.taps["a"].inject(frame(BCAST, mac(1), b"secret" + b"\0" * 40))
    await trio.sleep(0.01)
    assert got(lab.taps["b"], b"secret") == 1
    # Nothing crossed the network in the clear.
    assert not any(b"secret" in data for data, _, _ in lab.captured)


async def test_wrong_key_never_gets_a_frame_in_or_out(lab, sites, autojump_clock):
    a, b, mallory = sites
    mallory.name = "b"  # claims b's name and address, but has its own key
    await lab.start(a, config_for(a, [SiteKeys("b")]))  # a expects the real b's (unknown) key
    await lab.start(mallory, config_for(mallory, [a]))
    await trio.sleep(5)
    lab.taps["a"].inject(frame(BCAST, mac(1), b"private" + b"\0" * 39))
    lab.taps["b"].inject(frame(BCAST, mac(2), b"inject" + b"\0" * 40))
    await trio.sleep(1)
    assert got(lab.taps["b"], b"private") == 0 and got(lab.taps["a"], b"inject") == 0
    status = lab.bridges["a"].status()
    assert status["peers"][0]["state"] == "down"
    assert status["auth_drops"].get("handshake_unknown_peer", 0) + status["auth_drops"].get(
        "handshake_bad_decrypt", 0) >= 1
    # a never answered the impostor's initiations.
    assert not any(src == addr_of("a") and data[0] == noise.MSG_RESPONSE
                   for data, src, _ in lab.captured)


async def test_replayed_datagrams_are_never_accepted(nursery, sites, autojump_clock):
    lab = Lab(nursery, Timers().scaled(0.02))  # rekey every 2.4 s
    a, b, _ = sites
    await pair(lab, a, b)
    for i in range(5):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"orig%d" % i + b"\0" * 41))
        await trio.sleep(0.01)
    before_rekey = [(d, s, t) for d, s, t in lab.captured if t == addr_of("b")]
    await trio.sleep(5)  # at least one rekey happens
    assert lab.bridges["a"].state.peers.by_name["b"].sessions.rekeys + \
        lab.bridges["b"].state.peers.by_name["a"].sessions.rekeys >= 1
    for i in range(5, 10):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"orig%d" % i + b"\0" * 41))
        await trio.sleep(0.01)
    after_rekey = [(d, s, t) for d, s, t in lab.captured if t == addr_of("b")]
    delivered = len(lab.taps["b"].delivered)
    assert got(lab.taps["b"], b"orig") == 10
    tb = lab.net.transports[addr_of("b")]
    for data, src, _ in before_rekey + after_rekey:
        tb.inject(data, src)
    await trio.sleep(0.5)
    assert len(lab.taps["b"].delivered) == delivered
    drops = lab.bridges["b"].status()["auth_drops"]
    assert drops.get("replay_or_expired", 0) + drops.get("handshake_replay", 0) + drops.get(
        "unknown_index", 0) >= len(before_rekey + after_rekey) - 2


async def test_forged_and_random_datagrams_change_nothing(lab, sites, autojump_clock):
    a, b, _ = sites
    await pair(lab, a, b)
    ta = lab.net.transports[addr_of("a")]
    bridge = lab.bridges["a"]
    link = bridge.state.peers.by_name["b"].sessions
    session = link.current or link.next
    index = session.keypair.local_index
    window_before = repr(vars(session.window)) if hasattr(session.window, "__dict__") else None
    endpoint_before = bridge.state.peers.by_name["b"].addr
    rng = random.Random(1)
    attacker = ("192.0.2.66", 4444)
    sent_before = len(lab.captured)
    for _ in range(10_000):
        counter = rng.getrandbits(64)
        header = bytes([4, 0, 0, 0]) + index.to_bytes(4, "little") + counter.to_bytes(8, "little")
        ta.inject(header + rng.randbytes(rng.randrange(16, 200)), attacker)
    for _ in range(20_000):
        ta.inject(rng.randbytes(rng.randrange(0, 300)), attacker)
    await trio.sleep(1)
    assert got(lab.taps["a"], b"") == len(lab.taps["a"].delivered)  # sanity
    assert lab.taps["a"].delivered == []
    replies = [d for d, s, t in lab.captured[sent_before:] if t == attacker]
    assert replies == []
    assert bridge.state.peers.by_name["b"].addr == endpoint_before
    if window_before is not None:
        assert repr(vars(session.window)) == window_before
    lab.taps["b"].inject(frame(BCAST, mac(2), b"still" + b"\0" * 41))
    await trio.sleep(0.01)
    assert got(lab.taps["a"], b"still") == 1


async def test_rekeys_under_steady_traffic_lose_no_frame(nursery, sites, autojump_clock):
    lab = Lab(nursery, Timers().scaled(0.01))  # rekey every 1.2 s
    a, b, _ = sites
    await pair(lab, a, b)
    for i in range(2000):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"seq%05d" % i + b"\0" * 38))
        lab.taps["b"].inject(frame(BCAST, mac(2), b"rev%05d" % i + b"\0" * 38))
        await trio.sleep(0.005)
    await trio.sleep(0.1)
    rekeys = sum(br.state.peers.by_port[1].sessions.rekeys for br in lab.bridges.values())
    assert rekeys >= 5
    assert got(lab.taps["b"], b"seq") == 2000
    assert got(lab.taps["a"], b"rev") == 2000


async def test_roaming_peer_is_followed_after_authentication(lab, sites, autojump_clock):
    a, b, _ = sites
    await pair(lab, a, b)
    bridge_a = lab.bridges["a"]
    # b's datagrams now leave from another address (a NAT rebinding).
    tb = lab.net.transports.pop(addr_of("b"))
    new = ("198.51.100.9", 40000)
    tb.addr = new
    lab.net.transports[new] = tb
    lab.taps["b"].inject(frame(BCAST, mac(2), b"moved" + b"\0" * 41))
    await trio.sleep(0.01)
    assert got(lab.taps["a"], b"moved") == 1
    assert bridge_a.state.peers.by_name["b"].addr == new
    lab.taps["a"].inject(frame(mac(2), mac(1), b"back" + b"\0" * 42))
    await trio.sleep(0.01)
    assert got(lab.taps["b"], b"back") == 1


async def test_dial_in_peer_is_bound_by_its_authenticated_handshake(lab, sites, autojump_clock):
    a, b, _ = sites
    await lab.start(a, config_for(a, [b], dial_in=("b",)))
    await lab.start(b, config_for(b, [a]))
    await trio.sleep(0.5)
    assert lab.bridges["a"].state.peers.by_name["b"].addr == addr_of("b")
    lab.taps["a"].inject(frame(BCAST, mac(1), b"hi" + b"\0" * 44))
    await trio.sleep(0.01)
    assert got(lab.taps["b"], b"hi") == 1


async def test_handshake_retries_back_off_and_never_stop(lab, sites, autojump_clock):
    a, b, _ = sites
    await lab.start(a, config_for(a, [b]))  # b never comes
    await trio.sleep(300)
    inits = [t for d, s, t in lab.captured if d[0] == noise.MSG_INITIATION]
    # 90 s of 5 s retries (~18), then every 30 s (~7 more in the remaining 210 s).
    assert 20 <= len(inits) <= 30, len(inits)
    await lab.start(b, config_for(b, [a]))
    await trio.sleep(31)
    assert lab.bridges["a"].state.peers.by_name["b"].state == "up"


async def test_restarted_peer_with_the_same_key_is_back_within_3_s(lab, sites, autojump_clock):
    a, b, _ = sites
    await pair(lab, a, b)
    lab.stop("b")
    await trio.sleep(10)
    await lab.start(b, config_for(b, [a]))
    start = trio.current_time()
    while not got(lab.taps["b"], b"again"):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"again" + b"\0" * 41))
        await trio.sleep(0.1)
    assert trio.current_time() - start <= 3.0


async def test_keys_are_dropped_after_540_s_without_handshake(lab, sites, autojump_clock):
    a, b, _ = sites
    await pair(lab, a, b)
    lab.stop("b")
    await trio.sleep(541)
    link = lab.bridges["a"].state.peers.by_name["b"].sessions
    assert link.current is None and link.previous is None and link.next is None
    assert lab.bridges["a"].state.sessions.by_index == {}


async def test_layer2_protections_on_authenticated_peers(lab, sites, autojump_clock):
    a, b, _ = sites
    extra = {
        "site": {"pinned_macs": '["02:00:00:00:00:01"]'},
        "b": {"allowed_macs": '["02:00:00:00:00:02", "02:00:00:00:00:03", "02:00:00:00:00:01"]',
              "max_macs": 1},
        "a": {},
    }
    await lab.start(a, config_for(a, [b], extra=extra))
    await lab.start(b, config_for(b, [a]))
    await trio.sleep(0.5)
    for src in (1, 2, 3, 9):  # pinned, allowed, allowed but over the cap, not allowed
        lab.taps["b"].inject(frame(BCAST, mac(src), b"p%d" % src + b"\0" * 44))
    await trio.sleep(0.05)
    # over the cap, 3 is learned in place of 2 (the cap holds: one entry)
    assert [got(lab.taps["a"], b"p%d" % n) for n in (1, 2, 3, 9)] == [0, 1, 1, 0]
    status = lab.bridges["a"].status()
    drops = status["peers"][0]["drops"]
    assert (drops["pinned_mac"], drops["mac_not_allowed"]) == (1, 1)
    assert status["peers"][0]["mac_entries"] == 1 and status["fdb"]["evicted"] == 1


async def test_handshake_floods_are_rate_limited_per_source(lab, sites, autojump_clock):
    a, b, _ = sites
    await lab.start(a, config_for(a, [b], dial_in=("b",)))
    b_keys = noise.PeerKeys(noise.Identity(b.private), a.public)
    ta = lab.net.transports[addr_of("a")]
    source = ("198.51.100.7", 5000)
    for i in range(200):
        message, _ = noise.create_initiation(
            noise.Identity(b.private), b_keys, i, noise.tai64n(1.8e9 + i)
        )
        ta.inject(message, source)
    await trio.sleep(0.01)
    replies = [d for d, s, t in lab.captured if t == source and d[0] == noise.MSG_RESPONSE]
    drops = lab.bridges["a"].status()["auth_drops"]
    assert 1 <= len(replies) <= 5, len(replies)
    assert drops["rate_limited"] + drops.get("handshake_flood", 0) == 200 - len(replies)
