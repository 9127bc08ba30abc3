"""WAN impairments for real (root): each knob measured on the underlay between gateways.

Probes are UDP datagrams with a sequence number, sent from one gateway namespace
to another's underlay address (port 40000, beside the daemons), so what is
measured is the WAN alone, whatever the daemons do.  Bounds are binomial: six
standard deviations either side of the configured rate, so they never flake.
"""

from __future__ import annotations

import math
import os
import socket
import struct
from typing import Any

import pytest
import trio
from support import scenario_path

from netns.checks import traffic
from netns.describe.scenario import parse_scenario
from netns.realise.nsenter import in_netns

pytestmark = pytest.mark.netns

PROBE_PORT = 40000
SEQ = struct.Struct("!I")
RCVBUF_BYTES = 8 * 1024 * 1024
SO_RCVBUFFORCE = 33
BOUND_S = 30.0  # a wait for something that must happen: clearly broken past this


def scenario(*links: str, seed: int = 1) -> Any:
    """Sites a, b, c ... (one host each); ``links[i]`` is site i's ``wan`` table."""
    parts = [f"[lab]\nname = \"impair\"\n[wan]\nseed = {seed}\n"]
    for i, link in enumerate(links):
        wan = f"wan = {{ {link} }}\n" if link else ""
        parts.append(f'[[site]]\nname = "{"abcdefgh"[i]}"\n{wan}[[site.host]]\nname = "h1"\n')
    return parse_scenario("\n".join(parts), "impair.toml")


def _udp_socket(ns: str, addr: str, port: int) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    sock.bind((addr, port))
    sock.setblocking(False)
    return sock


