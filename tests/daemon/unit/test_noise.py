"""Noise IKpsk2 handshake and data packets.

1. The Noise core against a published test vector, byte for byte.
2. Interoperation in both roles with an independent Noise implementation
   (PyPI ``noiseprotocol``), standard protocol name + l2bridge's prologue.
3. Domain separation: l2bridge's own protocol name never interoperates.
4. WireGuard framing: sizes, layouts, mac1, indices, every refusal reason.
5. Data packets: layout, round trip, authenticated header; hypothesis on
   every parser and on bit flips.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.core.keys import KeyFormatError, generate_private_key, generate_psk, public_key
from l2bridge.core.noise import (
    CONSTRUCTION,
    DATA_HEADER_LEN,
    INITIATION_LEN,
    L2B_CONSTRUCTION,
    L2B_IDENTIFIER,
    LABEL_MAC1,
    MSG_DATA,
    MSG_INITIATION,
    MSG_RESPONSE,
    RESPONSE_LEN,
    TAG_LEN,
    WIREGUARD_IDENTIFIER,
    HandshakeError,
    Identity,
    InitiatorState,
    Keypair,
    NoiseIKpsk2,
    PeerKeys,
    consume_initiation,
    create_initiation,
    mac1_valid,
    message_type,
    open_data,
    parse_data_header,
    parse_data_header_lane,
    seal,
    tai64n,
)

VECTORS = Path(__file__).parent / "vectors"
TS = tai64n(1_700_000_000.5)

# Fixed keys so failures reproduce.
A_PRIVATE = bytes.fromhex("a8" + "11" * 30 + "51")
B_PRIVATE = bytes.fromhex("b0" + "22" * 30 + "62")
A_PUBLIC = public_key(A_PRIVATE)
B_PUBLIC = public_key(B_PRIVATE)
PSK = bytes(range(32))


def _nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def _mac1(receiver_public: bytes, body: bytes) -> bytes:
    """mac1 computed independently of the code under test."""
    key = hashlib.blake2s(LABEL_MAC1 + receiver_public).digest()
    return hashlib.blake2s(body, digest_size=16, key=key).digest()


class _Sites:
    """Two sites, each knowing the other: a initiates to b."""

    def __init__(
        self,
        psk: bytes | None = PSK,
        construction: bytes = L2B_CONSTRUCTION,
        identifier: bytes = L2B_IDENTIFIER,
    ) -> None:
        self.a = Identity(A_PRIVATE, construction=construction, identifier=identifier)
        self.b = Identity(B_PRIVATE, construction=construction, identifier=identifier)
        self.a_knows_b = PeerKeys(self.a, B_PUBLIC, psk)
        self.b_knows_a = PeerKeys(self.b, A_PUBLIC, psk)

    def lookup_at_b(self, public: bytes) -> PeerKeys | None:
        return self.b_knows_a if public == A_PUBLIC else None

    def handshake(self) -> tuple[Keypair, Keypair]:
        init, state = create_initiation(self.a, self.a_knows_b, 0x11223344, TS)
        responder = consume_initiation(self.b, init, self.lookup_at_b)
        response, kb = responder.create_response(0x55667788)
        ka = state.consume_response(response)
        return ka, kb


# ---------------------------------------------------------------- 1. test vector


def test_cacophony_vector_byte_for_byte() -> None:
    vector = json.loads((VECTORS / "noise_ikpsk2_cacophony.json").read_text())
    assert vector["name"] == CONSTRUCTION.decode()
    x = bytes.fromhex
    messages = [(x(m["payload"]), x(m["ciphertext"])) for m in vector["messages"]]
    init = NoiseIKpsk2(
        initiator=True,
        s_private=x(vector["init_static"]),
        rs=x(vector["init_remote_static"]),
        psk=x(vector["init_psk"]),
        prologue=x(vector["init_prologue"]),
        e_private=x(vector["init_ephemeral"]),
    )
    resp = NoiseIKpsk2(
        initiator=False,
        s_private=x(vector["resp_static"]),
        psk=x(vector["resp_psk"]),
        prologue=x(vector["resp_prologue"]),
        e_private=x(vector["resp_ephemeral"]),
    )
    assert init.write_message(messages[0][0]) == messages[0][1]
    assert resp.read_message(messages[0][1]) == messages[0][0]
    assert resp.rs == init.s_public
    assert resp.write_message(messages[1][0]) == messages[1][1]
    assert init.read_message(messages[1][1]) == messages[1][0]
    assert init.h == resp.h  # same handshake hash on both sides
    # Transport messages: initiator -> responder at even positions, each direction counting from 0.
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    assert (i_send, i_recv) == (r_recv, r_send)
    counters = {True: 0, False: 0}
    for position, (payload, ciphertext) in enumerate(messages[2:]):
        from_initiator = position % 2 == 0
        key = i_send if from_initiator else r_send
        counter = counters[from_initiator]
        counters[from_initiator] += 1
        assert ChaCha20Poly1305(key).encrypt(_nonce(counter), payload, b"") == ciphertext
    assert counters == {True: 2, False: 2}


def test_vector_message_sizes() -> None:
    # Message 1 of IKpsk2: e (32) + s (32 + 16) + payload + 16; message 2: e (32) + payload + 16.
    vector = json.loads((VECTORS / "noise_ikpsk2_cacophony.json").read_text())
    m1, m2 = vector["messages"][:2]
    assert len(m1["ciphertext"]) // 2 == 96 + len(m1["payload"]) // 2
    assert len(m2["ciphertext"]) // 2 == 48 + len(m2["payload"]) // 2


# ---------------------------------------------------------------- 2. oracle interop


def _oracle(initiator: bool, private: bytes, remote: bytes | None, psk: bytes, prologue: bytes):  # noqa: ANN202
    """The independent implementation (test extra ``noiseprotocol``); skips only its caller."""
    noise_oracle = pytest.importorskip(
        "noise.connection", reason="test extra noiseprotocol missing"
    )
    conn = noise_oracle.NoiseConnection.from_name(CONSTRUCTION)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(noise_oracle.Keypair.STATIC, private)
    if remote is not None:
        conn.set_keypair_from_public_bytes(noise_oracle.Keypair.REMOTE_STATIC, remote)
    conn.set_psks(psk=psk)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("psk", [PSK, None])
def test_oracle_as_responder(psk: bytes | None) -> None:
    """Our initiator (standard name, our prologue) against the oracle's responder."""
    a = Identity(A_PRIVATE, construction=CONSTRUCTION, identifier=L2B_IDENTIFIER)
    peer = PeerKeys(a, B_PUBLIC, psk)
    init, state = create_initiation(a, peer, 41, TS)
    oracle = _oracle(False, B_PRIVATE, None, psk or bytes(32), L2B_IDENTIFIER)
    assert bytes(oracle.read_message(init[8:116])) == TS
    noise_response = bytes(oracle.write_message(b""))
    assert len(noise_response) == 48
    body = struct.pack("<III", MSG_RESPONSE, 77, 41) + noise_response
    response = body + _mac1(A_PUBLIC, body) + bytes(16)
    keypair = state.consume_response(response)
    assert (keypair.local_index, keypair.remote_index, keypair.initiator) == (41, 77, True)
    # Transport keys agree both ways (the oracle counts nonces from 0, empty AD).
    assert (
        ChaCha20Poly1305(keypair.recv_key).decrypt(_nonce(0), bytes(oracle.encrypt(b"to a")), b"")
        == b"to a"
    )
    ours = ChaCha20Poly1305(keypair.send_key).encrypt(_nonce(0), b"to b", b"")
    assert bytes(oracle.decrypt(ours)) == b"to b"


