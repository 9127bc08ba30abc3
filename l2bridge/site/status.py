"""Status views: what ``l2bridge show``, ``l2bridge fdb`` and the service manager see.

Read-only: nothing here changes the site.  ``now`` is the time of the view.
``health`` says whether the dataplane is alive (the watchdog pings only then):
a direction stuck inside one batch, timers that stopped running, or a check
the running site added (a worker gone silent) make it unwell; waiting for
traffic is healthy.
"""

from __future__ import annotations

from l2bridge.core import storm
from l2bridge.core.ether import format_mac
from l2bridge.core.keys import fingerprint
from l2bridge.core.loop import REASONS
from l2bridge.core.peers import Peer
from l2bridge.core.switch import TAP
from l2bridge.site import reach
from l2bridge.site.state import SiteState

STALL_S = 5.0  # a batch, a timer tick or a worker's report older than this is a stall

SECURITY_SEALED = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s sessions, ChaCha20-Poly1305 data"
SECURITY_CLEARTEXT = "cleartext (filtered by peer address only)"


def show(state: SiteState, now: float) -> dict:
    """Everything ``l2bridge show`` prints."""
    cfg = state.config
    counters = state.counters
    table = state.sessions
    return {
        "site": cfg.name,
        "listen": str(cfg.listen),
        "hub": cfg.hub,
        "bridge": cfg.bridge,
        "tap": state.tap.name,
        "uptime_s": round(now - (state.started_at or now), 3),
        "security": SECURITY_CLEARTEXT if table is None else SECURITY_SEALED,
        "auth_drops": dict(sorted(table.counters.items())) if table else {},
        "local": {
            "frames_in": counters.tap_frames_in,
            "bytes_in": counters.tap_bytes_in,
            "frames_out": counters.tap_frames_out,
            "bytes_out": counters.tap_bytes_out,
            "drops": dict(sorted(counters.tap_drops.items())),
            "tap_write_errors": counters.tap_write_errors,
            "super_frames_in": counters.super_frames_in,
            "super_frames_out": counters.super_frames_out,
            "carried_frames": counters.carried_frames,
        },
        "offload": {
            "tap": state.caps.vnet_hdr,
            "bursts": state.caps.bursts,
            "udp_gso": state.transport.gso,
            "udp_gro": state.caps.udp_gro,
        },
        "tcp": None if state.links is None else {
            "port": state.links.port, "links": len(state.links.links),
            **dict(sorted(state.links.counters.items()))},
        "relay": cfg.relay,
        "unknown_source": counters.unknown_source,
        "socket_errors": state.transport.errors,
        "fdb": {"entries": len(state.switch.entries(now)), **state.switch.counters,
                "held_macs": len(state.switch.held(now))},
        **layer2_view(state, now),
        "peers": [peer_view(state, p, now) for p in state.peers],
        "workers": {"count": state.caps.lanes, "followers": []},
        **{name: section() for name, section in state.status_sections.items()},
    }


def peer_view(state: SiteState, peer: Peer, now: float) -> dict:
    drops = dict(peer.drops)
    for reason, count in peer.reassembler.counters.items():
        if reason != "reassembled" and count:
            drops[f"reassembly_{reason}"] = count
    addr = peer.addr
    link = peer.reach.link
    return {
        "name": peer.name,
        "endpoint": reach.describe(state, addr) if addr is not None else None,
        "configured_endpoint": str(peer.configured) if peer.configured else None,
        "state": peer.state,
        "transport": peer.reach.mode,
        "path": peer.path,
        "via": addr.via.name if type(addr) is reach.RelayAddr else None,  # type: ignore[union-attr]
        "udp_endpoint": None if peer.reach.udp is None
        else state.transport.format_addr(peer.reach.udp),
        "path_changes": peer.reach.changes,
        "tcp_link": None if link is None else {
            "link": link.describe(), "queued_bytes": len(link.pending),
            "dropped": link.dropped, "records_in": link.records_in,
            "records_out": link.records_out},
        "relayed_in": peer.relayed_in,
        "relayed_out": peer.relayed_out,
        "last_seen_s": None if peer.last_seen is None else round(now - peer.last_seen, 3),
        "frames_in": peer.frames_in,
        "bytes_in": peer.bytes_in,
        "frames_out": peer.frames_out,
        "bytes_out": peer.bytes_out,
        "unicast_out": peer.unicast_out,
        "flooded_out": peer.flooded_out,
        "datagrams_in": peer.datagrams_in,
        "datagrams_out": peer.datagrams_out,
        "hellos_in": peer.hellos_in,
        "hellos_out": peer.hellos_out,
        "times_down": peer.times_down,
        "keepalives_in": peer.keepalives_in,
        "keepalives_out": peer.keepalives_out,
        "roamed": peer.roamed,
        **_sessions_view(peer, now),
        "mac_entries": state.switch.port_count(peer.port),
        "reassembled": peer.reassembler.counters.get("reassembled", 0),
        "offload": peer.offload,
        "bursts_in": peer.bursts_in,
        "bursts_out": peer.bursts_out,
        "burst_counters": dict(sorted(peer.bursts.counters.items())),
        "loop_blocked": peer.blocked,
        "blocks_us": peer.blocks_us,
        "loop_blocks": peer.loop_blocks,
        "flooded_by_class": {
            "out": dict(zip(storm.CLASSES, peer.bum_out, strict=True)),
            "in": dict(zip(storm.CLASSES, peer.bum_in, strict=True)),
        },
        "storm_limits": _limits(state.l2.storm.limits_of(peer.port)),
        "drops": dict(sorted(drops.items())),
    }


