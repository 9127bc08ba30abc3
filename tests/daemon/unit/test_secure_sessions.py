"""Session rules that rekeys under load depend on, checked without I/O."""

from __future__ import annotations

from l2bridge.core import keys, noise
from l2bridge.core.secure import Established, PeerSessions, Received, Reply, SessionTable

# The two session facts the rekey tests depend on, checked without I/O: only the side
# that initiated the current keypair rekeys on time, and when handshakes crossed
# (both sides initiated at once, each sends with the other's keypair) a completed
# handshake keeps the keypair the peer is still sending with.


def secure_pair() -> tuple[SessionTable, PeerSessions, SessionTable, PeerSessions]:
    a_private, b_private = keys.generate_private_key(), keys.generate_private_key()
    a_id, b_id = noise.Identity(a_private), noise.Identity(b_private)
    a_link = PeerSessions(keys=noise.PeerKeys(a_id, keys.public_key(b_private)), name="b",
                      has_endpoint=True)
    b_link = PeerSessions(keys=noise.PeerKeys(b_id, keys.public_key(a_private)), name="a",
                      has_endpoint=True)
    clock = iter(range(1_700_000_000, 1_800_000_000))  # strictly newer TAI64N each time
    a = SessionTable(a_id, [a_link], clock_unix=lambda: float(next(clock)))
    b = SessionTable(b_id, [b_link], clock_unix=lambda: float(next(clock)))
    return a, a_link, b, b_link


def handshake(i: SessionTable, i_link: PeerSessions, r: SessionTable, now: float) -> bytes:
    """``i`` initiates, ``r`` answers, ``i`` completes; returns ``i``'s first keepalive."""
    reply = r.receive(i.initiation(i_link, now), ("i", 1), now)
    assert isinstance(reply, Reply)
    assert isinstance(i.receive(reply.datagram, ("r", 1), now), Established)
    packet = i.seal(i_link, b"", now)
    assert packet is not None
    return packet


def test_only_the_initiator_of_the_current_keypair_rekeys_on_time() -> None:
    a, a_link, b, b_link = secure_pair()
    assert isinstance(b.receive(handshake(a, a_link, b, 0.0), ("a", 1), 0.0), Received)
    rekey_s = a.timers.rekey_after_time_s
    assert a.due_initiations(rekey_s + 0.01) == [a_link]
    # b's keypair was confirmed by a's first packet; still a's to rekey, b only later
    assert b.due_initiations(rekey_s + 0.01) == []
    assert b.due_initiations(rekey_s + a.timers.responder_rekey_delay_s) == [b_link]


def test_crossed_handshakes_keep_the_keypair_the_peer_sends_with() -> None:
    a, a_link, b, b_link = secure_pair()
    # Both initiate at once: each side completes its own handshake and answers the other's.
    init_a, init_b = a.initiation(a_link, 0.0), b.initiation(b_link, 0.0)
    reply_to_a, reply_to_b = b.receive(init_a, ("a", 1), 0.0), a.receive(init_b, ("b", 1), 0.0)
    assert isinstance(reply_to_a, Reply) and isinstance(reply_to_b, Reply)
    assert isinstance(a.receive(reply_to_a.datagram, ("b", 1), 0.01), Established)
    assert isinstance(b.receive(reply_to_b.datagram, ("a", 1), 0.01), Established)
    keepalive_a, keepalive_b = a.seal(a_link, b"", 0.01), b.seal(b_link, b"", 0.01)
    assert keepalive_a is not None and keepalive_b is not None
    # Each confirms the other's keypair with its keepalive: now a sends with b's
    # keypair and b with a's (crossed).
    assert isinstance(a.receive(keepalive_b, ("b", 1), 0.02), Received)
    assert isinstance(b.receive(keepalive_a, ("a", 1), 0.02), Received)
    from_b = b.seal(b_link, b"frame 1", 0.03)
    assert from_b is not None and isinstance(a.receive(from_b, ("b", 1), 0.03), Received)
    # a rekeys while b's next packets (sealed with the old keypair) are in flight.
    in_flight = [b.seal(b_link, b"frame %d" % n, 0.5) for n in range(2, 6)]
    reply = b.receive(a.initiation(a_link, 0.5), ("a", 1), 0.5)
    assert isinstance(reply, Reply)
    assert isinstance(a.receive(reply.datagram, ("b", 1), 0.51), Established)
    for packet in in_flight:
        assert packet is not None
        got = a.receive(packet, ("b", 1), 0.52)
        assert isinstance(got, Received), a.counters
    assert a.counters.get("unknown_index", 0) == 0




# Every change to a link's sessions marks the link in ``changed``, which the leader's
# daemon drains to push snapshots to its followers; sealing and ordinary data do not.


def test_install_marks_both_sides() -> None:
    a, a_link, b, b_link = secure_pair()
    reply = b.receive(a.initiation(a_link, 0.0), ("a", 1), 0.0)
    assert isinstance(reply, Reply)
    assert a.changed == set()  # an initiation in flight is no session
    assert b.changed == {b_link}  # responder: installed as next
    assert b_link.next is not None and b_link.current is None
    assert isinstance(a.receive(reply.datagram, ("b", 1), 0.0), Established)
    assert a.changed == {a_link}  # initiator: installed as current


def test_promote_marks_and_plain_data_does_not() -> None:
    a, a_link, b, b_link = secure_pair()
    keepalive = handshake(a, a_link, b, 0.0)
    a.changed.clear()
    b.changed.clear()
    assert isinstance(b.receive(keepalive, ("a", 1), 0.0), Received)  # confirms next
    assert b_link.current is not None and b_link.next is None
    assert b.changed == {b_link}
    b.changed.clear()
    for n in range(3):
        packet = a.seal(a_link, b"frame %d" % n, 0.1)
        assert packet is not None and isinstance(b.receive(packet, ("a", 1), 0.1), Received)
        reply = b.seal(b_link, b"frame %d" % n, 0.1)
        assert reply is not None and isinstance(a.receive(reply, ("b", 1), 0.1), Received)
    assert a.changed == set() and b.changed == set()


def test_rekey_retire_marks() -> None:
    a, a_link, b, b_link = secure_pair()
    assert isinstance(b.receive(handshake(a, a_link, b, 0.0), ("a", 1), 0.0), Received)
    assert a_link.current is not None
    first_index = a_link.current.keypair.local_index
    for now in (1.0, 2.0):  # the second rekey retires the first keypair
        a.changed.clear()
        b.changed.clear()
        assert isinstance(b.receive(handshake(a, a_link, b, now), ("a", 1), now), Received)
        assert a.changed == {a_link} and b.changed == {b_link}
    assert first_index not in a.by_index and len(a.by_index) == 2


def test_expire_and_drop_keys_mark() -> None:
    a, a_link, b, b_link = secure_pair()
    assert isinstance(b.receive(handshake(a, a_link, b, 0.0), ("a", 1), 0.0), Received)
    a.changed.clear()
    b.changed.clear()
    reject_s = a.timers.reject_after_time_s
    assert a.expire(reject_s - 0.01) == [] and a.changed == set()
    assert a.expire(reject_s) == [] and a.changed == {a_link}
    assert a_link.current is None and a.by_index == {}
    # Drop-keys (b never ran expire before): its sessions go, the link is marked.
    assert b.expire(b.timers.drop_keys_after_s) == [b_link]
    assert b.changed == {b_link} and b.by_index == {}
    # Nothing left to change: no mark.
    b.changed.clear()
    assert b.expire(2 * b.timers.drop_keys_after_s) == [] and b.changed == set()
