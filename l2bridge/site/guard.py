"""The guard room: probes out, probes in, blocks applied, and the layer-2 reports.

Flow (the rule itself is ``l2bridge.core.loop``'s):
  1. ``run`` (the leader's task): every ``loop_probe_interval`` write this site's
     probes into the LAN (``send_probes``), then apply the rule (evidence may
     have expired) and report what the switch and the bindings found since;
     probes also go out at once when a peer comes up (``peer_up``) and when a
     MAC flaps between the tap and a peer (``flapped``, after a batch);
  2. ``on_probe``: the policy hands over every probe it meets, read from the tap
     or received from a peer; new evidence applies the rule at once (a
     follower forwards the probe to the leader instead);
  3. ``apply``: the peers the rule blocks leave the flood list, are refused by
     the switch (their entries flushed) and are told (a HELLO with BLOCKED,
     sent at once); logged once per change, naming both sites.  Whenever a
     tunnel starts or stops carrying frames the paths between the LANs changed:
     what was learned behind the tap and what the kernel bridge learned is
     forgotten (``topology_changed``, as STP flushes on a topology change), so
     no host stays unreachable behind a path that is gone;
  4. ``hello_flag``: a peer's HELLO says whether it blocks us; we block back.
"""

from __future__ import annotations

import ipaddress
import logging
import time

import trio

from l2bridge.core.ether import format_mac
from l2bridge.core.loop import REASONS, derive_key
from l2bridge.core.peers import Peer
from l2bridge.core.switch import TAP
from l2bridge.errors import L2bridgeError
from l2bridge.site import events
from l2bridge.site.state import SiteState

log = logging.getLogger("l2bridge")

REPORTS_PER_TICK = 8  # duplicate-MAC and binding-conflict lines per tick; the rest are summed
BINDINGS_EXPIRE_S = 10.0
DERIVED_KEYS_MAX = 256
PROBE_REPORTS_MAX = 64  # a follower's probes waiting for the leader


def install(state: SiteState) -> None:
    """Take over the probes the policy meets."""
    state.policy.on_probe = lambda frame, peer, now: on_probe(state, frame, peer, now)


async def run(state: SiteState) -> None:
    """The leader's loop task (module flow, step 1)."""
    next_expire = 0.0
    while True:
        now = trio.current_time()
        send_probes(state, now)
        apply(state, now)
        state.l2.loop.expire(now)
        report(state, now)
        if now >= next_expire and state.policy.bindings is not None:
            state.policy.bindings.expire(now)
            next_expire = now + BINDINGS_EXPIRE_S
        wake = now + state.l2.loop.interval_s
        change = state.l2.loop.next_change(now)
        if change is not None and change < wake:
            wake = change
        await trio.sleep_until(wake)


def send_probes(state: SiteState, now: float) -> None:
    """Write this site's probes into the LAN (one per 60 peers)."""
    guard = state.l2.loop
    if not guard.enabled or state.follower:
        return
    entries = []
    if state.sessions is not None:
        derived = _derived(state)
        for peer in state.peers.live:
            sessions = peer.sessions
            # ours, or the one we answered and the peer already sends with
            session = None if sessions is None else sessions.current or sessions.next
            if session is not None:
                key = session.keypair.send_key
                if key not in derived:
                    derived[key] = derive_key(key)
                entries.append((session.keypair.remote_index, derived[key]))
    l2 = state.l2
    l2.probe_stamp = max(l2.probe_stamp + 1, time.time_ns())
    for frame in guard.probes(l2.probe_mac, l2.probe_stamp, active=bool(state.peers.live),
                              entries=entries):
        state.write_tap(frame)


def peer_up(state: SiteState, now: float) -> None:
    """A tunnel came up: a loop through it shows at once."""
    send_probes(state, now)


