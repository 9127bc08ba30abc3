"""The learning switch: validation, learning, ageing, caps, hub relay.

The last part drives the switch and a naive model (a plain dict, scanned in
full for every count) through random operation sequences and requires the
same decisions, entries and counters at every step.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from l2bridge.core.ether import (
    BROADCAST_MAC,
    PAUSE_MAC,
    TPID_8021AD,
    TPID_8021Q,
    TPID_QINQ_OLD,
    ZERO_MAC,
    vlan_id,
)
from l2bridge.core.switch import FLOOD, TAP, Drop, FdbEntry, HeldMac, MacEvent, Switch

A = bytes.fromhex("020000000001")  # hosts behind the tap
B = bytes.fromhex("020000000002")
X = bytes.fromhex("0a0000000001")  # hosts behind peers
Y = bytes.fromhex("0a0000000002")
Z = bytes.fromhex("0a0000000003")
MCAST = bytes.fromhex("01005e000001")
P1, P2, P3 = 1, 2, 3


def frame(
    dst: bytes,
    src: bytes,
    *,
    vid: int | None = None,
    tpid: int = TPID_8021Q,
    size: int = 60,
) -> bytes:
    """An Ethernet frame of ``size`` bytes, tagged with ``vid`` unless None."""
    head = dst + src
    if vid is not None:
        head += tpid.to_bytes(2, "big") + vid.to_bytes(2, "big")
    head += b"\x08\x00"
    return (head + bytes(max(0, size - len(head))))[:size]


def counters(sw: Switch) -> tuple[int, int, int, int]:
    c = sw.counters
    return c["learned"], c["moved"], c["expired"], c["flushed"]


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_runt_boundary(direction: str) -> None:
    sw = Switch()
    decide = sw.egress if direction == "egress" else lambda f, now: sw.ingress(f, P1, now)
    assert decide(frame(B, A)[:13], 0.0) is Drop.RUNT
    assert decide(b"", 0.0) is Drop.RUNT
    assert sw.entries(0.0) == []
    assert decide(frame(B, A)[:14], 0.0) is not Drop.RUNT
    assert sw.lookup(0, A, 0.0) == (TAP if direction == "egress" else P1)


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_oversize_boundary(direction: str) -> None:
    sw = Switch(max_frame=1522)
    decide = sw.egress if direction == "egress" else lambda f, now: sw.ingress(f, P1, now)
    assert decide(frame(B, A, size=1523), 0.0) is Drop.OVERSIZE
    assert sw.entries(0.0) == []
    assert decide(frame(B, A, size=1522), 0.0) is not Drop.OVERSIZE
    assert len(sw.entries(0.0)) == 1


@pytest.mark.parametrize("direction", ["egress", "ingress"])
@pytest.mark.parametrize("src", [BROADCAST_MAC, MCAST, PAUSE_MAC, ZERO_MAC])
def test_bad_source_dropped_and_not_learned(direction: str, src: bytes) -> None:
    sw = Switch(hub=True)
    decide = sw.egress if direction == "egress" else lambda f, now: sw.ingress(f, P1, now)
    assert decide(frame(B, src), 0.0) is Drop.BAD_SOURCE
    assert decide(frame(B, src, vid=10), 0.0) is Drop.BAD_SOURCE
    assert sw.entries(0.0) == []
    assert counters(sw) == (0, 0, 0, 0)


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_pause_never_forwarded_nor_learned(direction: str) -> None:
    sw = Switch(hub=True)
    decide = sw.egress if direction == "egress" else lambda f, now: sw.ingress(f, P1, now)
    assert decide(frame(PAUSE_MAC, A), 0.0) is Drop.PAUSE
    assert decide(frame(PAUSE_MAC, A, vid=5), 0.0) is Drop.PAUSE
    assert sw.entries(0.0) == []


def test_validation_order() -> None:
    sw = Switch(max_frame=100)
    # runt before anything: 13 bytes of a PAUSE frame with a zero source
    assert sw.egress(frame(PAUSE_MAC, ZERO_MAC)[:13], 0.0) is Drop.RUNT
    # oversize before bad source and PAUSE
    assert sw.egress(frame(PAUSE_MAC, ZERO_MAC, size=101), 0.0) is Drop.OVERSIZE
    # bad source before PAUSE
    assert sw.egress(frame(PAUSE_MAC, MCAST), 0.0) is Drop.BAD_SOURCE
    assert sw.ingress(frame(PAUSE_MAC, ZERO_MAC), P1, 0.0) is Drop.BAD_SOURCE
    # PAUSE before learning: nothing learned, even with a fresh valid source
    assert sw.egress(frame(PAUSE_MAC, A), 0.0) is Drop.PAUSE
    assert sw.entries(0.0) == []


def test_drop_values_are_counter_names() -> None:
    assert {d.value for d in Drop} == {
        "runt",
        "oversize",
        "bad_source",
        "pause",
        "pinned_mac",
        "mac_not_allowed",
        "local_dest",
        "hairpin",
        "loop_blocked",
    }


# --- egress -------------------------------------------------------------------


def test_egress_flood_learn_unicast() -> None:
    sw = Switch()
    assert sw.egress(frame(X, A), 0.0) == FLOOD  # unknown unicast
    assert sw.lookup(0, A, 0.0) == TAP
    assert sw.egress(frame(BROADCAST_MAC, A), 0.0) == FLOOD
    assert sw.ingress(frame(A, X), P2, 1.0) == TAP
    assert sw.egress(frame(X, A), 2.0) == P2  # known unicast: exactly one peer
    assert sw.egress(frame(MCAST, A), 2.0) == FLOOD  # group dst floods even if known
    assert counters(sw) == (2, 0, 0, 0)


def test_egress_to_local_destination_dropped() -> None:
    sw = Switch()
    sw.egress(frame(BROADCAST_MAC, B), 0.0)
    assert sw.egress(frame(B, A), 1.0) is Drop.LOCAL_DEST
    # the source was still learned (valid frame, learned before the decision)
    assert sw.lookup(0, A, 1.0) == TAP


# --- ingress ------------------------------------------------------------------


def test_mesh_ingress_goes_to_the_tap_group_frames_as_floods() -> None:
    sw = Switch()
    sw.ingress(frame(BROADCAST_MAC, Y), P2, 0.0)
    sw.egress(frame(BROADCAST_MAC, A), 0.0)
    for dst in (A, Y, Z, X):
        assert sw.ingress(frame(dst, X), P1, 1.0) == TAP
    for dst in (BROADCAST_MAC, MCAST):  # the tap, through the policy of flooded frames
        assert sw.ingress(frame(dst, X), P1, 1.0) == FLOOD
    assert sw.lookup(0, X, 1.0) == P1
    assert sw.lookup(0, Y, 1.0) == P2


def test_hub_relays_between_spokes() -> None:
    sw = Switch(hub=True)
    assert sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0) == FLOOD
    assert sw.ingress(frame(MCAST, Y), P2, 0.0) == FLOOD
    assert sw.ingress(frame(Z, X), P1, 0.0) == FLOOD  # unknown unicast
    assert sw.ingress(frame(Y, X), P1, 1.0) == P2  # known at another spoke
    assert sw.ingress(frame(X, Y), P2, 1.0) == P1
    sw.egress(frame(BROADCAST_MAC, A), 1.0)
    assert sw.ingress(frame(A, X), P1, 1.0) == TAP  # known at the hub's own LAN
    assert sw.egress(frame(X, A), 1.0) == P1


def test_hub_hairpin_dropped() -> None:
    sw = Switch(hub=True)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    assert sw.ingress(frame(X, Y), P1, 1.0) is Drop.HAIRPIN
    assert sw.lookup(0, Y, 1.0) == P1  # learned before the decision


# --- VLANs --------------------------------------------------------------------


def test_same_mac_in_two_vlans_is_two_entries() -> None:
    sw = Switch()
    sw.ingress(frame(BROADCAST_MAC, X, vid=10), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, X, vid=20), P2, 0.0)
    sw.ingress(frame(BROADCAST_MAC, X), P3, 0.0)
    assert sw.entries(0.0) == [
        FdbEntry(0, X, P3, 0.0),
        FdbEntry(10, X, P1, 0.0),
        FdbEntry(20, X, P2, 0.0),
    ]
    assert sw.egress(frame(X, A, vid=10), 1.0) == P1
    assert sw.egress(frame(X, A, vid=20), 1.0) == P2
    assert sw.egress(frame(X, A), 1.0) == P3
    assert sw.egress(frame(X, A, vid=30), 1.0) == FLOOD
    assert counters(sw) == (7, 0, 0, 0)  # X in 3 VLANs, A in 4; no moves


@pytest.mark.parametrize("tpid", [TPID_8021Q, TPID_8021AD, TPID_QINQ_OLD])
def test_outer_tag_is_the_key(tpid: int) -> None:
    sw = Switch()
    # QinQ: outer tag 100, inner 802.1Q tag 7; PCP bits set on the outer tag
    inner = TPID_8021Q.to_bytes(2, "big") + (7).to_bytes(2, "big")
    f = frame(BROADCAST_MAC, X, vid=0xE000 | 100, tpid=tpid)
    f = f[:18] + inner + f[18:-4]
    copy = bytes(f)
    sw.ingress(f, P1, 0.0)
    assert f == copy
    assert sw.lookup(100, X, 0.0) == P1
    assert sw.lookup(7, X, 0.0) is None
    assert sw.lookup(0, X, 0.0) is None


def test_priority_tag_and_truncated_tag_are_vlan_zero() -> None:
    sw = Switch()
    sw.ingress(frame(BROADCAST_MAC, X, vid=0x2000), P1, 0.0)  # PCP 1, VID 0
    sw.ingress(frame(BROADCAST_MAC, Y, vid=5)[:17], P2, 0.0)  # tag cut short
    assert sw.entries(0.0) == [FdbEntry(0, X, P1, 0.0), FdbEntry(0, Y, P2, 0.0)]
    assert sw.egress(frame(X, A), 0.0) == P1


# --- ageing -------------------------------------------------------------------


def test_expired_exactly_at_ageing_s() -> None:
    sw = Switch(ageing_s=10.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 100.0)
    assert sw.lookup(0, X, 109.75) == P1
    assert sw.egress(frame(X, A), 109.75) == P1
    # exactly ageing_s later: a miss, although expire() has not run
    assert sw.lookup(0, X, 110.0) is None
    assert sw.egress(frame(X, A), 110.0) == FLOOD
    assert [e.mac for e in sw.entries(110.0)] == [A]
    assert sw.port_count(P1) == 1  # still stored until removed
    assert sw.expire(110.0) == 120.0  # A, refreshed at 110.0
    assert sw.port_count(P1) == 0
    assert counters(sw) == (2, 0, 1, 0)


def test_refresh_extends_life() -> None:
    sw = Switch(ageing_s=10.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 9.0)
    assert sw.lookup(0, X, 18.0) == P1
    assert sw.entries(18.0) == [FdbEntry(0, X, P1, 9.0)]
    assert sw.expire(18.0) == 19.0
    assert sw.expire(19.0) is None
    assert sw.entries(19.0) == []


def test_expire_returns_earliest_future_expiry() -> None:
    sw = Switch(ageing_s=300.0)
    assert sw.expire(0.0) is None
    sw.egress(frame(BROADCAST_MAC, A), 5.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 2.0 + 1.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P2, 50.0)
    assert sw.expire(10.0) == 303.0
    assert sw.expire(303.0) == 305.0
    assert sw.expire(305.0) == 350.0
    assert sw.expire(1000.0) is None
    assert sw.counters["expired"] == 3


def test_expired_source_is_relearned_as_new() -> None:
    sw = Switch(ageing_s=10.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, X), P2, 10.0)  # stale at P1: not a move
    assert sw.lookup(0, X, 10.0) == P2
    assert (sw.port_count(P1), sw.port_count(P2)) == (0, 1)
    assert counters(sw) == (2, 0, 1, 0)


def test_ageing_zero_never_learns_and_always_floods() -> None:
    sw = Switch(ageing_s=0)
    assert sw.egress(frame(BROADCAST_MAC, A), 0.0) == FLOOD
    assert sw.ingress(frame(A, X), P1, 0.0) == TAP
    assert sw.egress(frame(X, A), 0.0) == FLOOD
    assert sw.egress(frame(X, A), 1.0) == FLOOD
    assert sw.entries(0.0) == []
    assert sw.expire(0.0) is None
    assert counters(sw) == (0, 0, 0, 0)
    hub = Switch(hub=True, ageing_s=0)
    hub.ingress(frame(BROADCAST_MAC, Y), P2, 0.0)
    assert hub.ingress(frame(Y, X), P1, 0.0) == FLOOD
    # validation still applies
    assert sw.egress(frame(B, ZERO_MAC), 0.0) is Drop.BAD_SOURCE


# --- moves --------------------------------------------------------------------


def test_move_between_ports() -> None:
    sw = Switch()
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, X), P2, 1.0)
    assert sw.lookup(0, X, 1.0) == P2
    assert sw.entries(1.0) == [FdbEntry(0, X, P2, 0.0)]
    assert (sw.port_count(P1), sw.port_count(P2)) == (0, 1)
    sw.egress(frame(BROADCAST_MAC, X), 2.0)  # the host now sits on the local LAN
    assert sw.lookup(0, X, 2.0) == TAP
    assert sw.ingress(frame(BROADCAST_MAC, X), P2, 3.0) == FLOOD
    assert counters(sw) == (1, 3, 0, 0)


# --- caps ---------------------------------------------------------------------


def test_global_cap_evicts_from_the_biggest_port() -> None:
    sw = Switch(max_entries=3, max_entries_per_peer=5)
    sw.egress(frame(BROADCAST_MAC, A), 0.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 1.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P1, 2.0)
    # full: a new source at P2 is learned; P1 holds the most, its oldest (X) goes
    assert sw.ingress(frame(A, Z), P2, 3.0) == TAP
    assert sw.lookup(0, Z, 3.0) == P2
    assert sw.lookup(0, X, 3.0) is None
    assert sw.lookup(0, A, 3.0) == TAP  # the quiet port keeps its entry
    assert sw.counters["evicted"] == 1
    # known sources refresh and move while full, evicting nothing
    assert sw.ingress(frame(A, Y), P3, 4.0) == TAP
    assert sw.egress(frame(BROADCAST_MAC, Y), 5.0) == FLOOD  # move to the tap
    assert len(sw) == 3
    assert counters(sw) == (4, 2, 0, 0)
    assert sw.counters["evicted"] == 1


def test_eviction_ties_go_to_the_lowest_port_then_the_oldest_entry() -> None:
    sw = Switch(max_entries=4, max_entries_per_peer=5)
    sw.ingress(frame(BROADCAST_MAC, X), P2, 0.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P2, 1.0)
    sw.ingress(frame(BROADCAST_MAC, Z), P1, 2.0)
    sw.ingress(frame(BROADCAST_MAC, A), P1, 3.0)
    sw.ingress(frame(BROADCAST_MAC, Z), P1, 4.0)  # refreshed: A is P1's oldest now
    sw.egress(frame(BROADCAST_MAC, B), 5.0)
    assert sw.lookup(0, A, 5.0) is None  # P1 and P2 tie at 2: P1 loses its LRU (A)
    assert {e.mac for e in sw.entries(5.0)} == {X, Y, Z, B}


def test_per_peer_cap_evicts_that_peers_least_recently_seen() -> None:
    sw = Switch(max_entries=10, max_entries_per_peer=2)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P1, 1.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 2.0)  # X seen again: Y is the older
    assert sw.ingress(frame(BROADCAST_MAC, Z), P1, 3.0) == FLOOD
    assert sw.lookup(0, Y, 3.0) is None
    assert sw.lookup(0, X, 3.0) == P1 and sw.lookup(0, Z, 3.0) == P1
    assert sw.ingress(frame(BROADCAST_MAC, Z), P2, 4.0) == FLOOD  # a move: P2 has room
    assert sw.port_count(P1) == 1 and sw.port_count(P2) == 1
    assert sw.counters["evicted"] == 1


def test_tap_limited_only_by_global_cap() -> None:
    sw = Switch(max_entries=4, max_entries_per_peer=1)
    for i in range(4):
        assert sw.egress(frame(BROADCAST_MAC, bytes([2, 0, 0, 0, 1, i])), float(i)) == FLOOD
    assert sw.port_count(TAP) == 4
    assert sw.egress(frame(BROADCAST_MAC, B), 5.0) == FLOOD
    assert sw.lookup(0, B, 5.0) == TAP
    assert sw.lookup(0, bytes([2, 0, 0, 0, 1, 0]), 5.0) is None  # the oldest went
    assert sw.port_count(TAP) == 4


def test_move_into_full_peer_evicts_there() -> None:
    sw = Switch(max_entries=10, max_entries_per_peer=1)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P2, 0.0)
    assert sw.ingress(frame(BROADCAST_MAC, X), P2, 1.0) == FLOOD
    assert sw.lookup(0, X, 1.0) == P2
    assert sw.lookup(0, Y, 1.0) is None
    assert (sw.port_count(P1), sw.port_count(P2)) == (0, 1)
    assert counters(sw) == (2, 1, 0, 0)
    assert sw.counters["evicted"] == 1


def test_a_flood_of_new_sources_never_locks_out_a_new_host() -> None:
    """10^5 random sources from the LAN: every new host is learned at once, and a
    quiet peer's entries are never pushed out by the flood."""
    sw = Switch(max_entries=512, max_entries_per_peer=64)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    rng = random.Random(7)
    now = 0.0
    for i in range(100_000):
        now += 0.0001
        src = bytes([2]) + rng.randbytes(5)
        assert sw.egress(frame(X, src), now) == P1  # unicast to the quiet peer's host
        if i % 10_000 == 0:
            assert sw.egress(frame(BROADCAST_MAC, B), now) == FLOOD
            assert sw.lookup(0, B, now) == TAP
    assert sw.lookup(0, X, now) == P1
    assert len(sw) == 512
    assert sw.counters["evicted"] >= 100_000 - 512
    for port in sw._lru:  # the lazy heaps stay bounded
        assert len(sw._lru[port]) <= 2 * sw.port_count(port) + 64 + 1