@pytest.mark.parametrize("psk", [PSK, None])
def test_oracle_as_initiator(psk: bytes | None) -> None:
    """The oracle's initiator against our responder, framed as a WireGuard initiation."""
    b = Identity(B_PRIVATE, construction=CONSTRUCTION, identifier=L2B_IDENTIFIER)
    knows_a = PeerKeys(b, A_PUBLIC, psk)
    oracle = _oracle(True, A_PRIVATE, B_PUBLIC, psk or bytes(32), L2B_IDENTIFIER)
    noise_init = bytes(oracle.write_message(TS))
    assert len(noise_init) == 108
    body = struct.pack("<II", MSG_INITIATION, 1234) + noise_init
    init = body + _mac1(B_PUBLIC, body) + bytes(16)
    assert len(init) == INITIATION_LEN
    responder = consume_initiation(b, init, lambda pub: knows_a if pub == A_PUBLIC else None)
    assert responder.peer is knows_a
    assert responder.timestamp == TS
    assert responder.remote_index == 1234
    response, keypair = responder.create_response(99)
    assert len(response) == RESPONSE_LEN
    assert bytes(oracle.read_message(response[12:60])) == b""
    assert oracle.handshake_finished
    assert (
        ChaCha20Poly1305(keypair.recv_key).decrypt(_nonce(0), bytes(oracle.encrypt(b"to b")), b"")
        == b"to b"
    )
    ours = ChaCha20Poly1305(keypair.send_key).encrypt(_nonce(0), b"to a", b"")
    assert bytes(oracle.decrypt(ours)) == b"to a"


