"""Datagram format of the cleartext transport (version 1), with fragmentation.

Every datagram is a 4-byte header followed by a payload of at least one byte::

    type:u8 | b1:u8 | b2b3:u16 (big endian) | payload

    0x11 FRAME     b1 = 0 (ignored)            b2b3 = 0 (ignored)  one whole Ethernet frame
    0x12 FRAGMENT  b1 = index<<4 | (count-1)   b2b3 = fragment id  one slice of a frame
    0x13 HELLO     b1 = flags (bit0 WANT_REPLY,    b2b3 = 0           site name, UTF-8, 1..64 bytes
                           bit1 OFFLOAD, bit2 BLOCKED,
                           bit3 FLOODS)
    0x14 SEGMENT   one chunk of an offloaded super-frame (l2bridge.core.offload)
    0x19 FLOOD     b1 = 0 (ignored)            b2b3 = 0 (ignored)  a whole frame the sender
                                                                  flooded

HELLO's OFFLOAD flag says the sender accepts SEGMENT bursts; a peer that never
said so gets ordinary frames.  FLOODS says it accepts FLOOD: a frame the sender
flooded (broadcast, multicast or unknown unicast), which the receiver's storm
control counts; a peer that never said so gets it as a FRAME.  A type of its
own, not a flag in FRAME, so the per-frame path of known unicast tests nothing
more.  BLOCKED says loop protection at the sender blocked this tunnel (the
receiver blocks it too); it is only ever set while a loop is being broken.

Reach messages (sealed mode only: they travel inside a session with a neighbour;
``KEY`` is a site's 32-byte static public key; l2bridge.site.reach uses them)::

    0x15 ASK       b1 = 0  b2b3 = 0     KEY                where is the site KEY?
    0x16 HINT      b1 = flags (bit0     KEY | address      the site KEY is seen at
                   RELAY_OK)            (4 or 16 bytes)    address:port (b2b3)
                   b2b3 = port
    0x17 RELAY_TO  b1 = 0  b2b3 = 0     KEY | datagram     pass datagram on to KEY
    0x18 RELAYED   b1 = 0  b2b3 = 0     KEY | datagram     datagram passed on from KEY

A relayed ``datagram`` is a whole sealed datagram of the two end sites' own
session: the relay sees its size and timing, never its content.

Outbound flow (per frame):
  1. ``Fragmenter.split``: a frame that fits ``max_datagram`` becomes one FRAME
     datagram; a larger one becomes 2..16 FRAGMENT datagrams of near-equal size
     sharing one fragment id (a per-sender u16 that wraps).
Inbound flow (per datagram):
  1. ``decode``: first byte selects the type, then the header is checked; any
     malformed input raises ``WireError`` whose ``reason`` is a counter name.
     (The site's inbound path unwraps FRAME, the per-frame case, itself: a
     FRAME is ``HEADER_LEN`` bytes of header and at least one byte of frame.)
  2. FRAGMENTs go to the peer's ``Reassembler``, which returns the whole frame
     once every piece has arrived, in any order.

Invariants: ``decode`` raises nothing but ``WireError``; a reassembled frame is
bytes-equal to the frame given to ``split``; a ``Reassembler`` holds at most
``max_pending`` partial frames of at most ``max_frame`` bytes each.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Specification constants.
TYPE_FRAME = 0x11
TYPE_FRAGMENT = 0x12
TYPE_HELLO = 0x13
TYPE_SEGMENT = 0x14  # its header and rules: l2bridge.core.offload
TYPE_ASK = 0x15
TYPE_HINT = 0x16
TYPE_RELAY_TO = 0x17
TYPE_RELAYED = 0x18
TYPE_FLOOD = 0x19
KEY_LEN = 32
HINT_RELAY_OK = 0x01
HEADER_LEN = 4
MAX_FRAGMENTS = 16
HELLO_WANT_REPLY = 0x01
HELLO_OFFLOAD = 0x02
HELLO_BLOCKED = 0x04
HELLO_FLOODS = 0x08
MAX_HELLO_NAME_BYTES = 64
FRAG_ID_MODULO = 1 << 16

# Implementation constants.
REASSEMBLY_MAX_PENDING = 64
REASSEMBLY_TIMEOUT_S = 2.0
REASSEMBLY_MAX_FRAME = 65535

_HEADER = struct.Struct("!BBH")
_FRAME_HEADER = _HEADER.pack(TYPE_FRAME, 0, 0)
_FLOOD_HEADER = _HEADER.pack(TYPE_FLOOD, 0, 0)


class WireError(Exception):
    """A datagram that is not a valid message; ``reason`` is the counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole Ethernet frame."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Fragment:
    """Piece ``index`` (0-based) of ``count`` pieces of the frame ``frag_id``."""

    frag_id: int
    index: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    """A liveness message carrying the sender's site name."""

    name: str
    want_reply: bool
    offload: bool = False
    blocked: bool = False
    floods: bool = False


