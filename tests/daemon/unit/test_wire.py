"""Wire format: encoding, decoding, fragmentation and bounded reassembly."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core.wire import (
    Fragment,
    Fragmenter,
    Frame,
    Hello,
    Reassembler,
    WireError,
    decode,
    encode_fragment,
    encode_frame,
    encode_hello,
)

FRAME_1514 = bytes(range(256)) * 5 + bytes(234)


def _frame(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _fragments(datagrams: list[bytes]) -> list[Fragment]:
    out = []
    for datagram in datagrams:
        message = decode(datagram)
        assert isinstance(message, Fragment)
        out.append(message)
    return out


# ---------------------------------------------------------------- encode / decode


def test_encode_frame_is_header_plus_frame() -> None:
    assert encode_frame(b"\x01\x02\x03") == b"\x11\x00\x00\x00\x01\x02\x03"
    assert decode(b"\x11\x00\x00\x00\x01\x02\x03") == Frame(b"\x01\x02\x03")


def test_encode_hello_bytes() -> None:
    assert encode_hello("london", True) == b"\x13\x01\x00\x00london"
    assert encode_hello("london", False) == b"\x13\x00\x00\x00london"
    assert decode(b"\x13\x01\x00\x00london") == Hello("london", True)
    assert encode_hello("london", False, offload=True) == b"\x13\x02\x00\x00london"
    assert decode(b"\x13\x03\x00\x00london") == Hello("london", True, offload=True)


def test_encode_fragment_bytes() -> None:
    assert encode_fragment(0xBEEF, 2, 5, b"xy") == b"\x12\x24\xbe\xefxy"
    assert decode(b"\x12\x24\xbe\xefxy") == Fragment(0xBEEF, 2, 5, b"xy")


@pytest.mark.parametrize(
    ("frag_id", "index", "count", "data"),
    [(0, 0, 1, b"x"), (0, 2, 2, b"x"), (0, 0, 17, b"x"), (65536, 0, 2, b"x"), (0, 0, 2, b"")],
)
def test_encode_fragment_rejects_impossible_fields(
    frag_id: int, index: int, count: int, data: bytes
) -> None:
    with pytest.raises(ValueError):
        encode_fragment(frag_id, index, count, data)


@pytest.mark.parametrize("name", ["", "x" * 65, "é" * 33])
def test_encode_hello_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="expected 1..64 bytes"):
        encode_hello(name, False)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "truncated"),
        (b"\x11", "truncated"),
        (b"\x11\x00\x00\x00", "truncated"),  # no payload
        (b"\x12\x01\x00\x07", "truncated"),
        (b"\x00\x00\x00\x00x", "bad_type"),
        (b"\x14\x00\x00\x00x", "bad_type"),
        (b"\x12\x00\x00\x01x", "bad_fragment"),  # count 1
        (b"\x12\x21\x00\x01x", "bad_fragment"),  # index 2 of 2
        (b"\x12\x10\x00\x01x", "bad_fragment"),  # index 1, count 1
        (b"\x13\x10\x00\x00name", "bad_hello"),  # unknown flag
        (b"\x13\x00\x00\x01name", "bad_hello"),  # b2b3 not zero
        (b"\x13\x00\x00\x00\xff\xfe", "bad_hello"),  # not UTF-8
        (b"\x13\x00\x00\x00" + b"n" * 65, "bad_hello"),  # name too long
    ],
)
def test_decode_errors_name_the_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode(datagram)
    assert info.value.reason == reason


def test_decode_fragment_last_of_sixteen() -> None:
    assert decode(b"\x12\xef\xff\xffz") == Fragment(0xFFFF, 14, 16, b"z")
    assert decode(b"\x12\xff\x00\x00z") == Fragment(0, 15, 16, b"z")


@given(st.binary(max_size=200))
def test_decode_raises_only_wire_error(datagram: bytes) -> None:
    try:
        message = decode(datagram)
    except WireError as exc:
        assert exc.reason in {"truncated", "bad_type", "bad_fragment", "bad_hello"}
    else:
        assert isinstance(message, Frame | Fragment | Hello)


@given(st.sampled_from([0x11, 0x12, 0x13]), st.binary(min_size=0, max_size=100))
def test_decode_of_known_types_raises_only_wire_error(kind: int, rest: bytes) -> None:
    try:
        decode(bytes([kind]) + rest)
    except WireError as exc:
        assert exc.reason in {"truncated", "bad_fragment", "bad_hello"}


@given(st.binary(min_size=1, max_size=2000))
def test_frame_round_trip(frame: bytes) -> None:
    assert decode(encode_frame(frame)) == Frame(frame)


@given(st.text(min_size=1, max_size=16).filter(lambda s: len(s.encode()) <= 64), st.booleans())
def test_hello_round_trip(name: str, want_reply: bool) -> None:
    assert decode(encode_hello(name, want_reply)) == Hello(name, want_reply)


@given(
    st.integers(0, 0xFFFF),
    st.integers(2, 16).flatmap(lambda c: st.tuples(st.integers(0, c - 1), st.just(c))),
    st.binary(min_size=1, max_size=100),
)
def test_fragment_round_trip(frag_id: int, index_count: tuple[int, int], data: bytes) -> None:
    index, count = index_count
    assert decode(encode_fragment(frag_id, index, count, data)) == Fragment(
        frag_id, index, count, data
    )


# ---------------------------------------------------------------- fragmenter


def test_split_small_frame_is_one_frame_datagram() -> None:
    frame = _frame(1468)
    assert Fragmenter(1472).split(frame) == [b"\x11\x00\x00\x00" + frame]


def test_split_1514_frame_into_two_balanced_pieces() -> None:
    datagrams = Fragmenter(1472).split(FRAME_1514)
    assert [len(d) for d in datagrams] == [761, 761]
    assert datagrams[0][:4] == b"\x12\x01\x00\x00"
    assert datagrams[1][:4] == b"\x12\x11\x00\x00"
    assert datagrams[0][4:] + datagrams[1][4:] == FRAME_1514


def test_split_pieces_differ_by_at_most_one_byte() -> None:
    datagrams = Fragmenter(104).split(_frame(1001))  # room 100 -> 11 pieces of 91 or 92
    sizes = [len(d) - 4 for d in datagrams]
    assert len(sizes) == 11
    assert sum(sizes) == 1001
    assert max(sizes) - min(sizes) <= 1
    assert all(len(d) <= 104 for d in datagrams)


def test_split_uses_sixteen_fragments_at_most() -> None:
    fragmenter = Fragmenter(14)  # room 10
    assert len(fragmenter.split(_frame(160))) == 16
    with pytest.raises(ValueError, match="needs 17 fragments of at most 10 bytes"):
        fragmenter.split(_frame(161))


def test_split_rejects_empty_frame_and_tiny_datagrams() -> None:
    with pytest.raises(ValueError, match="empty frame"):
        Fragmenter(1472).split(b"")
    with pytest.raises(ValueError, match="max_datagram 4"):
        Fragmenter(4)


def test_fragment_ids_increment_and_wrap() -> None:
    fragmenter = Fragmenter(100, first_id=0xFFFF)
    ids = [_fragments(fragmenter.split(_frame(200, n)))[0].frag_id for n in range(3)]
    assert ids == [0xFFFF, 0, 1]
    fragmenter.split(_frame(50))  # a whole frame uses no id
    assert fragmenter.next_id == 2


@given(st.binary(min_size=1, max_size=3000), st.integers(5, 1500))
def test_split_then_reassemble_round_trips(frame: bytes, max_datagram: int) -> None:
    fragmenter = Fragmenter(max_datagram)
    try:
        datagrams = fragmenter.split(frame)
    except ValueError:
        assert len(frame) > 16 * (max_datagram - 4)
        return
    assert all(len(d) <= max_datagram for d in datagrams)
    if len(datagrams) == 1 and datagrams[0][0] == 0x11:
        assert decode(datagrams[0]) == Frame(frame)
        return
    reassembler = Reassembler()
    pieces = _fragments(datagrams)
    random.Random(len(frame)).shuffle(pieces)
    results = [reassembler.feed(piece, 0.0) for piece in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == frame
    assert reassembler.pending == 0
    assert reassembler.counters["reassembled"] == 1


# ---------------------------------------------------------------- reassembler


def test_reassemble_in_reverse_order() -> None:
    frame = _frame(1000)
    pieces = _fragments(Fragmenter(104).split(frame))
    reassembler = Reassembler()
    for piece in reversed(pieces[1:]):
        assert reassembler.feed(piece, 1.0) is None
    assert reassembler.feed(pieces[0], 1.5) == frame
    assert reassembler.counters == {
        "reassembled": 1, "timeouts": 0, "evicted": 0, "bad_fragment": 0, "duplicates": 0,
    }


def test_interleaved_frames_from_one_peer() -> None:
    fragmenter = Fragmenter(504)
    a, b = _frame(900, 1), _frame(900, 2)
    pa, pb = _fragments(fragmenter.split(a)), _fragments(fragmenter.split(b))
    reassembler = Reassembler()
    assert reassembler.feed(pa[0], 0.0) is None
    assert reassembler.feed(pb[1], 0.0) is None
    assert reassembler.feed(pb[0], 0.0) == b
    assert reassembler.feed(pa[1], 0.0) == a


def test_duplicate_piece_is_counted_and_ignored() -> None:
    frame = _frame(300)
    pieces = _fragments(Fragmenter(104).split(frame))
    reassembler = Reassembler()
    assert reassembler.feed(pieces[0], 0.0) is None
    assert reassembler.feed(pieces[0], 0.0) is None
    assert reassembler.counters["duplicates"] == 1
    for piece in pieces[1:-1]:
        assert reassembler.feed(piece, 0.0) is None
    assert reassembler.feed(pieces[-1], 0.0) == frame


def test_partial_times_out_lazily_on_feed() -> None:
    pieces = _fragments(Fragmenter(104).split(_frame(300)))
    other = _fragments(Fragmenter(104, first_id=9).split(_frame(300, 2)))
    reassembler = Reassembler(timeout_s=2.0)
    reassembler.feed(pieces[0], 10.0)
    assert reassembler.feed(other[0], 12.0) is None  # first one is 2 s old: dropped
    assert reassembler.counters["timeouts"] == 1
    assert reassembler.pending == 1
    for piece in pieces[1:]:
        assert reassembler.feed(piece, 12.1) is None  # rest of the old frame: never completes


def test_expire_returns_next_deadline() -> None:
    pieces = _fragments(Fragmenter(104).split(_frame(300)))
    reassembler = Reassembler(timeout_s=2.0)
    assert reassembler.expire(0.0) is None
    reassembler.feed(pieces[0], 5.0)
    assert reassembler.expire(6.0) == 7.0
    assert reassembler.expire(7.0) is None
    assert reassembler.counters["timeouts"] == 1
    assert reassembler.pending == 0


def test_oldest_partial_is_evicted_when_full() -> None:
    reassembler = Reassembler(max_pending=3)
    for frag_id in range(4):
        assert reassembler.feed(Fragment(frag_id, 0, 2, b"a"), 0.1 * frag_id) is None
    assert reassembler.counters["evicted"] == 1
    assert reassembler.pending == 3
    # id 0 was evicted: its second piece starts a new partial, evicting id 1, ...
    assert reassembler.feed(Fragment(0, 1, 2, b"b"), 0.5) is None
    assert reassembler.feed(Fragment(1, 1, 2, b"b"), 0.5) is None  # ... which evicts id 2
    assert reassembler.counters["evicted"] == 3
    assert reassembler.feed(Fragment(3, 1, 2, b"b"), 0.5) == b"ab"


def test_count_mismatch_discards_partial() -> None:
    reassembler = Reassembler()
    reassembler.feed(Fragment(7, 0, 3, b"a"), 0.0)
    assert reassembler.feed(Fragment(7, 1, 2, b"b"), 0.0) is None
    assert reassembler.counters["bad_fragment"] == 1
    assert reassembler.pending == 0


@pytest.mark.parametrize(
    "bad", [Fragment(7, 3, 3, b"x"), Fragment(7, 0, 1, b"x"), Fragment(7, 1, 3, b"")]
)
def test_impossible_piece_discards_partial(bad: Fragment) -> None:
    reassembler = Reassembler()
    reassembler.feed(Fragment(7, 0, 3, b"a"), 0.0)
    assert reassembler.feed(bad, 0.0) is None
    assert reassembler.counters["bad_fragment"] == 1
    assert reassembler.pending == 0


def test_oversize_total_discards_partial() -> None:
    reassembler = Reassembler(max_frame=100)
    reassembler.feed(Fragment(1, 0, 3, b"a" * 60), 0.0)
    assert reassembler.feed(Fragment(1, 1, 3, b"b" * 41), 0.0) is None
    assert reassembler.counters["bad_fragment"] == 1
    assert reassembler.pending == 0
    reassembler.feed(Fragment(2, 0, 2, b"a" * 60), 0.0)
    assert reassembler.feed(Fragment(2, 1, 2, b"b" * 40), 0.0) == b"a" * 60 + b"b" * 40


def test_fragment_id_reusable_after_completion() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(Fragment(5, 0, 2, b"a"), 0.0) is None
    assert reassembler.feed(Fragment(5, 1, 2, b"b"), 0.0) == b"ab"
    assert reassembler.feed(Fragment(5, 1, 2, b"d"), 0.0) is None
    assert reassembler.feed(Fragment(5, 0, 2, b"c"), 0.0) == b"cd"
    assert reassembler.counters["reassembled"] == 2


def test_hello_carries_the_blocked_and_floods_flags() -> None:
    datagram = encode_hello("london", want_reply=True, offload=False, blocked=True,
                            floods=True)
    assert datagram[1] == 0x0D
    assert decode(datagram) == Hello("london", True, False, True, True)
    assert decode(encode_hello("london", False)).blocked is False


def test_a_flooded_frame_has_a_type_of_its_own() -> None:
    frag = Fragmenter(100)
    frame = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"x" * 28
    (flooded,) = frag.split_flooded(frame)
    assert flooded[:4] == b"\x19\x00\x00\x00"
    assert decode(flooded) == Frame(frame)
    big = frame + b"y" * 200
    assert frag.split_flooded(big) == Fragmenter(100).split(big)  # fragments stay fragments
    assert [d[:1] for d in frag.split_flooded(frame, 40)] == [b"\x12"] * 2  # a path's room
    assert frag.split_flooded(frame, 1000)[0][:1] == b"\x19"  # a TCP link's room


# ---------------------------------------------------------------- reach messages

KEY = bytes(range(32))


def test_reach_messages_round_trip() -> None:
    from l2bridge.core.wire import Ask, Hint, Relayed, encode_ask, encode_hint, encode_relay

    assert decode(encode_ask(KEY)) == Ask(KEY)
    assert decode(encode_hint(KEY, "198.18.1.2", 55555, True)) == Hint(KEY, "198.18.1.2", 55555,
                                                                       True)
    assert decode(encode_hint(KEY, "2001:db8::7", 1, False)) == Hint(KEY, "2001:db8::7", 1,
                                                                     False)
    assert decode(encode_relay(KEY, b"\x04sealed", to=True)) == Relayed(KEY, b"\x04sealed", True)
    assert decode(encode_relay(KEY, b"\x01init", to=False)) == Relayed(KEY, b"\x01init", False)


@pytest.mark.parametrize("datagram", [
    b"\x15\x00\x00\x00" + KEY[:31],  # a short key
    b"\x15\x01\x00\x00" + KEY,  # ASK with flags
    b"\x15\x00\x00\x00" + KEY + b"x",  # ASK with a tail
    b"\x16\x00\x00\x00" + KEY + bytes(4),  # HINT port 0
    b"\x16\x00\xd9\x03" + KEY + bytes(5),  # HINT address of 5 bytes
    b"\x16\x04\xd9\x03" + KEY + bytes(4),  # HINT unknown flag
    b"\x17\x00\x00\x00" + KEY,  # RELAY_TO without a datagram
    b"\x18\x00\x00\x01" + KEY + b"x",  # RELAYED with b2b3 set
])
def test_malformed_reach_messages_are_wire_errors(datagram: bytes) -> None:
    with pytest.raises(WireError):
        decode(datagram)


@given(st.binary(min_size=1, max_size=80))
def test_reach_decode_raises_only_wire_errors(tail: bytes) -> None:
    for kind in (0x15, 0x16, 0x17, 0x18):
        with contextlib.suppress(WireError):
            decode(bytes((kind,)) + tail)


def test_fragment_ids_of_a_worker_stride_by_the_workers() -> None:
    fragmenter = Fragmenter(104, first_id=1, stride=3)
    ids = [_fragments(fragmenter.split(_frame(300, i)))[0].frag_id for i in range(4)]
    assert ids == [1, 4, 7, 10]
    assert len(fragmenter.split_within(_frame(300), 400)) == 1  # a TCP link's room
    assert len(fragmenter.split_within(_frame(300), 50)) == 6  # a relayed path's
