"""Human-readable views of a running site, in the spirit of ``wg show`` and ``bridge fdb show``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _drops(drops: Mapping[str, int]) -> str:
    shown = [f"{k} {v}" for k, v in drops.items() if v]
    return ", ".join(shown) if shown else "none"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s ago"


def format_show(status: Mapping) -> str:
    local = status["local"]
    fdb = status["fdb"]
    lines = [
        f"site: {status['site']}{' (hub)' if status.get('hub') else ''}",
        f"  listening: {status['listen']}",
        f"  bridge: {status['bridge']}  tap: {status['tap']}",
        f"  uptime: {status['uptime_s']:.0f} s",
        f"  security: {status['security']}",
        f"  from LAN: {local['frames_in']} frames ({_bytes(local['bytes_in'])});"
        f" to LAN: {local['frames_out']} frames ({_bytes(local['bytes_out'])})",
        f"  LAN drops: {_drops(local['drops'])}",
        f"  fdb: {fdb['entries']} entries (learned {fdb.get('learned', 0)},"
        f" moved {fdb.get('moved', 0)}, expired {fdb.get('expired', 0)},"
        f" flushed {fdb.get('flushed', 0)})",
        f"  unknown sources: {status['unknown_source']}  socket errors: {status['socket_errors']}",
    ]
    if status.get("auth_drops"):
        lines.append(f"  dropped before authentication: {_drops(status['auth_drops'])}")
    lines += _layer2_lines(status)
    offload = status.get("offload")
    if offload is not None:
        lines.append("  offload: " + (
            "off" if not offload["tap"] else
            f"super-frames in {local.get('super_frames_in', 0)}, out "
            f"{local.get('super_frames_out', 0)}; UDP GSO {'on' if offload['udp_gso'] else 'off'},"
            f" GRO {'on' if offload['udp_gro'] else 'off'}"))
    workers = status.get("workers")
    if workers is not None and workers["count"] > 1:
        lines.append(f"  workers: {workers['count']} (this one is worker 0)")
        for w in workers["followers"]:
            if "local" not in w:
                lines.append(f"    worker {w['lane']}: {w.get('state', 'starting')}")
                continue
            lines.append(f"    worker {w['lane']} (pid {w['pid']}): from LAN"
                         f" {w['local']['frames_in']} frames, to LAN"
                         f" {w['local']['frames_out']} frames")
    for peer in status["peers"]:
        lines += [
            "",
            f"peer: {peer['name']}",
            f"  endpoint: {peer['endpoint'] or '(none yet)'}",
            *([f"  public key: {peer['public_key']}",
               f"  latest handshake: {_ago(peer['latest_handshake_s'])}"
               f" ({peer['handshakes']} handshakes, {peer['rekeys']} rekeys)"]
              if "public_key" in peer else []),
            f"  state: {peer['state']}, last seen {_ago(peer['last_seen_s'])}",
            f"  transfer: {_bytes(peer['bytes_in'])} received ({peer['frames_in']} frames),"
            f" {_bytes(peer['bytes_out'])} sent ({peer['frames_out']} frames)",
            f"  sent: {peer['unicast_out']} unicast, {peer['flooded_out']} flooded;"
            f" MACs behind it: {peer['mac_entries']}",
            *([f"  loop: BLOCKED ({peer['loop_blocked'] or 'by the peer'}); blocked"
               f" {peer.get('loop_blocks', 0)} times"]
              if peer.get("loop_blocked") or peer.get("blocks_us") else []),
            *([f"  bursts: {peer['bursts_in']} received, {peer['bursts_out']} sent"
               f" (peer {'accepts' if peer['offload'] else 'does not accept'} bursts)"]
              if peer.get("offload") is not None else []),
            f"  drops: {_drops(peer['drops'])}",
        ]
    return "\n".join(lines)


def _layer2_lines(status: Mapping) -> list[str]:
    """Loop protection, storm control, the DHCP guard, ARP/ND suppression, held MACs."""
    lines = []
    loop = status.get("loop")
    if loop is not None:
        if not loop["enabled"]:
            lines.append("  loop protection: off")
        else:
            probes = loop.get("probes", {})
            lines.append(f"  loop protection: on, probe every {loop['probe_interval_s']:g} s"
                         f" ({probes.get('sent', 0)} sent, {probes.get('seen', 0)} seen on"
                         " the LAN)")
            if loop.get("segment"):
                shared = ", ".join(s["site"] for s in loop["segment"])
                serving = loop.get("designated")
                lines.append(f"    our LAN is shared with: {shared}; "
                             + (f"{serving} forwards for it" if serving else
                                "this site forwards for it"))
            for b in loop.get("blocked", []):
                lines.append(f"    BLOCKED {b['path']}: {b['why']}")
            if loop.get("self_loop"):
                lines.append("    our own probes come back from our LAN: it loops onto itself")
    storm = status.get("storm")
    if storm is not None:
        lines.append("  storm control: " + (
            f"broadcast {storm['broadcast_per_s']:g}/s, multicast {storm['multicast_per_s']:g}/s,"
            f" unknown unicast {storm['unknown_unicast_per_s']:g}/s per peer and direction,"
            f" burst {storm['burst_s']:g} s" if storm["enabled"] else "off"))
    if status.get("dhcp_servers") is not None:
        servers = status["dhcp_servers"]
        lines.append("  DHCP and router advertisements from: "
                     + (", ".join(servers) if servers else "this site's LAN only"))
    neigh = status.get("neigh")
    if neigh and neigh.get("enabled"):
        lines.append(f"  ARP/ND suppression: {neigh['bindings']} bindings; answered"
                     f" {neigh['answered_arp']} ARP, {neigh['answered_nd']} ND;"
                     f" {neigh['conflicts']} conflicts")
    fdb = status.get("fdb", {})
    if fdb.get("dup_mac"):
        lines.append(f"  duplicate MACs: {fdb['dup_mac']} detected, {fdb.get('held_macs', 0)}"
                     " held now (l2bridge fdb)")
    return lines


def format_fdb(entries: Sequence[Mapping], blocked: Sequence[Mapping] = ()) -> str:
    """The MAC table for people; ``blocked``: the loop-blocked peers (nothing is learned
    behind them), from ``show``."""
    notes = [f"{b['peer']}: loop-blocked ({b['why']}): no MACs learned behind it"
             for b in blocked]
    if not entries:
        return "\n".join(["no MAC addresses learned", *notes])
    rows = [("MAC", "VLAN", "PEER", "AGE")]
    rows += [(e["mac"], str(e["vlan"] or "-"), e["peer"], f"{e['age_s']:.1f} s"
              + (f"  held {e['held_s']:.0f} s (also at {e['also_at']})" if "held_s" in e else ""))
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(table + notes)