@dataclass(frozen=True, slots=True)
class Ask:
    """Where is the site with this public key?"""

    key: bytes


@dataclass(frozen=True, slots=True)
class Hint:
    """The site ``key`` is seen at ``address`` (an IP literal) : ``port``."""

    key: bytes
    address: str
    port: int
    relay_ok: bool


@dataclass(frozen=True, slots=True)
class Relayed:
    """A sealed datagram to pass on to ``key`` (RELAY_TO) or passed on from it (RELAYED)."""

    key: bytes
    datagram: bytes
    to: bool


Message = Frame | Fragment | Hello | Ask | Hint | Relayed


def encode_frame(frame: bytes) -> bytes:
    """Return the FRAME datagram carrying ``frame`` (no size check: fast path)."""
    return _FRAME_HEADER + frame


def encode_fragment(frag_id: int, index: int, count: int, data: bytes) -> bytes:
    """Return one FRAGMENT datagram; raises ``ValueError`` on impossible fields."""
    if not 2 <= count <= MAX_FRAGMENTS or not 0 <= index < count:
        raise ValueError(f"fragment {index} of {count}: expected 2..16 pieces and index < count")
    if not 0 <= frag_id < FRAG_ID_MODULO:
        raise ValueError(f"fragment id {frag_id}: expected 0..65535")
    if not data:
        raise ValueError("fragment data is empty: expected at least one byte")
    return _HEADER.pack(TYPE_FRAGMENT, (index << 4) | (count - 1), frag_id) + data


def encode_hello(name: str, want_reply: bool, offload: bool = False,
                 blocked: bool = False, floods: bool = False) -> bytes:
    """Return a HELLO datagram; raises ``ValueError`` unless the name is 1..64 UTF-8 bytes."""
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_HELLO_NAME_BYTES:
        raise ValueError(f"hello name of {len(raw)} bytes: expected 1..64 bytes of UTF-8")
    flags = ((HELLO_WANT_REPLY if want_reply else 0) | (HELLO_OFFLOAD if offload else 0)
             | (HELLO_BLOCKED if blocked else 0) | (HELLO_FLOODS if floods else 0))
    return _HEADER.pack(TYPE_HELLO, flags, 0) + raw


def encode_ask(key: bytes) -> bytes:
    """Return an ASK for the site with public key ``key`` (32 bytes)."""
    _check_key(key)
    return _HEADER.pack(TYPE_ASK, 0, 0) + key


def encode_hint(key: bytes, address: str, port: int, relay_ok: bool) -> bytes:
    """Return a HINT: site ``key`` is seen at ``address`` (IPv4 or IPv6 literal) : ``port``."""
    _check_key(key)
    if not 1 <= port <= 65535:
        raise ValueError(f"hint port {port}: expected 1..65535")
    packed = ipaddress.ip_address(address).packed
    return _HEADER.pack(TYPE_HINT, HINT_RELAY_OK if relay_ok else 0, port) + key + packed


def encode_relay(key: bytes, datagram: bytes, *, to: bool) -> bytes:
    """Return a RELAY_TO (``to``: pass it on to ``key``) or a RELAYED (it came from ``key``)."""
    _check_key(key)
    if not datagram:
        raise ValueError("a relayed datagram is empty: expected at least one byte")
    return _HEADER.pack(TYPE_RELAY_TO if to else TYPE_RELAYED, 0, 0) + key + datagram


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"a site key of {len(key)} bytes: expected {KEY_LEN}")


