"""Loop protection: probe format and authentication, bad probes, and the rule.

The rule is checked against a model: random topologies of sites (a full mesh
or a hub with spokes) whose LANs are also joined by random backup paths; each
site's guard reads the real probes of the sites on its segment, decides, and a
simulated broadcast from every segment must then reach every segment exactly
once (no loop, no duplicate, nobody cut off).
"""

from __future__ import annotations

import itertools
import os
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.core.classify import Kind, classify
from l2bridge.core.loop import (
    LoopGuard,
    ProbeError,
    decode_probe,
    derive_key,
    encode_probes,
    site_mac,
)

NOW = 100.0


class Pair:
    """The keys of the sessions between sites: index and key of each direction."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}  # (sender, receiver) -> receiver's index
        self.key: dict[tuple[str, str], bytes] = {}  # (sender, receiver) -> sender's send key

    def session(self, a: str, b: str) -> None:
        for s, r in ((a, b), (b, a)):
            self.index[(s, r)] = secrets.randbits(32)
            self.key[(s, r)] = os.urandom(32)

    def entries(self, sender: str, peers: list[str]) -> list[tuple[int, bytes]]:
        return [(self.index[(sender, p)], derive_key(self.key[(sender, p)])) for p in peers]

    def lookup(self, receiver: str, ranks: dict[str, bytes]):  # type: ignore[no-untyped-def]
        def by_index(index: int) -> tuple[str, bytes, bytes] | None:
            for (s, r), i in self.index.items():
                if r == receiver and i == index:
                    return s, derive_key(self.key[(s, r)]), ranks[s]
            return None
        return by_index


def no_name(name: str) -> None:
    return None


def probe_of(guard: LoopGuard, keys: Pair, peers: list[str], *, stamp: int = 1,
             active: bool = True) -> bytes:
    return guard.probes(site_mac(guard.name), stamp, active=active,
                        entries=keys.entries(guard.name, peers))[0]


# ---------------------------------------------------------------- the format


def test_a_probe_round_trips_and_is_classified() -> None:
    frames = encode_probes(site_mac("london"), "london", 12345, hub=True, active=False,
                           self_key=b"k" * 32, entries=[(7, b"x" * 32), (9, b"y" * 32)])
    assert len(frames) == 1
    probe = decode_probe(frames[0])
    assert (probe.name, probe.timestamp_ns, probe.hub, probe.active) == ("london", 12345,
                                                                          True, False)
    assert [index for index, _ in probe.entries] == [7, 9]
    assert classify(frames[0]) is Kind.PROBE
    assert frames[0][6] == 0x02  # a unicast, locally administered source


def test_many_peers_take_several_frames() -> None:
    entries = [(i, os.urandom(32)) for i in range(130)]
    frames = encode_probes(site_mac("a"), "a", 1, hub=False, active=True, self_key=b"k" * 32,
                           entries=entries)
    assert [len(decode_probe(f).entries) for f in frames] == [60, 60, 10]
    assert max(map(len, frames)) <= 14 + 16 + 1 + 16 + 60 * 20 + 1


@pytest.mark.parametrize("cut", [0, 13, 14, 20, 40])
def test_malformed_probes_are_refused(cut: int) -> None:
    frame = encode_probes(site_mac("a"), "a", 1, hub=False, active=True, self_key=b"k" * 32,
                          entries=[(1, b"x" * 32)])[0]
    with pytest.raises(ProbeError):
        decode_probe(frame[:cut] if cut else frame[:14] + b"XXXX" + frame[18:])


# ---------------------------------------------------------------- authentication


def test_a_peers_probe_on_our_tap_is_evidence() -> None:
    keys = Pair()
    keys.session("london", "berlin")
    london, berlin = LoopGuard(name="london"), LoopGuard(name="berlin")
    frame = probe_of(berlin, keys, ["london"])
    seen = london.seen_on_tap(frame, NOW, by_index=keys.lookup("london", {"berlin": b"B"}),
                              by_name=no_name)
    assert seen == "berlin"
    assert london.decide(NOW, ["berlin"], active=True) == {"berlin": "segment"}
    assert london.counters["seen"] == 1


def test_forged_probes_change_nothing() -> None:
    """A LAN host (no key), a peer forging another peer's probe, a replay, garbage."""
    keys = Pair()
    keys.session("london", "berlin")
    keys.session("london", "paris")
    keys.session("berlin", "paris")
    london = LoopGuard(name="london")
    lookup = keys.lookup("london", {"berlin": b"B", "paris": b"P"})
    # 1. a LAN host makes up keys and indexes
    host = encode_probes(site_mac("berlin"), "berlin", 5, hub=False, active=True,
                         self_key=os.urandom(32),
                         entries=[(keys.index[("berlin", "london")], os.urandom(32))])[0]
    # 2. paris claims to be berlin with the key it shares with berlin (not with london)
    paris = encode_probes(site_mac("berlin"), "berlin", 5, hub=False, active=True,
                          self_key=os.urandom(32),
                          entries=[(keys.index[("berlin", "london")],
                                    derive_key(keys.key[("paris", "berlin")]))])[0]
    # 3. a real probe with its timestamp changed (the tag covers it)
    real = probe_of(LoopGuard(name="berlin"), keys, ["london"], stamp=9)
    changed = bytearray(real)
    changed[14 + 8 + 7] ^= 1
    for frame in (host, paris, bytes(changed)):
        assert london.seen_on_tap(frame, NOW, by_index=lookup, by_name=no_name) is None
    assert london.counters["unverified"] == 3
    # 4. the real one counts once; played again (or an older one) it is a replay
    assert london.seen_on_tap(real, NOW, by_index=lookup, by_name=no_name) == "berlin"
    older = probe_of(LoopGuard(name="berlin", secret=os.urandom(32)), keys, ["london"], stamp=8)
    assert london.seen_on_tap(real, NOW + 1, by_index=lookup, by_name=no_name) is None
    assert london.seen_on_tap(older, NOW + 1, by_index=lookup, by_name=no_name) is None
    assert london.counters["replayed"] == 2
    # 5. garbage
    assert london.seen_on_tap(b"\x03L2B\x00\x01" + b"\0" * 60, NOW, by_index=lookup,
                              by_name=no_name) is None
    assert london.counters["malformed"] == 1
    assert london.counters["seen"] == 1
    # nothing but the one real probe is evidence (berlin sorts first: london stands by);
    # it expires after the hold
    assert london.decide(NOW + 1, ["berlin", "paris"], active=True) == {
        "berlin": "segment", "paris": "standby"}
    assert london.decide(NOW + london.hold_s, ["berlin", "paris"], active=True) == {}


