"""Loop protection: probes, evidence and the rule that breaks a loop (pure: no I/O).

A loop through l2bridge needs two layer-2 paths between two sites' LANs: the
tunnel, and another one (a backup cable, a second bridge, a bridged VPN).
Every site writes a **probe** into its own LAN through the tap every
``interval_s`` (and at once when it starts, when a peer comes up, and when a
MAC flaps between the tap and a peer).  l2bridge never sends a probe through a
tunnel, so a probe of site Y that site X reads from *its own tap* can only have
crossed another path: X's LAN and Y's LAN are one **segment**.

The rule (every site applies it to what it sees; probes go both ways along a
layer-2 path, so the sites of a segment see the same segment and decide alike):

  1. A site never exchanges frames with a peer whose probes it reads from its
     tap: the segment already joins their LANs (reason ``segment``).
  2. Of the sites of a segment, only the **designated** one exchanges frames
     with the sites outside it: the one that sorts first by (not a hub, site
     name, public key) among those with a tunnel up.  Every other one stands
     by: it exchanges frames with no peer at all (reason ``standby``).  A hub
     sorts first so that it never stops relaying for its spokes.
  3. A peer that sends this site its *own* probe back through the tunnel (it
     floods probes: an older l2bridge, or another bridge) is blocked (``echo``).
  4. Evidence lasts ``HOLD_PROBES`` probe intervals: once the other path is
     gone, the tunnel carries frames again within that time.
  A blocked peer is told so in every HELLO (``BLOCKED`` flag) and blocks back,
  so both ends of a tunnel always agree, even when only one end saw probes.
  BPDUs still cross a blocked tunnel, so STP, where it runs, sees every path.
Each segment then has exactly one gateway forwarding to the rest of the mesh,
and each broadcast reaches each segment exactly once (tested against a model
that floods through random topologies).

Probe frame (ethertype 0x88B6 to ``LOOP_PROBE_MAC``; every integer big-endian)::

    magic "L2BP" | version 1 | flags (HUB 1, ACTIVE 2) | entries n | name length
    | timestamp u64 (ns, the sender's clock) | name | self tag (16)
    | n x (index u32 | tag (16))

Tags are keyed BLAKE2s-128 over everything before the self tag (and, for an
entry, its index).  Entry i is for one peer: ``index`` is that peer's own
index of the session the sender has with it, and the key is derived from the
sender's sending key of that session, so only that peer can check it (a LAN
host cannot forge a probe, a peer cannot forge another peer's) and a probe
dies with its session (two minutes).  Within a session, a timestamp that is not
newer than the last one accepted from that peer is a replay.  The self tag is
keyed with a secret of this process: the only way a site knows its own probes.
Cleartext sites (``insecure``) carry no entries: the name is all there is.

Bad probes are counted and change nothing: ``malformed``, ``unverified`` (no
entry for this site checks out), ``unknown`` (cleartext: no such peer),
``replayed``.  A probe that arrives through a tunnel is never delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from l2bridge.core.classify import ETHERTYPE_LOOP_PROBE, LOOP_PROBE_MAC
from l2bridge.core.ether import ETH_HLEN

# Specification constants.
MAGIC = b"L2BP"
VERSION = 1
FLAG_HUB = 0x01
FLAG_ACTIVE = 0x02
TAG_LEN = 16
ENTRY_LEN = 4 + TAG_LEN
MAX_NAME_BYTES = 64
_HEAD = struct.Struct("!4sBBBBQ")  # magic, version, flags, entries, name length, timestamp
KEY_LABEL = b"l2bridge loop probe v1"

# Implementation constants.
DEFAULT_INTERVAL_S = 1.0
INTERVAL_MIN_S, INTERVAL_MAX_S = 0.1, 60.0
HOLD_PROBES = 3  # evidence lasts this many probe intervals
MAX_ENTRIES = 60  # per probe frame: 60 x 20 bytes fit any MTU; more peers, more frames
FLAP_PROBE_GAP_S = 0.05  # probes sent because a MAC flapped: at most one per gap

REASONS = {
    "segment": "its LAN is joined to ours by another layer-2 path",
    "standby": "our LAN is served by {designated}, which shares it",
    "echo": "it sends our own loop probes back",
    "peer": "it blocked this tunnel (loop protection at its end)",
}


class ProbeError(ValueError):
    """Not a well-formed probe; ``reason`` is the counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    timestamp_ns: int
    hub: bool
    active: bool
    body: bytes  # what every tag covers
    self_tag: bytes
    entries: tuple[tuple[int, bytes], ...]


