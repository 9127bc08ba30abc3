"""How each peer is reached: straight over UDP, over a TCP link, or through a relay (pure).

Every peer has a ``Reach``: what the config allows (``mode``: auto | udp | tcp),
the path its data takes now (``kind``: udp | tcp | relay) and what the site
has learnt (its UDP endpoint, a TCP link, hints, a relay).  The site feeds it
facts and acts on its answers; it does no I/O and never reads a clock.

Arrivals: each authenticated datagram says how it came (``arrived_udp``,
``arrived_link``, ``arrived_relayed``); the answer is whether data now goes
that way.  The rules:
  1. Over UDP: the UDP endpoint follows it (roaming).  On the UDP path that is
     all.  On TCP or a relay, data moves back to UDP only on proof of a round
     trip: a datagram that is not a *probe*.  Probes (a handshake INITIATION, a
     HELLO asking for a reply) can make it one way only; anything else over
     UDP means the peer hears us over UDP: it answers our probe, or it sends
     data, which it does only over a path it proved.
  2. Over a TCP link: on the TCP path the link carries data; on UDP or a relay,
     data moves to the link when the current path went quiet (nothing over it
     for ``quiet_s``) or the mode is tcp.  Two links to one peer (both sides
     dialled): both sides keep the same one (``_better``) and close the other.
  3. Relayed: only when the direct paths are quiet; a relay is the last resort.
  Mode udp never sends over TCP or a relay; mode tcp only over TCP.

Timers (``due``, asked by the leader about every second): what to try for a
peer that is down or on a second-best path:
  * dial TCP (auto: the peer has been down TCP_AFTER_S although we tried it
    over UDP; tcp: whenever there is no link), backing off on failures;
  * probe UDP (on TCP or a relay, every PROBE_EVERY_S: a HELLO asking for a
    reply, sent to the UDP endpoint and to the hinted one);
  * ask the neighbours where the peer is (down: every ASK_EVERY_S; relayed:
    every ASK_RELAYED_S, to find a direct path again);
  * punch (after a hint: handshake at the hinted endpoint every PUNCH_EVERY_S
    for PUNCH_FOR_S) and, RELAY_AFTER_S after a hint offering a relay, try the
    relay too.

Hints (``hint_problem``): a neighbour's word about another site's endpoint is
only a hint.  It is ignored when it points at loopback, multicast, broadcast,
unspecified or link-local addresses, at the neighbour itself, or at this
site's own listen address; a wrong one costs a handshake that nobody answers.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

AUTO, UDP, TCP, RELAY = "auto", "udp", "tcp", "relay"
MODES = (AUTO, UDP, TCP)

TCP_AFTER_S = 3.0  # auto: a peer down this long while tried over UDP is dialled over TCP
PROBE_EVERY_S = 5.0  # on TCP or relayed: the UDP path is probed this often
DIAL_BACKOFF_MIN_S = 1.0
DIAL_BACKOFF_MAX_S = 30.0
ASK_AFTER_S = 1.0  # a peer down this long: ask the neighbours where it is
ASK_EVERY_S = 2.0
ASK_RELAYED_S = 30.0  # relayed: ask again now and then (endpoints change)
PUNCH_EVERY_S = 0.5
PUNCH_FOR_S = 5.0
RELAY_AFTER_S = 2.0  # after a hint: the direct path gets this long before the relay is tried
ANSWER_EVERY_S = 1.0  # a neighbour answers one asker about one site at most this often

Addr = Hashable


@dataclass(frozen=True, slots=True)
class Due:
    """What the timers should do for one peer now (``Reach.due``)."""

    dial: bool = False
    probe: tuple[Addr, ...] = ()
    ask: bool = False
    punch: Addr | None = None
    relay: Any = None  # the neighbour to handshake through

    def __bool__(self) -> bool:
        return bool(self.dial or self.probe or self.ask or self.punch is not None
                    or self.relay is not None)


@dataclass(eq=False, slots=True)
class Reach:
    """One peer's paths (module docstring).  ``lower``: our key sorts before the peer's,
    so a link we dialled is the one both sides keep."""

    mode: str = AUTO
    dials: bool = False  # a configured endpoint: this site may dial it over TCP
    lower: bool = False
    quiet_s: float = 15.0
    kind: str = UDP
    via: Any = None  # the relaying neighbour (a Peer) while kind == RELAY
    udp: Addr | None = None  # where UDP goes: resolved, roamed or hinted
    link: Any = None  # the TCP link in use or standing by
    link_dialed: bool = False
    changes: int = 0  # moves between paths
    # Trying to reach a peer that is down:
    trying_since: float | None = None
    dialing: bool = False
    next_dial: float = -math.inf
    dial_backoff_s: float = DIAL_BACKOFF_MIN_S
    last_probe: float = -math.inf
    last_ask: float = -math.inf
    hint: Addr | None = None
    punch_until: float = -math.inf
    last_punch: float = -math.inf
    relay_offer: Any = None  # a neighbour that offered to relay
    relay_from: float = math.inf

    # ------------------------------------------------------------ arrivals

    def arrived_udp(self, addr: Addr, *, probe: bool) -> bool:
        """An authenticated datagram over UDP from ``addr``: whether data now goes there."""
        self.udp = addr
        if self.mode == TCP:
            return False
        if self.kind == UDP:
            return True
        if probe:
            return False
        self._move(UDP, None)
        return True

    def arrived_link(self, link: Any, now: float, *, dialed: bool,
                     path_seen: float) -> tuple[bool, Any]:
        """An authenticated datagram over ``link``: (data now goes over it, a link to close).

        ``path_seen``: when the current path last delivered an authenticated datagram.
        """
        retire = None
        if link is not self.link:
            if self.link is not None and not self._better(dialed, self.link_dialed):
                return False, link
            retire, self.link, self.link_dialed = self.link, link, dialed
            self.dial_backoff_s = DIAL_BACKOFF_MIN_S
        if self.mode == UDP:
            return False, retire
        if self.kind == TCP:
            return True, retire
        if self.mode == TCP or now - path_seen >= self.quiet_s:
            self._move(TCP, None)
            return True, retire
        return False, retire

    def arrived_relayed(self, via: Any, now: float, *, path_seen: float) -> bool:
        """An authenticated datagram relayed by neighbour ``via``: whether data now goes so
        (``path_seen`` as for ``arrived_link``)."""
        if self.kind == RELAY:
            if via is not self.via:
                self.via = via
            return True
        if self.mode != AUTO or now - path_seen < self.quiet_s:
            return False
        self._move(RELAY, via)
        return True

    def link_lost(self, link: Any) -> bool:
        """``link`` closed: whether data lost its path (auto falls back to UDP; tcp waits
        for the next link)."""
        if link is not self.link:
            return False
        self.link = None
        if self.kind != TCP:
            return False
        if self.mode != TCP:
            self._move(UDP, None)
        return True

    def relay_lost(self, via: Any) -> bool:
        """Neighbour ``via`` went down or away: whether the path changed."""
        if self.relay_offer is via:
            self.relay_offer, self.relay_from = None, math.inf
        if self.kind == RELAY and self.via is via:
            self._move(UDP, None)
            return True
        return False

    def _better(self, dialed: bool, old_dialed: bool) -> bool:
        """A second link: the newer one of the same side, or the one the lower key dialled."""
        return dialed == old_dialed or dialed == self.lower

    def _move(self, kind: str, via: Any) -> None:
        self.kind, self.via = kind, via
        self.changes += 1

    # ------------------------------------------------------------ hints

    def hinted(self, addr: Addr, relay: Any, now: float) -> None:
        """A neighbour says the peer is at ``addr`` (checked by ``hint_problem``) and, with
        ``relay``, offers to relay: punch now, and try the relay RELAY_AFTER_S later."""
        self.hint = addr
        self.punch_until = now + PUNCH_FOR_S
        self.last_punch = -math.inf
        if relay is not None and self.relay_offer is not relay:
            self.relay_offer = relay
            self.relay_from = now + RELAY_AFTER_S

    # ------------------------------------------------------------ timers

    def due(self, now: float, *, up: bool) -> Due:
        """What to try now for this peer (module docstring); stamps what it returns."""
        if up and self.kind == UDP:
            self.trying_since = None
            return Due()
        if not up and self.trying_since is None:
            self.trying_since = now
        dial = self._dial_due(now, up)
        probe: tuple[Addr, ...] = ()
        if self.mode == AUTO and self.kind != UDP and now - self.last_probe >= PROBE_EVERY_S:
            probe = tuple(dict.fromkeys(a for a in (self.udp, self.hint) if a is not None))
            if probe:
                self.last_probe = now
        ask = False
        if self.mode == AUTO:
            waited = self.trying_since is not None and now - self.trying_since >= ASK_AFTER_S
            every = ASK_RELAYED_S if up else ASK_EVERY_S
            if (waited or self.kind == RELAY) and now - self.last_ask >= every:
                ask = True
                self.last_ask = now
        punch = None
        if (not up or self.kind == RELAY) and now < self.punch_until \
                and now - self.last_punch >= PUNCH_EVERY_S and self.mode == AUTO:
            punch = self.hint
            self.last_punch = now
        relay = None
        if not up and self.mode == AUTO and self.relay_offer is not None \
                and now >= self.relay_from:
            relay = self.relay_offer
            self.relay_from = now + PROBE_EVERY_S
        return Due(dial=dial, probe=probe, ask=ask, punch=punch, relay=relay)

    def _dial_due(self, now: float, up: bool) -> bool:
        if not self.dials or self.mode == UDP or self.link is not None or self.dialing:
            return False
        if now < self.next_dial:
            return False
        if self.mode == AUTO and (up or self.trying_since is None
                                  or now - self.trying_since < TCP_AFTER_S):
            return False
        self.dialing = True
        return True

    def dial_done(self, now: float, *, ok: bool) -> None:
        """The dial ``due`` asked for finished; a failure backs the next one off."""
        self.dialing = False
        if ok:
            self.next_dial = now + DIAL_BACKOFF_MIN_S
            return
        self.next_dial = now + self.dial_backoff_s
        self.dial_backoff_s = min(DIAL_BACKOFF_MAX_S, self.dial_backoff_s * 2)


def hint_problem(address: str, port: int, *, neighbour: str | None,
                 listen_host: str, listen_port: int) -> str | None:
    """Why a hinted endpoint is ignored (module docstring), or None when it may be tried.

    ``neighbour`` is the IP literal the hint came from; ``listen_*`` this site's own.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 1 <= port <= 65535:
        return "port out of range"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if ip.is_link_local:
        return "link-local"
    if neighbour is not None and ip == _plain(neighbour):
        return "the neighbour itself"
    own = _plain(listen_host)
    if port == listen_port and own is not None and ip == own:
        return "this site's own address"
    return None


def _plain(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def answer_due(answered: dict[tuple[int, int], float], asker: int, target: int,
               now: float) -> bool:
    """Whether a neighbour answers ``asker`` about ``target`` now (at most once per
    ANSWER_EVERY_S per pair, so a chatty asker cannot make it a reflector); stamps it."""
    key = (asker, target)
    if now - answered.get(key, -math.inf) < ANSWER_EVERY_S:
        return False
    answered[key] = now
    return True