# ---------------------------------------------------------------- 3. domain separation


def test_production_construction_does_not_interoperate_with_the_standard() -> None:
    a = Identity(A_PRIVATE)  # l2bridge's own name and prologue
    assert a.construction == L2B_CONSTRUCTION != CONSTRUCTION
    init, _ = create_initiation(a, PeerKeys(a, B_PUBLIC, PSK), 1, TS)
    oracle = _oracle(False, B_PRIVATE, None, PSK, L2B_IDENTIFIER)
    with pytest.raises(Exception):  # noqa: B017 - the oracle raises its own InvalidTag wrapper
        oracle.read_message(init[8:116])
    # And our own responder configured with the standard name refuses it too.
    b_standard = Identity(B_PRIVATE, construction=CONSTRUCTION, identifier=L2B_IDENTIFIER)
    knows_a = PeerKeys(b_standard, A_PUBLIC, PSK)
    with pytest.raises(HandshakeError) as info:
        consume_initiation(b_standard, init, lambda pub: knows_a)
    assert info.value.reason == "bad_decrypt"


@pytest.mark.parametrize(
    ("construction", "identifier"),
    [(CONSTRUCTION, WIREGUARD_IDENTIFIER), (CONSTRUCTION, L2B_IDENTIFIER), (L2B_CONSTRUCTION, b"")],
)
def test_other_names_or_prologues_refused(construction: bytes, identifier: bytes) -> None:
    other = Identity(A_PRIVATE, construction=construction, identifier=identifier)
    init, _ = create_initiation(other, PeerKeys(other, B_PUBLIC, PSK), 1, TS)
    sites = _Sites()
    assert mac1_valid(sites.b, init)  # mac1 does not depend on the protocol name
    with pytest.raises(HandshakeError) as info:
        consume_initiation(sites.b, init, sites.lookup_at_b)
    assert info.value.reason == "bad_decrypt"


# ---------------------------------------------------------------- 4. WireGuard framing


