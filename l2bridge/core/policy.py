"""The layer-2 policy of flooded frames: storm control, DHCP/RA guard, ARP/ND suppression,
loop probes (pure: no I/O; the site passes callables for what leaves the policy).

Known unicast never comes here: the rooms call the policy only for frames the
switch floods (broadcast, multicast, unknown unicast), for frames a peer sent
flooded, and, with ``arp_suppress`` on, for ARP and NA unicast from peers.

Egress flow (``egress``: a flooded frame read from the tap, to every peer that
carries frames):
  1. a loop probe is the guard room's (``on_probe``) and never leaves the site;
     a BPDU goes to every live peer, blocked ones included, untouched;
  2. storm control: each peer's out bucket of the frame's class; a frame no
     bucket lets through is dropped here, before any further parsing;
  3. the frame's kind (``classify``): ARP/ND teach bindings; an ARP request or
     NS for a binding known behind a peer is answered into the tap
     (``to_tap``) and not sent; a DHCP client message or router solicitation
     goes only to the peers named in ``dhcp_servers`` (when set);
  4. the peers left (tokens of the others given back), counted.
Ingress flow (``ingress``: a flooded frame from a peer; True: deliver it):
  1. a probe goes to the guard room and is never delivered; a BPDU is;
  2. the peer's in bucket of the frame's class;
  3. a DHCP server message or router advertisement from a peer not named in
     ``dhcp_servers`` is dropped (``dhcp_guard``, ``ra_guard``; an IPv6 header
     chain that cannot be read counts as one); ARP/ND teach bindings.
Relay flow (``relay``: a hub passes a frame from one spoke to the others):
steps 1-2 of egress (no answers, no guard: the spokes guard for themselves).
"""

from __future__ import annotations

from collections.abc import Callable

from l2bridge.core import neigh, storm
from l2bridge.core.classify import LOOP_PROBE_MAC, STP_MACS, Kind, classify
from l2bridge.core.peers import Peer, PeerTable
from l2bridge.core.switch import Switch

_IN = storm.IN
_OUT = storm.OUT
_REASONS = storm.DROP_REASONS
_NEIGH_KINDS = frozenset({Kind.ARP, Kind.NS, Kind.NA, Kind.RA})
_ARP_ETHERTYPE = b"\x08\x06"
_IPV6_ETHERTYPE = b"\x86\xdd"
_UNTAGGED_NA_TYPE_AT = 14 + 40  # ICMPv6 type of an untagged NA without extension headers

# (frame, the peer it came through or None for the tap, now)
ProbeSink = Callable[[bytes, "Peer | None", float], None]


