"""Checks: each scenario check kind as a bounded coroutine returning a ``CheckResult``.

Flow of ``run_check``: 1. look up the kind's runner  2. run it under the check's
timeout (``trio.move_on_after``; the traffic primitives kill their children when
cancelled)  3. a timeout, a missing tool or a traffic error becomes a failed
result with a one-line summary; the lab goes on and still tears down.

Every runner takes the ``Lab`` handle (nodes, gateways) and the check's validated
parameters, and reports pass/fail, one summary line and its numbers.

VLANs: hosts with a ``vlan`` sit on access ports of their VLAN (see ``vlanport.py``);
``reachability`` expects exactly the same-VLAN pairs to answer and every other
pair to stay silent, ``broadcast_once`` expects the broadcast only in the
sender's VLAN, and ``vlan_tags`` proves the frames cross the gateways tagged.

Layer-2 safety: ``wan_frames`` counts what crosses the WAN (datagrams at the WAN
router, flooded frames by class from the gateways) during an action of its own
or during an earlier check (the lab takes a ``WanCount`` before and after it);
``loop_blocked`` reads which tunnels a site's loop protection blocks;
``unplug`` removes a [[lan_link]] and times the way back through the tunnel;
``storm`` floods broadcasts from a host beside an iperf3 run; ``dhcp_local``
runs a DHCP server (and router) at several hosts and asks from each client;
``mac_flap`` shows one MAC at two sites alternately.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from l2bridge.ops import control
from netns.checks import frames, paths, streams, traffic
from netns.checks.report import CheckResult
from netns.describe.plan import Node, Plan
from netns.describe.scenario import Check, Scenario
from netns.realise.build import netlink
from netns.realise.gateways import GatewayError

CLASSES = ("broadcast", "multicast", "unknown_unicast")


@dataclass(frozen=True, slots=True)
class WanCount:
    """What has crossed the WAN so far: datagrams into the WAN router, flooded frames
    the gateways sent by class (summed over sites and peers; l2bridge gateways only)."""

    at: float
    datagrams: int
    flooded: tuple[int, int, int]


class Lab(Protocol):
    """What a check needs from a running lab (``netns.lab.Lab`` is one)."""

    plan: Plan
    windows: dict[int, tuple[WanCount, WanCount]]  # check index -> counts before, after

    @property
    def prefix(self) -> str: ...

    @property
    def scenario(self) -> Scenario: ...

    def node(self, ref: str) -> Node: ...

    async def kill_site(self, site: str) -> None: ...

    async def start_site(self, site: str, *, wait: bool = True) -> None: ...

    async def show(self, site: str) -> dict[str, Any]: ...


REACHABILITY_CONCURRENCY = 8
REACHABILITY_DEADLINE_S = 3.0
LEARN_PINGS = 2
MARKER_INTERVAL_S = 0.002
RESTART_PROBE_S = 1.0
DHCP_RANGE_SIZE = 50
COUNT_SETTLE_S = 0.3  # frames still in flight when the sender is done
SILENT_DEADLINE_S = 1.0  # a pair expected NOT to answer: ping -w 1, one echo
EXPECT_FAIL_SLACK_S = 1.0  # ping check with expect = "fail": count * interval + this
PING_INTERVAL_S = 0.2
IPV4_ICMP_OVERHEAD = 28  # IPv4 header 20 + ICMP echo header 8
ETH_HEADER_BYTES = 14
MTU_PROBE_COUNT = 2  # a probe passes when any of its echoes is answered
MTU_PROBE_WAIT_S = 0.5  # ping -W: wait for each reply
MTU_PROBE_BOUND_S = 5.0
COMMAND_MARGIN_S = 0.5  # the command's own bound, inside the check timeout
OUTPUT_TAIL_CHARS = 200
CAPTURE_SLACK_S = 0.5  # tcpdump keeps capturing this long after the last frame


Outcome = tuple[bool, str, dict[str, Any]]
Runner = Callable[[Lab, Mapping[str, Any], float], Awaitable[Outcome]]


async def run_check(lab: Lab, check: Check) -> CheckResult:
    """Run one check, bounded by its timeout; never raises for a failing check."""
    runner = RUNNERS[check.kind]
    counted = any(c.kind == "wan_frames" and c.params["during"] == check.index
                  for c in lab.scenario.checks)  # a later check counts what this one sent
    before = await wan_count(lab) if counted else None
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
    if before is not None:
        lab.windows[check.index] = (before, await wan_count(lab))
    if outcome is None:
        outcome = (False, f"timed out after {check.timeout_s:g} s", {"timeout_s": check.timeout_s})
    ok, summary, numbers = outcome
    return CheckResult(check.index, check.name, check.kind, ok, summary, elapsed, numbers)


# ---------------------------------------------------------------- runners


async def check_ping(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """``expect = "pass"``: every echo answered; ``"fail"``: not one answered."""
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    addr = dst.ip6 if p["ipv6"] else dst.ip
    if p["expect"] == "fail":
        r = await traffic.ping(src.ns, addr, count=p["count"], size=p["size"],
                               interval_s=PING_INTERVAL_S,
                               deadline_s=p["count"] * PING_INTERVAL_S + EXPECT_FAIL_SLACK_S,
                               dont_fragment=p["dont_fragment"], ipv6=p["ipv6"])
        ok = r.sent > 0 and r.received == 0
        summary = f"{_ping_summary(r)} (must fail: {'none' if ok else 'some'} answered)"
        return ok, summary, {**_ping_numbers(r), "expect": "fail"}
    floor = p.get("min_received_percent")
    if floor is not None:  # a lossy path: ping keeps sending until COUNT answers
        r = await traffic.ping(src.ns, addr, count=p["count"], size=p["size"],
                               dont_fragment=p["dont_fragment"], ipv6=p["ipv6"],
                               deadline_s=max(10.0, timeout_s - 3.0))
        got = 100.0 * r.received / r.sent if r.sent else 0.0
        summary = f"{_ping_summary(r)}, {got:.1f}% answered (min {floor:g}%)"
        return (r.sent > 0 and got >= floor, summary,
                {**_ping_numbers(r), "expect": "pass", "received_percent": round(got, 2)})
    r = await traffic.ping(src.ns, addr, count=p["count"], size=p["size"],
                           dont_fragment=p["dont_fragment"], ipv6=p["ipv6"])
    return r.ok, _ping_summary(r), {**_ping_numbers(r), "expect": "pass"}


async def check_mtu(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Fixed: a ``size``-byte ping with DF crosses.  Search: the largest one that
    crosses (binary search), which must be at least ``size`` (capped by the LAN MTU)."""
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    if p["mode"] == "search":
        return await _mtu_search(src.ns, dst.ip, p["size"], lab.scenario.lan.mtu)
    r = await traffic.ping(src.ns, dst.ip, count=3, size=p["size"], dont_fragment=True)
    frame = p["size"] + IPV4_ICMP_OVERHEAD + ETH_HEADER_BYTES
    summary = f"{p['size']}-byte ping with DF ({frame}-byte frames): {_ping_summary(r)}"
    return r.ok, summary, {**_ping_numbers(r), "size": p["size"], "frame_bytes": frame}


