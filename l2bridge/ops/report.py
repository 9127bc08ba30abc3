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
            *([f"  bursts: {peer['bursts_in']} received, {peer['bursts_out']} sent"
               f" (peer {'accepts' if peer['offload'] else 'does not accept'} bursts)"]
              if peer.get("offload") is not None else []),
            f"  drops: {_drops(peer['drops'])}",
        ]
    return "\n".join(lines)


def format_fdb(entries: Sequence[Mapping]) -> str:
    if not entries:
        return "no MAC addresses learned"
    rows = [("MAC", "VLAN", "PEER", "AGE")]
    rows += [(e["mac"], str(e["vlan"] or "-"), e["peer"], f"{e['age_s']:.1f} s") for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