def test_handshake_layout_and_keys() -> None:
    sites = _Sites()
    init, state = create_initiation(sites.a, sites.a_knows_b, 0x11223344, TS)
    assert len(init) == INITIATION_LEN == 148
    assert init[:4] == b"\x01\x00\x00\x00"
    assert init[4:8] == bytes.fromhex("44332211")
    assert init[116:132] == _mac1(B_PUBLIC, init[:116])
    assert init[132:148] == bytes(16)  # mac2: no cookies
    assert message_type(init) == MSG_INITIATION
    assert mac1_valid(sites.b, init) and not mac1_valid(sites.a, init)
    responder = consume_initiation(sites.b, init, sites.lookup_at_b)
    assert responder.timestamp == TS and responder.remote_index == 0x11223344
    response, kb = responder.create_response(0x55667788)
    assert len(response) == RESPONSE_LEN == 92
    assert response[:12] == b"\x02\x00\x00\x00" + bytes.fromhex("8877665544332211")
    assert response[60:76] == _mac1(A_PUBLIC, response[:60])
    assert response[76:92] == bytes(16)
    assert message_type(response) == MSG_RESPONSE
    assert mac1_valid(sites.a, response)
    ka = state.consume_response(response)
    assert ka.send_key == kb.recv_key and ka.recv_key == kb.send_key
    assert ka.send_key != ka.recv_key
    assert (ka.local_index, ka.remote_index, ka.initiator) == (0x11223344, 0x55667788, True)
    assert (kb.local_index, kb.remote_index, kb.initiator) == (0x55667788, 0x11223344, False)


def test_fixed_ephemerals_are_deterministic_and_fresh_ones_differ() -> None:
    sites = _Sites()
    e = bytes([0x48] * 32)
    one, _ = create_initiation(sites.a, sites.a_knows_b, 1, TS, ephemeral_private=e)
    two, _ = create_initiation(sites.a, sites.a_knows_b, 1, TS, ephemeral_private=e)
    three, _ = create_initiation(sites.a, sites.a_knows_b, 1, TS)
    assert one == two != three
    assert one[8:40] == X25519PrivateKey.from_private_bytes(e).public_key().public_bytes_raw()


def test_sessions_differ_per_handshake() -> None:
    sites = _Sites()
    first, _ = sites.handshake()
    second, _ = sites.handshake()
    assert first.send_key != second.send_key


def test_without_psk_and_psk_mismatch() -> None:
    ka, kb = _Sites(psk=None).handshake()
    assert ka.send_key == kb.recv_key
    sites = _Sites()
    sites.b_knows_a = PeerKeys(sites.b, A_PUBLIC, generate_psk())
    init, state = create_initiation(sites.a, sites.a_knows_b, 1, TS)
    response, _ = consume_initiation(sites.b, init, sites.lookup_at_b).create_response(2)
    with pytest.raises(HandshakeError) as info:
        state.consume_response(response)
    assert info.value.reason == "bad_decrypt"


def _reason(call, *args) -> str:  # noqa: ANN001
    with pytest.raises(HandshakeError) as info:
        call(*args)
    return info.value.reason


def test_initiation_refusals() -> None:
    sites = _Sites()
    init, _ = create_initiation(sites.a, sites.a_knows_b, 1, TS)
    consume = consume_initiation
    lookup = sites.lookup_at_b
    assert _reason(consume, sites.b, init[:-1], lookup) == "bad_length"
    assert _reason(consume, sites.b, init + b"\x00", lookup) == "bad_length"
    assert _reason(consume, sites.b, b"\x01\x00\x00\x01" + init[4:], lookup) == "bad_type"
    assert _reason(consume, sites.b, b"\x02" + init[1:], lookup) == "bad_type"
    flipped = bytearray(init)
    flipped[50] ^= 1
    assert _reason(consume, sites.b, bytes(flipped), lookup) == "bad_mac1"
    assert _reason(consume, sites.a, init, lambda pub: None) == "bad_mac1"  # not for us
    assert _reason(consume, sites.b, init, lambda pub: None) == "unknown_peer"
    # Valid mac1 over a corrupted body: mac1 alone cannot make it pass.
    for offset in (9, 45, 100):
        body = bytearray(init[:116])
        body[offset] ^= 0x80
        forged = bytes(body) + _mac1(B_PUBLIC, bytes(body)) + bytes(16)
        reason = _reason(consume, sites.b, forged, lookup)
        assert reason in ("bad_decrypt", "low_order"), (offset, reason)
    # A low-order ephemeral key: the first DH is all-zero.
    low = init[:8] + bytes(32) + init[40:116]
    low += _mac1(B_PUBLIC, low) + bytes(16)
    assert _reason(consume, sites.b, low, lookup) == "low_order"
    # mac2 is ignored: l2bridge never hands out cookies.
    assert consume(sites.b, init[:132] + b"\xff" * 16, lookup).timestamp == TS