def decode(datagram: bytes) -> Message:
    """Parse one datagram; raise ``WireError`` (and nothing else) if it is malformed.

    Cheapest test first: length, then the type byte, FRAME (the common case)
    being a single slice.
    """
    if len(datagram) <= HEADER_LEN:
        raise WireError("truncated")
    kind = datagram[0]
    if kind in (TYPE_FRAME, TYPE_FLOOD):
        return Frame(datagram[HEADER_LEN:])
    if kind == TYPE_FRAGMENT:
        b1 = datagram[1]
        index = b1 >> 4
        count = (b1 & 0x0F) + 1
        if count < 2 or index >= count:
            raise WireError("bad_fragment")
        return Fragment((datagram[2] << 8) | datagram[3], index, count, datagram[HEADER_LEN:])
    if kind == TYPE_HELLO:
        flags = datagram[1]
        known = HELLO_WANT_REPLY | HELLO_OFFLOAD | HELLO_BLOCKED | HELLO_FLOODS
        if flags & ~known or datagram[2] or datagram[3]:
            raise WireError("bad_hello")
        raw = bytes(datagram[HEADER_LEN:])
        if len(raw) > MAX_HELLO_NAME_BYTES:
            raise WireError("bad_hello")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("bad_hello") from None
        return Hello(name, bool(flags & HELLO_WANT_REPLY), bool(flags & HELLO_OFFLOAD),
                     bool(flags & HELLO_BLOCKED), bool(flags & HELLO_FLOODS))
    if TYPE_ASK <= kind <= TYPE_RELAYED:
        return _decode_reach(datagram)
    raise WireError("bad_type")


def _decode_reach(datagram: bytes) -> Message:
    """ASK, HINT, RELAY_TO, RELAYED (the module docstring); ``WireError`` if malformed."""
    kind, b1, b2b3 = _HEADER.unpack_from(datagram)
    key = bytes(datagram[HEADER_LEN : HEADER_LEN + KEY_LEN])
    rest = datagram[HEADER_LEN + KEY_LEN :]
    if len(key) < KEY_LEN:
        raise WireError("truncated")
    if kind == TYPE_ASK:
        if b1 or b2b3 or rest:
            raise WireError("bad_ask")
        return Ask(key)
    if kind == TYPE_HINT:
        if b1 & ~HINT_RELAY_OK or not b2b3 or len(rest) not in (4, 16):
            raise WireError("bad_hint")
        address = str(ipaddress.ip_address(bytes(rest)))
        return Hint(key, address, b2b3, bool(b1 & HINT_RELAY_OK))
    if b1 or b2b3 or not rest:
        raise WireError("bad_relay")
    return Relayed(key, bytes(rest), kind == TYPE_RELAY_TO)