@dataclass(slots=True)
class Sighting:
    """A peer whose probes this site read from its tap: it shares our segment."""

    origin: str  # the site's own name, from its probe
    rank_key: bytes  # its public key (b"" in cleartext)
    hub: bool
    active: bool
    seen: float
    timestamp_ns: int


def derive_key(session_key: bytes) -> bytes:
    """The probe key of one direction of a session (never the session key itself)."""
    return hashlib.blake2s(KEY_LABEL, key=session_key, digest_size=32).digest()


def _tag(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=TAG_LEN).digest()


def site_mac(name: str, public_key: bytes = b"") -> bytes:
    """The source MAC of a site's probes: locally administered unicast, from its identity."""
    digest = hashlib.blake2s(name.encode() + public_key, digest_size=5).digest()
    return b"\x02" + digest


def encode_probes(src_mac: bytes, name: str, timestamp_ns: int, *, hub: bool, active: bool,
                  self_key: bytes, entries: list[tuple[int, bytes]]) -> list[bytes]:
    """The probe frames (one per ``MAX_ENTRIES`` entries, at least one) for ``entries``:
    (the peer's session index, the probe key derived from our sending key)."""
    raw = name.encode()[:MAX_NAME_BYTES]
    flags = (FLAG_HUB if hub else 0) | (FLAG_ACTIVE if active else 0)
    frames = []
    chunks = [entries[i:i + MAX_ENTRIES] for i in range(0, len(entries), MAX_ENTRIES)] or [[]]
    for chunk in chunks:
        body = _HEAD.pack(MAGIC, VERSION, flags, len(chunk), len(raw), timestamp_ns) + raw
        parts = [LOOP_PROBE_MAC, src_mac, ETHERTYPE_LOOP_PROBE.to_bytes(2, "big"), body,
                 _tag(self_key, body)]
        for index, key in chunk:
            packed = index.to_bytes(4, "big")
            parts += [packed, _tag(key, body + packed)]
        frame = b"".join(parts)
        frames.append(frame + bytes(max(0, 60 - len(frame))))
    return frames


def decode_probe(frame: bytes) -> Probe:
    """Parse a probe frame (untagged); ``ProbeError`` for anything malformed."""
    if len(frame) < ETH_HLEN + _HEAD.size + TAG_LEN or frame[:6] != LOOP_PROBE_MAC:
        raise ProbeError("malformed")
    if (frame[12] << 8 | frame[13]) != ETHERTYPE_LOOP_PROBE:
        raise ProbeError("malformed")
    magic, version, flags, count, name_len, stamp = _HEAD.unpack_from(frame, ETH_HLEN)
    if magic != MAGIC or version != VERSION or name_len > MAX_NAME_BYTES:
        raise ProbeError("malformed")
    at = ETH_HLEN + _HEAD.size
    body_end = at + name_len
    end = body_end + TAG_LEN + count * ENTRY_LEN
    if end > len(frame):
        raise ProbeError("malformed")
    try:
        name = frame[at:body_end].decode()
    except UnicodeDecodeError:
        raise ProbeError("malformed") from None
    body = bytes(frame[ETH_HLEN:body_end])
    self_tag = bytes(frame[body_end:body_end + TAG_LEN])
    entries = []
    for i in range(count):
        start = body_end + TAG_LEN + i * ENTRY_LEN
        entries.append((int.from_bytes(frame[start:start + 4], "big"),
                        bytes(frame[start + 4:start + ENTRY_LEN])))
    return Probe(name, stamp, bool(flags & FLAG_HUB), bool(flags & FLAG_ACTIVE), body,
                 self_tag, tuple(entries))


