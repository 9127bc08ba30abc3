"""Lanes: several workers seal with one session, a receiver keeps order per lane.

Site A runs two workers on one session: the leader (lane 0 of 2) does the
handshake and hands the keys to the follower (lane 1 of 2) in a snapshot that
crosses a JSON round trip, as it would between processes. Site B is one
worker. Checked without I/O: nonces never collide across workers, B accepts
every packet of both lanes however the lanes interleave (even with one lane
100,000 packets ahead of the other), replays are refused on both lanes, and a
follower keeps the counters and windows of the sessions it already holds.
"""

from __future__ import annotations

import json
import random

import pytest

from l2bridge.core import keys, noise
from l2bridge.core.caps import MAX_WORKERS
from l2bridge.core.secure import (
    Established,
    PeerSessions,
    Received,
    Reply,
    Session,
    SessionSnapshot,
    SessionTable,
)

LANES = 2
PER_LANE = 10_000


def handshake(i: SessionTable, i_link: PeerSessions, r: SessionTable, now: float) -> bytes:
    """``i`` initiates, ``r`` answers, ``i`` completes; returns ``i``'s first keepalive."""
    reply = r.receive(i.initiation(i_link, now), ("i", 1), now)
    assert isinstance(reply, Reply)
    assert isinstance(i.receive(reply.datagram, ("r", 1), now), Established)
    packet = i.seal(i_link, b"", now)
    assert packet is not None
    return packet


class Sites:
    """A (leader + follower, lanes=2) and B (one worker), A having initiated."""

    def __init__(self) -> None:
        a_private, b_private = keys.generate_private_key(), keys.generate_private_key()
        a_id, b_id = noise.Identity(a_private), noise.Identity(b_private)
        b_public, a_public = keys.public_key(b_private), keys.public_key(a_private)
        self.a_link = PeerSessions(keys=noise.PeerKeys(a_id, b_public), name="b", has_endpoint=True)
        self.f_link = PeerSessions(keys=noise.PeerKeys(a_id, b_public), name="b", has_endpoint=True)
        self.b_link = PeerSessions(keys=noise.PeerKeys(b_id, a_public), name="a", has_endpoint=True)
        clock = iter(range(1_700_000_000, 1_800_000_000))
        self.a = SessionTable(a_id, [self.a_link], clock_unix=lambda: float(next(clock)),
                             lane=0, lanes=LANES)
        self.f = SessionTable(None, [self.f_link], lane=1, lanes=LANES, follower=True)
        self.b = SessionTable(b_id, [self.b_link], clock_unix=lambda: float(next(clock)))
        keepalive = handshake(self.a, self.a_link, self.b, 0.0)
        assert isinstance(self.b.receive(keepalive, ("a", 1), 0.0), Received)
        self.push(0.0)

    def push(self, now: float) -> None:
        """The leader's daemon: drain ``changed``, ship snapshots through JSON."""
        for link in sorted(self.a.changed, key=lambda link: link.name):
            snap = json.loads(json.dumps(self.a.snapshot(link, now)))
            self.f.apply_snapshot(self.f_link, snap, now)
        self.a.changed.clear()


def sealed(links: SessionTable, link: PeerSessions, count: int, now: float) -> list[bytes]:
    out = []
    for n in range(count):
        packet = links.seal(link, b"lane %d packet %d" % (links.lane, n), now)
        assert packet is not None
        out.append(packet)
    return out


def counters_of(packets: list[bytes]) -> list[int]:
    return [noise.parse_data_header_lane(p)[1] for p in packets]


def accept_all(receiver: SessionTable, packets: list[bytes], now: float) -> None:
    for packet in packets:
        got = receiver.open(packet, now)
        assert got is not None, receiver.counters
        assert got[1].startswith(b"lane ")


def test_lane_and_lanes_are_checked() -> None:
    identity = noise.Identity(keys.generate_private_key())
    top = MAX_WORKERS  # the one bound on workers and lanes (core/caps.py)
    for lane, lanes in ((0, 0), (1, 1), (-1, 2), (0, top + 1), (top, top)):
        with pytest.raises(ValueError, match=f"expected 0 <= lane < lanes <= {top}"):
            SessionTable(identity, [], lane=lane, lanes=lanes)
    SessionTable(identity, [], lane=top - 1, lanes=top)
    with pytest.raises(ValueError, match="only a follower"):
        SessionTable(None, [])