def test_a_probe_from_a_new_session_is_accepted_after_a_rekey() -> None:
    keys = Pair()
    keys.session("london", "berlin")
    london, berlin = LoopGuard(name="london"), LoopGuard(name="berlin")
    lookup = keys.lookup("london", {"berlin": b""})
    assert london.seen_on_tap(probe_of(berlin, keys, ["london"], stamp=50), NOW,
                              by_index=lookup, by_name=no_name) == "berlin"
    keys.session("london", "berlin")  # new keys, new indexes; berlin's clock went back
    assert london.seen_on_tap(probe_of(berlin, keys, ["london"], stamp=10), NOW,
                              by_index=keys.lookup("london", {"berlin": b""}),
                              by_name=no_name) == "berlin"


def test_our_own_probe_back_from_the_tap_is_a_lan_loop_not_a_block() -> None:
    keys = Pair()
    keys.session("london", "berlin")
    london = LoopGuard(name="london")
    own = probe_of(london, keys, ["berlin"])
    assert london.seen_on_tap(own, NOW, by_index=keys.lookup("london", {}), by_name=no_name) \
        is None
    assert london.self_looped(NOW) and london.counters["own_returned"] == 1
    assert london.decide(NOW, ["berlin"], active=True) == {}


def test_a_peer_that_sends_our_probe_back_is_blocked_and_a_forgery_is_not() -> None:
    keys = Pair()
    keys.session("london", "berlin")
    london = LoopGuard(name="london")
    own = probe_of(london, keys, ["berlin"])
    other = probe_of(LoopGuard(name="london"), keys, ["berlin"])  # same name, not ours
    assert not london.via_peer(other, "berlin", NOW)
    assert london.decide(NOW, ["berlin"], active=True) == {}
    assert london.via_peer(own, "berlin", NOW)
    assert london.decide(NOW, ["berlin", "paris"], active=True) == {"berlin": "echo"}
    assert london.counters["via_peer"] == 2 and london.counters["echoed"] == 1


