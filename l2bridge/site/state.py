"""The running site's state: one plain object the rooms act on.

A site is a learning switch whose ports are the tap (port 0) and the peers
(ports 1..N).  Everything it knows lives in ``SiteState``; the rooms hold the
logic, in the order packets are processed:

  outbound.py  tap → peers        inbound.py  peers → tap (demultiplex, deliver)
  events.py    what happens to a peer (named hooks) and the timers
  guard.py     loop protection: probes, blocks, and the site's layer-2 reports
  status.py    what ``show`` and ``fdb`` report

Facts are decided once and read from here: ``caps`` (what the kernel granted),
``budget`` (every size), the switch (and its layer-2 policy), the peers and
their sessions, and the layer-2 policy of flooded frames (``policy``: storm
control, DHCP/RA guard, ARP/ND suppression) with the loop guard (``loop``).
Nothing here changes by itself: time is the ``now`` each room
passes down, never stored.  Tap and transport are passed in, so the same site
runs on real devices and on the in-memory fakes of ``l2bridge.io.fakes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from l2bridge.core import neigh, noise, offload, wire
from l2bridge.core.budget import MtuBudget
from l2bridge.core.caps import Capabilities
from l2bridge.core.config import SiteConfig
from l2bridge.core.loop import LoopGuard, site_mac
from l2bridge.core.peers import Peer, PeerTable
from l2bridge.core.policy import FloodPolicy
from l2bridge.core.secure import PeerSessions, SessionTable, Timers
from l2bridge.core.storm import StormControl
from l2bridge.core.switch import Switch
from l2bridge.io.tap import Tap
from l2bridge.io.tcp import TcpLinks
from l2bridge.io.transport import Transport


@dataclass(slots=True)
class Layer2:
    """What layer-2 safety keeps between frames (the guard room and the policy's edges)."""

    loop: LoopGuard
    storm: StormControl
    probe_mac: bytes  # the source MAC of this site's probes
    probe_stamp: int = 0  # the last probe's timestamp (ns): never goes back
    probe_keys: dict[bytes, bytes] = field(default_factory=dict)  # session key -> probe key
    flaps_seen: int = 0  # switch.flapped when the guard room last looked
    snoop: bool = False  # arp_suppress: unicast ARP/NA from peers teach bindings
    # A follower's probes and flaps, for the leader (l2bridge.site.workers).
    probe_reports: list[tuple[bytes, str | None]] = field(default_factory=list)
    flap_reports: int = 0
    # Called when loop protection blocks or releases a tunnel: the LAN's paths changed,
    # so what the kernel bridge learned may point the wrong way (the daemon's flush).
    topology_hooks: list[Callable[[], None]] = field(default_factory=list)
    # Called with the config after a reload changed the policy (the kernel's storm stage).
    policy_hooks: list[Callable[[SiteConfig], None]] = field(default_factory=list)


@dataclass(slots=True)
class SiteCounters:
    """Site-wide counters: frames of the tap, and drops that belong to no peer."""

    tap_frames_in: int = 0
    tap_bytes_in: int = 0
    tap_frames_out: int = 0
    tap_bytes_out: int = 0
    super_frames_in: int = 0
    super_frames_out: int = 0
    tap_write_errors: int = 0
    unknown_source: int = 0
    carried_frames: int = 0  # worker 0: frames its followers handed it for TCP or relayed peers
    tap_drops: dict[str, int] = field(default_factory=dict)

    def tap_drop(self, reason: str) -> None:
        self.tap_drops[reason] = self.tap_drops.get(reason, 0) + 1


class SiteState:
    """Everything one running site (or one worker of it) knows."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        tap: Tap,
        transport: Transport,
        caps: Capabilities | None = None,
        identity: noise.Identity | None = None,
        psks: dict[str, bytes] | None = None,
        timers: Timers | None = None,
        clock_unix: Callable[[], float] | None = None,
        lane: int = 0,
        follower: bool = False,
        links: TcpLinks | None = None,
    ) -> None:
        if caps is None:  # what the devices in hand can do (the daemon decides it itself)
            caps = Capabilities.decide(offload=config.offload, vnet_hdr=tap.vnet_hdr,
                                       udp_gso=transport.gso, udp_gro=transport.gro)
        self.config, self.tap, self.transport, self.caps = config, tap, transport, caps
        # Worker ``lane`` of ``caps.lanes`` (l2bridge.site.workers): a follower takes peer
        # state and keys from the leader (worker 0) and never handshakes or keeps alive.
        self.lane = lane
        self.follower = follower
        self.budget = MtuBudget.of(mtu=config.mtu, wan_mtu=config.wan_mtu,
                                   ipv6_underlay=config.listen.is_ipv6,
                                   sealed=not config.insecure)
        # Fragment and burst ids of worker ``lane`` are lane, lane + lanes, ...: two workers
        # whose lanes meet in one worker at the far end never reuse each other's ids.
        self.fragmenter = wire.Fragmenter(self.budget.max_plaintext, first_id=lane,
                                          stride=caps.lanes)
        self.burst_id = lane  # the next SEGMENT burst's id (per sender, wraps at 2**16)
        self.switch = Switch(
            hub=config.hub,
            ageing_s=config.ageing_s,
            max_entries=config.max_entries,
            max_entries_per_peer=config.max_entries_per_peer,
            max_frame=self.budget.max_frame,
            pinned=config.pinned_macs,
            **flap_settings(config),
        )
        self.peers = PeerTable(
            (
                Peer(
                    port=i + 1,
                    name=p.name,
                    configured=p.endpoint,
                    reassembler=wire.Reassembler(max_frame=self.budget.max_frame),
                    bursts=offload.BurstAssembler(),
                    keepalive_s=min(config.keepalive_s, p.persistent_keepalive_s),
                )
                for i, p in enumerate(config.peers)
            ),
            keepalive_s=config.keepalive_s,
            dead_after_s=config.dead_after_s,
        )
        for peer, pc in zip(self.peers, config.peers, strict=True):
            self.switch.set_port_policy(peer.port, allowed=pc.allowed_macs, cap=pc.max_macs)
        self.sessions: SessionTable | None = None
        self.peer_of: dict[PeerSessions, Peer] = {}
        if not config.insecure:
            if identity is None:
                raise ValueError("a secure site needs its identity (private key)")
            psks = psks or {}
            for peer, pc in zip(self.peers, config.peers, strict=True):
                keys = noise.PeerKeys(identity, pc.public_key or b"", psks.get(pc.name))
                peer.sessions = PeerSessions(keys=keys, name=pc.name,
                                             has_endpoint=pc.endpoint is not None)
                self.peer_of[peer.sessions] = peer
            if timers is None:
                timers = Timers().scaled(config.rekey_after_s / Timers().rekey_after_time_s)
            self.sessions = SessionTable(identity, self.peer_of, timers=timers,
                                         clock_unix=clock_unix, lane=lane, lanes=caps.lanes,
                                         follower=follower)
        # HELLOs by [want_reply][blocked]: the four a site ever sends (it accepts FLOODs).
        self.hellos = tuple(
            tuple(wire.encode_hello(config.name, want_reply=want, offload=caps.bursts,
                                    blocked=blocked, floods=True) for blocked in (False, True))
            for want in (False, True))
        # Reach (l2bridge.site.reach): peers by public key, TCP links (worker 0), a
        # follower's pipe to worker 0, and what one inbound batch relays or re-injects.
        self.identity_public = None if identity is None else identity.public
        self.by_key: dict[bytes, Peer] = {}
        self.links = links
        self.pipe: Any = None  # a follower's reach.Pipe
        self.nursery: trio.Nursery | None = None  # where worker 0 starts link tasks
        self.answered: dict[tuple[int, int], float] = {}
        self.forwarding: dict[Peer, list[bytes]] = {}
        self.reinjected: list[tuple[bytes, object]] = []
        self.counters = SiteCounters()
        # Layer-2 safety: the policy of flooded frames, the rest in ``l2`` (kept apart so
        # that this object keeps few attributes: the per-frame path reads it often).
        public = identity.public if identity is not None else b""
        self.l2 = Layer2(
            loop=LoopGuard(name=config.name, rank_key=public, hub=config.hub,
                           interval_s=config.loop_probe_interval_s,
                           enabled=config.loop_protect),
            storm=StormControl(config.storm, enabled=config.storm_control, lanes=caps.lanes),
            probe_mac=site_mac(config.name, public))
        self.policy = FloodPolicy(switch=self.switch, peers=self.peers,
                                  storm_control=self.l2.storm, on_probe=_no_probe,
                                  to_tap=self.write_tap)
        # The inbound room's deliver (``inbound.select``: with or without snooping).
        self.deliver: Callable[..., None] = _unselected
        self.configure_policy()
        self.kicks: set[str] = set()  # a follower's peers waiting for keys (the leader handshakes)
        self.started_at: float | None = None
        # Sections the running site adds to ``show`` (plumbing, workers), computed on demand.
        self.status_sections: dict[str, Callable[[], object]] = {}
        # Signs of life (status.health): when each direction began the batch it is in
        # (None between batches: waiting is healthy), when the timers last ran, and
        # more checks the running site adds (the workers'); each says why it is unwell.
        self.outbound_since: float | None = None
        self.inbound_since: float | None = None
        self.ticked: float | None = None
        self.health_checks: list[Callable[[float], str | None]] = []

    def configure_policy(self) -> None:
        """The layer-2 policy from ``config`` (at start and after a reload)."""
        config = self.config
        own = {p.name: p.storm for p in config.peers if p.storm is not None}
        self.l2.storm.configure(config.storm, enabled=config.storm_control,
                             own={peer.port: own[peer.name] for peer in self.peers
                                  if peer.name in own})
        servers = None
        if config.dhcp_servers is not None:
            servers = frozenset(self.peers.by_name[n].port for n in config.dhcp_servers
                                if n in self.peers.by_name)
        bindings = self.policy.bindings
        if config.arp_suppress:
            ageing = config.ageing_s or neigh.CONFLICT_HOLD_S
            if bindings is None:
                bindings = neigh.Bindings(max_entries=config.arp_max_bindings, ageing_s=ageing)
            bindings.configure(max_entries=config.arp_max_bindings, ageing_s=ageing)
        else:
            bindings = None
        self.policy.configure(dhcp_servers=servers, bindings=bindings)
        self.l2.snoop = bindings is not None
        self.l2.loop.configure(enabled=config.loop_protect,
                               interval_s=config.loop_probe_interval_s)
        for hook in self.l2.policy_hooks:
            hook(config)

    def write_tap(self, frame: bytes) -> None:
        """One frame the site makes itself (a probe, an ARP or ND answer) into the LAN;
        counted where it is made (the loop guard, the bindings), not as delivered."""
        try:
            self.tap.write(offload.PLAIN_VNET_HDR + frame if self.caps.vnet_hdr else frame)
        except OSError:
            self.counters.tap_write_errors += 1


def flap_settings(config: SiteConfig) -> dict:
    """The switch's duplicate-MAC settings (``Switch`` and ``Switch.set_flap`` keywords)."""
    return {"flap_moves": config.mac_flap_moves if config.mac_flap_detect else None,
            "flap_window_s": config.mac_flap_window_s, "flap_hold_s": config.mac_flap_hold_s}


def _unselected(*args: object) -> None:
    raise RuntimeError("inbound.select(state) has not run (Site does it)")


def _no_probe(frame: bytes, peer: Peer | None, now: float) -> None:
    """Until the guard room takes over: a probe is dropped."""
