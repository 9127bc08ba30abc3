"""Applying a reload to a running site: the plan of ``l2bridge.core.reload``, done.

Flow of ``apply`` (synchronous: no other task sees a half-applied config):
  1. the new config becomes the site's;
  2. site-wide settings: the switch's ageing, caps and pinned MACs (what they no
     longer allow is removed), the peers' keepalive and dead-after;
  3. removed peers: down (``events.peer_down``: entries, partial frames, bursts),
     out of the peer table, the session table and the switch's policy;
  4. changed peers: a new endpoint is resolved again by the resolver; new keys
     replace the peer's sessions (it goes down and handshakes anew); a new
     transport starts its paths over (down, links closed); keepalive; its port
     policy (entries it may no longer hold are removed);
  5. added peers: a new port, its sessions, its policy, its paths; the resolver
     resolves its endpoint and the timers handshake;
  6. the layer-2 policy from the new config (storm limits, every bucket full
     again; DHCP/RA guard; ARP/ND suppression; duplicate-MAC settings; loop
     protection), then the loop rule again (turned off, it releases every block).
Unchanged peers are not touched: their sessions, entries and counters carry on.
A follower applies the same plan (it receives the leader's config) and, like
the leader, only through the event hooks.
"""

from __future__ import annotations

import trio

from l2bridge.core import noise, offload, wire
from l2bridge.core.config import PeerConfig, SiteConfig
from l2bridge.core.keys import Secrets
from l2bridge.core.peers import Peer
from l2bridge.core.reload import ReloadPlan
from l2bridge.core.secure import PeerSessions
from l2bridge.site import events, guard, inbound, reach
from l2bridge.site.state import SiteState, flap_settings


def apply(state: SiteState, plan: ReloadPlan, config: SiteConfig, secrets: Secrets) -> None:
    """Change the running site as ``plan`` says (module flow).  Precondition: not refused."""
    assert not plan.refused
    state.config = config
    by_name = {p.name: p for p in config.peers}
    if plan.site:
        state.switch.configure(ageing_s=config.ageing_s, max_entries=config.max_entries,
                               max_entries_per_peer=config.max_entries_per_peer,
                               pinned=config.pinned_macs)
        state.peers.set_timers(keepalive_s=config.keepalive_s,
                               dead_after_s=config.dead_after_s)
        for peer in state.peers:
            peer.keepalive_s = min(config.keepalive_s, by_name[peer.name].persistent_keepalive_s)
    for name in plan.removed:
        _remove(state, state.peers.by_name[name])
    for change in plan.changed:
        peer = state.peers.by_name[change.name]
        pc = by_name[change.name]
        if change.endpoint:
            peer.configured = pc.endpoint
            reach.endpoint_changed(state, peer)  # the resolver resolves it again
        if change.keys or change.transport:
            events.peer_down(state, peer)
        if change.keys:
            state.l2.loop.forget(peer.name)  # its probes were keyed with its old sessions
            _new_sessions(state, peer, pc, secrets)
        if change.keys or change.transport or change.endpoint:
            reach.adopt(state, peer, pc.transport)
        if change.keepalive:
            peer.keepalive_s = min(config.keepalive_s, pc.persistent_keepalive_s)
        if change.policy:
            state.switch.set_port_policy(peer.port, allowed=pc.allowed_macs, cap=pc.max_macs)
    for pc in plan.added:
        _add(state, pc, secrets)
    state.switch.set_flap(**flap_settings(config))
    state.configure_policy()
    inbound.select(state)
    guard.apply(state, trio.current_time())


def _remove(state: SiteState, peer: Peer) -> None:
    events.peer_down(state, peer)
    state.peers.block(peer, None)
    state.switch.set_blocked(peer.port, False)
    reach.forget(state, peer)
    state.peers.remove(peer)
    state.switch.set_port_policy(peer.port)
    state.l2.loop.forget(peer.name)
    state.l2.storm.remove(peer.port)
    if state.sessions is not None and peer.sessions is not None:
        state.sessions.remove(peer.sessions)
        del state.peer_of[peer.sessions]


def _add(state: SiteState, pc: PeerConfig, secrets: Secrets) -> None:
    config = state.config
    peer = Peer(
        port=state.peers.next_port(),
        name=pc.name,
        configured=pc.endpoint,
        reassembler=wire.Reassembler(max_frame=state.budget.max_frame),
        bursts=offload.BurstAssembler(),
        keepalive_s=min(config.keepalive_s, pc.persistent_keepalive_s),
    )
    state.peers.add(peer)
    state.switch.set_port_policy(peer.port, allowed=pc.allowed_macs, cap=pc.max_macs)
    _new_sessions(state, peer, pc, secrets)
    reach.adopt(state, peer, pc.transport)


def _new_sessions(state: SiteState, peer: Peer, pc: PeerConfig, secrets: Secrets) -> None:
    """Give ``peer`` fresh sessions for its (new) keys; the old ones are forgotten."""
    table = state.sessions
    if table is None:
        return
    if peer.sessions is not None:
        table.remove(peer.sessions)
        state.peer_of.pop(peer.sessions, None)
    assert table.identity is not None  # every worker of a sealed site holds the identity
    keys = noise.PeerKeys(table.identity, pc.public_key or b"", secrets.psks.get(pc.name))
    peer.sessions = PeerSessions(keys=keys, name=pc.name, has_endpoint=pc.endpoint is not None)
    table.add(peer.sessions)
    state.peer_of[peer.sessions] = peer
