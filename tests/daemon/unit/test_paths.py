"""How a peer is reached (core/paths.py): the path rules, the timers, the hint rules."""

from __future__ import annotations

import math

import pytest

from l2bridge.core import paths
from l2bridge.core.paths import (
    ASK_EVERY_S,
    DIAL_BACKOFF_MAX_S,
    PROBE_EVERY_S,
    PUNCH_FOR_S,
    RELAY_AFTER_S,
    TCP_AFTER_S,
    Reach,
    answer_due,
    hint_problem,
)

UDP_A, UDP_B = ("198.18.1.2", 55555), ("198.18.9.9", 40000)


class Link:
    def __init__(self, name: str) -> None:
        self.name = name


def test_udp_roams_and_stays_udp() -> None:
    reach = Reach()
    assert reach.arrived_udp(UDP_A, probe=True)  # on UDP even a probe moves the endpoint
    assert reach.arrived_udp(UDP_B, probe=False)
    assert reach.kind == paths.UDP and reach.udp == UDP_B and reach.changes == 0


def test_a_link_takes_over_only_a_quiet_path() -> None:
    reach = Reach(quiet_s=15)
    link = Link("l")
    assert reach.arrived_link(link, 100.0, dialed=True, path_seen=90.0) == (False, None)
    assert reach.kind == paths.UDP and reach.link is link  # standing by
    assert reach.arrived_link(link, 106.0, dialed=True, path_seen=90.0) == (True, None)
    assert reach.kind == paths.TCP and reach.changes == 1


def test_back_to_udp_only_on_proof_of_a_round_trip() -> None:
    reach = Reach(kind=paths.TCP, link=Link("l"))
    assert not reach.arrived_udp(UDP_A, probe=True)  # an initiation, a HELLO asking a reply
    assert reach.kind == paths.TCP and reach.udp == UDP_A
    assert reach.arrived_udp(UDP_A, probe=False)  # an answer, or data
    assert reach.kind == paths.UDP


def test_modes_forbid_paths() -> None:
    tcp_only = Reach(mode=paths.TCP, kind=paths.TCP)
    assert not tcp_only.arrived_udp(UDP_A, probe=False)
    assert not tcp_only.arrived_relayed(object(), 100.0, path_seen=-math.inf)
    udp_only = Reach(mode=paths.UDP)
    moved, _ = udp_only.arrived_link(Link("l"), 100.0, dialed=False, path_seen=-math.inf)
    assert not moved and udp_only.kind == paths.UDP
    assert not udp_only.arrived_relayed(object(), 100.0, path_seen=-math.inf)
    assert tcp_only.arrived_link(Link("l"), 1.0, dialed=True, path_seen=0.0)[0]


def test_a_relay_is_the_last_resort() -> None:
    reach = Reach(quiet_s=15)
    via = object()
    assert not reach.arrived_relayed(via, 100.0, path_seen=95.0)
    assert reach.arrived_relayed(via, 100.0, path_seen=80.0)
    assert reach.kind == paths.RELAY and reach.via is via
    assert not reach.arrived_udp(UDP_A, probe=True)
    assert reach.arrived_udp(UDP_A, probe=False) and reach.kind == paths.UDP
    assert reach.relay_lost(via) is False  # no longer through it


@pytest.mark.parametrize(("lower", "keep_dialed"), [(True, True), (False, False)])
def test_two_links_both_sides_keep_the_same_one(lower: bool, keep_dialed: bool) -> None:
    ours, theirs = Link("dialed by us"), Link("dialed by them")
    reach = Reach(mode=paths.TCP, kind=paths.TCP, lower=lower)
    reach.arrived_link(ours, 1.0, dialed=True, path_seen=0.0)
    moved, close = reach.arrived_link(theirs, 1.1, dialed=False, path_seen=1.0)
    assert reach.link is (ours if keep_dialed else theirs)
    assert close is (theirs if keep_dialed else ours)  # the other one is closed
    assert moved is not keep_dialed


def test_the_peer_side_agrees_on_the_link() -> None:
    # Site X (lower key) dialled L1, site Y dialled L2: both keep L1.
    l1, l2 = Link("L1"), Link("L2")
    x = Reach(mode=paths.TCP, kind=paths.TCP, lower=True)
    y = Reach(mode=paths.TCP, kind=paths.TCP, lower=False)
    x.arrived_link(l2, 1.0, dialed=False, path_seen=0.0)
    x.arrived_link(l1, 1.1, dialed=True, path_seen=1.0)
    y.arrived_link(l2, 1.0, dialed=True, path_seen=0.0)
    y.arrived_link(l1, 1.1, dialed=False, path_seen=1.0)
    assert x.link is l1 and y.link is l1


