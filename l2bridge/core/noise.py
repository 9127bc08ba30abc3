"""Handshake and data packets: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard builds it.

Two layers:

* The Noise core (``NoiseIKpsk2`` and the ``_m1_*``/``_m2_*`` step functions):
  the IKpsk2 pattern exactly as the Noise specification (revision 34) defines
  it, for any protocol name, prologue and payloads, with optional fixed
  ephemeral keys. It is checked byte for byte against a published test vector
  (``tests/unit/vectors/``) with the standard name ``CONSTRUCTION``::

      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se, psk

* The WireGuard framing on top (``create_initiation``, ``consume_initiation``,
  ``InitiatorState.consume_response``, ``ResponderState.create_response``,
  ``seal``/``open_data``): WireGuard's message layouts and sizes, sender and
  receiver indices, mac1, a TAI64N timestamp as the first payload, an empty
  second payload, an all-zero pre-shared key when none is configured. It runs
  with l2bridge's own protocol name ``L2B_CONSTRUCTION`` and prologue
  ``L2B_IDENTIFIER`` by default, so it never completes a handshake with
  WireGuard or any other Noise peer by accident (domain separation).

Message layouts (little-endian integers; as WireGuard)::

    initiation (148): type=1 | 3 zero | sender u32 | ephemeral 32 | static 32+16
                      | timestamp 12+16 | mac1 16 | mac2 16
    response    (92): type=2 | 3 zero | sender u32 | receiver u32 | ephemeral 32
                      | empty 0+16 | mac1 16 | mac2 16
    data      (32+n): type=4 | lane u8 | 2 zero | receiver u32 | counter u64 | AEAD(frame) n+16

The data header's second byte is l2bridge's *lane* (0..255; WireGuard has a
zero there, and lane 0 is exactly WireGuard's layout). A site running several
worker processes on one keypair gives each its own lane: the worker of lane
``L`` of ``N`` seals only counters ``L, L + N, L + 2N, ...``, so nonces never
collide, and the receiving kernel steers a datagram to a worker by its lane.
The receiver keeps one replay window per lane. The whole 16-byte header,
lane included, is the AEAD's associated data.

mac1 = keyed-BLAKE2s-128(key = BLAKE2s(LABEL_MAC1 || receiver's static public),
message up to mac1). mac2 is always zero and never checked: l2bridge sends no
cookie replies (it stays silent to the unauthenticated and rate-limits
handshakes per source instead), so no peer ever holds a cookie.

Handshake flow (initiator I, responder R):
  1. I: ``create_initiation`` -> 148 bytes + ``InitiatorState``.
  2. R: ``mac1_valid`` (one keyed hash, before any DH: cheap rejection), then
     ``consume_initiation`` -> ``ResponderState`` (peer, timestamp, sender
     index). The caller rejects a timestamp not newer than the last one
     accepted from that peer (handshake replay), then
  3. R: ``ResponderState.create_response`` -> 92 bytes + ``Keypair``.
  4. I: ``InitiatorState.consume_response`` -> ``Keypair``.

Data flow per packet:
  Outbound: 1. ``seal``: pack the 16-byte header 2. one AEAD call (nonce =
  4 zero bytes || counter u64le; associated data = the header).
  Inbound: 1. ``parse_data_header_lane`` (length, type) -> receiver index,
  counter, lane 2. caller: keypair by index, the lane's
  ``ReplayWindow.check(counter)`` 3. ``open_data`` (one AEAD call) 4. caller:
  ``ReplayWindow.update(counter)`` and the peer's endpoint only now, after the
  tag verified.

Invariants: every parser (``consume_initiation``, ``consume_response``,
``parse_data_header``, ``parse_data_header_lane``, ``open_data``) raises
nothing but ``HandshakeError`` on any bytes; a failed ``consume_response``
leaves the ``InitiatorState`` usable (a forgery cannot cancel a handshake in
progress); each ``InitiatorState`` and ``ResponderState`` yields at most one
``Keypair`` (a replayed response cannot reset a session's nonces); no
``repr`` shows key material.

Pure module: imports neither trio, socket nor pyroute2.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from l2bridge.core.keys import KEY_LEN, KeyFormatError, fingerprint, is_low_order

try:  # the DATA AEAD compiled (setup.py builds it when it can); else the same in Python
    from l2bridge.core import _sealer
except ImportError:  # pragma: no cover - depends on the build
    _sealer = None  # type: ignore[assignment]
# Whether new keypairs use the compiled sealer: L2BRIDGE_SEALER=python chooses the pure path.
COMPILED = _sealer is not None and os.environ.get("L2BRIDGE_SEALER", "") != "python"

# Specification constants (Noise, WireGuard).
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
WIREGUARD_IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"  # reference only: never used
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE = 3
MSG_DATA = 4
HASH_LEN = 32
DH_LEN = 32
TAG_LEN = 16
MAC_LEN = 16
TIMESTAMP_LEN = 12
INITIATION_LEN = 148
RESPONSE_LEN = 92
DATA_HEADER_LEN = 16
DATA_MIN_LEN = DATA_HEADER_LEN + TAG_LEN  # an empty payload is a keepalive
INITIATION_MAC1_OFFSET = 116
RESPONSE_MAC1_OFFSET = 60
TAI64_BASE = 0x400000000000000A  # TAI64 label of 1970-01-01 00:00:00 TAI
TAI64N_WHITENER_MASK = 0xFFFFFF  # low 24 bits of nanoseconds zeroed (~16.8 ms steps)

# l2bridge's own protocol: a different protocol name and prologue than
# WireGuard's or the standard's, so transcripts (and so keys) never match.
L2B_CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s+l2bridge-v1"
L2B_IDENTIFIER = b"l2bridge v1 layer-2 site link"

_ZERO_NONCE = bytes(12)
_NONCE_PAD = bytes(4)
_ZERO_MAC = bytes(MAC_LEN)
_ZERO_PSK = bytes(KEY_LEN)
_INITIATION_TYPE = bytes((MSG_INITIATION, 0, 0, 0))
_RESPONSE_TYPE = bytes((MSG_RESPONSE, 0, 0, 0))
_U32 = struct.Struct("<I")
_TWO_U32 = struct.Struct("<II")
_THREE_U32 = struct.Struct("<III")
_DATA_HEADER = struct.Struct("<IIQ")  # type | lane << 8 (bytes 2..3 zero), receiver, counter
_DATA_KIND_MASK = 0xFFFF00FF  # the first u32 without its lane byte
_LANE_SHIFT = 8
_TAI64N = struct.Struct(">QI")
_blake2s = hashlib.blake2s
_hmac_new = hmac.new
_compare = hmac.compare_digest


class HandshakeError(Exception):
    """A message that was refused; ``reason`` is a counter name.

    Reasons: ``bad_length``, ``bad_type`` (type byte or reserved bytes),
    ``bad_mac1``, ``bad_index`` (a response for another handshake),
    ``bad_decrypt`` (an AEAD tag failed), ``unknown_peer``, ``low_order``
    (a DH gave all-zero: a key of small order), ``replay`` (a handshake
    state asked for a second keypair).
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason


# ---------------------------------------------------------------- primitives


def _hash(data: bytes) -> bytes:
    return _blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return _hmac_new(key, data, _blake2s).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (WireGuard's ``Mac``)."""
    return _blake2s(data, digest_size=MAC_LEN, key=key).digest()


def _kdf1(ck: bytes, ikm: bytes) -> bytes:
    return _hmac(_hmac(ck, ikm), b"\x01")


def _kdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = _hmac(ck, ikm)
    t1 = _hmac(prk, b"\x01")
    return t1, _hmac(prk, t1 + b"\x02")


def _kdf3(ck: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    prk = _hmac(ck, ikm)
    t1 = _hmac(prk, b"\x01")
    t2 = _hmac(prk, t1 + b"\x02")
    return t1, t2, _hmac(prk, t2 + b"\x03")


def _encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Handshake AEAD: every handshake key encrypts exactly once, so the nonce is 0."""
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, ad)


def _decrypt(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, ad)
    except InvalidTag:
        raise HandshakeError("bad_decrypt") from None


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; ``HandshakeError("low_order")`` when the result is all-zero."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise HandshakeError("low_order") from None


def _private(raw: bytes | None) -> X25519PrivateKey:
    if raw is None:
        return X25519PrivateKey.generate()
    if len(raw) != KEY_LEN:
        raise KeyFormatError(f"private key: expected {KEY_LEN} bytes, found {len(raw)}")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _symmetric_init(protocol_name: bytes, prologue: bytes) -> tuple[bytes, bytes]:
    """Noise InitializeSymmetric + MixHash(prologue): return (ck, h)."""
    if len(protocol_name) <= HASH_LEN:
        h = protocol_name.ljust(HASH_LEN, b"\x00")
    else:
        h = _hash(protocol_name)
    return h, _hash(h + prologue)


# ---------------------------------------------------------------- Noise IKpsk2 steps
# Each step takes (ck, h) and returns new values: nothing is mutated, so a
# failing step leaves the caller's state as it was.


def _m1_write(
    ck: bytes,
    h: bytes,
    e: X25519PrivateKey,
    s_public: bytes,
    rs: bytes,
    ss: bytes,
    payload: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Initiator, message 1: ``e, es, s, ss`` + payload. Returns (ck, h, message)."""
    e_public = _public(e)
    h = _hash(h + e_public)
    ck = _kdf1(ck, e_public)  # psk modes also mix e into the key
    ck, k = _kdf2(ck, _dh(e, rs))
    static = _encrypt(k, s_public, h)
    h = _hash(h + static)
    ck, k = _kdf2(ck, ss)
    sealed = _encrypt(k, payload, h)
    h = _hash(h + sealed)
    return ck, h, e_public + static + sealed


def _m1_read_static(
    ck: bytes, h: bytes, s: X25519PrivateKey, message: bytes
) -> tuple[bytes, bytes, bytes, bytes]:
    """Responder, message 1 up to ``s``: returns (ck, h, re, rs)."""
    re = message[:DH_LEN]
    h = _hash(h + re)
    ck = _kdf1(ck, re)
    ck, k = _kdf2(ck, _dh(s, re))
    static = message[DH_LEN : DH_LEN + KEY_LEN + TAG_LEN]
    rs = _decrypt(k, static, h)
    return ck, _hash(h + static), re, rs


def _m1_read_payload(ck: bytes, h: bytes, ss: bytes, message: bytes) -> tuple[bytes, bytes, bytes]:
    """Responder, message 1 from ``ss``: returns (ck, h, payload)."""
    ck, k = _kdf2(ck, ss)
    sealed = message[DH_LEN + KEY_LEN + TAG_LEN :]
    payload = _decrypt(k, sealed, h)
    return ck, _hash(h + sealed), payload


def _m2_write(
    ck: bytes,
    h: bytes,
    e: X25519PrivateKey,
    re: bytes,
    rs: bytes,
    psk: bytes,
    payload: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Responder, message 2: ``e, ee, se, psk`` + payload. Returns (ck, h, message)."""
    e_public = _public(e)
    h = _hash(h + e_public)
    ck = _kdf1(ck, e_public)
    ck = _kdf1(ck, _dh(e, re))
    ck = _kdf1(ck, _dh(e, rs))
    ck, tau, k = _kdf3(ck, psk)
    h = _hash(h + tau)
    sealed = _encrypt(k, payload, h)
    return ck, _hash(h + sealed), e_public + sealed


def _m2_read(
    ck: bytes,
    h: bytes,
    e: X25519PrivateKey,
    s: X25519PrivateKey,
    psk: bytes,
    message: bytes,
) -> tuple[bytes, bytes, bytes]:
    """Initiator, message 2: returns (ck, h, payload)."""
    re = message[:DH_LEN]
    h = _hash(h + re)
    ck = _kdf1(ck, re)
    ck = _kdf1(ck, _dh(e, re))
    ck = _kdf1(ck, _dh(s, re))
    ck, tau, k = _kdf3(ck, psk)
    h = _hash(h + tau)
    sealed = message[DH_LEN:]
    payload = _decrypt(k, sealed, h)
    return ck, _hash(h + sealed), payload


class NoiseIKpsk2:
    """One side of a plain Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake.

    For test vectors and interoperability checks: any protocol name,
    prologue and payloads, fixed ephemeral keys. Messages are raw Noise
    messages (no WireGuard framing). Use: initiator ``write_message`` ->
    responder ``read_message`` -> responder ``write_message`` -> initiator
    ``read_message``; then ``split()`` gives (send key, receive key) for the
    transport phase (nonce = 4 zero bytes || counter u64le, as ChaChaPoly).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        s_private: bytes,
        rs: bytes | None = None,
        psk: bytes = _ZERO_PSK,
        protocol_name: bytes = CONSTRUCTION,
        prologue: bytes = b"",
        e_private: bytes | None = None,
    ) -> None:
        if initiator and rs is None:
            raise ValueError("an IK initiator needs the responder's static public key (rs)")
        self.initiator = initiator
        self._s = _private(s_private)
        self.s_public = _public(self._s)
        self._e = _private(e_private)
        self.rs = rs
        self.re: bytes | None = None
        self.psk = psk
        ck, h = _symmetric_init(protocol_name, prologue)
        responder_static = rs if initiator else self.s_public
        assert responder_static is not None
        self.ck = ck
        self.h = _hash(h + responder_static)
        self._step = 0

    def write_message(self, payload: bytes = b"") -> bytes:
        """Return message 1 (initiator) or message 2 (responder) carrying ``payload``."""
        if self.initiator and self._step == 0:
            assert self.rs is not None
            ss = _dh(self._s, self.rs)
            self.ck, self.h, message = _m1_write(
                self.ck, self.h, self._e, self.s_public, self.rs, ss, payload
            )
        elif not self.initiator and self._step == 1:
            assert self.re is not None and self.rs is not None
            self.ck, self.h, message = _m2_write(
                self.ck, self.h, self._e, self.re, self.rs, self.psk, payload
            )
        else:
            raise ValueError("write_message out of turn")
        self._step += 1
        return message

    def read_message(self, message: bytes) -> bytes:
        """Consume message 1 (responder) or 2 (initiator); return its payload."""
        if not self.initiator and self._step == 0:
            if len(message) < DH_LEN + KEY_LEN + 2 * TAG_LEN:
                raise HandshakeError("bad_length")
            ck, h, re, rs = _m1_read_static(self.ck, self.h, self._s, message)
            ck, h, payload = _m1_read_payload(ck, h, _dh(self._s, rs), message)
            self.re, self.rs = re, rs
        elif self.initiator and self._step == 1:
            if len(message) < DH_LEN + TAG_LEN:
                raise HandshakeError("bad_length")
            ck, h, payload = _m2_read(self.ck, self.h, self._e, self._s, self.psk, message)
            self.re = message[:DH_LEN]
        else:
            raise ValueError("read_message out of turn")
        self.ck, self.h = ck, h
        self._step += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """Transport keys (send, receive) of this side after both messages."""
        if self._step != 2:
            raise ValueError("split before the handshake completed")
        k1, k2 = _kdf2(self.ck, b"")
        return (k1, k2) if self.initiator else (k2, k1)


# ---------------------------------------------------------------- WireGuard framing


class Identity:
    """Our static keypair, with what every handshake reuses precomputed.

    ``mac1_key`` authenticates messages sent TO us; the chaining key and hash
    after the prologue (and after mixing our own public key, for initiations
    we receive) are computed once here.
    """

    __slots__ = ("_s", "public", "construction", "identifier", "mac1_key", "_ck0", "_h0", "_h_in")

    def __init__(
        self,
        private: bytes,
        *,
        construction: bytes = L2B_CONSTRUCTION,
        identifier: bytes = L2B_IDENTIFIER,
    ) -> None:
        self._s = _private(private)
        self.public = _public(self._s)
        self.construction = construction
        self.identifier = identifier
        self.mac1_key = _hash(LABEL_MAC1 + self.public)
        self._ck0, self._h0 = _symmetric_init(construction, identifier)
        self._h_in = _hash(self._h0 + self.public)

    def __repr__(self) -> str:
        return f"Identity({fingerprint(self.public)})"


class PeerKeys:
    """One configured peer: its public key, pre-shared key (zero if none) and precomputations.

    Raises ``HandshakeError("low_order")`` (one-line message naming the key's
    fingerprint) for a public key of small order or a non-canonical one, and
    ``KeyFormatError`` for keys of the wrong length.
    """

    __slots__ = ("identity", "public", "psk", "ss", "mac1_key", "_h_out")

    def __init__(self, identity: Identity, public: bytes, psk: bytes | None = None) -> None:
        public = bytes(public)
        if len(public) != KEY_LEN:
            raise KeyFormatError(f"peer public key: expected {KEY_LEN} bytes, found {len(public)}")
        if is_low_order(public):
            raise HandshakeError(
                "low_order",
                f"peer public key {fingerprint(public)}: a point of small order or a non-canonical"
                " encoding, which no real key is; use the output of `l2bridge pubkey`",
            )
        if psk is not None and len(psk) != KEY_LEN:
            raise KeyFormatError(f"pre-shared key: expected {KEY_LEN} bytes, found {len(psk)}")
        self.identity = identity
        self.public = public
        self.psk = _ZERO_PSK if psk is None else bytes(psk)
        self.ss = _dh(identity._s, public)
        self.mac1_key = _hash(LABEL_MAC1 + public)
        self._h_out = _hash(identity._h0 + public)

    def __repr__(self) -> str:
        return f"PeerKeys({fingerprint(self.public)}, psk={'yes' if any(self.psk) else 'no'})"


@dataclass(slots=True, eq=False)
class Keypair:
    """The transport keys of one session, with ready AEAD objects (one call per packet).

    ``local_index`` is the receiver index peers put in datagrams to us;
    ``remote_index`` the one we put in datagrams to them.
    """

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    local_index: int
    remote_index: int
    initiator: bool
    send_aead: ChaCha20Poly1305 = field(init=False, repr=False)
    recv_aead: ChaCha20Poly1305 = field(init=False, repr=False)
    # The compiled sealers (``_sealer``; None without the extension): same bytes.
    sealer: Any = field(init=False, repr=False, default=None)
    opener: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.send_aead = ChaCha20Poly1305(self.send_key)
        self.recv_aead = ChaCha20Poly1305(self.recv_key)
        if _sealer is not None and COMPILED:
            self.sealer = _sealer.Sealer(self.send_key, True)
            self.opener = _sealer.Sealer(self.recv_key, False)


def tai64n(unix_time: float) -> bytes:
    """12-byte TAI64N timestamp (big-endian: bytes compare in time order).

    Nanoseconds are whitened like WireGuard's (low 24 bits zeroed), so a
    timestamp does not leak precise clock readings; two initiations less than
    ~16.8 ms apart carry equal timestamps and the second is a replay.
    """
    seconds = math.floor(unix_time)
    nanos = min(int((unix_time - seconds) * 1e9), 999_999_999) & ~TAI64N_WHITENER_MASK
    return _TAI64N.pack(TAI64_BASE + seconds, nanos)


def message_type(datagram: bytes) -> int:
    """The message type (first byte) if its reserved bytes are zero, else 0.

    Bytes 1..3 are reserved, except byte 1 of a DATA message: its lane.
    """
    if len(datagram) < 4 or datagram[2] or datagram[3]:
        return 0
    kind = datagram[0]
    if datagram[1] and kind != MSG_DATA:
        return 0
    return kind


def mac1_valid(identity: Identity, message: bytes) -> bool:
    """Check mac1 of an initiation or response sent to ``identity``: one keyed hash, no DH."""
    size = len(message)
    if size == INITIATION_LEN:
        offset = INITIATION_MAC1_OFFSET
    elif size == RESPONSE_LEN:
        offset = RESPONSE_MAC1_OFFSET
    else:
        return False
    return _compare(_mac(identity.mac1_key, message[:offset]), message[offset : offset + MAC_LEN])


def create_initiation(
    identity: Identity,
    peer: PeerKeys,
    local_index: int,
    timestamp: bytes,
    *,
    ephemeral_private: bytes | None = None,
) -> tuple[bytes, InitiatorState]:
    """Return the 148-byte initiation to ``peer`` and the state awaiting its response.

    ``local_index`` (u32) is the sender index: the peer addresses its response
    and its data to it. ``timestamp`` is ``tai64n(now)`` (12 bytes).
    """
    if len(timestamp) != TIMESTAMP_LEN:
        raise ValueError(f"timestamp of {len(timestamp)} bytes: expected {TIMESTAMP_LEN} (tai64n)")
    e = _private(ephemeral_private)
    ck, h, noise = _m1_write(
        identity._ck0, peer._h_out, e, identity.public, peer.public, peer.ss, timestamp
    )
    body = _INITIATION_TYPE + _U32.pack(local_index) + noise
    message = body + _mac(peer.mac1_key, body) + _ZERO_MAC
    return message, InitiatorState(identity, peer, local_index, ck, h, e)


class InitiatorState:
    """An initiation sent, waiting for its response (single use)."""

    __slots__ = ("identity", "peer", "local_index", "_ck", "_h", "_e")

    def __init__(
        self,
        identity: Identity,
        peer: PeerKeys,
        local_index: int,
        ck: bytes,
        h: bytes,
        e: X25519PrivateKey,
    ) -> None:
        self.identity = identity
        self.peer = peer
        self.local_index = local_index
        self._ck = ck
        self._h = h
        self._e: X25519PrivateKey | None = e

    def consume_response(self, message: bytes) -> Keypair:
        """Check and consume the 92-byte response; return the session's ``Keypair``.

        Order: length, type, mac1, receiver index (all before any DH), then
        the Noise message. ``HandshakeError`` on failure, which leaves this
        state usable; a second success is refused as ``replay``.
        """
        if len(message) != RESPONSE_LEN:
            raise HandshakeError("bad_length")
        message = bytes(message)
        if message[:4] != _RESPONSE_TYPE:
            raise HandshakeError("bad_type")
        mac1 = _mac(self.identity.mac1_key, message[:RESPONSE_MAC1_OFFSET])
        if not _compare(mac1, message[RESPONSE_MAC1_OFFSET : RESPONSE_MAC1_OFFSET + MAC_LEN]):
            raise HandshakeError("bad_mac1")
        sender, receiver = _TWO_U32.unpack_from(message, 4)
        if receiver != self.local_index:
            raise HandshakeError("bad_index")
        e = self._e
        if e is None:
            raise HandshakeError("replay")
        ck, _h, _payload = _m2_read(
            self._ck, self._h, e, self.identity._s, self.peer.psk, message[12:RESPONSE_MAC1_OFFSET]
        )
        self._e = None  # single use: forget the ephemeral key
        send, recv = _kdf2(ck, b"")
        return Keypair(send, recv, self.local_index, sender, True)


def consume_initiation(
    identity: Identity,
    message: bytes,
    lookup: Callable[[bytes], PeerKeys | None],
) -> ResponderState:
    """Check and consume a 148-byte initiation sent to ``identity``.

    Order: length, type, mac1 (no DH yet), DH with the sender's ephemeral,
    decrypt its static key, ``lookup(static)`` (``None`` -> ``unknown_peer``),
    decrypt the timestamp. The caller must still refuse a timestamp not newer
    than the last one it accepted from that peer.
    """
    if len(message) != INITIATION_LEN:
        raise HandshakeError("bad_length")
    message = bytes(message)
    if message[:4] != _INITIATION_TYPE:
        raise HandshakeError("bad_type")
    mac1 = _mac(identity.mac1_key, message[:INITIATION_MAC1_OFFSET])
    if not _compare(mac1, message[INITIATION_MAC1_OFFSET : INITIATION_MAC1_OFFSET + MAC_LEN]):
        raise HandshakeError("bad_mac1")
    (sender,) = _U32.unpack_from(message, 4)
    noise = message[8:INITIATION_MAC1_OFFSET]
    ck, h, re, rs = _m1_read_static(identity._ck0, identity._h_in, identity._s, noise)
    peer = lookup(rs)
    if peer is None:
        raise HandshakeError("unknown_peer")
    ck, h, timestamp = _m1_read_payload(ck, h, peer.ss, noise)
    return ResponderState(identity, peer, timestamp, sender, re, ck, h)


class ResponderState:
    """A valid initiation received: who sent it, when, and what the response needs (single use)."""

    __slots__ = ("identity", "peer", "timestamp", "remote_index", "_re", "_ck", "_h", "_used")

    def __init__(
        self,
        identity: Identity,
        peer: PeerKeys,
        timestamp: bytes,
        remote_index: int,
        re: bytes,
        ck: bytes,
        h: bytes,
    ) -> None:
        self.identity = identity
        self.peer = peer
        self.timestamp = timestamp
        self.remote_index = remote_index
        self._re = re
        self._ck = ck
        self._h = h
        self._used = False

    def create_response(
        self, local_index: int, *, ephemeral_private: bytes | None = None
    ) -> tuple[bytes, Keypair]:
        """Return the 92-byte response and the session's ``Keypair`` (once only)."""
        if self._used:
            raise HandshakeError("replay")
        peer = self.peer
        e = _private(ephemeral_private)
        ck, _h, noise = _m2_write(self._ck, self._h, e, self._re, peer.public, peer.psk, b"")
        self._used = True
        body = _RESPONSE_TYPE + _TWO_U32.pack(local_index, self.remote_index) + noise
        message = body + _mac(peer.mac1_key, body) + _ZERO_MAC
        recv, send = _kdf2(ck, b"")
        return message, Keypair(send, recv, local_index, self.remote_index, False)


# ---------------------------------------------------------------- data packets


def seal(keypair: Keypair, counter: int, plaintext: bytes, lane: int = 0) -> bytes:
    """Return the data datagram carrying ``plaintext`` under ``counter`` on ``lane``.

    Layout: type 4 | lane u8 | 2 zero | receiver index u32le | counter u64le |
    ChaCha20-Poly1305(plaintext) with nonce = 4 zero bytes || counter u64le.
    Unlike WireGuard (empty associated data), l2bridge authenticates the
    16-byte header (lane included) as associated data, so no header bit can
    be altered. No padding. Lane 0 is WireGuard's header layout.
    Preconditions: ``0 <= lane <= 255``; the caller never reuses a counter
    with a keypair, whatever the lane (the nonce is the counter alone), and
    stays below ``replay.REJECT_AFTER_MESSAGES``.
    """
    header = _DATA_HEADER.pack(MSG_DATA | lane << _LANE_SHIFT, keypair.remote_index, counter)
    return header + keypair.send_aead.encrypt(_NONCE_PAD + header[8:], plaintext, header)


def seal_batch(keypair: Keypair, counter: int, stride: int, plaintexts: list[bytes],
               lane: int = 0) -> list[bytes]:
    """``seal`` of each plaintext, under counters ``counter, counter + stride, ...``.

    One call into the compiled sealer when it is there (the bytes are the same).
    """
    sealer = keypair.sealer
    if sealer is not None:
        return sealer.seal_many(MSG_DATA | lane << _LANE_SHIFT, keypair.remote_index, counter,
                                stride, plaintexts)
    return [seal(keypair, counter + i * stride, p, lane) for i, p in enumerate(plaintexts)]


def parse_data_header_lane(datagram: bytes) -> tuple[int, int, int]:
    """Return (receiver index, counter, lane) of a data datagram.

    ``HandshakeError("bad_length")`` if shorter than header + tag (32 bytes),
    ``HandshakeError("bad_type")`` unless byte 0 is type 4 and bytes 2..3 are
    zero (byte 1, the lane, may be anything).
    """
    if len(datagram) < DATA_MIN_LEN:
        raise HandshakeError("bad_length")
    kind, receiver, counter = _DATA_HEADER.unpack_from(datagram)
    if kind & _DATA_KIND_MASK != MSG_DATA:
        raise HandshakeError("bad_type")
    return receiver, counter, kind >> _LANE_SHIFT


def parse_data_header(datagram: bytes) -> tuple[int, int]:
    """Return (receiver index, counter) of a data datagram of any lane.

    As ``parse_data_header_lane`` without the lane (same refusals).
    """
    receiver, counter, _lane = parse_data_header_lane(datagram)
    return receiver, counter


def open_data(keypair: Keypair, datagram: bytes) -> bytes:
    """Return the plaintext of a data datagram; ``HandshakeError("bad_decrypt")`` on a bad tag.

    One AEAD call over the bytes after the header, with the header as
    associated data. The caller has already found ``keypair`` by the
    receiver index and checked the counter against the replay window; it
    updates the window (and the peer's endpoint) only after this returns.
    """
    if len(datagram) < DATA_MIN_LEN:
        raise HandshakeError("bad_length")
    opener = keypair.opener
    if opener is not None:
        plaintext = opener.open(datagram)
        if plaintext is None:
            raise HandshakeError("bad_decrypt")
        return plaintext
    datagram = bytes(datagram)
    try:
        return keypair.recv_aead.decrypt(
            _NONCE_PAD + datagram[8:DATA_HEADER_LEN],
            datagram[DATA_HEADER_LEN:],
            datagram[:DATA_HEADER_LEN],
        )
    except InvalidTag:
        raise HandshakeError("bad_decrypt") from None