class Fragmenter:
    """Turn frames into datagrams of at most ``max_datagram`` bytes (one per sender).

    ``max_datagram`` is the largest UDP payload the path carries, e.g. a WAN
    MTU of 1500 minus 28 bytes of IPv4 + UDP header = 1472.
    """

    __slots__ = ("max_datagram", "next_id", "stride", "_room")

    def __init__(self, max_datagram: int, *, first_id: int = 0, stride: int = 1) -> None:
        if max_datagram <= HEADER_LEN:
            raise ValueError(
                f"max_datagram {max_datagram}: expected more than {HEADER_LEN} bytes (the header)"
            )
        self.max_datagram = max_datagram
        self.next_id = first_id % FRAG_ID_MODULO
        self.stride = stride  # ids first_id, first_id + stride, ...: one residue per worker
        self._room = max_datagram - HEADER_LEN

    def split_flooded(self, frame: bytes, room: int | None = None) -> list[bytes]:
        """``split`` (``split_within`` with ``room``) for a peer that accepts FLOOD: a whole
        frame as FLOOD (FRAGMENTs stay FRAGMENTs: the receiver judges the whole frame by
        its destination)."""
        room = self._room if room is None else room
        if 0 < len(frame) <= room:
            return [_FLOOD_HEADER + frame]
        return self.split_within(frame, room)

    def split(self, frame: bytes) -> list[bytes]:
        """Return the datagrams carrying ``frame``, in index order.

        Pieces differ in size by at most one byte (a 1514-byte frame at 1472
        becomes two 761-byte datagrams). Raises ``ValueError`` for an empty
        frame or one that needs more than 16 pieces.
        """
        return self.split_within(frame, self._room)

    def split_within(self, frame: bytes, room: int) -> list[bytes]:
        """``split`` with another datagram size: ``room`` bytes of frame per datagram (a
        relayed path has less, a TCP link more); the fragment ids stay one sequence."""
        size = len(frame)
        if size <= room:
            if not size:
                raise ValueError("empty frame: expected at least one byte")
            return [_FRAME_HEADER + frame]
        count = -(-size // room)
        if count > MAX_FRAGMENTS:
            raise ValueError(
                f"frame of {size} bytes needs {count} fragments of at most {room} bytes;"
                f" the limit is {MAX_FRAGMENTS}: raise the WAN MTU or lower the LAN MTU"
            )
        frag_id = self.next_id
        self.next_id = (frag_id + self.stride) & 0xFFFF
        base, extra = divmod(size, count)
        pack = _HEADER.pack
        last = count - 1
        out = []
        start = 0
        for index in range(count):
            end = start + base + (index < extra)
            out.append(pack(TYPE_FRAGMENT, (index << 4) | last, frag_id) + frame[start:end])
            start = end
        return out


class _Partial:
    """The pieces of one frame received so far."""

    __slots__ = ("first_seen", "count", "pieces", "received", "size")

    def __init__(self, first_seen: float, count: int) -> None:
        self.first_seen = first_seen
        self.count = count
        self.pieces: list[bytes | None] = [None] * count
        self.received = 0
        self.size = 0


class Reassembler:
    """Rebuild frames from FRAGMENTs of one peer; bounded in count, size and time.

    Flow of ``feed``: 1. drop partials older than ``timeout_s`` (counted as
    ``timeouts``) 2. check the piece against the partial of its id (a
    mismatch discards the partial, ``bad_fragment``) 3. make room by evicting
    the oldest partial if ``max_pending`` are held (``evicted``) 4. store the
    piece (a repeat is ``duplicates``) 5. return the joined frame when complete.

    Partials are kept in arrival order of their first piece, so with a
    monotonic ``now`` the oldest is always first.
    """

    __slots__ = ("max_pending", "timeout_s", "max_frame", "counters", "_pending")

    def __init__(
        self,
        max_pending: int = REASSEMBLY_MAX_PENDING,
        timeout_s: float = REASSEMBLY_TIMEOUT_S,
        max_frame: int = REASSEMBLY_MAX_FRAME,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending {max_pending}: expected at least 1")
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.max_frame = max_frame
        self.counters: dict[str, int] = {
            "reassembled": 0,
            "timeouts": 0,
            "evicted": 0,
            "bad_fragment": 0,
            "duplicates": 0,
        }
        self._pending: dict[int, _Partial] = {}

    @property
    def pending(self) -> int:
        """Number of partial frames held."""
        return len(self._pending)

    def expire(self, now: float) -> float | None:
        """Drop partials older than ``timeout_s``; return the next expiry time or None."""
        pending = self._pending
        deadline = now - self.timeout_s
        while pending:
            frag_id, partial = next(iter(pending.items()))
            if partial.first_seen > deadline:
                return partial.first_seen + self.timeout_s
            del pending[frag_id]
            self.counters["timeouts"] += 1
        return None

    def feed(self, fragment: Fragment, now: float) -> bytes | None:
        """Store one piece; return the whole frame when it completes one, else None."""
        pending = self._pending
        if pending:
            oldest = next(iter(pending.values()))
            if oldest.first_seen <= now - self.timeout_s:
                self.expire(now)
        frag_id = fragment.frag_id
        count = fragment.count
        index = fragment.index
        partial = pending.get(frag_id)
        if (
            not 2 <= count <= MAX_FRAGMENTS
            or not 0 <= index < count
            or not fragment.data
            or (partial is not None and partial.count != count)
        ):
            self.counters["bad_fragment"] += 1
            if partial is not None:
                del pending[frag_id]
            return None
        if partial is None:
            if len(pending) >= self.max_pending:
                del pending[next(iter(pending))]
                self.counters["evicted"] += 1
            partial = _Partial(now, count)
            pending[frag_id] = partial
        pieces = partial.pieces
        if pieces[index] is not None:
            self.counters["duplicates"] += 1
            return None
        partial.size += len(fragment.data)
        if partial.size > self.max_frame:
            self.counters["bad_fragment"] += 1
            del pending[frag_id]
            return None
        pieces[index] = fragment.data
        partial.received += 1
        if partial.received < count:
            return None
        del pending[frag_id]
        self.counters["reassembled"] += 1
        return b"".join(pieces)  # type: ignore[arg-type]  # every slot is filled