def test_cleartext_probes_name_the_peer() -> None:
    london, berlin = LoopGuard(name="london"), LoopGuard(name="berlin")
    frame = berlin.probes(site_mac("berlin"), 3, active=True, entries=[])[0]
    peers = {"berlin": "berlin"}
    assert london.seen_on_tap(frame, NOW, by_index=None, by_name=peers.get) == "berlin"
    stranger = LoopGuard(name="rome").probes(site_mac("rome"), 3, active=True, entries=[])[0]
    assert london.seen_on_tap(stranger, NOW, by_index=None, by_name=peers.get) is None
    assert london.counters["unknown"] == 1


def test_flap_probes_are_rate_limited() -> None:
    guard = LoopGuard(name="a")
    assert guard.flap_probe_due(1.0)
    assert not guard.flap_probe_due(1.01)
    assert guard.flap_probe_due(1.06)
    guard.configure(enabled=False, interval_s=1.0)
    assert not guard.flap_probe_due(5.0)


def test_a_disabled_guard_blocks_nothing() -> None:
    keys = Pair()
    keys.session("a", "b")
    a = LoopGuard(name="a", enabled=False)
    a.seen_on_tap(probe_of(LoopGuard(name="b"), keys, ["a"]), NOW,
                  by_index=keys.lookup("a", {"b": b""}), by_name=no_name)
    assert a.decide(NOW, ["b"], active=True) == {}


def test_the_designated_site_sorts_first_and_a_hub_always_wins() -> None:
    keys = Pair()
    names = ["paris", "berlin", "london"]
    for a, b in itertools.combinations(names, 2):
        keys.session(a, b)
    guards = {n: LoopGuard(name=n) for n in names}
    for me in ("paris", "london"):  # paris and london share a LAN, berlin does not
        other = "london" if me == "paris" else "paris"
        frame = probe_of(guards[other], keys, [p for p in names if p != other])
        guards[me].seen_on_tap(frame, NOW, by_index=keys.lookup(me, dict.fromkeys(names, b"")),
                               by_name=no_name)
    assert guards["london"].decide(NOW, ["paris", "berlin"], active=True) == {"paris": "segment"}
    assert guards["paris"].decide(NOW, ["london", "berlin"], active=True) == {
        "london": "segment", "berlin": "standby"}
    assert guards["paris"].designated(NOW, active=True) == "london"
    # a designated site without any tunnel up hands over to the next one
    idle = LoopGuard(name="london")
    frame = probe_of(idle, keys, ["paris", "berlin"], active=False, stamp=2)
    guards["paris"].sightings.clear()
    guards["paris"].seen_on_tap(frame, NOW, by_index=keys.lookup("paris",
                                                                 dict.fromkeys(names, b"")),
                                by_name=no_name)
    assert guards["paris"].decide(NOW, ["london", "berlin"], active=True) == {"london": "segment"}
    # a hub sorts first whatever its name
    zhub = LoopGuard(name="zurich", hub=True)
    keys.session("zurich", "paris")
    guards["paris"].seen_on_tap(probe_of(zhub, keys, ["paris"]), NOW,
                                by_index=keys.lookup("paris", {**dict.fromkeys(names, b""),
                                                               "zurich": b""}),
                                by_name=no_name)
    assert guards["paris"].designated(NOW, active=True) == "zurich"


