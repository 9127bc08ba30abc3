"""Peer state: who the remote sites are, where they are, and whether they are alive.

Pure logic (no I/O, no trio): the site feeds it facts (a datagram arrived,
time passed) and acts on what it returns (send a HELLO, a peer went down).

Liveness (cleartext transport, version 1):
  1. A peer starts ``down``.  While down and its endpoint is known, a HELLO with
     WANT_REPLY goes out every ``retry_s`` (at most 1 s) so a restarted site is
     answered within one round trip.
  2. Any valid datagram from the peer's endpoint marks it ``up`` (last_seen = now).
  3. While up, a HELLO goes out every ``keepalive_s``.
  4. Silence for ``dead_after_s`` marks it ``down``: the site stops flooding to
     it and flushes the MACs learned behind it.
  5. A peer configured without an endpoint only dials in: its endpoint is the
     source address of the first HELLO that carries its name.

Loop protection blocks a peer (``PeerTable.block``: our own decision, or the
peer's BLOCKED flag): it stays alive (keepalives, handshakes, probes) but leaves
the flood list ``flood`` (the live peers that carry frames); ``live`` stays the
list of peers that are up.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core.paths import UDP, Reach
from l2bridge.core.wire import Reassembler

DOWN_RETRY_MAX_S = 1.0

Addr = Hashable  # a socket address as the transport reports it, e.g. ("198.18.1.2", 55555)


@dataclass(eq=False, slots=True)
class Peer:
    """One remote site: a switch port plus its liveness and counters."""

    port: int  # switch port number (1..N)
    name: str
    configured: object | None  # the endpoint from the config (Endpoint) or None: dial-in only
    addr: Addr | None = None  # where datagrams go and come from
    up: bool = False
    last_seen: float | None = None
    path_seen: float = float("-inf")  # the last authenticated datagram over its current path
    last_hello: float = float("-inf")
    went_up_at: float | None = None
    # Counters (hot path: plain int attributes, no dict lookups).
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    unicast_out: int = 0
    flooded_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    hellos_in: int = 0
    hellos_out: int = 0
    keepalives_in: int = 0
    keepalives_out: int = 0
    roamed: int = 0
    times_down: int = 0
    keepalive_s: float = 5.0  # the longest silence towards this peer
    sessions: Any = None  # its secure.PeerSessions (secure mode)
    offload: bool | None = None  # it accepts SEGMENT bursts (from its HELLO); None: not heard
    floods: bool = False  # it accepts FLOOD datagrams (from its HELLO)
    bursts: Any = None  # its offload.BurstAssembler (SEGMENTs it sent us)
    bursts_out: int = 0
    bursts_in: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    reassembler: Reassembler = field(default_factory=Reassembler)
    # Loop protection: why we block it (None: we do not), and whether it blocks us.
    blocked: str | None = None
    blocks_us: bool = False
    blocked_since: float | None = None
    loop_blocks: int = 0  # times it was blocked
    # Flooded frames by class (storm.CLASSES: broadcast, multicast, unknown unicast).
    bum_out: list[int] = field(default_factory=lambda: [0, 0, 0])
    bum_in: list[int] = field(default_factory=lambda: [0, 0, 0])
    # How it is reached (l2bridge.core.paths, l2bridge.site.reach): the path its data
    # takes ("udp", "tcp" or "relay"), the room for a frame in one datagram on that
    # path (None: the site's budget), the configured endpoint as last resolved, the
    # initiation in flight (sent on every candidate path) and relay counters.
    reach: Reach = field(default_factory=Reach)
    path: str = UDP
    room: int | None = None
    resolved: Addr | None = None
    resolved_at: float = float("-inf")
    initiation: tuple[bytes, float] | None = None
    relayed_in: int = 0  # bytes this site relayed from this peer to another
    relayed_out: int = 0  # bytes this site relayed from another peer to this one
    relay_addr: Any = None  # l2bridge.site.reach.RelayAddr: "through this peer"
    to_leader: Any = None  # l2bridge.site.reach.ToLeader (a follower's path to worker 0)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    @property
    def state(self) -> str:
        return "up" if self.up else "down"

    @property
    def carries_frames(self) -> bool:
        """Not blocked by loop protection, at either end."""
        return self.blocked is None and not self.blocks_us


class PeerTable:
    """All peers of a site, indexed by port, name and socket address."""

    def __init__(
        self,
        peers: Iterable[Peer],
        *,
        keepalive_s: float,
        dead_after_s: float,
    ) -> None:
        self.by_port: dict[int, Peer] = {}
        self.by_name: dict[str, Peer] = {}
        self.by_addr: dict[Addr, Peer] = {}
        for peer in peers:
            self.by_port[peer.port] = peer
            self.by_name[peer.name] = peer
            if peer.addr is not None:
                self.by_addr[peer.addr] = peer
        self.keepalive_s = keepalive_s
        self.dead_after_s = dead_after_s
        self.retry_s = min(DOWN_RETRY_MAX_S, keepalive_s)
        self._high = max(self.by_port, default=0)  # the highest port ever used
        # Live peers in port order, rebuilt only on state changes; ``flood``: those of
        # them that carry frames (not blocked by loop protection).
        self.live: list[Peer] = []
        self.flood: list[Peer] = []

    def __iter__(self):
        return iter(self.by_port.values())

    def __len__(self) -> int:
        return len(self.by_port)

    def bind(self, peer: Peer, addr: Addr) -> None:
        """Point ``peer`` at ``addr`` (resolution, a dial-in HELLO, a path change).

        Only UDP addresses (tuples) are indexed in ``by_addr``: one address is one
        peer.  Other paths (a TCP link, a relay shared by several peers) are not.
        """
        if peer.addr is not None and self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]
        peer.addr = addr
        if type(addr) is not tuple:
            return
        other = self.by_addr.get(addr)
        if other is not None and other is not peer:
            other.addr = None
        self.by_addr[addr] = peer

    def any_offload(self) -> bool:
        """True if some live peer accepts SEGMENT bursts."""
        return any(p.offload for p in self.live)

    def seen(self, peer: Peer, now: float) -> bool:
        """A valid datagram came from ``peer``; returns True if it just came up."""
        peer.last_seen = now
        if peer.up:
            return False
        peer.up = True
        peer.went_up_at = now
        self._rebuild_live()
        return True

    def add(self, peer: Peer) -> None:
        """A peer a reload added (its port must be new)."""
        if peer.port in self.by_port or peer.name in self.by_name:
            raise ValueError(f"peer {peer.name} (port {peer.port}) is already in the table")
        self.by_port[peer.port] = peer
        self.by_name[peer.name] = peer
        if peer.addr is not None:
            self.by_addr[peer.addr] = peer

    def remove(self, peer: Peer) -> None:
        """A peer a reload removed: it is in no index and no flood list any more."""
        self.by_port.pop(peer.port, None)
        self.by_name.pop(peer.name, None)
        if peer.addr is not None and self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]
        self._rebuild_live()

    def unbind(self, peer: Peer) -> None:
        """Forget where ``peer`` is (its endpoint changed: it is resolved again)."""
        if peer.addr is not None and self.by_addr.get(peer.addr) is peer:
            del self.by_addr[peer.addr]
        peer.addr = None

    def set_timers(self, *, keepalive_s: float, dead_after_s: float) -> None:
        """The site's keepalive and dead-after (a reload changed them)."""
        self.keepalive_s = keepalive_s
        self.dead_after_s = dead_after_s
        self.retry_s = min(DOWN_RETRY_MAX_S, keepalive_s)

    def next_port(self) -> int:
        """A port number no peer has, nor had in this table (entries may still name it)."""
        self._high = max(self._high, max(self.by_port, default=0))
        self._high += 1
        return self._high

    def mark_down(self, peer: Peer) -> None:
        if peer.up:
            peer.up = False
            peer.times_down += 1
            self._rebuild_live()

    def dead(self, now: float) -> list[Peer]:
        """Peers silent for ``dead_after_s``: mark them down and return them."""
        gone = [
            p
            for p in self.live
            if p.last_seen is None or now - p.last_seen >= self.dead_after_s
        ]
        for peer in gone:
            self.mark_down(peer)
        return gone

    def hellos_due(self, now: float) -> list[Peer]:
        """Peers with a known address whose next HELLO is due; stamps them as sent."""
        due = []
        for peer in self.by_port.values():
            if peer.addr is None:
                continue
            interval = peer.keepalive_s if peer.up else self.retry_s
            if now - peer.last_hello >= interval:
                peer.last_hello = now
                due.append(peer)
        return due

    def next_event(self, now: float) -> float:
        """The earliest time at which ``dead`` or ``hellos_due`` may have work."""
        when = now + self.retry_s
        for peer in self.by_port.values():
            if peer.addr is not None:
                interval = peer.keepalive_s if peer.up else self.retry_s
                when = min(when, peer.last_hello + interval)
            if peer.up and peer.last_seen is not None:
                when = min(when, peer.last_seen + self.dead_after_s)
        return max(when, now)

    def block(self, peer: Peer, reason: str | None, *, by_peer: bool | None = None,
              now: float | None = None) -> bool:
        """Set why we block ``peer`` (None: we do not) and, when given, whether it blocks
        us; returns True when whether it carries frames changed."""
        before = peer.carries_frames
        peer.blocked = reason
        if by_peer is not None:
            peer.blocks_us = by_peer
        after = peer.carries_frames
        if before != after:
            if not after:
                peer.loop_blocks += 1
                peer.blocked_since = now
            else:
                peer.blocked_since = None
            self._rebuild_live()
        return before != after

    def _rebuild_live(self) -> None:
        self.live = [p for p in self.by_port.values() if p.up]
        self.flood = [p for p in self.live if p.carries_frames]