async def udp_probe(lab: Any, src: str, dst: str, *, count: int, per_ms: int = 2,
                    settle_s: float = 0.5, expect: int = 0, to: str | None = None) -> list[int]:
    """Send ``count`` numbered datagrams ``src`` gw → ``dst`` gw (``per_ms`` per ms; to
    address ``to``, by default ``dst``'s own); return the numbers received, in arrival order.

    After sending, receiving goes on until ``expect`` distinct numbers arrived (for
    at most ``BOUND_S``; the caller asserts the result), then ``settle_s`` more."""
    s, d = lab.plan.site(src), lab.plan.site(dst)
    rx = trio.socket.from_stdlib_socket(
        await trio.to_thread.run_sync(_udp_socket, d.gw_ns, d.underlay, PROBE_PORT))
    tx = trio.socket.from_stdlib_socket(
        await trio.to_thread.run_sync(_udp_socket, s.gw_ns, s.underlay, 0))
    got: list[int] = []
    with rx, tx:
        async def receive() -> None:
            while True:
                data = await rx.recv(2048)
                got.append(SEQ.unpack_from(data)[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for i in range(count):
                await tx.sendto(SEQ.pack(i) + bytes(60), (to or d.underlay, PROBE_PORT))
                if i % per_ms == per_ms - 1:
                    await trio.sleep(0.001)
            with trio.move_on_after(BOUND_S):
                while len(set(got)) < expect:
                    await trio.sleep(0.01)
            await trio.sleep(settle_s)  # frames still held by the WAN
            nursery.cancel_scope.cancel()
    return got


def binomial_bounds(n: int, p: float, sds: float = 6.0) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sds * sd, n * p + sds * sd


def overtakers(order: list[int]) -> int:
    """Datagrams that arrived before one sent earlier than them."""
    count, low = 0, math.inf
    for seq in reversed(order):
        if seq > low:
            count += 1
        low = min(low, seq)
    return count


async def test_loss_is_the_configured_rate(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario("", "loss_percent = 10"))
    n = 3000
    lost_lo, lost_hi = binomial_bounds(n, 0.10)
    least = n - math.floor(lost_hi)  # waited for: fewer would fail the bound
    got = await udp_probe(lab, "a", "b", count=n, expect=least)
    assert len(set(got)) == len(got)  # loss never duplicates
    assert lost_lo <= n - len(got) <= lost_hi, (n - len(got), lost_lo, lost_hi)
    back = await udp_probe(lab, "b", "a", count=n, expect=least)  # lost both ways
    assert lost_lo <= n - len(back) <= lost_hi


async def test_duplication_is_the_configured_rate(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario("", "duplicate_percent = 10"))
    n = 3000
    got = await udp_probe(lab, "a", "b", count=n, expect=n)
    lo, hi = binomial_bounds(n, 0.10)
    assert sorted(set(got)) == list(range(n))  # nothing lost
    assert lo <= len(got) - n <= hi, (len(got) - n, lo, hi)
    assert max(got.count(seq) for seq in set(got)) == 2  # a copy is never copied again


async def test_delay_and_jitter_are_measured_by_ping(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario("", "delay_ms = 30", "delay_ms = 30, jitter_ms = 10"))
    a, b, c = (lab.plan.site(x) for x in "abc")
    steady = await traffic.ping(a.gw_ns, b.underlay, count=30, interval_s=0.05, deadline_s=10)
    # ping sends until COUNT answers came, so with RTT > interval it sends one or two more
    assert steady.received == 30, steady.output
    # b's link delays 30 ms each way: RTT 60 ms, plus at most a few ms of scheduling
    assert 59.5 <= steady.rtt_min_ms <= steady.rtt_avg_ms <= 64.0, steady.output  # type: ignore[operator]
    jittery = await traffic.ping(a.gw_ns, c.underlay, count=60, interval_s=0.05, deadline_s=15)
    assert jittery.received == 60, jittery.output
    # 30 ± 10 ms each way: RTT within 40..80 ms and spread over most of that band
    assert 39.5 <= jittery.rtt_min_ms <= 50.0, jittery.output  # type: ignore[operator]
    assert 70.0 <= jittery.rtt_max_ms <= 84.0, jittery.output  # type: ignore[operator]


async def test_reordering_is_the_configured_rate(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario("", "delay_ms = 20, reorder_percent = 10"))
    n = 3000
    got = await udp_probe(lab, "a", "b", count=n, per_ms=1, expect=n)
    assert sorted(got) == list(range(n))  # reordering neither loses nor copies
    lo, hi = binomial_bounds(n, 0.10)
    # ~20 datagrams are in flight, so each one sent at once overtakes some
    assert lo <= overtakers(got) <= hi, (overtakers(got), lo, hi)
    plain = await udp_probe(lab, "b", "a", count=500, per_ms=1, expect=500)
    assert plain != sorted(plain)  # the other direction of b's link reorders too


async def test_rate_is_the_configured_rate(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario("", "rate_mbit = 20"))
    a, b = lab.plan.site("a"), lab.plan.site("b")
    down = await traffic.iperf3(b.gw_ns, b.underlay, a.gw_ns, seconds=3)
    up = await traffic.iperf3(a.gw_ns, a.underlay, b.gw_ns, seconds=3)
    assert 15.0 <= down.mbit_s <= 25.0, down.mbit_s  # router → b: tbf on the router
    assert 15.0 <= up.mbit_s <= 25.0, up.mbit_s  # b → router: tbf on b's wan0


async def test_relay_overhead_with_all_knobs_at_zero(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """Same run, same source: b's link is a plain veth, c's goes through the relay."""
    lab = await lab_scenario(scenario("", "", "relay = true"))
    a, b, c = (lab.plan.site(x) for x in "abc")
    assert lab.relays.keys() == {"c"}
    rows = {}
    for name, dst in (("direct", b), ("relay", c)):
        ping = await traffic.ping(a.gw_ns, dst.underlay, count=100, interval_s=0.01,
                                  deadline_s=10)
        assert ping.ok, ping.output
        tcp = await traffic.iperf3(dst.gw_ns, dst.underlay, a.gw_ns, seconds=3)
        lan = await traffic.iperf3(lab.node(f"{dst.name}.h1").ns, lab.node(f"{dst.name}.h1").ip,
                                   lab.node("a.h1").ns, seconds=3)
        rows[name] = (ping.rtt_avg_ms, tcp.mbit_s, lan.mbit_s)
    report = ", ".join(f"{k}: rtt {v[0]:.3f} ms, underlay TCP {v[1]:.0f} Mbit/s, "
                       f"l2bridge TCP {v[2]:.0f} Mbit/s" for k, v in rows.items())
    print(f"relay overhead: {report}")
    if os.environ.get("L2B_RELAY_REPORT"):
        with open(os.environ["L2B_RELAY_REPORT"], "a") as f:
            f.write(report + "\n")
    assert rows["relay"][0] - rows["direct"][0] < 1.0, report  # < 1 ms per round trip
    assert rows["relay"][1] > 100.0, report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lossy-wan", "site-behind-nat", "wan-mtu-1400"])
async def test_shipped_wan_scenarios_pass(name: str, lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario_path(name), gateway="l2bridge")
    results = await lab.run_checks()
    failed = [f"{r.name}: {r.summary}" for r in results if not r.ok]
    assert not failed
    assert len(results) == len(lab.scenario.checks)


async def test_periodic_loss_drops_every_nth_packet(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario("", 'loss_percent = 10, loss_pattern = "periodic"'))
    n = 2000
    got = set(await udp_probe(lab, "a", "b", count=n, expect=n - (n // 10 + 5)))
    lost = sorted(set(range(n)) - got)
    # Every 10th packet through the rule goes; the gateways' own keepalives share the
    # counter, so a few gaps shift by one — but never more than a handful.
    assert n // 10 - 5 <= len(lost) <= n // 10 + 5, len(lost)
    gaps = [b - a for a, b in zip(lost, lost[1:], strict=False)]
    assert sum(gap != 10 for gap in gaps) <= 10, gaps