def test_stale_entries_go_before_live_ones_are_evicted() -> None:
    sw = Switch(ageing_s=10.0, max_entries=2, max_entries_per_peer=2)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P1, 0.0)
    # no expire() call: the cap purges the stale entries itself, evicting nothing
    assert sw.ingress(frame(BROADCAST_MAC, Z), P1, 10.0) == FLOOD
    assert sw.entries(10.0) == [FdbEntry(0, Z, P1, 0.0)]
    assert (len(sw), sw.port_count(P1)) == (1, 1)
    assert counters(sw) == (3, 0, 2, 0)
    assert sw.counters["evicted"] == 0


def test_stale_entries_never_block_per_peer_learning() -> None:
    sw = Switch(ageing_s=10.0, max_entries=10, max_entries_per_peer=1)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, Y), P2, 4.0)
    assert sw.ingress(frame(BROADCAST_MAC, Z), P1, 10.0) == FLOOD
    assert sw.entries(10.0) == [FdbEntry(0, Y, P2, 6.0), FdbEntry(0, Z, P1, 0.0)]
    # a move into a peer whose only entry is stale succeeds the same way
    assert sw.ingress(frame(BROADCAST_MAC, Z), P2, 14.0) == FLOOD
    assert sw.lookup(0, Z, 14.0) == P2
    assert counters(sw) == (3, 1, 2, 0)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="ageing_s"):
        Switch(ageing_s=-1)
    with pytest.raises(ValueError, match="max_entries must"):
        Switch(max_entries=0)
    with pytest.raises(ValueError, match="max_entries_per_peer"):
        Switch(max_entries_per_peer=0)
    with pytest.raises(ValueError, match="max_frame"):
        Switch(max_frame=13)


