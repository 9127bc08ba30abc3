"""The learning switch: which port a (VLAN, MAC) sits behind (DESIGN §2).

Pure module: no I/O, no trio, no socket; time is the ``now`` argument
(seconds, monotonic, never decreasing between calls).

Ports are small ints: ``TAP = 0`` is the local tap, peers are ``1..N``.
A decision is a port, ``FLOOD`` or a ``Drop`` reason.

Per-frame flow (``egress`` from the tap, ``ingress`` from peer ``port``):
  1. Validate, cheapest first: runt (< 14 bytes) -> oversize (> max_frame)
     -> bad source (group bit or all-zero) -> PAUSE destination.
     A frame dropped here teaches the table nothing.
  2. Layer-2 policy, then learning.  A peer port that loop protection blocked
     (``set_blocked``) teaches nothing and every frame from it is refused
     (LOOP_BLOCKED).  A source a peer port may not use is
     refused: a MAC pinned as local (``pinned``: the site's own hosts; as
     Linux ``br_fdb_update`` refuses to learn over a local address) or one
     outside the port's allow-list (``set_port_policy``), as PINNED_MAC /
     MAC_NOT_ALLOWED.  Otherwise the source is learned on the arrival port
     (after filtering, as the Linux bridge does, so invalid frames cannot
     poison the table).  A new source is always learned: when a cap is full,
     room is made by eviction (below), so new and returning hosts always get
     through.  The policy is checked where a source is learned, never on the
     refresh of an entry already at its port: an entry exists only for a
     source its port may use.
  3. Decide:
     egress:            group dst -> FLOOD; dst at peer p -> p;
                        dst at TAP -> LOCAL_DEST; unknown -> FLOOD
     ingress (mesh):    group dst -> FLOOD (the caller delivers it to the tap,
                        through the policy of flooded frames; split horizon:
                        never peer to peer); else TAP
     ingress (hub):     group dst -> FLOOD (caller: tap + live peers but
                        `port`); dst at TAP -> TAP; dst at q != port -> q;
                        dst at `port` -> HAIRPIN; unknown -> FLOOD
     The source is learned before the decision, so a LOCAL_DEST or HAIRPIN
     drop still refreshes it (the frame itself was valid).

Table invariants:
  * Key: the 6-byte source MAC slice for VLAN 0 (untagged, priority-tagged or
    truncated tag), a ``(vid, mac)`` tuple otherwise; value: a mutable
    ``[port, last_seen]`` list refreshed in place.  ``vlan_id`` in
    ``ether.py`` defines the VLAN; the hot path inlines the same rule.
  * An entry is live while ``now - last_seen < ageing_s``; an expired entry
    is a miss for lookups and decisions even before ``expire`` removes it.
  * ``len(table) <= max_entries`` and, for every peer port,
    ``port_count(port) <= its cap`` (``max_entries_per_peer`` or
    ``set_port_cap``).  The TAP port is bounded only by the global cap.
    Counts are of stored entries: expired entries stay stored (and counted)
    until removed, but whenever a cap is reached every expired entry is
    removed first and the cap checked again.
  * Eviction (Open vSwitch's fair rule, ``lib/mac-learning.c``): when a
    source is learned on (or moves to) a peer port at its cap, that port's
    least recently seen entry is evicted; when the table is at its global
    cap, the least recently seen entry of the port holding the most entries
    is evicted (ties: the lowest port number).  "Least recently seen" is the
    smallest ``(last_seen, vlan, mac)``.  A flood of random sources from one
    port therefore only ever pushes out that port's entries (or, at the
    global cap, those of the biggest port, which is the flooder's), never a
    quiet port's, and the flooder's own fresh entries outlive its stale ones.
    Each eviction is counted ``evicted``.
  * Per port, a heap of ``(stamp, vlan, mac)`` with ``stamp <= last_seen``
    finds that entry without touching the hot path: a refresh only writes
    ``last_seen``; the heap is corrected lazily when an eviction pops an item
    whose entry was seen since (pushed again with its ``last_seen``) or is
    gone (discarded).  Every entry of a port has at least one item in its
    heap; a heap is compacted when it grows past twice its port's count.
  * A stored but expired entry for a source being learned again is removed
    (counted ``expired``) and the source learned as new (counted
    ``learned``, subject to the caps).
  * ``ageing_s == 0``: nothing is ever learned, every unicast floods (the
    policy is still checked, on every frame).

Duplicate MACs (EVPN's MAC mobility rule, RFC 7432 section 15.1), checked only
where a live entry would move to another port: a MAC that already moved
``flap_moves`` times in the last ``flap_window_s`` seconds does not move again.
It is *held* where it was for ``flap_hold_s`` seconds (counted ``dup_mac``, and
one ``MacEvent`` naming both ports for the site to report); meanwhile its frames
are still forwarded, but frames arriving from another port never move it
(counted ``held``).  After the hold its history starts afresh.  Histories and
holds are bounded (``max_entries`` each; the oldest go first) and go with
their port (``flush_port``).

Every relocation between the tap and a peer, a real move or one a hold
refused, is also counted per peer in ``tap_moves`` (and in total in
``flapped``): a loop between the LAN and a peer shows up there first, and the
site's loop protection reads it once per batch.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from dataclasses import dataclass

from l2bridge.core.ether import ETH_HLEN, PAUSE_MAC, VLAN_HLEN, VLAN_TPIDS, ZERO_MAC

TAP = 0
"""Port number of the local tap."""
FLOOD = -1
"""Decision: send to every eligible port (see the module flow)."""

FDB_AGEING_S = 300.0
FDB_MAX_ENTRIES = 8192
FDB_MAX_ENTRIES_PER_PEER = 1024
LRU_SLACK = 64  # a port's eviction heap may hold this many stale items beyond 2x its count
MAC_FLAP_MOVES = 5  # EVPN's defaults (RFC 7432 section 15.1): 5 moves ...
MAC_FLAP_WINDOW_S = 180.0  # ... in 180 s
MAC_FLAP_HOLD_S = 180.0  # then held where it was this long
MAC_EVENTS_MAX = 256  # duplicate-MAC reports waiting for the site; more are counted only
MAX_FRAME_BYTES = 1522
"""Default largest accepted frame: 1500 payload + 14 header + 4 tag + 4 tag."""


class Drop(enum.Enum):
    """Every reason a frame is dropped; the value is the counter name."""

    RUNT = "runt"  # shorter than 14 bytes
    OVERSIZE = "oversize"  # longer than max_frame
    BAD_SOURCE = "bad_source"  # source MAC multicast/broadcast or all-zero
    PAUSE = "pause"  # 802.3x PAUSE (dst 01:80:c2:00:00:01), never forwarded
    PINNED_MAC = "pinned_mac"  # a peer used a source MAC pinned as local to this site
    MAC_NOT_ALLOWED = "mac_not_allowed"  # a peer used a source MAC outside its allow-list
    LOCAL_DEST = "local_dest"  # egress frame whose destination was learned on the tap
    HAIRPIN = "hairpin"  # hub: destination learned behind the ingress peer
    LOOP_BLOCKED = "loop_blocked"  # from a peer that loop protection blocked


@dataclass(frozen=True, slots=True)
class MacEvent:
    """A duplicate MAC: it moved too often and is now held at ``held_port``."""

    vlan: int
    mac: bytes
    held_port: int  # where it stays
    other_port: int  # where it also appeared
    moves: int  # moves within the window, this one included
    until: float  # the hold ends


@dataclass(frozen=True, slots=True)
class HeldMac:
    """A MAC held by duplicate detection, as shown to operators."""

    vlan: int
    mac: bytes
    port: int
    other_port: int
    remaining_s: float


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One live table entry, as shown to operators."""

    vlan: int
    mac: bytes
    port: int
    age_s: float