def test_a_lost_link_falls_back_to_udp_in_auto_and_waits_in_tcp() -> None:
    link = Link("l")
    auto = Reach(kind=paths.TCP, link=link)
    assert auto.link_lost(link) and auto.kind == paths.UDP and auto.link is None
    tcp = Reach(mode=paths.TCP, kind=paths.TCP, link=link)
    assert tcp.link_lost(link) and tcp.kind == paths.TCP
    assert not tcp.link_lost(Link("other"))


def test_auto_dials_after_udp_went_unanswered_and_backs_off() -> None:
    reach = Reach(dials=True)
    assert not reach.due(0.0, up=False).dial
    assert not reach.due(TCP_AFTER_S - 0.1, up=False).dial
    assert reach.due(TCP_AFTER_S, up=False).dial
    assert not reach.due(TCP_AFTER_S + 0.1, up=False).dial  # one dial at a time
    gaps = []
    now = TCP_AFTER_S
    for _ in range(8):
        reach.dial_done(now, ok=False)
        start = now
        while not reach.due(now, up=False).dial:
            now += 0.25
        gaps.append(now - start)
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(gaps) == DIAL_BACKOFF_MAX_S


def test_up_on_udp_needs_nothing() -> None:
    reach = Reach(dials=True)
    assert not reach.due(100.0, up=True)
    tcp = Reach(mode=paths.TCP, kind=paths.TCP, dials=True)
    assert tcp.due(0.0, up=False).dial  # tcp dials at once
    assert not Reach(mode=paths.UDP, dials=True).due(100.0, up=False).dial


def test_on_tcp_the_udp_path_is_probed() -> None:
    reach = Reach(kind=paths.TCP, link=Link("l"), udp=UDP_A)
    reach.hint = UDP_B
    assert reach.due(10.0, up=True).probe == (UDP_A, UDP_B)
    assert reach.due(10.0 + PROBE_EVERY_S - 1, up=True).probe == ()
    assert reach.due(10.0 + PROBE_EVERY_S, up=True).probe == (UDP_A, UDP_B)


def test_a_down_peer_is_asked_about_then_punched_then_relayed() -> None:
    reach = Reach()
    assert not reach.due(0.0, up=False).ask
    assert reach.due(1.0, up=False).ask
    assert not reach.due(1.5, up=False).ask
    assert reach.due(1.0 + ASK_EVERY_S, up=False).ask
    relay = object()
    reach.hinted(UDP_B, relay, 4.0)
    assert reach.due(4.0, up=False).punch == UDP_B
    assert reach.due(4.2, up=False).punch is None
    assert reach.due(4.5, up=False).punch == UDP_B
    assert reach.due(4.5 + RELAY_AFTER_S, up=False).relay is relay
    assert reach.due(4.0 + PUNCH_FOR_S + 0.5, up=False).punch is None


def test_hint_rules() -> None:
    def problem(address: str, port: int = 55555, neighbour: str | None = "198.18.3.2") -> str:
        return hint_problem(address, port, neighbour=neighbour, listen_host="0.0.0.0",
                            listen_port=55555)

    assert problem("198.18.1.2") is None
    assert problem("2001:db8::2") is None
    assert problem("127.0.0.1") == "loopback"
    assert problem("::1") == "loopback"
    assert problem("224.0.0.5") == "multicast"
    assert problem("ff02::1") == "multicast"
    assert problem("0.0.0.0") == "unspecified"
    assert problem("255.255.255.255") == "broadcast"
    assert problem("169.254.1.1") == "link-local"
    assert problem("198.18.3.2") == "the neighbour itself"
    assert problem("::ffff:198.18.3.2") == "the neighbour itself"
    assert problem("198.18.3.2", neighbour=None) is None
    assert hint_problem("198.18.1.1", 55555, neighbour=None, listen_host="198.18.1.1",
                        listen_port=55555) == "this site's own address"
    assert problem("not-an-ip") == "not an IP address"


def test_a_neighbour_answers_one_asker_about_one_site_once_a_second() -> None:
    answered: dict = {}
    assert answer_due(answered, 1, 2, 10.0)
    assert not answer_due(answered, 1, 2, 10.5)
    assert answer_due(answered, 3, 2, 10.5)
    assert answer_due(answered, 1, 2, 11.0)