# --- flush, entries -------------------------------------------------------------


def test_flush_port() -> None:
    sw = Switch(ageing_s=10.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.ingress(frame(BROADCAST_MAC, Y, vid=4), P1, 5.0)
    sw.ingress(frame(BROADCAST_MAC, Z), P2, 5.0)
    sw.egress(frame(BROADCAST_MAC, A), 5.0)
    # at 11.0 X is stale but still stored: flush counts what it removes
    assert sw.flush_port(P1) == 2
    assert sw.egress(frame(Y, A, vid=4), 11.0) == FLOOD
    assert sw.entries(11.0) == [
        FdbEntry(0, A, TAP, 6.0),
        FdbEntry(0, Z, P2, 6.0),
        FdbEntry(4, A, TAP, 0.0),
    ]
    assert sw.port_count(P1) == 0
    assert sw.flush_port(P1) == 0
    assert sw.flush_port(P3) == 0
    assert counters(sw) == (5, 0, 0, 2)
    # the flushed port learns again from scratch
    assert sw.ingress(frame(BROADCAST_MAC, X), P1, 12.0) == FLOOD
    assert sw.lookup(0, X, 12.0) == P1


def test_entries_are_frozen_and_sorted() -> None:
    sw = Switch()
    sw.ingress(frame(BROADCAST_MAC, Y, vid=2), P1, 1.0)
    sw.ingress(frame(BROADCAST_MAC, X, vid=2), P1, 2.0)
    sw.ingress(frame(BROADCAST_MAC, Z), P2, 3.0)
    got = sw.entries(4.0)
    assert got == [FdbEntry(0, Z, P2, 1.0), FdbEntry(2, X, P1, 2.0), FdbEntry(2, Y, P1, 3.0)]
    assert isinstance(got[0].mac, bytes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got[0].port = 9  # type: ignore[misc]


# --- the naive model ----------------------------------------------------------


class NaiveSwitch:
    """DESIGN §2 written for clarity: one dict of stored rows, full scans.

    Layer-2 policy: a blocked peer port teaches nothing and is refused; a peer
    may never claim a ``pinned`` source, nor one outside its port's ``allowed``
    list (a port missing from ``allowed`` may use any).  Duplicate MACs: a live
    entry that moved ``flap[0]`` times within ``flap[1]`` seconds stays where it
    is for ``flap[2]`` seconds.
    """

    def __init__(self, hub: bool, ageing_s: float, max_entries: int, per_peer: int, max_frame: int,
                 pinned: frozenset[bytes] = frozenset(),
                 allowed: dict[int, frozenset[bytes]] | None = None,
                 flap: tuple[int, float, float] | None = None):
        self.flap = flap
        self.blocked: set[int] = set()
        self.histories: dict[tuple[int, bytes], list[float]] = {}  # in insertion order
        self.holds: dict[tuple[int, bytes], tuple[float, int, int]] = {}
        self.events: list[MacEvent] = []
        self.tap_moves: dict[int, int] = {}
        self.flapped = 0
        self.pinned = pinned
        self.allowed = allowed or {}
        self.hub = hub
        self.ageing_s = ageing_s
        self.max_entries = max_entries
        self.per_peer = per_peer
        self.max_frame = max_frame
        self.rows: dict[tuple[int, bytes], list] = {}  # (vlan, mac) -> [port, last_seen]
        self.counters = {"learned": 0, "moved": 0, "expired": 0, "flushed": 0, "evicted": 0,
                         "dup_mac": 0, "held": 0}

    def live(self, vlan: int, mac: bytes, now: float) -> int | None:
        row = self.rows.get((vlan, mac))
        if row is not None and now - row[1] < self.ageing_s:
            return row[0]
        return None

    def count(self, port: int) -> int:
        return sum(1 for row in self.rows.values() if row[0] == port)

    def purge(self, now: float) -> None:
        for key in list(self.rows):
            if now - self.rows[key][1] >= self.ageing_s:
                del self.rows[key]
                self.counters["expired"] += 1

    def evict_lru(self, port: int) -> None:
        """Remove the port's entry with the smallest (last_seen, vlan, mac)."""
        mine = [(row[1], vlan, mac) for (vlan, mac), row in self.rows.items() if row[0] == port]
        _, vlan, mac = min(mine)
        del self.rows[(vlan, mac)]
        self.counters["evicted"] += 1

    def make_room(self, port: int, now: float) -> None:
        if port == TAP or self.count(port) < self.per_peer:
            return
        self.purge(now)
        if self.count(port) >= self.per_peer:
            self.evict_lru(port)

    def biggest(self) -> int:
        counts = {}
        for row in self.rows.values():
            counts[row[0]] = counts.get(row[0], 0) + 1
        return min(counts, key=lambda p: (-counts[p], p))

    def stays(self, key: tuple[int, bytes], old: int, port: int, now: float) -> bool:
        """A move of a live entry from ``old`` to ``port``: refused while held or when
        it would be one move too many."""
        if TAP in (old, port):
            peer = max(old, port)
            self.tap_moves[peer] = self.tap_moves.get(peer, 0) + 1
            self.flapped += 1
        if self.flap is None:
            return False
        moves, window, hold = self.flap
        if key in self.holds:
            if now < self.holds[key][0]:
                self.counters["held"] += 1
                return True
            del self.holds[key]
            self.histories.pop(key, None)
        if key not in self.histories and len(self.histories) >= self.max_entries:
            for k in [k for k, h in self.histories.items() if not h or h[-1] <= now - window]:
                del self.histories[k]
            if len(self.histories) >= self.max_entries:
                del self.histories[next(iter(self.histories))]
        recent = [t for t in self.histories.get(key, []) if t > now - window]
        if len(recent) < moves:
            self.histories[key] = [*recent, now]
            return False
        if len(self.holds) >= self.max_entries:
            del self.holds[next(iter(self.holds))]
        self.holds[key] = (now + hold, old, port)
        del self.histories[key]
        self.counters["dup_mac"] += 1
        self.counters["held"] += 1
        self.events.append(MacEvent(key[0], key[1], old, port, moves + 1, now + hold))
        return True

    def held(self, now: float) -> list[HeldMac]:
        return sorted((HeldMac(v, m, p, o, until - now)
                       for (v, m), (until, p, o) in self.holds.items() if now < until),
                      key=lambda h: (h.vlan, h.mac))

    def set_blocked(self, port: int, blocked: bool) -> int:
        if not blocked:
            self.blocked.discard(port)
            return 0
        self.blocked.add(port)
        return self.flush_port(port)

    def learn(self, vlan: int, mac: bytes, port: int, now: float) -> Drop | None:
        if port in self.blocked:
            return Drop.LOOP_BLOCKED
        if port != TAP and mac in self.pinned:
            return Drop.PINNED_MAC
        if port in self.allowed and mac not in self.allowed[port]:
            return Drop.MAC_NOT_ALLOWED
        if self.ageing_s == 0:
            return None
        key = (vlan, mac)
        old = self.live(vlan, mac, now)
        if old == port:
            self.rows[key][1] = now
            return None
        if old is not None:
            if self.stays(key, old, port, now):
                return None
            self.make_room(port, now)
            self.rows[key] = [port, now]
            self.counters["moved"] += 1
            return None
        if key in self.rows:
            del self.rows[key]
            self.counters["expired"] += 1
        self.make_room(port, now)
        if len(self.rows) >= self.max_entries:
            self.purge(now)
            if len(self.rows) >= self.max_entries:
                self.evict_lru(self.biggest())
        self.rows[key] = [port, now]
        self.counters["learned"] += 1
        return None

    def validate(self, f: bytes) -> Drop | None:
        if len(f) < 14:
            return Drop.RUNT
        if len(f) > self.max_frame:
            return Drop.OVERSIZE
        if f[6] & 1 or f[6:12] == bytes(6):
            return Drop.BAD_SOURCE
        if f[:6] == PAUSE_MAC:
            return Drop.PAUSE
        return None

    def egress(self, f: bytes, now: float) -> int | Drop:
        bad = self.validate(f)
        if bad is not None:
            return bad
        self.learn(vlan_id(f), f[6:12], TAP, now)
        if f[0] & 1:
            return FLOOD
        where = self.live(vlan_id(f), f[:6], now)
        if where is None:
            return FLOOD
        return Drop.LOCAL_DEST if where == TAP else where

    def ingress(self, f: bytes, port: int, now: float) -> int | Drop:
        bad = self.validate(f) or self.learn(vlan_id(f), f[6:12], port, now)
        if bad is not None:
            return bad
        if f[0] & 1:
            return FLOOD
        if not self.hub:
            return TAP
        where = self.live(vlan_id(f), f[:6], now)
        if where is None:
            return FLOOD
        return Drop.HAIRPIN if where == port else where

    def expire(self, now: float) -> float | None:
        self.purge(now)
        self.holds = {k: h for k, h in self.holds.items() if h[0] > now}
        if self.histories and self.flap is not None:
            window = self.flap[1]
            self.histories = {k: h for k, h in self.histories.items()
                              if h and h[-1] > now - window}
        return min((row[1] + self.ageing_s for row in self.rows.values()), default=None)

    def flush_port(self, port: int) -> int:
        doomed = [key for key, row in self.rows.items() if row[0] == port]
        for key in doomed:
            del self.rows[key]
        self.counters["flushed"] += len(doomed)
        self.holds = {k: h for k, h in self.holds.items() if port not in h[1:]}
        self.histories.clear()
        self.tap_moves.pop(port, None)
        return len(doomed)

    def entries(self, now: float) -> list[FdbEntry]:
        live = [
            FdbEntry(vlan, mac, row[0], now - row[1])
            for (vlan, mac), row in self.rows.items()
            if now - row[1] < self.ageing_s
        ]
        return sorted(
            live,
            key=lambda e: (e.vlan, e.mac),
        )


MAX_FRAME = 80
UNICAST = [A, B, X, Y]
MACS = [*UNICAST, BROADCAST_MAC, MCAST, PAUSE_MAC, ZERO_MAC]
VLANS = [0, 3, 7]
PORTS = [TAP, P1, P2, P3]
# Weighted towards valid frames so that sequences learn, collide and age.
frames = st.builds(
    frame,
    dst=st.sampled_from(MACS),
    src=st.sampled_from([*UNICAST, *UNICAST, *UNICAST, *MACS[4:]]),
    vid=st.sampled_from([None, None, None, 0, 3, 0x8003]),  # 0x8003: PCP 4, VID 3
    tpid=st.sampled_from([TPID_8021Q, TPID_8021AD, TPID_QINQ_OLD]),
    size=st.sampled_from([60] * 8 + [14, 13, 0, 16, 17, MAX_FRAME, MAX_FRAME + 1]),
)


class SwitchVersusModel(RuleBasedStateMachine):
    """Identical decisions, entries, counters and counts after every step."""

    @initialize(
        hub=st.booleans(),
        ageing_s=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
        max_entries=st.integers(1, 6),
        per_peer=st.integers(1, 3),
        pinned=st.sampled_from([frozenset(), frozenset({A})]),
        allowed=st.sampled_from([{}, {P3: frozenset({X, Y})}, {P2: frozenset({A, X})}]),
        flap=st.sampled_from([None, (1, 2.0, 1.0), (2, 3.0, 0.5), (3, 1.0, 2.0)]),
    )
    def setup(self, hub: bool, ageing_s: float, max_entries: int, per_peer: int,
              pinned: frozenset[bytes], allowed: dict[int, frozenset[bytes]],
              flap: tuple[int, float, float] | None) -> None:
        args = (hub, ageing_s, max_entries, per_peer, MAX_FRAME, pinned, allowed, flap)
        self.sw = Switch(
            hub=hub,
            ageing_s=ageing_s,
            max_entries=max_entries,
            max_entries_per_peer=per_peer,
            max_frame=MAX_FRAME,
            pinned=pinned,
            flap_moves=flap and flap[0],
            flap_window_s=flap[1] if flap else 1.0,
            flap_hold_s=flap[2] if flap else 1.0,
        )
        for port, macs in allowed.items():
            self.sw.set_port_policy(port, allowed=macs)
        self.model = NaiveSwitch(*args)
        self.now = 1000.0

    @rule(f=frames)
    def egress(self, f: bytes) -> None:
        assert self.sw.egress(f, self.now) == self.model.egress(f, self.now)

    @rule(f=frames, port=st.sampled_from(PORTS[1:]))
    def ingress(self, f: bytes, port: int) -> None:
        assert self.sw.ingress(f, port, self.now) == self.model.ingress(f, port, self.now)

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def advance_to_next_expiry(self) -> None:
        """Land exactly on an expiry instant: the edge where bugs hide."""
        future = [r[1] + self.model.ageing_s for r in self.model.rows.values()]
        future = [t for t in future if t > self.now]
        if future:
            self.now = min(future)

    @rule()
    def expire(self) -> None:
        assert self.sw.expire(self.now) == self.model.expire(self.now)

    @rule(port=st.sampled_from(PORTS))
    def flush_port(self, port: int) -> None:
        assert self.sw.flush_port(port) == self.model.flush_port(port)

    @rule(port=st.sampled_from(PORTS[1:]), blocked=st.booleans())
    def set_blocked(self, port: int, blocked: bool) -> None:
        assert self.sw.set_blocked(port, blocked) == self.model.set_blocked(port, blocked)

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "sw"):
            return
        sw, model, now = self.sw, self.model, self.now
        assert sw.entries(now) == model.entries(now)
        assert sw.counters == model.counters
        assert len(sw) == len(model.rows) <= model.max_entries
        for port in PORTS:
            assert sw.port_count(port) == model.count(port)
            if port != TAP:
                assert sw.port_count(port) <= model.per_peer
        for vlan in VLANS:
            for mac in UNICAST:
                assert sw.lookup(vlan, mac, now) == model.live(vlan, mac, now)
        assert sw.held(now) == model.held(now)
        assert sw.events == model.events
        assert (sw.tap_moves, sw.flapped) == (model.tap_moves, model.flapped)
        for port in PORTS[1:]:
            assert sw.blocked(port) == (port in model.blocked)


SwitchVersusModel.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_switch_matches_naive_model = SwitchVersusModel.TestCase


def test_a_port_cap_overrides_the_per_peer_default() -> None:
    sw = Switch(max_entries_per_peer=4)
    sw.set_port_cap(2, 2)
    def src(n: int) -> bytes:
        return bytes([0x0A, 0, 0, 0, 1, n])

    decisions = [sw.ingress(frame(BROADCAST_MAC, src(10 + i)), P2, float(i)) for i in range(3)]
    assert decisions == [FLOOD, FLOOD, FLOOD]
    assert sw.lookup(0, src(10), 3.0) is None  # evicted: the cap is 2
    more = [sw.ingress(frame(BROADCAST_MAC, src(20 + i)), P1, 0.0) for i in range(5)]
    assert more == [FLOOD] * 5
    assert sw.port_count(P1) == 4 and sw.port_count(P2) == 2
    with pytest.raises(ValueError):
        sw.set_port_cap(0, 5)


def test_pinned_macs_are_local_and_never_learned_from_a_peer() -> None:
    sw = Switch(pinned=frozenset({A}))
    assert sw.ingress(frame(BROADCAST_MAC, A), P1, 0.0) is Drop.PINNED_MAC  # not even once
    assert sw.lookup(0, A, 0.0) is None
    assert sw.egress(frame(BROADCAST_MAC, A), 1.0) == FLOOD  # the local host speaks
    assert sw.ingress(frame(BROADCAST_MAC, A), P1, 2.0) is Drop.PINNED_MAC  # no move away
    assert sw.lookup(0, A, 2.0) == TAP


def test_a_ports_allow_list_is_checked_where_a_source_is_learned() -> None:
    sw = Switch(ageing_s=10.0)
    sw.set_port_policy(P1, allowed=frozenset({X}), cap=5)
    assert sw.ingress(frame(BROADCAST_MAC, Y), P1, 0.0) is Drop.MAC_NOT_ALLOWED
    assert sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0) == FLOOD
    assert sw.ingress(frame(BROADCAST_MAC, Y), P2, 0.0) == FLOOD  # other ports: any source
    no_learning = Switch(ageing_s=0.0)
    no_learning.set_port_policy(P1, allowed=frozenset({X}))
    assert no_learning.ingress(frame(BROADCAST_MAC, Y), P1, 0.0) is Drop.MAC_NOT_ALLOWED


