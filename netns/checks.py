"""Checks: each scenario check kind as a bounded coroutine returning a ``CheckResult``.

Flow of ``run_check``: 1. look up the kind's runner  2. run it under the check's
timeout (``trio.move_on_after``; the traffic primitives kill their children when
cancelled)  3. a timeout, a missing tool or a traffic error becomes a failed
result with a one-line summary; the lab goes on and still tears down.

Every runner takes the ``Lab`` handle (nodes, gateways) and the check's validated
parameters, and reports pass/fail, one summary line and its numbers.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio

from netns import frames, traffic
from netns.gateways import GatewayError
from netns.report import CheckResult
from netns.scenario import Check

if TYPE_CHECKING:
    from netns.lab import Lab

REACHABILITY_CONCURRENCY = 8
REACHABILITY_DEADLINE_S = 3.0
LEARN_PINGS = 2
MARKER_INTERVAL_S = 0.002
RESTART_PROBE_S = 1.0
DHCP_RANGE_SIZE = 50
COUNT_SETTLE_S = 0.3  # frames still in flight when the sender is done


Outcome = tuple[bool, str, dict[str, Any]]
Runner = Callable[["Lab", Mapping[str, Any], float], Awaitable[Outcome]]


async def run_check(lab: Lab, check: Check) -> CheckResult:
    """Run one check, bounded by its timeout; never raises for a failing check."""
    runner = RUNNERS[check.kind]
    started = time.monotonic()
    outcome: Outcome | None = None
    try:
        with trio.move_on_after(check.timeout_s):
            outcome = await runner(lab, check.params, check.timeout_s)
    except (traffic.TrafficError, GatewayError) as e:  # TrafficError includes ToolMissing
        outcome = (False, str(e), {})
    except OSError as e:
        outcome = (False, f"{check.kind}: {e.strerror or e}", {})
    elapsed = time.monotonic() - started
    if outcome is None:
        outcome = (False, f"timed out after {check.timeout_s:g} s", {"timeout_s": check.timeout_s})
    ok, summary, numbers = outcome
    return CheckResult(check.index, check.name, check.kind, ok, summary, elapsed, numbers)


# ---------------------------------------------------------------- runners


async def check_ping(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    addr = dst.ip6 if p["ipv6"] else dst.ip
    r = await traffic.ping(src.ns, addr, count=p["count"], size=p["size"],
                           dont_fragment=p["dont_fragment"], ipv6=p["ipv6"])
    return r.ok, _ping_summary(r), _ping_numbers(r)


async def check_mtu(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    r = await traffic.ping(src.ns, dst.ip, count=3, size=p["size"], dont_fragment=True)
    frame = p["size"] + 28 + 14
    summary = f"{p['size']}-byte ping with DF ({frame}-byte frames): {_ping_summary(r)}"
    return r.ok, summary, {**_ping_numbers(r), "size": p["size"], "frame_bytes": frame}


async def check_reachability(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    hosts = lab.plan.hosts()
    pairs = [(a, b) for i, a in enumerate(hosts) for b in hosts[i + 1:]]
    limiter = trio.CapacityLimiter(REACHABILITY_CONCURRENCY)
    failed: list[str] = []

    async def one(a: Any, b: Any) -> None:
        async with limiter:
            addr = b.ip6 if p["ipv6"] else b.ip
            r = await traffic.ping(a.ns, addr, count=p["count"], interval_s=0.2,
                                   deadline_s=REACHABILITY_DEADLINE_S, ipv6=p["ipv6"])
            if not r.ok:
                failed.append(f"{a.ref}→{b.ref}")

    async with trio.open_nursery() as nursery:
        for a, b in pairs:
            nursery.start_soon(one, a, b)
    good = len(pairs) - len(failed)
    summary = f"{good}/{len(pairs)} host pairs answer"
    if failed:
        summary += "; failed: " + ", ".join(sorted(failed)[:6])
        if len(failed) > 6:
            summary += f" (+{len(failed) - 6} more)"
    return not failed, summary, {"pairs": len(pairs), "ok": good, "failed": sorted(failed)}


async def check_iperf3(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    r = await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=p["seconds"], udp=p["udp"],
                             bitrate=p["bitrate"], parallel=p["parallel"])
    floor = p["min_mbit_s"]
    ok = r.mbit_s > 0 and (floor is None or r.mbit_s >= floor)
    summary = f"{r.mbit_s:.1f} Mbit/s {r.protocol}"
    if r.retransmits is not None:
        summary += f", {r.retransmits} retransmits"
    if r.lost_percent is not None:
        summary += f", {r.lost_percent:.2f}% lost"
    if floor is not None:
        summary += f" (min {floor:g})"
    numbers = {"mbit_s": round(r.mbit_s, 2), "retransmits": r.retransmits,
               "lost_percent": r.lost_percent, "seconds": r.seconds, "protocol": r.protocol}
    return ok, summary, numbers


async def check_dhcp(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    server, client = lab.node(p["server"]), lab.node(p["client"])
    assert server.ipv4 is not None
    net = ipaddress.ip_interface(server.ipv4).network
    start, end = p["range_start"], p["range_end"]
    if start is None or end is None:
        start, end = default_dhcp_range(net)
    r = await traffic.dhcp_lease(server.ns, "eth0", range_start=start, range_end=end,
                                 netmask=str(net.netmask), client_ns=client.ns, client_if="eth0",
                                 timeout_s=max(2.0, timeout_s - 3.0))
    in_range = r.address is not None and (
        int(ipaddress.ip_address(start)) <= int(ipaddress.ip_address(r.address))
        <= int(ipaddress.ip_address(end))
    )
    ok = r.ok and in_range
    if ok:
        summary = f"{client.ref} leased {r.address} from {server.ref} in {r.elapsed_s:.2f} s"
    elif r.ok:
        summary = f"lease {r.address} is outside {start}..{end}"
    else:
        summary = f"no lease for {client.ref} after {r.elapsed_s:.1f} s"
    return ok, summary, {"address": r.address, "elapsed_s": round(r.elapsed_s, 3)}


def default_dhcp_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, str]:
    """The top ``DHCP_RANGE_SIZE`` addresses of the LAN, below the broadcast address."""
    last = net.num_addresses - 2
    first = max(1, last - DHCP_RANGE_SIZE + 1)
    return str(net[first]), str(net[last])


async def check_broadcast_once(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src = lab.node(p["from"])
    count = p["count"]
    marker = new_marker(lab)
    frames_out = [
        frames.make_frame(frames.BROADCAST_MAC, _mac(src.mac), frames.ETHERTYPE_EXPERIMENTAL,
                          frames.marker_payload(marker, seq))
        for seq in range(count)
    ]
    counts = await _count_at_hosts(lab, marker, lambda: traffic.send_frames(
        src.ns, "eth0", frames_out, interval_s=MARKER_INTERVAL_S))
    wrong = {ref: n for ref, n in counts.items() if n != (0 if ref == src.ref else count)}
    others = len(counts) - 1
    exact = sum(1 for ref, n in counts.items() if ref != src.ref and n == count)
    summary = f"{exact}/{others} hosts got exactly {count}; sender got {counts[src.ref]} back"
    if wrong:
        summary += "; wrong: " + ", ".join(f"{r}={n}" for r, n in sorted(wrong.items())[:6])
    return not wrong, summary, {"sent": count, "received": counts}


async def check_unicast_isolation(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    count = p["count"]
    learn = await traffic.ping(src.ns, dst.ip, count=LEARN_PINGS, interval_s=0.1, deadline_s=5)
    if not learn.ok:
        return False, f"learning ping {src.ref} → {dst.ref} failed: {_ping_summary(learn)}", {}
    marker = new_marker(lab)
    frames_out = [
        frames.make_frame(_mac(dst.mac), _mac(src.mac), frames.ETHERTYPE_EXPERIMENTAL,
                          frames.marker_payload(marker, seq))
        for seq in range(count)
    ]
    counts = await _count_at_hosts(lab, marker, lambda: traffic.send_frames(
        src.ns, "eth0", frames_out, interval_s=MARKER_INTERVAL_S))
    third = {n.ref for n in lab.plan.hosts() if n.site not in (src.site, dst.site)}
    leaked = {ref: counts[ref] for ref in sorted(third) if counts[ref]}
    ok = counts[dst.ref] == count and not leaked
    summary = f"{dst.ref} got {counts[dst.ref]}/{count}; {len(third)} third-site hosts saw "
    summary += f"{sum(counts[r] for r in third)}"
    if leaked:
        summary += " (" + ", ".join(f"{r}={n}" for r, n in leaked.items()) + ")"
    return ok, summary, {"sent": count, "received": counts, "third_site_hosts": sorted(third)}


async def check_restart(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    site = p["site"]
    await lab.kill_site(site)
    started = time.monotonic()
    await lab.start_site(site, wait=False)
    attempts = 0
    while True:
        attempts += 1
        r = await traffic.ping(src.ns, dst.ip, count=1, deadline_s=RESTART_PROBE_S)
        if r.ok:
            break
    back = time.monotonic() - started
    ok = back <= p["within_s"]
    summary = (f"{site} back in {back:.2f} s (limit {p['within_s']:g} s): "
               f"{src.ref} → {dst.ref} answered probe {attempts}")
    return ok, summary, {"back_in_s": round(back, 3), "probes": attempts}


RUNNERS: dict[str, Runner] = {
    "ping": check_ping,
    "reachability": check_reachability,
    "iperf3": check_iperf3,
    "dhcp": check_dhcp,
    "broadcast_once": check_broadcast_once,
    "unicast_isolation": check_unicast_isolation,
    "mtu": check_mtu,
    "restart": check_restart,
}


# ---------------------------------------------------------------- helpers


def new_marker(lab: Lab) -> bytes:
    """A marker unique to this lab and this check run."""
    return f"L2B-{lab.prefix}-{secrets.token_hex(4)}".encode()


async def _count_at_hosts(lab: Lab, marker: bytes,
                          action: Callable[[], Awaitable[None]]) -> dict[str, int]:
    """Incoming marker frames at every host's ``eth0`` while ``action`` runs.

    One settle wait for all counters (not one each), so the cost does not grow
    with the number of hosts."""
    async with AsyncExitStack() as stack:
        counters = {}
        for node in lab.plan.hosts():
            counters[node.ref] = await stack.enter_async_context(
                traffic.FrameCounter(node.ns, "eth0", marker, settle_s=0.0))
        await action()
        await trio.sleep(COUNT_SETTLE_S)
    return {ref: c.incoming for ref, c in counters.items()}


def _mac(text: str | None) -> bytes:
    assert text is not None
    return bytes.fromhex(text.replace(":", ""))


def _ping_summary(r: traffic.PingResult) -> str:
    text = f"{r.received}/{r.sent} replies"
    if r.rtt_avg_ms is not None:
        text += f", rtt avg {r.rtt_avg_ms:.2f} ms"
    if r.errors:
        text += f", {r.errors} errors"
    return text


def _ping_numbers(r: traffic.PingResult) -> dict[str, Any]:
    return {"sent": r.sent, "received": r.received, "rtt_min_ms": r.rtt_min_ms,
            "rtt_avg_ms": r.rtt_avg_ms, "rtt_max_ms": r.rtt_max_ms, "errors": r.errors}