# (peer name, probe key, rank key) of the peer whose session has this local index.
IndexLookup = Callable[[int], "tuple[str, bytes, bytes] | None"]
# Cleartext: the peer with this name, or None.
NameLookup = Callable[[str], "str | None"]


class LoopGuard:
    """One site's loop evidence and the rule (module docstring)."""

    def __init__(self, *, name: str, rank_key: bytes = b"", hub: bool = False,
                 interval_s: float = DEFAULT_INTERVAL_S, enabled: bool = True,
                 secret: bytes | None = None) -> None:
        self.name = name
        self.rank_key = rank_key
        self.hub = hub
        self.enabled = enabled
        self.interval_s = interval_s
        self.secret = secret or secrets.token_bytes(32)
        self.sightings: dict[str, Sighting] = {}  # peer name -> its latest probe on our tap
        # Replays: per peer, the newest timestamp accepted with each of its sessions.
        self.stamps: dict[str, dict[int, int]] = {}
        self.echoes: dict[str, float] = {}  # peer name -> when it last sent our probe back
        self.self_loop: float | None = None  # when our own probe last came back from the tap
        self.last_flap_probe = float("-inf")
        self.counters: dict[str, int] = {
            "sent": 0, "seen": 0, "own_returned": 0, "echoed": 0, "via_peer": 0,
            "malformed": 0, "unverified": 0, "unknown": 0, "replayed": 0, "flap_probes": 0,
        }

    @property
    def hold_s(self) -> float:
        return HOLD_PROBES * self.interval_s

    def configure(self, *, enabled: bool, interval_s: float) -> None:
        self.enabled = enabled
        self.interval_s = interval_s
        if not enabled:
            self.sightings.clear()
            self.echoes.clear()

    def forget(self, peer: str) -> None:
        """A peer was removed (or its keys changed): its evidence goes with it."""
        self.sightings.pop(peer, None)
        self.echoes.pop(peer, None)
        self.stamps.pop(peer, None)

    # --- probes out -----------------------------------------------------------

    def probes(self, src_mac: bytes, timestamp_ns: int, *, active: bool,
               entries: list[tuple[int, bytes]]) -> list[bytes]:
        """This site's probe frames now (``entries``: see ``encode_probes``)."""
        frames = encode_probes(src_mac, self.name, timestamp_ns, hub=self.hub, active=active,
                               self_key=self.secret, entries=entries)
        self.counters["sent"] += len(frames)
        return frames

    def flap_probe_due(self, now: float) -> bool:
        """A MAC flapped between the tap and a peer: probe now (at most every gap)."""
        if not self.enabled or now - self.last_flap_probe < FLAP_PROBE_GAP_S:
            return False
        self.last_flap_probe = now
        self.counters["flap_probes"] += 1
        return True

    # --- probes in ------------------------------------------------------------

    def _own(self, probe: Probe) -> bool:
        return hmac.compare_digest(probe.self_tag, _tag(self.secret, probe.body))

    def seen_on_tap(self, frame: bytes, now: float, *, by_index: IndexLookup | None,
                    by_name: NameLookup) -> str | None:
        """A probe read from our tap: the peer it proves shares our segment, or None.

        ``by_index`` is None on a cleartext site (``by_name`` then names the peer).
        """
        try:
            probe = decode_probe(frame)
        except ProbeError as exc:
            self.counters[exc.reason] += 1
            return None
        if self._own(probe):
            self.counters["own_returned"] += 1
            self.self_loop = now
            return None
        found = self._identify(probe, by_index, by_name)
        if found is None:
            return None
        peer, rank_key, index = found
        if by_index is not None:  # cleartext probes prove nothing: no replay check either
            stamps = self.stamps.setdefault(peer, {})
            if probe.timestamp_ns <= stamps.get(index, -1):
                self.counters["replayed"] += 1
                return None
            stamps[index] = probe.timestamp_ns
            while len(stamps) > 3:  # current, previous, next: older sessions no longer open
                del stamps[next(iter(stamps))]
        self.counters["seen"] += 1
        if self.enabled:
            self.sightings[peer] = Sighting(probe.name, rank_key, probe.hub, probe.active, now,
                                            probe.timestamp_ns)
        return peer

    def _identify(self, probe: Probe, by_index: IndexLookup | None,
                  by_name: NameLookup) -> tuple[str, bytes, int] | None:
        """(peer, its rank key, the session index that verified it), or None (counted)."""
        if by_index is None:
            peer = by_name(probe.name)
            if peer is None:
                self.counters["unknown"] += 1
                return None
            return peer, b"", 0
        for index, tag in probe.entries:
            found = by_index(index)
            if found is None:
                continue
            peer, key, rank_key = found
            if hmac.compare_digest(tag, _tag(key, probe.body + index.to_bytes(4, "big"))):
                return peer, rank_key, index
        self.counters["unverified"] += 1
        return None

    def via_peer(self, frame: bytes, peer: str, now: float) -> bool:
        """A probe came through the tunnel from ``peer``: never delivered.  True when it
        is our own (rule 3: that peer floods probes and is blocked)."""
        self.counters["via_peer"] += 1
        try:
            probe = decode_probe(frame)
        except ProbeError:
            return False
        if not self._own(probe):
            return False
        self.counters["echoed"] += 1
        if self.enabled:
            self.echoes[peer] = now
        return True

    # --- the rule -------------------------------------------------------------

    def segment(self, now: float) -> dict[str, Sighting]:
        """The peers that share our segment now (evidence younger than the hold)."""
        hold = self.hold_s
        return {p: s for p, s in self.sightings.items() if s.seen + hold > now}

    def designated(self, now: float, *, active: bool) -> str | None:
        """The peer that serves our segment instead of us, or None when we do (rule 2)."""
        mine = (not self.hub, self.name, self.rank_key)
        best: tuple | None = mine if active or self.hub else None
        chosen: str | None = None
        for peer, s in self.segment(now).items():
            if not (s.active or s.hub):
                continue
            rank = (not s.hub, s.origin, s.rank_key)
            if best is None or rank < best:
                best, chosen = rank, peer
        return chosen

    def decide(self, now: float, peers: Iterable[str], *, active: bool) -> dict[str, str]:
        """Every peer this site must not exchange frames with, and why (module rule)."""
        if not self.enabled:
            return {}
        blocked = {peer: "segment" for peer in self.segment(now)}
        if self.designated(now, active=active) is not None:
            for peer in peers:
                blocked.setdefault(peer, "standby")
        hold = self.hold_s
        for peer, when in self.echoes.items():
            if when + hold > now:  # the expiry ``next_change`` names, to the bit
                blocked[peer] = "echo"
        return blocked

    def next_change(self, now: float) -> float | None:
        """When some evidence expires (the decision may change then), or None."""
        hold = self.hold_s
        times = [s.seen + hold for s in self.sightings.values() if s.seen + hold > now]
        times += [t + hold for t in self.echoes.values() if t + hold > now]
        return min(times, default=None)

    def expire(self, now: float) -> None:
        """Forget evidence older than the hold (keeps the tables small)."""
        hold = self.hold_s
        for peer in [p for p, s in self.sightings.items() if now - s.seen >= hold * 4]:
            del self.sightings[peer]
        for peer in [p for p, t in self.echoes.items() if now - t >= hold]:
            del self.echoes[peer]

    def self_looped(self, now: float) -> bool:
        """Whether our own probes came back from the tap within the hold (a LAN loop)."""
        return self.self_loop is not None and self.self_loop + self.hold_s > now