# --- duplicate MACs, loop-blocked ports -----------------------------------------


def test_a_mac_moving_more_than_n_times_in_the_window_is_held_where_it_was() -> None:
    sw = Switch(flap_moves=5, flap_window_s=180.0, flap_hold_s=60.0)
    sw.egress(frame(BROADCAST_MAC, A), 0.0)
    now = 0.0
    for i in range(5):  # five moves: allowed
        now += 1.0
        port = P1 if i % 2 == 0 else TAP
        if port == TAP:
            sw.egress(frame(BROADCAST_MAC, A), now)
        else:
            assert sw.ingress(frame(BROADCAST_MAC, A), P1, now) == FLOOD
        assert sw.lookup(0, A, now) == port
    assert sw.counters["moved"] == 5 and sw.counters["dup_mac"] == 0
    # the sixth move within 180 s: held at P1 (where it was), the frame still forwarded
    assert sw.egress(frame(X, A), 6.0) == FLOOD
    assert sw.lookup(0, A, 6.0) == P1
    assert sw.events == [MacEvent(0, A, P1, TAP, 6, 66.0)]
    assert sw.held(6.0) == [HeldMac(0, A, P1, TAP, 60.0)]
    assert (sw.counters["dup_mac"], sw.counters["held"]) == (1, 1)
    for t in (7.0, 30.0, 65.9):  # frames from the other port never move it
        sw.egress(frame(BROADCAST_MAC, A), t)
        sw.ingress(frame(BROADCAST_MAC, A), P1, t)
    assert sw.lookup(0, A, 65.9) == P1
    assert sw.counters["held"] == 4 and sw.counters["dup_mac"] == 1
    # the hold ends: it moves again, with a fresh history
    sw.egress(frame(BROADCAST_MAC, A), 66.0)
    assert sw.lookup(0, A, 66.0) == TAP
    assert sw.held(66.0) == []
    assert sw.tap_moves == {P1: 10} and sw.flapped == 10  # 6 moves, 4 held


