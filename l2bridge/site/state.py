"""The running site's state: one plain object the rooms act on.

A site is a learning switch whose ports are the tap (port 0) and the peers
(ports 1..N).  Everything it knows lives in ``SiteState``; the rooms hold the
logic, in the order packets are processed:

  outbound.py  tap → peers        inbound.py  peers → tap (demultiplex, deliver)
  events.py    what happens to a peer (named hooks) and the timers
  status.py    what ``show`` and ``fdb`` report

Facts are decided once and read from here: ``caps`` (what the kernel granted),
``budget`` (every size), the switch (and its layer-2 policy), the peers and
their sessions.  Nothing here changes by itself: time is the ``now`` each room
passes down, never stored.  Tap and transport are passed in, so the same site
runs on real devices and on the in-memory fakes of ``l2bridge.io.fakes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from l2bridge.core import noise, offload, wire
from l2bridge.core.budget import MtuBudget
from l2bridge.core.caps import Capabilities
from l2bridge.core.config import SiteConfig
from l2bridge.core.peers import Peer, PeerTable
from l2bridge.core.secure import PeerSessions, SessionTable, Timers
from l2bridge.core.switch import Switch
from l2bridge.io.tap import Tap
from l2bridge.io.tcp import TcpLinks
from l2bridge.io.transport import Transport


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
        self.hellos = (
            wire.encode_hello(config.name, want_reply=False, offload=caps.bursts),
            wire.encode_hello(config.name, want_reply=True, offload=caps.bursts),
        )
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