def test_response_refusals_leave_the_handshake_usable() -> None:
    sites = _Sites()
    init, state = create_initiation(sites.a, sites.a_knows_b, 7, TS)
    response, kb = consume_initiation(sites.b, init, sites.lookup_at_b).create_response(8)
    consume = state.consume_response
    assert _reason(consume, response[:-1]) == "bad_length"
    assert _reason(consume, b"\x01" + response[1:]) == "bad_type"
    assert _reason(consume, response[:70] + b"\x00" * 6 + response[76:]) == "bad_mac1"
    other_index = response[:8] + struct.pack("<I", 6) + response[12:60]
    assert _reason(consume, other_index + _mac1(A_PUBLIC, other_index) + bytes(16)) == "bad_index"
    corrupt = bytearray(response[:60])
    corrupt[50] ^= 4
    body = bytes(corrupt)
    assert _reason(consume, body + _mac1(A_PUBLIC, body) + bytes(16)) == "bad_decrypt"
    low = response[:12] + bytes(32) + response[44:60]
    assert _reason(consume, low + _mac1(A_PUBLIC, low) + bytes(16)) == "low_order"
    ka = consume(response)  # after every forgery, the real response still completes
    assert ka.recv_key == kb.send_key
    assert _reason(consume, response) == "replay"  # and only once


def test_response_created_once() -> None:
    sites = _Sites()
    init, _ = create_initiation(sites.a, sites.a_knows_b, 7, TS)
    responder = consume_initiation(sites.b, init, sites.lookup_at_b)
    responder.create_response(8)
    assert _reason(responder.create_response, 9) == "replay"


def test_low_order_peer_keys_refused() -> None:
    a = Identity(A_PRIVATE)
    for bad in (bytes(32), bytes([1]) + bytes(31), b"\xff" * 32):
        with pytest.raises(HandshakeError) as info:
            PeerKeys(a, bad)
        assert info.value.reason == "low_order"
        assert "small order" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(KeyFormatError):
        PeerKeys(a, bytes(31))
    with pytest.raises(KeyFormatError):
        PeerKeys(a, B_PUBLIC, bytes(16))
    with pytest.raises(KeyFormatError):
        Identity(bytes(31))


def test_reprs_show_no_key_material() -> None:
    sites = _Sites()
    ka, _ = sites.handshake()
    texts = [repr(sites.a), repr(sites.a_knows_b), repr(ka)]
    secrets = [A_PRIVATE, PSK, ka.send_key, ka.recv_key, sites.a_knows_b.ss]
    for text in texts:
        for secret in secrets:
            assert secret.hex()[:16] not in text
            assert repr(secret)[2:18] not in text
    assert "psk=yes" in repr(sites.a_knows_b)


def test_initiator_state_type() -> None:
    sites = _Sites()
    _, state = create_initiation(sites.a, sites.a_knows_b, 1, TS)
    assert isinstance(state, InitiatorState) and state.local_index == 1