def test_moves_older_than_the_window_do_not_count() -> None:
    sw = Switch(flap_moves=2, flap_window_s=10.0, flap_hold_s=5.0)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    for t, port in ((1.0, P2), (2.0, P1), (12.5, P2), (13.0, P1)):
        sw.ingress(frame(BROADCAST_MAC, X), port, t)
        assert sw.lookup(0, X, t) == port
    assert sw.counters["dup_mac"] == 0
    sw.ingress(frame(BROADCAST_MAC, X), P2, 14.0)  # third move within 10 s
    assert sw.lookup(0, X, 14.0) == P1 and sw.counters["dup_mac"] == 1
    assert sw.tap_moves == {} and sw.flapped == 0  # peer to peer: no tap relocation


def test_duplicate_detection_can_be_off() -> None:
    sw = Switch(flap_moves=None)
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    for i in range(50):
        sw.ingress(frame(BROADCAST_MAC, X), P1 + i % 2, float(i))
    assert sw.counters["moved"] == 49 and sw.counters["dup_mac"] == 0
    with pytest.raises(ValueError):
        Switch(flap_moves=0)


def test_move_histories_and_holds_stay_bounded() -> None:
    sw = Switch(max_entries=8, flap_moves=1, flap_window_s=1000.0, flap_hold_s=1000.0)
    for i in range(200):
        mac = bytes([2, 0, 0, 0, 9, i])
        sw.egress(frame(BROADCAST_MAC, mac), float(i))
        sw.ingress(frame(BROADCAST_MAC, mac), P1, float(i))  # move 1
        sw.egress(frame(BROADCAST_MAC, mac), float(i))  # move 2: held
    assert len(sw._moves) <= 8 and len(sw._held) <= 8
    assert sw.counters["dup_mac"] == 200


def test_a_blocked_port_teaches_nothing_and_is_refused() -> None:
    sw = Switch()
    sw.ingress(frame(BROADCAST_MAC, X), P1, 0.0)
    sw.egress(frame(BROADCAST_MAC, A), 0.0)
    assert sw.set_blocked(P1, True) == 1
    assert sw.blocked(P1)
    assert sw.ingress(frame(A, X), P1, 1.0) is Drop.LOOP_BLOCKED
    assert sw.ingress(frame(BROADCAST_MAC, Y), P1, 1.0) is Drop.LOOP_BLOCKED
    assert sw.egress(frame(X, A), 1.0) == FLOOD  # nothing is known behind it
    assert sw.ingress(frame(A, Y), P2, 1.0) == TAP  # other peers carry on
    assert sw.set_blocked(P1, False) == 0
    assert sw.ingress(frame(A, X), P1, 2.0) == TAP
    assert sw.lookup(0, X, 2.0) == P1
    with pytest.raises(ValueError):
        sw.set_blocked(TAP, True)