async def _mtu_search(ns: str, dst: str, want: int, lan_mtu: int) -> Outcome:
    hi = lan_mtu - IPV4_ICMP_OVERHEAD  # the sender's own MTU: nothing larger leaves it
    want = min(want, hi)
    probes: dict[int, bool] = {}

    async def fits(size: int) -> bool:
        probes[size] = await _df_probe(ns, dst, size)
        return probes[size]

    largest = await mtu_bisect(fits, 0, hi)
    numbers: dict[str, Any] = {"largest_payload": largest, "need_payload": want,
                               "probes": len(probes), "lan_mtu": lan_mtu}
    if largest is None:
        return False, f"not even a 0-byte ping with DF crosses ({len(probes)} probes)", numbers
    packet = largest + IPV4_ICMP_OVERHEAD
    frame = packet + ETH_HEADER_BYTES
    numbers.update(packet_bytes=packet, frame_bytes=frame)
    ok = largest >= want
    summary = (f"largest DF ping {largest} bytes ({packet}-byte packets, {frame}-byte frames) "
               f"in {len(probes)} probes; need ≥ {want}")
    return ok, summary, numbers


async def mtu_bisect(fits: Callable[[int], Awaitable[bool]], lo: int, hi: int) -> int | None:
    """The largest size in ``lo..hi`` for which ``fits`` holds, assuming it holds for
    every size below a threshold and for none above; None when not even ``lo`` fits.

    The top is probed first (the common answer: the whole MTU crosses), then the
    bottom, then a bisection keeping ``fits(good)`` and ``not fits(bad)``."""
    if await fits(hi):
        return hi
    if not await fits(lo):
        return None
    good, bad = lo, hi
    while bad - good > 1:
        mid = (good + bad) // 2
        if await fits(mid):
            good = mid
        else:
            bad = mid
    return good


async def _df_probe(ns: str, dst: str, size: int) -> bool:
    """Does a ``size``-byte IPv4 ping with DF get any answer (a few echoes, short waits)?"""
    argv = ["ping", "-4", "-n", "-M", "do", "-c", str(MTU_PROBE_COUNT), "-i",
            f"{PING_INTERVAL_S:g}", "-W", f"{MTU_PROBE_WAIT_S:g}", "-s", str(size), dst]
    r = await traffic.run_command(ns, argv, timeout_s=MTU_PROBE_BOUND_S)
    return traffic.parse_ping_output(r.stdout + r.stderr).received > 0


@dataclass(frozen=True, slots=True)
class Probe:
    """One ping of the reachability matrix: ``a`` pings ``b`` over ``family``."""

    a: Node
    b: Node
    family: str  # "ipv4" | "ipv6"
    expect: bool  # True: must answer (same VLAN); False: must stay silent

    @property
    def label(self) -> str:
        return f"{self.a.ref}→{self.b.ref} {self.family}"