# ---------------------------------------------------------------- the model


@st.composite
def topologies(draw):  # type: ignore[no-untyped-def]
    """(site names, hub or None, backup paths between LANs)."""
    n = draw(st.integers(2, 6))
    names = draw(st.lists(st.sampled_from(["athens", "berlin", "cairo", "dublin", "essen",
                                           "fes", "genoa", "hull"]),
                          min_size=n, max_size=n, unique=True))
    hub = draw(st.sampled_from([None, *names])) if n >= 3 else None
    pairs = list(itertools.combinations(names, 2))
    if hub is not None:  # probes between spokes cannot be checked: spokes share no keys
        pairs = [(a, b) for a, b in pairs if hub in (a, b)] + [
            (a, b) for a, b in pairs if hub not in (a, b) and draw(st.booleans())]
    backup = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    if hub is not None:
        # a spoke-to-spoke path only where the hub's segment holds both spokes
        hubbed = {x for a, b in backup if hub in (a, b) for x in (a, b)}
        backup = [(a, b) for a, b in backup if hub in (a, b) or {a, b} <= hubbed]
    return names, hub, backup


def segments_of(names: list[str], backup: list[tuple[str, str]]) -> dict[str, frozenset[str]]:
    seg = {n: {n} for n in names}
    changed = True
    while changed:
        changed = False
        for a, b in backup:
            joined = seg[a] | seg[b]
            for n in joined:
                if seg[n] != joined:
                    seg[n] = set(joined)
                    changed = True
    return {n: frozenset(s) for n, s in seg.items()}


def flood(origin_segment: frozenset[str], seg: dict[str, frozenset[str]],
          active: dict[str, set[str]], hub: str | None) -> dict[frozenset[str], int]:
    """Deliveries per segment of one broadcast from a host on ``origin_segment``."""
    got = {origin_segment: 1}
    # (segment, the gateway that put it there or None for the host), bounded
    queue: list[tuple[frozenset[str], str | None]] = [(origin_segment, None)]
    steps = 0
    while queue:
        steps += 1
        assert steps < 1000, "a loop: the broadcast never stops"
        segment, deliverer = queue.pop()
        for reader in sorted(segment - {deliverer}):
            for peer in sorted(active[reader]):
                receivers = [peer]
                if peer == hub:  # the hub also relays to its other spokes
                    receivers += [s for s in sorted(active[hub]) if s != reader]
                for r in receivers:
                    got[seg[r]] = got.get(seg[r], 0) + 1
                    queue.append((seg[r], r))
    return got


@settings(max_examples=400, deadline=None)
@given(topologies())
def test_the_rule_leaves_each_segment_exactly_one_copy_of_every_broadcast(topo) -> None:
    names, hub, backup = topo
    keys = Pair()
    peers = {n: [p for p in names if p != n and (hub is None or hub in (n, p))] for n in names}
    for a in names:
        for b in peers[a]:
            if a < b:
                keys.session(a, b)
    ranks = {n: n.encode() for n in names}
    guards = {n: LoopGuard(name=n, rank_key=ranks[n], hub=n == hub) for n in names}
    seg = segments_of(names, backup)
    frames = {n: probe_of(guards[n], keys, peers[n]) for n in names}
    for me in names:  # each site reads the probes of every other site on its segment
        for other in sorted(seg[me] - {me}):
            guards[me].seen_on_tap(frames[other], NOW, by_index=keys.lookup(me, ranks),
                                   by_name=no_name)
    blocked = {n: set(guards[n].decide(NOW, peers[n], active=True)) for n in names}
    for n in names:  # a blocked peer is told (HELLO flag) and blocks back
        for p in list(blocked[n]):
            blocked[p].add(n)
    active = {n: {p for p in peers[n] if p not in blocked[n]} for n in names}
    for segment in set(seg.values()):
        got = flood(segment, seg, active, hub)
        assert got == dict.fromkeys(set(seg.values()), 1), (segment, active)