def test_tai64n() -> None:
    assert tai64n(0) == bytes.fromhex("400000000000000a00000000")
    assert tai64n(1.0) == bytes.fromhex("400000000000000b00000000")
    # Nanoseconds whitened to multiples of 2**24 ns (~16.8 ms).
    assert tai64n(0.5)[8:] == (500_000_000 & ~0xFFFFFF).to_bytes(4, "big")
    assert tai64n(0.001) == tai64n(0.0)
    stamps = [tai64n(1_700_000_000 + i * 0.02) for i in range(100)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 100


def test_message_type() -> None:
    assert message_type(b"\x04\x00\x00\x00rest") == MSG_DATA
    assert message_type(b"\x04\x07\x00\x00rest") == MSG_DATA  # lane 7
    assert message_type(b"\x04\xff\x00\x00rest") == MSG_DATA  # lane 255
    assert message_type(b"\x04\x00\x00\x01rest") == 0
    assert message_type(b"\x04\x00\x01\x00rest") == 0
    # Only DATA has a lane: byte 1 of a handshake message is reserved.
    assert message_type(b"\x01\x00\x00\x00rest") == MSG_INITIATION
    assert message_type(b"\x01\x07\x00\x00rest") == 0
    assert message_type(b"\x02\x07\x00\x00rest") == 0
    assert message_type(b"\x04\x00\x00") == 0
    assert message_type(b"") == 0


# ---------------------------------------------------------------- 5. data packets


def test_data_layout_and_authenticated_header() -> None:
    ka, kb = _Sites().handshake()
    datagram = seal(ka, 5, b"frame")
    assert len(datagram) == DATA_HEADER_LEN + 5 + TAG_LEN
    assert datagram[:16] == struct.pack("<IIQ", 4, kb.local_index, 5)
    assert parse_data_header(datagram) == (kb.local_index, 5)
    # The payload is ChaCha20-Poly1305 with nonce = 4 zero bytes || counter and AD = header.
    aead = ChaCha20Poly1305(kb.recv_key)
    assert aead.decrypt(_nonce(5), datagram[16:], datagram[:16]) == b"frame"
    assert open_data(kb, datagram) == b"frame"
    # Same ciphertext, any other header: refused.
    for header in (
        struct.pack("<IIQ", 4, kb.local_index + 1, 5),
        struct.pack("<IIQ", 4, kb.local_index, 6),
        struct.pack("<IIQ", 4 | 1 << 24, kb.local_index, 5),
    ):
        assert _reason(open_data, kb, header + datagram[16:]) == "bad_decrypt"
    assert open_data(kb, seal(ka, 0, b"")) == b""  # keepalive
    assert open_data(ka, seal(kb, 2**64 - 1, b"x" * 1500)) == b"x" * 1500
    assert _reason(open_data, ka, datagram) == "bad_decrypt"  # wrong direction


def test_data_header_refusals() -> None:
    assert _reason(parse_data_header, b"\x04" + bytes(30)) == "bad_length"
    assert _reason(parse_data_header, b"\x03" + bytes(31)) == "bad_type"
    assert _reason(parse_data_header, b"\x04\x00\x01\x00" + bytes(28)) == "bad_type"
    ka, _ = _Sites().handshake()
    assert _reason(open_data, ka, bytes(31)) == "bad_length"
    # Any lane is a DATA header; bytes 2..3 stay reserved.
    assert parse_data_header(b"\x04\x09\x00\x00" + bytes(28)) == (0, 0)
    for bad in (b"\x04\x09\x01\x00", b"\x04\x09\x00\x80", b"\x04\x00\x00\x01", b"\x05\x09\x00\x00"):
        assert _reason(parse_data_header_lane, bad + bytes(28)) == "bad_type"
        assert _reason(parse_data_header, bad + bytes(28)) == "bad_type"
    assert _reason(parse_data_header_lane, b"\x04\x09" + bytes(29)) == "bad_length"


def test_data_lane_layout() -> None:
    ka, kb = _Sites().handshake()
    # Lane 0 is the original layout, byte for byte (same keys, same nonce: same bytes).
    assert seal(ka, 5, b"frame", 0) == seal(ka, 5, b"frame")
    assert seal(ka, 5, b"frame")[:16] == struct.pack("<IIQ", 4, kb.local_index, 5)
    assert parse_data_header_lane(seal(ka, 5, b"frame")) == (kb.local_index, 5, 0)
    # Lane 7: byte 1 carries it, and the packet opens.
    datagram = seal(ka, 9, b"frame", 7)
    assert datagram[:4] == b"\x04\x07\x00\x00"
    assert datagram[4:16] == struct.pack("<IQ", kb.local_index, 9)
    assert parse_data_header_lane(datagram) == (kb.local_index, 9, 7)
    assert parse_data_header(datagram) == (kb.local_index, 9)
    assert message_type(datagram) == MSG_DATA
    assert open_data(kb, datagram) == b"frame"
    assert parse_data_header_lane(seal(ka, 1, b"", 255))[2] == 255
    # The lane is associated data: moving the packet to another lane fails the tag.
    for lane in (0, 6, 8, 255):
        moved = datagram[:1] + bytes((lane,)) + datagram[2:]
        assert parse_data_header_lane(moved) == (kb.local_index, 9, lane)
        assert _reason(open_data, kb, moved) == "bad_decrypt"


SITES = _Sites()
KA, KB = SITES.handshake()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parsers_raise_only_handshake_error(data: bytes) -> None:
    for call in (
        lambda d: consume_initiation(SITES.b, d, SITES.lookup_at_b),
        lambda d: parse_data_header(d),
        lambda d: parse_data_header_lane(d),
        lambda d: open_data(KB, d),
    ):
        try:
            call(data)
        except HandshakeError as exc:
            assert exc.reason in ("bad_length", "bad_type", "bad_mac1", "bad_decrypt")
    _, state = create_initiation(SITES.a, SITES.a_knows_b, 3, TS)
    with pytest.raises(HandshakeError):
        state.consume_response(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=INITIATION_LEN * 8 - 1))