def reachability_plan(hosts: Sequence[Node], families: Sequence[str],
                      sample: int | None = None) -> tuple[list[Probe], int]:
    """Every unordered host pair per family, with its expectation; (probes, total pairs).

    Same VLAN (untagged counts as one VLAN) → must answer; different VLANs → must
    stay silent.  ``sample`` keeps that many pairs, evenly spread over the full list
    (deterministic, so reruns probe the same pairs)."""
    pairs = [(a, b) for i, a in enumerate(hosts) for b in hosts[i + 1:]]
    total = len(pairs)
    if sample is not None and sample < total:
        pairs = [pairs[k * total // sample] for k in range(sample)]
    probes = [Probe(a, b, fam, a.vlan == b.vlan) for a, b in pairs for fam in families
              if _address(a, fam) and _address(b, fam)]
    return probes, total


def _address(node: Node, family: str) -> str | None:
    return node.ipv4 if family == "ipv4" else node.ipv6


def reachability_verdict(probes: Sequence[Probe], answered: Mapping[str, bool],
                         families: Sequence[str], total_pairs: int) -> Outcome:
    """Pass when exactly the expected probes answered; one line with the counts."""
    must = [pr for pr in probes if pr.expect]
    mustnot = [pr for pr in probes if not pr.expect]
    good = sum(1 for pr in must if answered[pr.label])
    silent = sum(1 for pr in mustnot if not answered[pr.label])
    unreachable = sorted(pr.label for pr in must if not answered[pr.label])
    leaked = sorted(pr.label for pr in mustnot if answered[pr.label])
    fams = "+".join(families)
    pairs = len({(pr.a.ref, pr.b.ref) for pr in probes})
    scope = f"{pairs} of {total_pairs} pairs sampled" if pairs < total_pairs else ""
    summary = f"{pairs} host pairs × {fams}: "
    if mustnot:
        summary += (f"{good}/{len(must)} same-VLAN pings answer, "
                    f"{silent}/{len(mustnot)} cross-VLAN pings silent")
    else:
        summary += f"{good}/{len(must)} pings answer"
    if scope:
        summary += f" ({scope})"
    if unreachable:
        summary += "; no answer: " + _first(unreachable)
    if leaked:
        summary += "; answered across VLANs: " + _first(leaked)
    per_family = {
        fam: {"answered": sum(1 for pr in must if pr.family == fam and answered[pr.label]),
              "expected": sum(1 for pr in must if pr.family == fam),
              "silent": sum(1 for pr in mustnot if pr.family == fam
                            and not answered[pr.label]),
              "expected_silent": sum(1 for pr in mustnot if pr.family == fam)}
        for fam in families
    }
    numbers = {"families": list(families), "pairs": pairs, "total_pairs": total_pairs,
               "probes": len(probes), "ok": good, "expected_ok": len(must),
               "silent": silent, "expected_silent": len(mustnot),
               "per_family": per_family, "failed": unreachable, "leaked": leaked}
    return not unreachable and not leaked, summary, numbers


async def check_reachability(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    probes, total = reachability_plan(lab.plan.hosts(), p["families"], p["sample"])
    limiter = trio.CapacityLimiter(REACHABILITY_CONCURRENCY)
    answered: dict[str, bool] = {}

    async def one(pr: Probe) -> None:
        async with limiter:
            addr = pr.b.ip6 if pr.family == "ipv6" else pr.b.ip
            if pr.expect:
                r = await traffic.ping(pr.a.ns, addr, count=p["count"],
                                       interval_s=PING_INTERVAL_S,
                                       deadline_s=REACHABILITY_DEADLINE_S,
                                       ipv6=pr.family == "ipv6")
                answered[pr.label] = r.ok
            else:
                r = await traffic.ping(pr.a.ns, addr, count=1, deadline_s=SILENT_DEADLINE_S,
                                       ipv6=pr.family == "ipv6")
                answered[pr.label] = r.received > 0

    async with trio.open_nursery() as nursery:
        for pr in probes:
            nursery.start_soon(one, pr)
    return reachability_verdict(probes, answered, p["families"], total)


async def check_iperf3(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    r = await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=p["seconds"], udp=p["udp"],
                             bitrate=p["bitrate"], parallel=p["parallel"],
                             timeout_s=max(p["seconds"] + 1.0, timeout_s - 1.0))
    return iperf3_verdict(r, p["min_mbit_s"], p["max_lost_percent"])


def iperf3_verdict(r: traffic.IperfResult, floor: float | None,
                   max_lost: float | None) -> Outcome:
    """Pass when data crossed, at least ``floor`` Mbit/s, at most ``max_lost`` % lost (UDP)."""
    jitter = _udp_jitter_ms(r)
    ok = r.mbit_s > 0 and (floor is None or r.mbit_s >= floor)
    if max_lost is not None:
        ok = ok and r.lost_percent is not None and r.lost_percent <= max_lost
    summary = f"{r.mbit_s:.1f} Mbit/s {r.protocol}"
    if r.retransmits is not None:
        summary += f", {r.retransmits} retransmits"
    if r.lost_percent is not None:
        summary += f", {r.lost_percent:.2f}% lost"
    if jitter is not None:
        summary += f", jitter {jitter:.3f} ms"
    limits = []
    if floor is not None:
        limits.append(f"min {floor:g} Mbit/s")
    if max_lost is not None:
        limits.append(f"max {max_lost:g}% lost")
    if limits:
        summary += f" ({', '.join(limits)})"
    numbers = {"mbit_s": round(r.mbit_s, 2), "retransmits": r.retransmits,
               "lost_percent": r.lost_percent, "jitter_ms": jitter, "seconds": r.seconds,
               "protocol": r.protocol}
    return ok, summary, numbers


def _udp_jitter_ms(r: traffic.IperfResult) -> float | None:
    if r.protocol != "UDP":
        return None
    end = r.raw.get("end") or {}
    summary = end.get("sum_received") or end.get("sum") or {}
    jitter = summary.get("jitter_ms")
    return round(float(jitter), 4) if isinstance(jitter, int | float) else None


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
    frames_out = marker_frames(frames.BROADCAST_MAC, _mac(src.mac), marker, count)
    counts = await _count_at_hosts(lab, marker, lambda: traffic.send_frames(
        src.ns, "eth0", frames_out, interval_s=MARKER_INTERVAL_S))
    return broadcast_verdict(src, lab.plan.hosts(), counts, count)


def broadcast_verdict(src: Node, hosts: Sequence[Node], counts: Mapping[str, int],
                      count: int) -> Outcome:
    """Every other host in the sender's VLAN got exactly ``count``; the sender and
    hosts of other VLANs got 0."""
    expected = {h.ref: count if h.ref != src.ref and h.vlan == src.vlan else 0 for h in hosts}
    wrong = {ref: n for ref, n in counts.items() if n != expected[ref]}
    peers = [ref for ref, n in expected.items() if n]
    exact = sum(1 for ref in peers if counts[ref] == count)
    summary = f"{exact}/{len(peers)} hosts got exactly {count}; sender got {counts[src.ref]} back"
    others = [h.ref for h in hosts if h.vlan != src.vlan]
    if others:
        summary += (f"; {sum(1 for r in others if counts[r] == 0)}/{len(others)} hosts "
                    f"of other VLANs got 0")
    if wrong:
        summary += "; wrong: " + ", ".join(f"{r}={n}" for r, n in sorted(wrong.items())[:6])
    return not wrong, summary, {"sent": count, "received": dict(counts),
                                "expected": expected}


async def check_unicast_isolation(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    count = p["count"]
    learn = await traffic.ping(src.ns, dst.ip, count=LEARN_PINGS, interval_s=0.1, deadline_s=5)
    if not learn.ok:
        return False, f"learning ping {src.ref} → {dst.ref} failed: {_ping_summary(learn)}", {}
    marker = new_marker(lab)
    frames_out = marker_frames(_mac(dst.mac), _mac(src.mac), marker, count)
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


async def _probe_until_answered(src: Node, dst: Node) -> int:
    """Ping ``dst`` from ``src`` once per RESTART_PROBE_S until it answers (the check's
    own timeout bounds it); how many probes it took."""
    attempts = 0
    while True:
        attempts += 1
        r = await traffic.ping(src.ns, dst.ip, count=1, deadline_s=RESTART_PROBE_S)
        if r.ok:
            return attempts


async def check_restart(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    site = p["site"]
    await lab.kill_site(site)
    started = time.monotonic()
    await lab.start_site(site, wait=False)
    attempts = await _probe_until_answered(src, dst)
    back = time.monotonic() - started
    ok = back <= p["within_s"]
    summary = (f"{site} back in {back:.2f} s (limit {p['within_s']:g} s): "
               f"{src.ref} → {dst.ref} answered probe {attempts}")
    return ok, summary, {"back_in_s": round(back, 3), "probes": attempts}


async def check_command(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Run ``argv`` (or ``/bin/sh -c shell``) in a host; check its status and output."""
    host = lab.node(p["host"])
    argv = list(p["argv"]) if p["argv"] is not None else ["/bin/sh", "-c", p["shell"]]
    bound = max(0.1, timeout_s - COMMAND_MARGIN_S)
    r = await traffic.run_command(host.ns, argv, timeout_s=bound)
    return command_verdict(r, p["expect_status"], p["expect_output"], p["regex"], bound)


def command_verdict(r: traffic.CommandResult, expect_status: int,
                    expect_output: str | None, regex: bool, bound_s: float) -> Outcome:
    """Pass when the command finished in time with the status and the output wanted."""
    output = r.stdout + r.stderr
    numbers: dict[str, Any] = {"status": r.returncode, "expect_status": expect_status,
                               "elapsed_s": round(r.elapsed_s, 3), "timed_out": r.timed_out,
                               "output_tail": output[-OUTPUT_TAIL_CHARS:]}
    if r.timed_out:
        return False, f"killed after {bound_s:g} s (still running)", numbers
    status_ok = r.returncode == expect_status
    summary = f"exit {r.returncode} (want {expect_status})"
    matched: bool | None = None
    if expect_output is not None:
        matched = (re.search(expect_output, output, re.MULTILINE) is not None if regex
                   else expect_output in output)
        what = "matches /" + expect_output + "/" if regex else f"contains {expect_output!r}"
        summary += f", output {what}: {'yes' if matched else 'no'}"
    numbers["output_matched"] = matched
    ok = status_ok and matched is not False
    if not ok:
        last = [line for line in output.splitlines() if line.strip()]
        summary += f"; last line: {last[-1].strip()[:60]!r}" if last else "; no output"
    summary += f" in {r.elapsed_s:.2f} s"
    return ok, summary, numbers


async def check_vlan_tags(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Broadcast marker frames from ``from``; capture on both gateways' ``eth1``: each
    must carry every frame 802.1Q-tagged with the sender's VID; the receiving host
    gets them untagged, and hosts of other VLANs get none."""
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    assert src.vlan is not None
    count = p["count"]
    marker = new_marker(lab)
    frames_out = marker_frames(frames.BROADCAST_MAC, _mac(src.mac), marker, count)
    gws = [lab.plan.site(src.site), lab.plan.site(dst.site)]  # type: ignore[arg-type]
    duration = count * MARKER_INTERVAL_S + CAPTURE_SLACK_S
    captured: dict[str, list[bytes]] = {}

    async def send() -> None:
        await traffic.send_frames(src.ns, "eth0", frames_out, interval_s=MARKER_INTERVAL_S)

    async def capture_at(i: int) -> None:
        gw = gws[i]
        action = send if i == len(gws) - 1 else lambda: capture_at(i + 1)
        captured[gw.name] = await traffic.tcpdump_count(gw.gw_ns, gw.lan_ifname, "",
                                                        duration_s=duration, action=action)

    counters = await _counters_at_hosts(lab, marker, lambda: capture_at(0))
    counts = {ref: c.incoming for ref, c in counters.items()}
    seen = {gw.name: vlan_ids(captured[gw.name], marker) for gw in gws}
    untagged = vlan_ids(counters[dst.ref].frames, marker).count(None)
    return vlan_tags_verdict(src, dst, lab.plan.hosts(), counts, seen, count, untagged)


def vlan_ids(captured: Sequence[bytes], marker: bytes) -> list[int | None]:
    """The outer 802.1Q VID of every captured frame carrying ``marker`` (None: untagged)."""
    out: list[int | None] = []
    for frame in captured:
        if frame.find(marker, ETH_HEADER_BYTES) < 0:
            continue
        tagged = frame[12:14] == frames.TPID_8021Q.to_bytes(2, "big")
        out.append(int.from_bytes(frame[14:16], "big") & 0x0FFF if tagged else None)
    return out


def vlan_tags_verdict(src: Node, dst: Node, hosts: Sequence[Node], counts: Mapping[str, int],
                      seen: Mapping[str, Sequence[int | None]], count: int,
                      untagged_at_dst: int) -> Outcome:
    """Exactly ``count`` frames with the sender's VID at each gateway, ``count``
    untagged ones at ``to``, 0 at hosts of other VLANs."""
    parts = []
    ok = True
    for site, vids in seen.items():
        right = sum(1 for v in vids if v == src.vlan)
        ok = ok and right == count == len(vids)
        tags = sorted({"untagged" if v is None else str(v) for v in vids}) or ["none"]
        parts.append(f"{site} {right}/{count}"
                     + (f" (seen: {len(vids)} frames, VIDs {','.join(tags)})"
                        if right != len(vids) or right != count else ""))
    others = [h.ref for h in hosts if h.vlan != src.vlan]
    leaked = {r: counts[r] for r in others if counts[r]}
    ok = ok and counts[dst.ref] == count == untagged_at_dst and not leaked
    summary = f"gateways' eth1 VID {src.vlan}: " + ", ".join(parts)
    summary += f"; {dst.ref} got {counts[dst.ref]}/{count}"
    summary += " untagged" if untagged_at_dst == counts[dst.ref] else (
        f" ({counts[dst.ref] - untagged_at_dst} still tagged)")
    summary += f"; other VLANs got {sum(counts[r] for r in others)}"
    if leaked:
        summary += " (" + ", ".join(f"{r}={n}" for r, n in sorted(leaked.items())[:6]) + ")"
    numbers = {"vlan": src.vlan, "sent": count, "gateway_vids": {k: list(v) for k, v in
                                                                 seen.items()},
               "received": dict(counts), "untagged_at_to": untagged_at_dst,
               "other_vlan_hosts": others}
    return ok, summary, numbers


# ---------------------------------------------------------------- layer-2 safety

LOOP_POLL_S = 0.2
STORM_LEAD_S = 0.5  # the flood runs this long before iperf3 starts, and after it ends
DHCP6_WINDOW_S = 3.0
FLAP_INTERVAL_S = 0.15  # between the two sites' frames: each gateway sees every one


def _router_packets(wan_ns: str, interfaces: Sequence[str]) -> int:
    """Packets the WAN router received on the sites' links (a worker thread)."""
    wanted = set(interfaces)
    total = 0
    with netlink(wan_ns) as ipr:
        for msg in ipr.get_links():
            if msg.get_attr("IFLA_IFNAME") in wanted:
                stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
                total += int(stats["rx_packets"])
    return total


async def wan_count(lab: Lab) -> WanCount:
    """What has crossed the WAN up to now (``WanCount``)."""
    plan = lab.plan
    datagrams = await trio.to_thread.run_sync(
        _router_packets, plan.wan_ns, [s.wan_if for s in plan.sites])
    flooded = [0, 0, 0]
    for site in plan.sites:
        if site.gateway != "l2bridge":
            continue
        view = await lab.show(site.name)
        for peer in view.get("peers", []):
            out = peer.get("flooded_by_class", {}).get("out", {})
            for i, c in enumerate(CLASSES):
                flooded[i] += int(out.get(c, 0))
    return WanCount(time.monotonic(), datagrams, (flooded[0], flooded[1], flooded[2]))


async def check_wan_frames(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Frames across the WAN during ``send`` (and ``seconds`` after) or an earlier check."""
    if p["during"] is not None:
        window = lab.windows.get(p["during"])
        if window is None:
            return False, f"check {p['during']} has not run: nothing was counted", {}
        before, after = window
        what = f"during check {p['during']}"
    else:
        before = await wan_count(lab)
        if p["send"] == "broadcast":
            src = lab.node(p["from"])
            marker = new_marker(lab)
            await traffic.send_frames(src.ns, "eth0", marker_frames(
                frames.BROADCAST_MAC, _mac(src.mac), marker, p["count"]),
                interval_s=MARKER_INTERVAL_S)
        await trio.sleep_until(trio.current_time() + p["seconds"]
                               - (time.monotonic() - before.at))
        after = await wan_count(lab)
        what = (f"{p['count']} broadcast{'s' if p['count'] > 1 else ''} from {p['from']}"
                if p["send"] == "broadcast" else "nothing sent")
        what += f", {p['seconds']:g} s"
    return wan_frames_verdict(what, before, after, p)


def wan_frames_verdict(what: str, before: WanCount, after: WanCount,
                       p: Mapping[str, Any]) -> Outcome:
    """Pass when every cap given holds; one line with the counts."""
    datagrams = after.datagrams - before.datagrams
    flooded = {c: after.flooded[i] - before.flooded[i] for i, c in enumerate(CLASSES)}
    caps = [("datagrams", datagrams, p["max_datagrams"])]
    caps += [(c.replace("_", " "), flooded[c], p[f"max_{c}"]) for c in CLASSES]
    over = [f"{name} {n} > {cap}" for name, n, cap in caps if cap is not None and n > cap]
    summary = (f"{what}: {datagrams} WAN datagrams; flooded {flooded['broadcast']} broadcast, "
               f"{flooded['multicast']} multicast, {flooded['unknown_unicast']} unknown unicast")
    limits = [f"{name} ≤ {cap}" for name, _, cap in caps if cap is not None]
    if limits:
        summary += f" (max {', '.join(limits)})"
    if over:
        summary += "; over: " + ", ".join(over)
    numbers = {"datagrams": datagrams, "flooded": flooded,
               "seconds": round(after.at - before.at, 3)}
    return not over, summary, numbers


async def check_loop_blocked(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Within ``within_s``, the site's ``show`` names exactly ``peers`` as blocked."""
    started = time.monotonic()
    want = sorted(p["peers"])
    blocked: list[dict[str, Any]] = []
    while True:
        view = await lab.show(p["site"])
        blocked = view.get("loop", {}).get("blocked", [])
        if sorted(b["peer"] for b in blocked) == want:
            break
        if time.monotonic() - started >= p["within_s"]:
            break
        await trio.sleep(LOOP_POLL_S)
    got = sorted(b["peer"] for b in blocked)
    ok = got == want
    names = "; ".join(f"{b['path']} ({b['reason']}: {b['why']})" for b in blocked) or "none"
    summary = f"{p['site']} blocks: {names}"
    if not ok:
        summary += f"; expected {', '.join(want) or 'none'}"
    return ok, summary, {"blocked": blocked, "expected": want,
                         "after_s": round(time.monotonic() - started, 3)}


def _delete_link(ns: str, ifname: str) -> None:
    with netlink(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])


async def check_unplug(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Remove a LAN link; pass when ``from`` reaches ``to`` again within ``within_s``."""
    link = lab.plan.lan_link(p["link"])
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    await trio.to_thread.run_sync(_delete_link, link.a_ns, link.ifname)
    started = time.monotonic()
    attempts = await _probe_until_answered(src, dst)
    back = time.monotonic() - started
    blocked = {s.name: [b["path"] for b in (await lab.show(s.name)).get("loop", {})
                        .get("blocked", [])]
               for s in lab.plan.sites if s.gateway == "l2bridge"}
    still = {site: paths for site, paths in blocked.items() if paths}
    ok = back <= p["within_s"] and not still
    summary = (f"{link.name} removed: {src.ref} → {dst.ref} answered after {back:.2f} s "
               f"(probe {attempts}, limit {p['within_s']:g} s)")
    summary += "; still blocked: " + ", ".join(
        f"{s} {'/'.join(v)}" for s, v in still.items()) if still else "; no tunnel blocked"
    return ok, summary, {"back_in_s": round(back, 3), "probes": attempts, "blocked": blocked}


async def check_storm(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """iperf3 alone, then beside a broadcast flood; the WAN within the limit."""
    flooder = lab.node(p["from"])
    src, dst = lab.node(p["iperf_from"]), lab.node(p["iperf_to"])
    seconds = p["seconds"]
    bound = seconds + 10.0
    alone = await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=seconds, timeout_s=bound)
    site = flooder.site
    assert site is not None
    view = await lab.show(site)
    limits = view.get("storm", {})
    before = await wan_count(lab)
    flood: dict[str, Any] = {}
    beside: traffic.IperfResult | None = None
    failed: list[str] = []

    async def run_flood() -> None:
        try:
            flood.update(await traffic.run_module(
                flooder.ns, "netns.checks.flood",
                ["eth0", f"{seconds + 2 * STORM_LEAD_S:g}"], timeout_s=bound))
        except traffic.TrafficError as e:
            failed.append(str(e))

    async def run_iperf() -> None:
        nonlocal beside
        await trio.sleep(STORM_LEAD_S)
        try:
            beside = await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=seconds,
                                          timeout_s=bound)
        except traffic.TrafficError as e:
            failed.append(f"beside the flood: {e}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_flood)
        nursery.start_soon(run_iperf)
    after = await wan_count(lab)
    if beside is None:
        beside = traffic.IperfResult(0.0, None, None, seconds, "TCP", {})
    elapsed = after.at - before.at
    peers = len(view.get("peers", []))
    rate = float(limits.get("broadcast_per_s", 0))
    allowed = peers * (rate * limits.get("burst_s", 0) + rate * elapsed) if rate else None
    crossed = after.flooded[0] - before.flooded[0]
    kept = 100.0 * beside.mbit_s / alone.mbit_s if alone.mbit_s else 0.0
    within = allowed is None or not limits.get("enabled", True) or crossed <= allowed
    ok = within and kept >= p["min_kept_percent"]
    rate_sent = flood.get("sent", 0) / max(float(flood.get("seconds", 1.0)), 1e-9)
    summary = (f"{flooder.ref} flooded {flood.get('sent', 0)} broadcasts "
               f"({rate_sent:,.0f}/s); {crossed} crossed the WAN"
               + (f" (limit {allowed:,.0f})" if allowed is not None else "")
               + f"; iperf3 {beside.mbit_s:.1f} of {alone.mbit_s:.1f} Mbit/s kept "
               f"({kept:.1f}%, min {p['min_kept_percent']:g}%)")
    if failed:
        ok = False
        summary += "; " + "; ".join(failed)
    numbers = {"flood_sent": flood.get("sent", 0), "flood_per_s": round(rate_sent),
               "broadcast_crossed": crossed, "allowed": allowed,
               "wan_datagrams": after.datagrams - before.datagrams,
               "mbit_s_alone": round(alone.mbit_s, 2), "mbit_s_beside": round(beside.mbit_s, 2),
               "kept_percent": round(kept, 2), "seconds": round(elapsed, 3)}
    return ok, summary, numbers


def _dhcp_ranges(lab: Lab, index: int, server: Node) -> tuple[tuple[str, str], tuple[str, str]]:
    """Server ``index``'s own IPv4 and IPv6 ranges (50 addresses each, none shared)."""
    assert server.ipv4 is not None
    v4 = ipaddress.ip_interface(server.ipv4).network
    top = v4.num_addresses - 2 - index * DHCP_RANGE_SIZE
    four = (str(v4[top - DHCP_RANGE_SIZE + 1]), str(v4[top]))
    v6 = ipaddress.ip_network(lab.scenario.lan.ipv6 or "fd00:77::/64")
    base = 0xD6C0_0000 + index * 0x1000
    six = (str(v6[base]), str(v6[base + DHCP_RANGE_SIZE - 1]))
    return four, six


def _eui64_link_local(mac: str) -> str:
    raw = bytearray(bytes.fromhex(mac.replace(":", "")))
    raw[0] ^= 0x02
    iid = bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


async def check_dhcp_local(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """Servers at every listed host at once; each client must be served from its own site."""
    servers = [lab.node(ref) for ref in p["servers"]]
    clients = [lab.node(ref) for ref in p["clients"]]
    ranges = {s.ref: _dhcp_ranges(lab, i, s) for i, s in enumerate(servers)}
    assert servers[0].ipv4 is not None
    netmask = str(ipaddress.ip_interface(servers[0].ipv4).network.netmask)
    results: dict[str, dict[str, Any]] = {}
    logs: dict[str, Callable[[], str]] = {}
    async with AsyncExitStack() as stack:
        for s in servers:
            four, six = ranges[s.ref]
            logs[s.ref] = await stack.enter_async_context(traffic.dnsmasq(
                s.ns, "eth0", range_v4=None if p["ipv6"] else four, netmask=netmask,
                range_v6=six if p["ipv6"] else None))
        for c in clients:
            if p["ipv6"]:
                results[c.ref] = await traffic.run_module(
                    c.ns, "netns.checks.dhcp6", ["eth0", c.mac or "", f"{DHCP6_WINDOW_S:g}"],
                    timeout_s=DHCP6_WINDOW_S + 5.0)
            else:
                r = await traffic.udhcpc(c.ns, "eth0", timeout_s=max(3.0, timeout_s / 4))
                results[c.ref] = {"lease": r.address}
        await trio.sleep(COUNT_SETTLE_S)  # a far server's answer still on its way
        for c in clients:  # which servers heard the client at all (their logs name its MAC)
            results[c.ref]["heard_by"] = [s.ref for s in servers
                                          if (c.mac or "?").lower() in logs[s.ref]().lower()]
    return dhcp_local_verdict(servers, clients, ranges, results, p["ipv6"])


def dhcp_local_verdict(servers: Sequence[Node], clients: Sequence[Node],
                       ranges: Mapping[str, tuple[tuple[str, str], tuple[str, str]]],
                       results: Mapping[str, Mapping[str, Any]], ipv6: bool) -> Outcome:
    """Each client leased from its own site's server only (and, IPv6, heard only its
    own site's routers and servers)."""
    def owner(address: str | None) -> Node | None:
        if address is None:
            return None
        value = int(ipaddress.ip_address(address))
        for s in servers:
            low, high = ranges[s.ref][1 if ipv6 else 0]
            if int(ipaddress.ip_address(low)) <= value <= int(ipaddress.ip_address(high)):
                return s
        return None

    by_source = {_eui64_link_local(s.mac or ""): s for s in servers}
    parts, wrong = [], []
    per_client: dict[str, Any] = {}
    for c in clients:
        got = results.get(c.ref, {})
        lease = got.get("lease")
        server = owner(lease)
        heard = {by_source[a["source"]].ref for a in got.get("advertised", [])
                 if a.get("source") in by_source} | set(got.get("heard_by", []))
        ras = {by_source[src].ref for src in got.get("ras", []) if src in by_source}
        foreign = sorted(r for r in heard | ras
                         if r.split(".")[0] != c.site)
        fine = server is not None and server.site == c.site and not foreign
        if ipv6 and not any(r.split(".")[0] == c.site for r in ras):
            fine = False  # its own router must be heard
        parts.append(f"{c.ref} ← {server.ref if server else 'nobody'}"
                     + (f" (also heard {', '.join(foreign)})" if foreign else ""))
        if not fine:
            wrong.append(c.ref)
        per_client[c.ref] = {"lease": lease, "server": server.ref if server else None,
                             "advertised_by": sorted(heard), "ras_from": sorted(ras)}
    family = "DHCPv6 + RA" if ipv6 else "DHCPv4"
    summary = f"{family}: " + "; ".join(parts)
    return not wrong, summary, {"clients": per_client, "wrong": wrong}


async def check_mac_flap(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """One MAC at two sites alternately: both gateways count it, hold it, log it."""
    a, b = lab.node(p["from"]), lab.node(p["to"])
    dup = bytes.fromhex("02dd") + secrets.token_bytes(4)
    marker = new_marker(lab)
    for i in range(p["moves"]):
        host = a if i % 2 == 0 else b
        frame = frames.make_frame(frames.BROADCAST_MAC, dup, frames.ETHERTYPE_EXPERIMENTAL,
                                  frames.marker_payload(marker, i))
        await traffic.send_frames(host.ns, "eth0", [frame])
        await trio.sleep(FLAP_INTERVAL_S)
    await trio.sleep(1.5)  # the gateways report once a tick
    text = dup.hex(":")
    numbers: dict[str, Any] = {"mac": text, "sites": {}}
    parts = []
    ok = True
    for node in (a, b):
        site = lab.plan.site(node.site or "")
        table = await trio.to_thread.run_sync(control.query, site.control_path, "fdb")
        entries = table if isinstance(table, list) else []
        entry = next((e for e in entries if e.get("mac") == text), None)
        view = await lab.show(site.name)
        detected = view.get("fdb", {}).get("dup_mac", 0)
        try:
            with open(site.log_path, errors="replace") as f:
                logged = any(f"duplicate MAC {text}" in line for line in f)
        except OSError:
            logged = False
        held = entry is not None and "held_s" in entry
        ok = ok and held and detected >= 1 and logged
        where = (f"held at {entry['peer']} {entry['held_s']:.0f} s, also at {entry['also_at']}"
                 if held and entry is not None else "not held")
        parts.append(f"{site.name}: {where}, {detected} detected, "
                     f"{'logged' if logged else 'not logged'}")
        numbers["sites"][site.name] = {"entry": entry, "dup_mac": detected, "logged": logged}
    return ok, f"MAC {text} × {p['moves']} moves: " + "; ".join(parts), numbers


RUNNERS: dict[str, Runner] = {
    "ping": check_ping,
    "reachability": check_reachability,
    "iperf3": check_iperf3,
    "dhcp": check_dhcp,
    "broadcast_once": check_broadcast_once,
    "unicast_isolation": check_unicast_isolation,
    "mtu": check_mtu,
    "restart": check_restart,
    "command": check_command,
    "vlan_tags": check_vlan_tags,
    "wan_frames": check_wan_frames,
    "loop_blocked": check_loop_blocked,
    "unplug": check_unplug,
    "storm": check_storm,
    "dhcp_local": check_dhcp_local,
    "mac_flap": check_mac_flap,
    "stream": streams.check_stream,  # type: ignore[dict-item]  # timeline checks: streams.Lab
    "recovers": streams.check_recovers,  # type: ignore[dict-item]
    "path": paths.check_path,  # type: ignore[dict-item]  # they read show: paths.Lab
    "quiet": paths.check_quiet,  # type: ignore[dict-item]
}


# ---------------------------------------------------------------- helpers


def marker_frames(dst: bytes, src: bytes, marker: bytes, count: int) -> list[bytes]:
    """``count`` experimental-ethertype frames carrying ``marker`` and a sequence number."""
    return [
        frames.make_frame(dst, src, frames.ETHERTYPE_EXPERIMENTAL,
                          frames.marker_payload(marker, seq))
        for seq in range(count)
    ]


def new_marker(lab: Lab) -> bytes:
    """A marker unique to this lab and this check run."""
    return f"L2B-{lab.prefix}-{secrets.token_hex(4)}".encode()


async def _count_at_hosts(lab: Lab, marker: bytes,
                          action: Callable[[], Awaitable[None]]) -> dict[str, int]:
    """Incoming marker frames at every host's ``eth0`` while ``action`` runs."""
    counters = await _counters_at_hosts(lab, marker, action)
    return {ref: c.incoming for ref, c in counters.items()}


async def _counters_at_hosts(lab: Lab, marker: bytes, action: Callable[[], Awaitable[None]]
                             ) -> dict[str, traffic.FrameCounter]:
    """A closed ``FrameCounter`` per host (counts and frames) for what ``action`` sent.

    One settle wait for all counters (not one each), so the cost does not grow
    with the number of hosts."""
    async with AsyncExitStack() as stack:
        counters = {}
        for node in lab.plan.hosts():
            counters[node.ref] = await stack.enter_async_context(
                traffic.FrameCounter(node.ns, "eth0", marker, settle_s=0.0))
        await action()
        await trio.sleep(COUNT_SETTLE_S)
    return counters


def _first(items: Sequence[str], n: int = 6) -> str:
    text = ", ".join(items[:n])
    return text + (f" (+{len(items) - n} more)" if len(items) > n else "")


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