def test_two_workers_never_share_a_nonce() -> None:
    sites = Sites()
    leader, follower = [], []
    for _ in range(PER_LANE):
        leader += sealed(sites.a, sites.a_link, 1, 1.0)
        follower += sealed(sites.f, sites.f_link, 1, 1.0)
    leader += sites.a.seal_many(sites.a_link, [b"lane 0 burst"] * 5, 1.0) or []
    follower += sites.f.seal_many(sites.f_link, [b"lane 1 burst"] * 5, 1.0) or []
    everything = counters_of(leader) + counters_of(follower)
    assert len(everything) == 2 * (PER_LANE + 5)
    assert len(set(everything)) == len(everything)
    # Leader: 2, 4, ... (0 went in the handshake's keepalive); follower: 1, 3, 5, ...
    assert counters_of(leader) == list(range(2, 2 * (PER_LANE + 5) + 2, 2))
    assert counters_of(follower) == list(range(1, 2 * (PER_LANE + 5), 2))
    assert {noise.parse_data_header_lane(p)[2] for p in leader} == {0}
    assert {noise.parse_data_header_lane(p)[2] for p in follower} == {1}
    assert [noise.parse_data_header_lane(p)[0] for p in leader[:1] + follower[:1]] == [
        sites.a_link.current.keypair.remote_index] * 2  # type: ignore[union-attr]