def test_structured_fuzz_initiation_with_valid_mac1(bit: int) -> None:
    """Any bit flip in the Noise part, even with mac1 recomputed, is refused."""
    init, _ = create_initiation(SITES.a, SITES.a_knows_b, 3, TS)
    flipped = bytearray(init)
    flipped[bit // 8] ^= 1 << (bit % 8)
    body = bytes(flipped[:116])
    forged = body + _mac1(B_PUBLIC, body) + bytes(flipped[132:])
    try:
        responder = consume_initiation(SITES.b, forged, SITES.lookup_at_b)
    except HandshakeError:
        return
    # Only the sender index, mac1 (recomputed) and mac2 (ignored) may change.
    assert bit // 8 in range(4, 8) or bit // 8 >= 116
    assert responder.timestamp == TS


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=1600), counter=st.integers(min_value=0, max_value=2**64 - 1))
def test_seal_open_round_trip(payload: bytes, counter: int) -> None:
    datagram = seal(KA, counter, payload)
    assert parse_data_header(datagram) == (KB.local_index, counter)
    assert open_data(KB, datagram) == payload


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=200),
    counter=st.integers(min_value=0, max_value=2**64 - 1),
    lane=st.integers(min_value=0, max_value=255),
)
def test_seal_open_round_trip_on_any_lane(payload: bytes, counter: int, lane: int) -> None:
    datagram = seal(KA, counter, payload, lane)
    assert parse_data_header_lane(datagram) == (KB.local_index, counter, lane)
    assert message_type(datagram) == MSG_DATA
    assert open_data(KB, datagram) == payload


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=100), counter=st.integers(0, 2**64 - 1), data=st.data())
def test_any_bit_flip_fails_to_open(payload: bytes, counter: int, data: st.DataObject) -> None:
    datagram = bytearray(seal(KA, counter, payload))
    bit = data.draw(st.integers(min_value=0, max_value=len(datagram) * 8 - 1))
    datagram[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HandshakeError) as info:
        open_data(KB, bytes(datagram))
    assert info.value.reason == "bad_decrypt"


def test_independent_keys_from_random_identities() -> None:
    a_private, b_private = generate_private_key(), generate_private_key()
    a, b = Identity(a_private), Identity(b_private)
    a_knows_b = PeerKeys(a, public_key(b_private))
    b_knows_a = PeerKeys(b, public_key(a_private))
    init, state = create_initiation(a, a_knows_b, 1, TS)
    response, kb = consume_initiation(b, init, lambda pub: b_knows_a).create_response(2)
    ka = state.consume_response(response)
    assert open_data(kb, seal(ka, 0, b"hello")) == b"hello"
    assert open_data(ka, seal(kb, 0, b"world")) == b"world"