class FloodPolicy:
    """What happens to flooded frames at one site (module flow)."""

    def __init__(self, *, switch: Switch, peers: PeerTable, storm_control: storm.StormControl,
                 on_probe: ProbeSink, to_tap: Callable[[bytes], None]) -> None:
        self.switch = switch
        self.peers = peers
        self.storm = storm_control
        self.on_probe = on_probe
        self.to_tap = to_tap
        self.dhcp_servers: frozenset[int] | None = None  # peer ports; None: every peer
        self.bindings: neigh.Bindings | None = None  # None: arp_suppress off
        self.counters: dict[str, int] = {"dhcp_kept_local": 0, "bpdus": 0}

    def configure(self, *, dhcp_servers: frozenset[int] | None,
                  bindings: neigh.Bindings | None) -> None:
        self.dhcp_servers = dhcp_servers
        self.bindings = bindings

    # --- from the tap -----------------------------------------------------------

    def egress(self, frame: bytes, now: float, count: int = 1) -> list[Peer]:
        """The peers a flooded frame from the LAN goes to (module flow, "Egress")."""
        dst = frame[:6]
        if dst == LOOP_PROBE_MAC:
            self.on_probe(frame, None, now)
            return []
        if dst in STP_MACS:
            self.counters["bpdus"] += 1
            return list(self.peers.live)
        cls = storm.bum_class(frame)
        index = _OUT + cls
        chosen = self.peers.flood
        limiter = self.storm
        if limiter.enabled:
            allow = limiter.allow
            passed = []
            for peer in chosen:
                if allow(peer.port, index, now, count):
                    passed.append(peer)
                else:
                    peer.drop(_REASONS[index])
            chosen = passed
        if not chosen:
            return chosen
        if self.bindings is not None or self.dhcp_servers is not None:
            kept = self._egress_kind(frame, now, chosen)
            if kept is not chosen:
                for peer in chosen:
                    if peer not in kept:
                        limiter.refund(peer.port, index)
                chosen = kept
        for peer in chosen:
            peer.flooded_out += 1
            peer.bum_out[cls] += 1
        return chosen

    def _egress_kind(self, frame: bytes, now: float, chosen: list[Peer]) -> list[Peer]:
        kind = classify(frame)
        bindings = self.bindings
        if bindings is not None and kind in _NEIGH_KINDS:
            learned, request = neigh.parse(frame)
            if learned is not None:
                bindings.learn(learned, now)
            if request is not None:
                answer = bindings.answer(request.vlan, request.target, now)
                if answer is not None:
                    mac, router = answer
                    where = self.switch.lookup(request.vlan, mac, now)
                    ipv6 = len(request.target) == 16
                    if where is not None and where > 0 and (router is not None or not ipv6):
                        self.to_tap(neigh.reply(frame, request, mac, router))
                        bindings.counters["answered_nd" if ipv6 else "answered_arp"] += 1
                        return []
        if kind.client and self.dhcp_servers is not None:
            allowed = self.dhcp_servers
            kept = [peer for peer in chosen if peer.port in allowed]
            if len(kept) != len(chosen):
                self.counters["dhcp_kept_local"] += 1
            return kept
        return chosen

    # --- from a peer -------------------------------------------------------------

    def ingress(self, frame: bytes, peer: Peer, now: float, count: int = 1) -> bool:
        """Whether a flooded frame from ``peer`` is delivered (module flow, "Ingress")."""
        dst = frame[:6]
        if dst == LOOP_PROBE_MAC:
            self.on_probe(frame, peer, now)
            return False
        if dst in STP_MACS:
            self.counters["bpdus"] += 1
            return True
        cls = storm.bum_class(frame)
        index = _IN + cls
        if not self.storm.allow(peer.port, index, now, count):
            peer.drop(_REASONS[index])
            return False
        if self.dhcp_servers is not None or self.bindings is not None:
            kind = classify(frame)
            if kind.server and self.dhcp_servers is not None and peer.port not in self.dhcp_servers:
                peer.drop("ra_guard" if kind is not Kind.DHCP_SERVER else "dhcp_guard")
                return False
            if self.bindings is not None and kind in _NEIGH_KINDS:
                learned, _ = neigh.parse(frame)
                if learned is not None:
                    self.bindings.learn(learned, now)
        peer.bum_in[cls] += 1
        return True

    def snoop(self, frame: bytes, now: float) -> None:
        """A unicast frame from a peer: an ARP reply or NA teaches a binding (suppression on).

        The cheap test first: only ARP, an untagged NA, or a tagged frame is parsed.
        """
        bindings = self.bindings
        if bindings is None:
            return
        ethertype = frame[12:14]
        if ethertype == _IPV6_ETHERTYPE:
            if (len(frame) <= _UNTAGGED_NA_TYPE_AT or frame[20] != 58
                    or frame[_UNTAGGED_NA_TYPE_AT] != 136):
                return
        elif ethertype != _ARP_ETHERTYPE and frame[12] not in (0x81, 0x88, 0x91):
            return
        learned, _ = neigh.parse(frame)
        if learned is not None:
            bindings.learn(learned, now)

    # --- relays (a hub) -------------------------------------------------------------

    def relay(self, frame: bytes, ingress: Peer, now: float, count: int = 1) -> list[Peer]:
        """The spokes a hub floods a frame from ``ingress`` to (module flow, "Relay")."""
        dst = frame[:6]
        if dst == LOOP_PROBE_MAC:
            return []
        if dst in STP_MACS:
            return [p for p in self.peers.live if p is not ingress]
        cls = storm.bum_class(frame)
        index = _OUT + cls
        allow = self.storm.allow
        chosen = []
        for peer in self.peers.flood:
            if peer is ingress:
                continue
            if allow(peer.port, index, now, count):
                chosen.append(peer)
                peer.flooded_out += 1
                peer.bum_out[cls] += 1
            else:
                peer.drop(_REASONS[index])
        return chosen