def layer2_view(state: SiteState, now: float) -> dict:
    """The layer-2 safety sections of ``show``: loop, storm, dhcp_servers, neigh."""
    config = state.config
    guard = state.l2.loop
    live = bool(state.peers.live)
    designated = guard.designated(now, active=live) if guard.enabled else None
    segment = guard.segment(now) if guard.enabled else {}
    blocked = []
    for peer in state.peers:
        if peer.carries_frames:
            continue
        serving = segment.get(designated or "")
        reason = peer.blocked or "peer"
        why = REASONS[reason].format(designated=serving.origin if serving else designated)
        blocked.append({"peer": peer.name, "path": f"{config.name}-{peer.name}",
                        "reason": reason, "why": why, "blocks_us": peer.blocks_us,
                        "since_s": None if peer.blocked_since is None
                        else round(now - peer.blocked_since, 3)})
    bindings = state.policy.bindings
    return {
        "loop": {
            "enabled": guard.enabled,
            "probe_interval_s": guard.interval_s,
            "segment": [{"peer": peer, "site": s.origin, "age_s": round(now - s.seen, 3)}
                        for peer, s in sorted(segment.items())],
            "designated": designated,
            "self_loop": guard.self_looped(now),
            "blocked": blocked,
            "probes": dict(guard.counters),
        },
        "storm": {"enabled": state.l2.storm.enabled, **_limits(state.l2.storm.limits)},
        "dhcp_servers": None if config.dhcp_servers is None else list(config.dhcp_servers),
        "policy": dict(state.policy.counters),
        "neigh": {"enabled": bindings is not None,
                  **({"bindings": len(bindings), **bindings.counters} if bindings else {})},
    }


def _limits(limits: storm.StormLimits) -> dict:
    return {"broadcast_per_s": limits.broadcast, "multicast_per_s": limits.multicast,
            "unknown_unicast_per_s": limits.unknown_unicast, "burst_s": limits.burst_s}


def _sessions_view(peer: Peer, now: float) -> dict:
    sessions = peer.sessions
    if sessions is None:
        return {}
    current = sessions.current
    return {
        "public_key": fingerprint(sessions.keys.public),
        "latest_handshake_s": (
            None if sessions.last_handshake is None else round(now - sessions.last_handshake, 3)
        ),
        "session_age_s": None if current is None else round(now - current.created, 3),
        "rx_counter": None if current is None else current.highest,
        "tx_counter": None if current is None else current.send_counter,
        "handshakes": sessions.handshakes,
        "rekeys": sessions.rekeys,
    }


def fdb(state: SiteState, now: float) -> list[dict]:
    """Every live MAC entry with the peer (or "local") it sits behind."""
    names = {p.port: p.name for p in state.peers}
    names[TAP] = "local"
    held = {(h.vlan, h.mac): h for h in state.switch.held(now)}
    out = []
    for e in state.switch.entries(now):
        entry = {"mac": format_mac(e.mac), "vlan": e.vlan,
                 "peer": names.get(e.port, str(e.port)), "age_s": round(e.age_s, 1)}
        h = held.get((e.vlan, e.mac))
        if h is not None:  # a duplicate MAC: held here, also seen there
            entry["held_s"] = round(h.remaining_s, 1)
            entry["also_at"] = names.get(h.other_port, str(h.other_port))
        out.append(entry)
    return out


def health(state: SiteState, now: float) -> str | None:
    """Why the dataplane is not alive, or None when it is (module docstring)."""
    for name, since in (("tap to peers", state.outbound_since),
                        ("peers to tap", state.inbound_since)):
        if since is not None and now - since > STALL_S:
            return f"the {name} path has been stuck in one batch for {now - since:.0f} s"
    if state.ticked is not None and now - state.ticked > STALL_S:
        return f"the timers have not run for {now - state.ticked:.0f} s"
    for check in state.health_checks:
        reason = check(now)
        if reason is not None:
            return reason
    return None


def summary(state: SiteState, now: float) -> str:
    """One line for ``systemctl status``: peers up, traffic, the site's trouble if any."""
    peers = list(state.peers)
    up = sum(1 for p in peers if p.up)
    rx = sum(p.bytes_in for p in peers)
    tx = sum(p.bytes_out for p in peers)
    line = f"{up}/{len(peers)} peers up; {_size(rx)} received, {_size(tx)} sent"
    down = [p.name for p in peers if not p.up]
    if down and len(down) <= 4:
        line += f"; down: {', '.join(down)}"
    trouble = health(state, now)
    return f"{line}; {trouble}" if trouble else line


def _size(count: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:g} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    return f"{count:.1f} TB"