def flapped(state: SiteState, now: float) -> None:
    """After a batch: a MAC moved between the tap and a peer (``Switch.flapped`` grew)."""
    state.l2.flaps_seen = state.switch.flapped
    if state.follower:
        state.l2.flap_reports += 1
        return
    if state.l2.loop.flap_probe_due(now):
        send_probes(state, now)


def on_probe(state: SiteState, frame: bytes, peer: Peer | None, now: float) -> None:
    """A probe met by the policy (module flow, step 2)."""
    if state.follower:
        if len(state.l2.probe_reports) < PROBE_REPORTS_MAX:
            state.l2.probe_reports.append((frame, None if peer is None else peer.name))
        return
    guard = state.l2.loop
    if peer is not None:
        if guard.via_peer(frame, peer.name, now):
            apply(state, now)
        return
    looped = guard.self_looped(now)
    by_index = None if state.sessions is None else _by_index(state)
    seen = guard.seen_on_tap(frame, now, by_index=by_index, by_name=_by_name(state))
    if seen is not None and state.peers.by_name[seen].blocked != "segment":
        apply(state, now)
    if not looped and guard.self_looped(now):
        log.warning("loop: %s's own probes come back from its LAN: the LAN loops onto itself "
                    "(the bridge, a NIC or a switch behind it); storm control bounds what "
                    "reaches the peers", state.config.name)


def _derived(state: SiteState) -> dict[bytes, bytes]:
    """Probe keys derived from session keys, kept while the sessions live (bounded)."""
    derived = state.l2.probe_keys
    if len(derived) > DERIVED_KEYS_MAX:
        derived.clear()
    return derived


def _by_index(state: SiteState):  # type: ignore[no-untyped-def]
    table = state.sessions
    assert table is not None
    derived = _derived(state)

    def lookup(index: int) -> tuple[str, bytes, bytes] | None:
        session = table.by_index.get(index)
        if session is None:
            return None
        peer = state.peer_of.get(session.peer)
        if peer is None:
            return None
        key = session.keypair.recv_key
        if key not in derived:
            derived[key] = derive_key(key)
        return peer.name, derived[key], session.peer.keys.public

    return lookup


def _by_name(state: SiteState):  # type: ignore[no-untyped-def]
    def lookup(name: str) -> str | None:
        peer = state.peers.by_name.get(name)
        return None if peer is None else peer.name

    return lookup


def apply(state: SiteState, now: float) -> None:
    """Block and release peers as the rule says (module flow, step 3)."""
    if state.follower:
        return
    peers = state.peers
    decided = state.l2.loop.decide(now, [p.name for p in peers], active=bool(peers.live))
    changed = False
    for peer in list(peers):
        reason = decided.get(peer.name)
        if reason == peer.blocked:
            continue
        was = peer.blocked
        changed |= peers.block(peer, reason, now=now)
        flushed = sync_switch(state, peer)
        _log_change(state, peer, was, reason, flushed, now)
        if peer.up:
            events.keepalive(state, peer, now)  # our BLOCKED flag changed: say so at once
    if changed:
        topology_changed(state)


def topology_changed(state: SiteState) -> None:
    """A tunnel started or stopped carrying frames: forget what the paths taught."""
    state.switch.flush_port(TAP)
    for hook in state.l2.topology_hooks:
        try:
            hook()
        except L2bridgeError as exc:
            log.warning("loop: %s", exc)


def set_blocks(state: SiteState, peer: Peer, reason: str | None, blocks_us: bool,
               now: float) -> None:
    """A follower: the leader's view of one peer's blocks."""
    if (peer.blocked, peer.blocks_us) != (reason, blocks_us):
        if state.peers.block(peer, reason, by_peer=blocks_us, now=now):
            state.switch.flush_port(TAP)
        sync_switch(state, peer)