# Bound once: the hot path reads module globals, not enum attributes.
_RUNT = Drop.RUNT
_OVERSIZE = Drop.OVERSIZE
_BAD_SOURCE = Drop.BAD_SOURCE
_PAUSE = Drop.PAUSE
_PINNED_MAC = Drop.PINNED_MAC
_MAC_NOT_ALLOWED = Drop.MAC_NOT_ALLOWED
_LOCAL_DEST = Drop.LOCAL_DEST
_HAIRPIN = Drop.HAIRPIN
_LOOP_BLOCKED = Drop.LOOP_BLOCKED
_TAGGED_HLEN = ETH_HLEN + VLAN_HLEN

# Table key: bytes (VLAN 0) or (vid, mac).  Value: [port, last_seen].
_Key = bytes | tuple[int, bytes]


def _key(vlan: int, mac: bytes) -> _Key:
    return (vlan, bytes(mac)) if vlan else bytes(mac)


def _split_key(key: _Key) -> tuple[int, bytes]:
    return (0, key) if isinstance(key, bytes) else key


class Switch:
    """A MAC-learning switch whose ports are the tap and the peers.

    Synchronous by design: no call awaits, so a lookup and its update can
    never interleave with another task.
    """

    __slots__ = (
        "_hub",
        "_ageing_s",
        "_max_entries",
        "_max_per_peer",
        "_port_caps",
        "_allowed",
        "_pinned",
        "_max_frame",
        "_table",
        "_counts",
        "_stale_from",
        "_lru",
        "_blocked",
        "_flap_moves",
        "_flap_window_s",
        "_flap_hold_s",
        "_moves",
        "_held",
        "events",
        "tap_moves",
        "flapped",
        "counters",
    )

    def __init__(
        self,
        *,
        hub: bool = False,
        ageing_s: float = FDB_AGEING_S,
        max_entries: int = FDB_MAX_ENTRIES,
        max_entries_per_peer: int = FDB_MAX_ENTRIES_PER_PEER,
        max_frame: int = MAX_FRAME_BYTES,
        pinned: frozenset[bytes] = frozenset(),
        flap_moves: int | None = MAC_FLAP_MOVES,
        flap_window_s: float = MAC_FLAP_WINDOW_S,
        flap_hold_s: float = MAC_FLAP_HOLD_S,
    ) -> None:
        if ageing_s < 0:
            raise ValueError(f"ageing_s must be >= 0, got {ageing_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_entries_per_peer < 1:
            raise ValueError(f"max_entries_per_peer must be >= 1, got {max_entries_per_peer}")
        if max_frame < ETH_HLEN:
            raise ValueError(f"max_frame must be >= {ETH_HLEN}, got {max_frame}")
        self._hub = hub
        self._ageing_s = float(ageing_s)
        self._max_entries = max_entries
        self._max_per_peer = max_entries_per_peer
        self._port_caps: dict[int, int] = {}
        self._allowed: dict[int, frozenset[bytes]] = {}  # peer port -> its allowed sources
        self._pinned = frozenset(bytes(mac) for mac in pinned)
        self._max_frame = max_frame
        self._table: dict[_Key, list] = {}
        self._counts: dict[int, int] = {}
        # Lower bound of every stored entry's expiry time: before it, no
        # entry can be stale and a purge would find nothing.
        self._stale_from = math.inf
        # Per port: heap of (stamp <= last_seen, vlan, mac); see "Eviction" above.
        self._lru: dict[int, list[tuple[float, int, bytes]]] = {}
        self._blocked: set[int] = set()  # peer ports loop protection blocked
        self._moves: dict[_Key, deque[float]] = {}  # recent move times of MACs that moved
        self._held: dict[_Key, list] = {}  # [until, held port, other port]
        self._flap_moves: int | None = None
        self._flap_window_s = self._flap_hold_s = 0.0
        self.set_flap(flap_moves, flap_window_s, flap_hold_s)
        self.events: list[MacEvent] = []  # duplicate MACs to report (the site drains it)
        self.tap_moves: dict[int, int] = {}  # peer port -> relocations between it and the tap
        self.flapped = 0  # all of them
        self.counters: dict[str, int] = {
            "learned": 0, "moved": 0, "expired": 0, "flushed": 0, "evicted": 0,
            "dup_mac": 0, "held": 0,
        }

    def set_flap(self, flap_moves: int | None, flap_window_s: float, flap_hold_s: float) -> None:
        """Duplicate-MAC detection: ``flap_moves`` in ``flap_window_s``, then held
        ``flap_hold_s`` (moves None: off).  Also a reload's: holds in force stay."""
        moves, window_s, hold_s = flap_moves, flap_window_s, flap_hold_s
        if moves is not None and (moves < 1 or window_s <= 0 or hold_s <= 0):
            raise ValueError(f"flap moves {moves} window {window_s} hold {hold_s}: "
                             "expected moves >= 1 and positive times")
        self._flap_moves = moves
        self._flap_window_s = float(window_s)
        self._flap_hold_s = float(hold_s)
        if moves is None:
            self._moves.clear()
            self._held.clear()

    @property
    def hub(self) -> bool:
        return self._hub

    @property
    def ageing_s(self) -> float:
        return self._ageing_s

    # --- hot path -----------------------------------------------------------

    def egress(self, frame: bytes, now: float) -> int | Drop:
        """Decide for a frame read from the tap (module flow, steps 1-3)."""
        n = len(frame)
        if n < ETH_HLEN:
            return _RUNT
        if n > self._max_frame:
            return _OVERSIZE
        src = frame[6:12]
        if frame[6] & 1 or src == ZERO_MAC:
            return _BAD_SOURCE
        group = frame[0] & 1
        if group and frame[:6] == PAUSE_MAC:
            return _PAUSE
        vid = 0
        if n >= _TAGGED_HLEN and (frame[12] << 8 | frame[13]) in VLAN_TPIDS:
            vid = (frame[14] << 8 | frame[15]) & 0x0FFF
        key = (vid, src) if vid else src
        table = self._table
        ageing = self._ageing_s
        entry = table.get(key)
        if entry is not None and entry[0] == TAP and now - entry[1] < ageing:
            entry[1] = now
        else:
            self._learn(key, vid, src, entry, TAP, now)  # the tap is never refused
        if group:
            return FLOOD
        dst = frame[:6]
        entry = table.get((vid, dst) if vid else dst)
        if entry is None or now - entry[1] >= ageing:
            return FLOOD
        if entry[0] == TAP:
            return _LOCAL_DEST
        return entry[0]

    def ingress(self, frame: bytes, port: int, now: float) -> int | Drop:
        """Decide for a frame received from peer ``port`` (precondition: port >= 1).

        A group destination goes to ``_group_ingress``, so the unicast path tests
        the group bit once, as it always did (it is the per-frame path).
        """
        n = len(frame)
        if n < ETH_HLEN:
            return _RUNT
        if n > self._max_frame:
            return _OVERSIZE
        src = frame[6:12]
        if frame[6] & 1 or src == ZERO_MAC:
            return _BAD_SOURCE
        if frame[0] & 1:
            return self._group_ingress(frame, n, src, port, now)
        vid = 0
        if n >= _TAGGED_HLEN and (frame[12] << 8 | frame[13]) in VLAN_TPIDS:
            vid = (frame[14] << 8 | frame[15]) & 0x0FFF
        key = (vid, src) if vid else src
        table = self._table
        ageing = self._ageing_s
        entry = table.get(key)
        if entry is not None and entry[0] == port and now - entry[1] < ageing:
            entry[1] = now
        else:
            refused = self._learn(key, vid, src, entry, port, now)
            if refused is not None:
                return refused
        if not self._hub:
            return TAP
        dst = frame[:6]
        entry = table.get((vid, dst) if vid else dst)
        if entry is None or now - entry[1] >= ageing:
            return FLOOD
        if entry[0] == port:
            return _HAIRPIN
        return entry[0]

    def _group_ingress(self, frame: bytes, n: int, src: bytes, port: int,
                       now: float) -> int | Drop:
        """``ingress`` of a group destination: PAUSE dropped, the source learned, FLOOD."""
        if frame[:6] == PAUSE_MAC:
            return _PAUSE
        vid = 0
        if n >= _TAGGED_HLEN and (frame[12] << 8 | frame[13]) in VLAN_TPIDS:
            vid = (frame[14] << 8 | frame[15]) & 0x0FFF
        key = (vid, src) if vid else src
        entry = self._table.get(key)
        if entry is not None and entry[0] == port and now - entry[1] < self._ageing_s:
            entry[1] = now
            return FLOOD
        refused = self._learn(key, vid, src, entry, port, now)
        return FLOOD if refused is None else refused

    # --- learning (off the common path) --------------------------------------

    def _learn(self, key: _Key, vid: int, mac: bytes, entry: list | None, port: int,
               now: float) -> Drop | None:
        """Apply the port's policy, then learn ``key`` on ``port`` within the caps.

        Called when the source is unknown, expired, or known on another port;
        returns the policy's refusal, or None (module docstring, steps 2).
        """
        if port != TAP:
            if port in self._blocked:
                return _LOOP_BLOCKED
            if mac in self._pinned:
                return _PINNED_MAC
            allowed = self._allowed.get(port)
            if allowed is not None and mac not in allowed:
                return _MAC_NOT_ALLOWED
        ageing = self._ageing_s
        if not ageing:
            return None
        counts = self._counts
        table = self._table
        if entry is not None:
            if now - entry[1] < ageing:
                # 1. Live entry on another port: a move (the global count is unchanged),
                # unless the MAC is held or this move makes it a duplicate.
                if port == TAP or entry[0] == TAP:
                    peer = port or entry[0]
                    self.tap_moves[peer] = self.tap_moves.get(peer, 0) + 1
                    self.flapped += 1
                if self._flap_moves is not None and self._holds(key, vid, mac, entry, port, now):
                    return None
                if port != TAP and counts.get(port, 0) >= self._cap(port):
                    self._make_room(port, now)
                counts[entry[0]] -= 1
                counts[port] = counts.get(port, 0) + 1
                entry[0] = port
                entry[1] = now
                self._push(port, now, vid, mac)
                self.counters["moved"] += 1
                return None
            # 2. Stored but expired: remove it, then learn as new.
            del table[key]
            counts[entry[0]] -= 1
            self.counters["expired"] += 1
        # 3. New source: the port's cap, then the table's; expired entries go first.
        if port != TAP and counts.get(port, 0) >= self._cap(port):
            self._make_room(port, now)
        if len(table) >= self._max_entries:
            self._purge(now)
            if len(table) >= self._max_entries:
                self._evict(self._biggest_port())
        table[key] = [port, now]
        counts[port] = counts.get(port, 0) + 1
        self._push(port, now, vid, mac)
        self.counters["learned"] += 1
        expiry = now + ageing
        if expiry < self._stale_from:
            self._stale_from = expiry
        return None

    def _holds(self, key: _Key, vid: int, mac: bytes, entry: list, port: int,
               now: float) -> bool:
        """Whether a live entry must stay where it is instead of moving to ``port``
        (module docstring, "Duplicate MACs"); records the move otherwise."""
        held = self._held.get(key)
        if held is not None:
            if now < held[0]:
                self.counters["held"] += 1
                return True
            del self._held[key]
            self._moves.pop(key, None)
        window = self._moves.get(key)
        if window is None:
            if len(self._moves) >= self._max_entries:
                self._trim_moves(now)
            window = self._moves[key] = deque()
        start = now - self._flap_window_s
        while window and window[0] <= start:
            window.popleft()
        limit = self._flap_moves
        assert limit is not None
        if len(window) < limit:
            window.append(now)
            return False
        until = now + self._flap_hold_s
        if len(self._held) >= self._max_entries:
            del self._held[next(iter(self._held))]
        self._held[key] = [until, entry[0], port]
        del self._moves[key]
        self.counters["dup_mac"] += 1
        self.counters["held"] += 1
        if len(self.events) < MAC_EVENTS_MAX:
            self.events.append(MacEvent(vid, mac, entry[0], port, limit + 1, until))
        return True

    def _trim_moves(self, now: float) -> None:
        """Room in the move histories: forget quiet MACs, else the oldest history."""
        self._forget_quiet(now)
        if len(self._moves) >= self._max_entries:
            del self._moves[next(iter(self._moves))]

    def _forget_quiet(self, now: float) -> None:
        """Drop the histories whose last move left the window."""
        start = now - self._flap_window_s
        quiet = [key for key, window in self._moves.items() if not window or window[-1] <= start]
        for key in quiet:
            del self._moves[key]

    def _make_room(self, port: int, now: float) -> None:
        """One free place under ``port``'s cap: purge expired entries, else evict its LRU."""
        self._purge(now)
        if self._counts.get(port, 0) >= self._cap(port):
            self._evict(port)

    def _biggest_port(self) -> int:
        """The port holding the most entries (ties: the lowest port number)."""
        most = -1
        biggest = TAP
        for port in sorted(self._counts):
            if self._counts[port] > most:
                most = self._counts[port]
                biggest = port
        return biggest

    def _push(self, port: int, stamp: float, vid: int, mac: bytes) -> None:
        heap = self._lru.get(port)
        if heap is None:
            self._lru[port] = heap = []
        heapq.heappush(heap, (stamp, vid, mac))
        if len(heap) > 2 * self._counts.get(port, 0) + LRU_SLACK:
            self._compact(port)

    def _compact(self, port: int) -> None:
        """Rebuild ``port``'s heap: one exact item per entry it still holds."""
        table = self._table
        live = {}
        for _, vid, mac in self._lru[port]:
            entry = table.get((vid, mac) if vid else mac)
            if entry is not None and entry[0] == port:
                live[(vid, mac)] = entry[1]
        heap = [(stamp, vid, mac) for (vid, mac), stamp in live.items()]
        heapq.heapify(heap)
        self._lru[port] = heap

    def _evict(self, port: int) -> None:
        """Remove ``port``'s least recently seen entry (module docstring, "Eviction")."""
        heap = self._lru.get(port)
        table = self._table
        while heap:
            stamp, vid, mac = heapq.heappop(heap)
            key = (vid, mac) if vid else mac
            entry = table.get(key)
            if entry is None or entry[0] != port:
                continue  # gone, or moved away: its item is stale
            if entry[1] != stamp:
                heapq.heappush(heap, (entry[1], vid, mac))  # seen since: its place moved
                continue
            del table[key]
            self._counts[port] -= 1
            self.counters["evicted"] += 1
            return

    def set_port_policy(self, port: int, *, allowed: frozenset[bytes] | None = None,
                        cap: int | None = None) -> int:
        """A peer port's policy: the sources it may use (None: any) and its cap of entries
        (None: ``max_entries_per_peer``).  Entries the port holds that the new policy
        refuses are removed, the least recently seen first beyond the cap; returns
        how many were removed."""
        if port <= TAP or (cap is not None and cap < 1):
            raise ValueError(f"port {port} cap {cap}: expected a peer port and a cap >= 1")
        if allowed is None:
            self._allowed.pop(port, None)
        else:
            self._allowed[port] = frozenset(bytes(mac) for mac in allowed)
        if cap is None:
            self._port_caps.pop(port, None)
        else:
            self._port_caps[port] = cap
        removed = 0
        if allowed is not None:
            removed += self._remove(lambda key, entry: entry[0] == port
                                    and _split_key(key)[1] not in self._allowed[port])
        while self._counts.get(port, 0) > self._cap(port):
            self._evict(port)
            removed += 1
        return removed

    def configure(self, *, ageing_s: float, max_entries: int, max_entries_per_peer: int,
                  pinned: frozenset[bytes]) -> int:
        """New site-wide settings (a reload): ageing, caps, pinned MACs.

        What they no longer allow goes at once: pinned MACs learned behind a
        peer, entries beyond a lowered cap (least recently seen first).  Returns
        how many entries were removed.
        """
        if ageing_s < 0 or max_entries < 1 or max_entries_per_peer < 1:
            raise ValueError("ageing_s >= 0, max_entries >= 1, max_entries_per_peer >= 1")
        self._ageing_s = float(ageing_s)
        self._max_entries = max_entries
        self._max_per_peer = max_entries_per_peer
        self._pinned = frozenset(bytes(mac) for mac in pinned)
        self._stale_from = -math.inf  # expiries changed with the ageing: look again
        removed = self._remove(lambda key, entry: entry[0] != TAP
                               and _split_key(key)[1] in self._pinned)
        for port in list(self._counts):
            while port != TAP and self._counts.get(port, 0) > self._cap(port):
                self._evict(port)
                removed += 1
        while len(self._table) > self._max_entries:
            self._evict(self._biggest_port())
            removed += 1
        return removed

    def _remove(self, doomed_if) -> int:
        """Remove every entry ``doomed_if(key, entry)`` says; counted ``flushed``."""
        doomed = [key for key, entry in self._table.items() if doomed_if(key, entry)]
        for key in doomed:
            self._counts[self._table.pop(key)[0]] -= 1
        self.counters["flushed"] += len(doomed)
        return len(doomed)

    def set_port_cap(self, port: int, cap: int) -> None:
        """Cap the entries of one peer port (instead of ``max_entries_per_peer``)."""
        self.set_port_policy(port, allowed=self._allowed.get(port), cap=cap)

    def _cap(self, port: int) -> int:
        return self._port_caps.get(port, self._max_per_peer)

    def _purge(self, now: float) -> None:
        """Remove every expired entry; keep ``_stale_from`` exact afterwards."""
        if now < self._stale_from:
            return
        ageing = self._ageing_s
        counts = self._counts
        earliest = math.inf
        stale = []
        for key, (port, last_seen) in self._table.items():
            expiry = last_seen + ageing
            if now >= expiry:
                stale.append(key)
                counts[port] -= 1
            elif expiry < earliest:
                earliest = expiry
        for key in stale:
            del self._table[key]
        self.counters["expired"] += len(stale)
        self._stale_from = earliest

    # --- management (per event, not per frame) -------------------------------

    def expire(self, now: float) -> float | None:
        """Remove expired entries; return the next expiry time, None when empty.

        A GC task sleeps until the returned time (or until the next learn
        when None) and calls again.
        """
        self._stale_from = -math.inf  # force the scan
        self._purge(now)
        for key in [k for k, held in self._held.items() if held[0] <= now]:
            del self._held[key]
        self._forget_quiet(now)
        return None if not self._table else self._stale_from

    def flush_port(self, port: int) -> int:
        """Remove every stored entry of ``port`` (a peer went down); return the count.

        Holds and move histories that involve the port go too: what a loop or a
        peer that is gone made flap is not a duplicate MAC.
        """
        flushed = self._remove(lambda key, entry: entry[0] == port)
        self._counts.pop(port, None)
        self._lru.pop(port, None)
        for key in [k for k, held in self._held.items() if port in (held[1], held[2])]:
            del self._held[key]
        self._moves.clear()
        self.tap_moves.pop(port, None)
        return flushed

    def set_blocked(self, port: int, blocked: bool) -> int:
        """Loop protection: a blocked peer port teaches nothing and its frames are
        refused (LOOP_BLOCKED); its entries are flushed.  Returns how many."""
        if port <= TAP:
            raise ValueError(f"port {port}: only a peer port can be blocked")
        if not blocked:
            self._blocked.discard(port)
            return 0
        self._blocked.add(port)
        return self.flush_port(port)

    def blocked(self, port: int) -> bool:
        return port in self._blocked

    def held(self, now: float) -> list[HeldMac]:
        """Every MAC held by duplicate detection now, sorted by (vlan, mac)."""
        out = []
        for key, (until, port, other) in self._held.items():
            if now < until:
                vlan, mac = _split_key(key)
                out.append(HeldMac(vlan, mac, port, other, until - now))
        out.sort(key=lambda h: (h.vlan, h.mac))
        return out

    def lookup(self, vlan: int, mac: bytes, now: float) -> int | None:
        """The port a live entry places (vlan, mac) behind, or None."""
        entry = self._table.get(_key(vlan, mac))
        if entry is None or now - entry[1] >= self._ageing_s:
            return None
        return entry[0]

    def entries(self, now: float) -> list[FdbEntry]:
        """Every live entry, sorted by (vlan, mac)."""
        ageing = self._ageing_s
        live = []
        for key, (port, last_seen) in self._table.items():
            age_s = now - last_seen
            if age_s < ageing:
                vlan, mac = _split_key(key)
                live.append(FdbEntry(vlan, mac, port, age_s))
        live.sort(key=lambda e: (e.vlan, e.mac))
        return live

    def port_count(self, port: int) -> int:
        """Entries stored for ``port``, including expired ones not yet removed."""
        return self._counts.get(port, 0)

    def __len__(self) -> int:
        """Entries stored, including expired ones not yet removed."""
        return len(self._table)