@pytest.mark.parametrize("order", ["alternating", "random merge", "lane 1 first", "lane 0 first"])
def test_receiver_accepts_both_lanes_in_any_interleaving(order: str) -> None:
    sites = Sites()
    leader = sealed(sites.a, sites.a_link, PER_LANE, 1.0)
    follower = sealed(sites.f, sites.f_link, PER_LANE, 1.0)
    if order == "alternating":
        merged = [p for pair in zip(leader, follower, strict=True) for p in pair]
    elif order == "random merge":  # each lane stays in order, the lanes mix at random
        rng = random.Random(5)
        merged, i, j = [], 0, 0
        while i < PER_LANE or j < PER_LANE:
            if j == PER_LANE or (i < PER_LANE and rng.random() < 0.5):
                merged.append(leader[i])
                i += 1
            else:
                merged.append(follower[j])
                j += 1
    elif order == "lane 1 first":
        merged = follower + leader
    else:
        merged = leader + follower
    accept_all(sites.b, merged, 1.0)
    session = sites.b_link.current
    assert session is not None
    assert sorted(session.windows) == [0, 1]
    assert session.windows[0].highest == 2 * PER_LANE
    assert session.windows[1].highest == 2 * PER_LANE - 1
    assert session.highest == 2 * PER_LANE
    assert session.window is session.windows[0]
    # A replay on either lane is refused and changes nothing.
    drops = sites.b.counters.get("replay_or_expired", 0)
    for packet in (leader[0], leader[-1], follower[0], follower[-1], follower[PER_LANE // 2]):
        assert sites.b.receive(packet, ("a", 1), 1.0) is None
    assert sites.b.counters["replay_or_expired"] == drops + 5


def test_one_lane_far_ahead_of_the_other() -> None:
    """Lane 1 runs 100,000 packets ahead: lane 0's old counters still open (own window)."""
    sites = Sites()
    ahead = 100_000
    accept_all(sites.b, sealed(sites.f, sites.f_link, ahead, 1.0), 1.0)
    behind = sealed(sites.a, sites.a_link, 50, 1.0)
    assert max(counters_of(behind)) < 2 * ahead - 8192  # far outside one shared window
    accept_all(sites.b, behind, 1.0)
    # ... and lane 1 goes on, now interleaved with lane 0.
    more = sealed(sites.f, sites.f_link, 10, 1.0)
    mixed = [p for pair in zip(sealed(sites.a, sites.a_link, 10, 1.0), more, strict=True)
             for p in pair]
    accept_all(sites.b, mixed, 1.0)
    assert sites.b.counters.get("replay_or_expired", 0) == 0
    assert sites.b.open(behind[3], 1.0) is None
    assert sites.b.open(more[3], 1.0) is None
    assert sites.b.counters["replay_or_expired"] == 2


def test_forged_packets_on_a_new_lane_allocate_no_window() -> None:
    sites = Sites()
    session = sites.b_link.current
    assert session is not None and sorted(session.windows) == [0]
    index = session.keypair.local_index
    rng = random.Random(3)
    for lane in range(1, 256):
        header = bytes((4, lane, 0, 0)) + index.to_bytes(4, "little") + rng.randbytes(8)
        assert sites.b.open(header + rng.randbytes(40), 1.0) is None
    assert sites.b.counters == {"bad_tag": 255}
    assert sorted(session.windows) == [0]
    # A real lane-1 packet (the follower's) is what creates lane 1's window.
    accept_all(sites.b, sealed(sites.f, sites.f_link, 1, 1.0), 1.0)
    assert sorted(session.windows) == [0, 1]


def b_lane(sites: Sites, lane: int, counter: int, text: bytes) -> bytes:
    """A DATA packet from B as B's worker ``lane`` would seal it."""
    session = sites.b_link.current
    assert session is not None
    return noise.seal(session.keypair, counter, text, lane)


def test_each_lane_opens_only_at_its_worker() -> None:
    """Lane L belongs to worker L % lanes: the kernel steers it there, the others refuse it."""
    sites = Sites()
    lane0 = [b_lane(sites, 0, n, b"lane 0 reply %d" % n) for n in range(4)]
    lane1 = [b_lane(sites, 1, 100 + n, b"lane 1 reply %d" % n) for n in range(4)]
    accept_all(sites.a, lane0, 1.0)
    accept_all(sites.f, lane1, 1.0)
    assert all(sites.f.open(p, 1.0) is None for p in lane0)
    assert all(sites.a.open(p, 1.0) is None for p in lane1)
    assert sites.f.counters == {"wrong_lane": 4} and sites.a.counters == {"wrong_lane": 4}
    # A replay is refused where the lane lives.
    assert sites.a.open(lane0[0], 1.0) is None and sites.f.open(lane1[0], 1.0) is None


def test_follower_drops_handshakes_and_never_initiates() -> None:
    sites = Sites()
    b2 = SessionTable(sites.b.identity, [sites.b_link])
    # An INITIATION and a RESPONSE that would be valid at the leader.
    init = b2.initiation(sites.b_link, 2.0)
    assert sites.f.receive(init, ("b", 1), 2.0) is None
    reply = sites.b.receive(sites.a.initiation(sites.a_link, 2.0), ("a", 1), 2.0)
    assert isinstance(reply, Reply)
    assert sites.f.receive(reply.datagram, ("b", 1), 2.0) is None
    assert sites.f.counters == {"not_leader": 2}
    assert sites.f.changed == set()
    assert sites.f.due_initiations(0.0) == []
    assert sites.f.due_initiations(1e6) == []
    with pytest.raises(RuntimeError, match="follower"):
        sites.f.initiation(sites.f_link, 2.0)
    with pytest.raises(RuntimeError, match="only a follower"):
        sites.a.apply_snapshot(sites.a_link, sites.a.snapshot(sites.a_link, 2.0), 2.0)


def test_snapshot_round_trip_keeps_counters_and_windows() -> None:
    sites = Sites()
    a, f = sites.a, sites.f
    first = sites.f_link.current
    assert first is not None
    assert first.keypair.local_index == sites.a_link.current.keypair.local_index  # type: ignore[union-attr]
    assert set(f.by_index) == set(a.by_index)
    sealed(f, sites.f_link, 3, 1.0)  # counters 1, 3, 5
    from_b = b_lane(sites, 1, 1, b"lane 1 to the follower")
    assert f.open(from_b, 1.0) is not None
    # The same sessions again: the follower keeps its session objects as they are.
    sites.a.changed.add(sites.a_link)
    sites.push(2.0)
    assert sites.f_link.current is first
    assert first.send_counter == 7
    assert first.windows[1].highest == 1
    assert f.open(from_b, 2.0) is None  # still a replay
    # A rekey: the new session starts at the follower's lane; the old one is kept whole.
    keepalive = handshake(a, sites.a_link, sites.b, 3.0)
    assert isinstance(sites.b.receive(keepalive, ("a", 1), 3.0), Received)
    assert sites.a.changed == {sites.a_link}
    sites.push(3.0)
    second = sites.f_link.current
    assert second is not None and second is not first
    assert sites.f_link.previous is first and first.send_counter == 7
    assert second.send_counter == 1 and second.windows == {}
    assert second.confirmed and second.initiator
    assert second.created == pytest.approx(3.0)
    assert set(f.by_index) == set(a.by_index) == {
        first.keypair.local_index, second.keypair.local_index}
    sealed_now = sealed(f, sites.f_link, 2, 3.0)
    assert counters_of(sealed_now) == [1, 3]
    accept_all(sites.b, sealed_now, 3.0)
    # Sessions the leader dropped leave the follower too.
    a.expire(3.0 + a.timers.reject_after_time_s - 0.5)  # the first session (age 180) goes
    assert a.changed == {sites.a_link}
    sites.push(3.0 + a.timers.reject_after_time_s - 0.5)
    assert sites.f_link.previous is None and sites.f_link.current is second
    assert set(f.by_index) == {second.keypair.local_index}


def test_follower_expires_on_its_own_clock() -> None:
    sites = Sites()
    f = sites.f
    reject_s = f.timers.reject_after_time_s
    assert f.expire(reject_s - 0.01) == []
    assert f.changed == set() and sites.f_link.current is not None
    assert f.expire(reject_s) == []
    assert sites.f_link.current is None and f.by_index == {}
    assert f.changed == {sites.f_link}
    assert f.seal(sites.f_link, b"late", reject_s) is None
    f.changed.clear()
    # Drop-keys follows the leader's handshake time, carried in the snapshot.
    assert f.expire(f.timers.drop_keys_after_s) == [sites.f_link]
    assert sites.f_link.last_handshake is None


def test_snapshot_is_json_and_keys_stay_out_of_reprs() -> None:
    sites = Sites()
    snap = sites.a.snapshot(sites.a_link, 5.0)
    assert json.loads(json.dumps(snap)) == snap
    current = snap["current"]
    assert isinstance(current, dict)
    session = sites.a_link.current
    assert session is not None
    assert current == {
        "local_index": session.keypair.local_index,
        "remote_index": session.keypair.remote_index,
        "send_key": session.keypair.send_key.hex(),
        "recv_key": session.keypair.recv_key.hex(),
        "age_s": 5.0,
        "initiator": True,
        "confirmed": True,
    }
    assert snap["previous"] is None and snap["next"] is None
    assert snap["last_handshake_age_s"] == 5.0
    follower_session = sites.f_link.current
    assert follower_session is not None
    for text in (repr(sites.f_link), repr(follower_session), repr(sites.f), repr(sites.a_link)):
        assert current["send_key"] not in text
        assert current["recv_key"] not in text


def test_malformed_snapshot_is_one_line_and_changes_nothing() -> None:
    sites = Sites()
    good = sites.a.snapshot(sites.a_link, 1.0)
    before = (sites.f_link.current, dict(sites.f.by_index))
    bad_cases: list[tuple[SessionSnapshot, str]] = [
        ({**good, "version": 9}, "version 9"),
        ({**good, "next": {"local_index": 1}}, "lacks 'send_key'"),
        ({**good, "next": {**good["current"], "send_key": "zz"}},  # type: ignore[dict-item]
         "malformed key"),
        ({**good, "next": {**good["current"], "recv_key": "00"}},  # type: ignore[dict-item]
         "malformed key"),
        ({**good, "previous": [1, 2]}, "not an object"),
        ({**good, "last_handshake_age_s": "1"}, "not a number"),
    ]
    for snap, message in bad_cases:
        with pytest.raises(ValueError, match=f"^snapshot for b: .*{message}") as info:
            sites.f.apply_snapshot(sites.f_link, snap, 1.0)
        assert "\n" not in str(info.value)
        assert (sites.f_link.current, dict(sites.f.by_index)) == before


def test_session_window_property_before_any_packet() -> None:
    sites = Sites()
    session = sites.f_link.current
    assert isinstance(session, Session)
    assert session.windows == {} and session.highest == -1
    assert session.window.highest == -1 and session.windows == {}  # a view: nothing stored