def hello_flag(state: SiteState, peer: Peer, blocked: bool, now: float) -> None:
    """A HELLO from ``peer`` says whether it blocks us (module flow, step 4)."""
    if peer.blocks_us == blocked:
        return
    if state.peers.block(peer, peer.blocked, by_peer=blocked, now=now):
        topology_changed(state)
    flushed = sync_switch(state, peer)
    site, other = state.config.name, peer.name
    if peer.blocked is not None:
        return  # blocked here anyway, and logged when it was
    if blocked:
        log.warning("loop: %s blocked the %s-%s tunnel (its loop protection): blocked here too;"
                    " %d MAC entries flushed", other, site, other, flushed)
    else:
        log.info("loop: %s released the %s-%s tunnel: it carries frames again", other, site,
                 other)


def sync_switch(state: SiteState, peer: Peer) -> int:
    """The switch refuses a peer that carries no frames; returns the entries flushed."""
    blocked = not peer.carries_frames
    if blocked == state.switch.blocked(peer.port):
        return 0
    return state.switch.set_blocked(peer.port, blocked)


def _log_change(state: SiteState, peer: Peer, was: str | None, reason: str | None,
                flushed: int, now: float) -> None:
    site, other = state.config.name, peer.name
    tunnel = f"the {site}-{other} tunnel"
    if reason is None:
        log.warning("loop: %s is released: %s (no sign of it for %.1f s); it carries frames "
                    "again%s", tunnel, "the other path is gone" if was == "segment" else
                    REASONS.get(was or "", "").format(designated="another site"),
                    state.l2.loop.hold_s,
                    "" if peer.carries_frames else f" once {other} releases it")
        return
    if reason == "segment":
        why = (f"{other}'s LAN is joined to {site}'s by another layer-2 path ({other}'s loop "
               f"probes arrive on {site}'s LAN)")
    elif reason == "standby":
        designated = state.l2.loop.designated(now, active=bool(state.peers.live))
        serving = state.l2.loop.segment(now).get(designated or "")
        name = serving.origin if serving is not None else designated
        why = (f"{site}'s LAN is shared with {name}, which forwards for it; {site} stands by")
    else:
        why = f"{other} sends {site}'s own loop probes back through the tunnel"
    log.warning("loop: %s; %s is blocked (STP BPDUs still cross); %d MAC entries flushed",
                why, tunnel, flushed)


def report(state: SiteState, now: float) -> None:
    """Log what the switch and the bindings found since the last tick (bounded)."""
    switch = state.switch
    names = {p.port: p.name for p in state.peers}
    names[0] = "local"
    mac_events, switch.events = switch.events, []
    for event in mac_events[:REPORTS_PER_TICK]:
        vlan = f" VLAN {event.vlan}" if event.vlan else ""
        log.warning("duplicate MAC %s%s on %s: moved %d times in %.0f s between %s and %s; "
                    "held at %s for %.0f s", format_mac(event.mac), vlan, state.config.name,
                    event.moves, state.config.mac_flap_window_s,
                    names.get(event.held_port, event.held_port),
                    names.get(event.other_port, event.other_port),
                    names.get(event.held_port, event.held_port), event.until - now)
    if len(mac_events) > REPORTS_PER_TICK:
        log.warning("duplicate MAC: %d more MACs held (see l2bridge fdb)",
                    len(mac_events) - REPORTS_PER_TICK)
    bindings = state.policy.bindings
    if bindings is None or not bindings.events:
        return
    conflicts, bindings.events = bindings.events, []
    for c in conflicts[:REPORTS_PER_TICK]:
        address = ".".join(map(str, c.ip)) if len(c.ip) == 4 else _ipv6(c.ip)
        log.warning("ARP/ND conflict: %s is claimed by %s and %s; requests for it flood",
                    address, format_mac(c.old_mac), format_mac(c.new_mac))
    if len(conflicts) > REPORTS_PER_TICK:
        log.warning("ARP/ND conflict: %d more addresses", len(conflicts) - REPORTS_PER_TICK)


def _ipv6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))
