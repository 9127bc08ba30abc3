"""Reaching every office for real (root): NAT routers of their own, hole punching with
plain sockets, blocked UDP lifted by an event, an IPv6 WAN, the lab's DNS and readdressing,
and the five reach scenarios in full (TCP when UDP is blocked, NAT to NAT, a relay
through symmetric NATs, an IPv6 WAN, a readdressed site found by its name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
import trio
from support import REPO, lab_leftovers, scenario_path
from test_lab_signals import lab_cli, prefix_of, wait_for  # tests/lab/root is on sys.path

from l2bridge.io import proc
from netns.checks import traffic
from netns.describe.plan import new_prefix
from netns.describe.scenario import parse_scenario
from netns.describe.timeline import Event
from netns.lab import open_lab
from netns.realise.nsenter import RESOLV_CONF, in_netns, netns_preexec, pids_in_netns

pytestmark = pytest.mark.netns

BOUND_S = 5.0
RENDEZVOUS_PORT = 40000
SPOKE_PORT = 40001
OTHER_PORT = 40002
PROBE_PORT = 40100
NEW = ["udp-blocked", "nat-to-nat", "nat-symmetric", "ipv6-wan", "dynamic-dns"]


def site_text(name: str, extra: str = "") -> str:
    return f'[[site]]\nname = "{name}"\n{extra}\n[[site.host]]\nname = "h1"\n'


def udp_socket(ns: str, address: str, port: int) -> trio.socket.SocketType:
    """A UDP socket inside ``ns`` bound to ``address:port`` (its family from the address)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with in_netns(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, port))
    return trio.socket.from_stdlib_socket(sock)


async def received(sock: trio.socket.SocketType, within_s: float) -> list[tuple[bytes, Any]]:
    """Everything ``sock`` receives within ``within_s``."""
    got: list[tuple[bytes, Any]] = []
    with trio.move_on_after(within_s):
        while True:
            got.append(await sock.recvfrom(2048))
    return got


# ---------------------------------------------------------------- NAT routers

NATS = "[lab]\nkeepalive = 1\ndead_after = 3\nup_within = 20\n" + "".join([
    site_text("hub", "hub = true"),  # spokes peer only with the hub: today's daemon comes up
    site_text("a", 'wan = { nat = "cone" }'), site_text("b", 'wan = { nat = "cone" }'),
    site_text("c", 'wan = { nat = "symmetric" }'), site_text("d", 'wan = { nat = "symmetric" }'),
])


async def test_cone_nat_punches_symmetric_nat_does_not(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    """Behind cone NATs, two sites that learn each other's public address:port from a
    rendezvous (the hub) and send at once reach each other; behind symmetric NATs they
    never do.  Replies get in; nothing unsolicited does."""
    lab = await lab_scenario(parse_scenario(NATS, "nats.toml"), gateway="l2bridge")
    hub = lab.plan.site("hub")
    spokes = {name: lab.plan.site(name) for name in "abcd"}
    rendezvous = udp_socket(hub.gw_ns, hub.underlay, RENDEZVOUS_PORT)
    stranger = udp_socket(hub.gw_ns, hub.underlay, OTHER_PORT)
    socks = {n: udp_socket(s.gw_ns, s.underlay, SPOKE_PORT) for n, s in spokes.items()}
    seen: dict[str, tuple[str, int]] = {}
    with rendezvous, stranger:
        for name, sock in socks.items():
            await sock.sendto(name.encode(), (hub.underlay, RENDEZVOUS_PORT))
            with trio.fail_after(BOUND_S):
                data, source = await rendezvous.recvfrom(2048)
            assert data == name.encode()
            seen[name] = source[:2]
        for name, s in spokes.items():
            assert s.nat is not None and seen[name][0] == s.nat.public, seen  # never 100.64.x
        # cone: the inside port is the public one, toward every destination
        assert seen["a"][1] == seen["b"][1] == SPOKE_PORT

        for name, sock in socks.items():  # a reply gets in ...
            await rendezvous.sendto(b"reply", seen[name])
            assert [d for d, _ in await received(sock, 0.3)] == [b"reply"], name
            await stranger.sendto(b"unsolicited", seen[name])  # ... another port's does not
            await rendezvous.sendto(b"unsolicited", (seen[name][0], SPOKE_PORT + 7))
            assert await received(sock, 0.3) == [], name

        async def punch(me: str, peer: str, out: dict[str, int]) -> None:
            async def send() -> None:
                for i in range(25):
                    await socks[me].sendto(b"punch %d" % i, seen[peer])
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                got = await received(socks[me], 1.0)
            out[me] = sum(1 for d, _ in got if d.startswith(b"punch"))

        counts: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            for me, peer in (("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")):
                nursery.start_soon(punch, me, peer, counts)
    for sock in socks.values():
        sock.close()
    assert counts["a"] > 0 and counts["b"] > 0, counts  # the hole is punched both ways
    assert counts["c"] == counts["d"] == 0, counts  # a new port per destination: no hole


# ---------------------------------------------------------------- blocked UDP

BLOCKED = ("[lab]\ngateway = 'vxlan'\n[wan]\nmtu = 1570\n" + site_text("london")
           + site_text("berlin", "wan = { block_udp = true }"))


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
async def test_block_udp_drops_udp_passes_tcp_and_an_event_lifts_it(
        lab_scenario, ipv6: bool) -> None:  # type: ignore[no-untyped-def]
    text = BLOCKED.replace("mtu = 1570\n", "mtu = 1570\nipv6 = true\n" if ipv6 else "mtu = 1570\n")
    lab = await lab_scenario(parse_scenario(text, "blocked.toml"), gateway="vxlan")
    london, berlin = lab.plan.site("london"), lab.plan.site("berlin")
    assert (":" in berlin.underlay) == ipv6

    async def udp_through() -> int:
        rx = udp_socket(berlin.gw_ns, berlin.underlay, PROBE_PORT)
        tx = udp_socket(london.gw_ns, london.underlay, 0)
        with rx, tx:
            for i in range(20):
                await tx.sendto(b"probe %d" % i, (berlin.underlay, PROBE_PORT))
            return len(await received(rx, 0.5))

    tcp = await traffic.iperf3(berlin.gw_ns, berlin.underlay, london.gw_ns, seconds=1)
    assert tcp.mbit_s > 0  # TCP crosses the blocked link
    assert await udp_through() == 0
    h1, h2 = lab.node("london.h1"), lab.node("berlin.h1")
    vxlan = await traffic.ping(h1.ns, h2.ip, count=2, interval_s=0.1, deadline_s=1)
    assert vxlan.received == 0, vxlan.output  # VXLAN is UDP: the LAN is cut too

    unblock = Event(0, "impair", "impair berlin: block_udp false", None, 0, site="berlin",
                    changes={"block_udp": False})
    assert "UDP let through" in await lab.faults.apply(unblock)
    assert await udp_through() == 20
    after = await traffic.ping(h1.ns, h2.ip, count=3, interval_s=0.1)
    assert after.ok, after.output


# ---------------------------------------------------------------- IPv6 WAN


@pytest.mark.parametrize(("gateway", "wan_mtu"), [("l2bridge", None), ("vxlan", 1570)])
async def test_ipv6_wan_passes_the_usual_checks(lab_scenario, gateway: str,
                                                wan_mtu: int | None) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(scenario_path("ipv6-wan"), gateway=gateway, wan_mtu=wan_mtu)
    assert all(":" in s.underlay for s in lab.plan.sites)
    results = await lab.run_checks()
    assert [f"{r.name}: {r.summary}" for r in results if not r.ok] == []
    assert {r.kind for r in results} >= {"reachability", "mtu", "iperf3", "dhcp",
                                         "broadcast_once"}
    if gateway == "l2bridge":
        peer = (await lab.show("london"))["peers"][0]
        assert peer["endpoint"] == "[2001:db8:2::2]:55555", peer


IMPAIRED6 = "[wan]\nipv6 = true\nmtu = 1570\n" + "".join([
    site_text("a"), site_text("b", "wan = { delay_ms = 30, duplicate_percent = 100 }"),
    site_text("c", "wan = { loss_percent = 50 }")])


async def test_impairments_work_over_an_ipv6_wan(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    # kernel VXLAN gateways: no handshakes to wait for across a link that loses half
    lab = await lab_scenario(parse_scenario(IMPAIRED6, "impaired6.toml"), gateway="vxlan")
    a, b, c = (lab.plan.site(n) for n in "abc")
    slow = await traffic.ping(a.gw_ns, b.underlay, count=5, interval_s=0.1)
    assert slow.received == 5 and slow.rtt_min_ms is not None, slow.output
    assert slow.rtt_min_ms >= 60, slow.output  # 30 ms each way through b's relay
    assert slow.duplicates > 0, slow.output  # every packet through b's link is copied
    lossy = await traffic.ping(a.gw_ns, c.underlay, count=40, interval_s=0.02, deadline_s=3)
    assert 0 < lossy.received < lossy.sent, lossy.output


# ---------------------------------------------------------------- DNS and readdressing

DNS = ("[lab]\ndns = true\nkeepalive = 1\ndead_after = 3\n" + site_text("hq")
       + site_text("office", "dial_out = false"))
RESOLVE = ("import socket; print(' '.join(sorted({i[4][0] for i in "
           "socket.getaddrinfo('office.wan.test', 55555, type=socket.SOCK_DGRAM)})))")


def resolve_in(ns: str, resolv_conf: str | None) -> str:
    run = subprocess.run([sys.executable, "-c", RESOLVE], capture_output=True, text=True,
                         preexec_fn=netns_preexec(ns, resolv_conf), timeout=20, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


async def test_lab_dns_answers_in_the_gateways_resolver_and_follows_a_readdress() -> None:
    with open(RESOLV_CONF) as f:
        host_resolv = f.read()
    prefix = new_prefix()
    async with open_lab(parse_scenario(DNS, "dns.toml"), prefix=prefix,
                        gateway="l2bridge") as lab:
        hq, office = lab.plan.site("hq"), lab.plan.site("office")
        assert lab.dns is not None and lab.dns.child is not None
        pid = lab.dns.child.pid
        # hq's daemon found office by its name (office never dials out): it is up
        peers = (await lab.show("hq"))["peers"]
        assert peers[0]["configured_endpoint"] == "office.wan.test:55555", peers
        assert peers[0]["state"] == "up" and peers[0]["endpoint"] == "198.18.2.2:55555"
        answer = await trio.to_thread.run_sync(resolve_in, hq.gw_ns, hq.resolv_conf)
        assert answer == "198.18.2.2"

        moved = Event(0, "readdress", "readdress office", 1.0, None, site="office")
        summary = await lab.faults.apply(moved)
        assert "198.18.2.2 → 198.18.2.3" in summary and "DNS records updated" in summary
        answer = await trio.to_thread.run_sync(resolve_in, hq.gw_ns, hq.resolv_conf)
        assert answer == "198.18.2.3"
        there = await traffic.ping(hq.gw_ns, "198.18.2.3", count=2, interval_s=0.1)
        assert there.ok, there.output  # the address and its route really moved
        gone = await traffic.ping(hq.gw_ns, "198.18.2.2", count=1, deadline_s=1)
        assert gone.received == 0
        assert office.addresses.public4 == "198.18.2.2"  # the plan keeps the first one
        with open(RESOLV_CONF) as f:
            assert f.read() == host_resolv  # only the gateways' mount namespaces see ours
    assert not proc.group_running(pid)
    assert lab_leftovers(prefix) == []


@pytest.mark.slow
def test_clean_after_sigkill_stops_the_dns_server(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "dns-long.toml")
    with open(path, "w") as f:
        f.write(DNS + '[[check]]\nkind = "command"\nhost = "hq.h1"\nargv = ["sleep", "30"]\n'
                "timeout = 40\n")
    runner = lab_cli("run", path)
    lines = wait_for(runner, r"check command .* …$")
    dead = prefix_of(lines)
    wan = f"{dead}-wan"
    dnsmasq = [pid for pid in pids_in_netns(wan) if _comm(pid) == "dnsmasq"]
    assert len(dnsmasq) == 1
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert proc.group_running(dnsmasq[0])  # the runner's death leaves it running
    cleaned = subprocess.run([sys.executable, "-m", "netns", "clean"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
    assert cleaned.returncode == 0, cleaned.stderr
    assert not os.path.exists(f"/proc/{dnsmasq[0]}/ns/net")
    assert lab_leftovers(dead) == []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- path and quiet

MESH3 = "[lab]\nkeepalive = 1\ndead_after = 3\n" + "".join(site_text(n) for n in "abc")


@pytest.mark.parametrize(("hub", "carried"), [(False, False), (True, True)],
                         ids=["mesh", "hub"])
async def test_quiet_sees_who_carries_the_data(lab_scenario, hub: bool,
                                               carried: bool) -> None:  # type: ignore[no-untyped-def]
    """In a mesh, a third site carries none of a-b's iperf3; as the hub of a and b, it
    carries all of it, and the check says so with both figures."""
    text = MESH3.replace('name = "c"\n', 'name = "c"\nhub = true\n') if hub else MESH3
    lab = await lab_scenario(parse_scenario(text, "mesh3.toml"), gateway="l2bridge")
    result = await lab.check("quiet", site="c", from_="a.h1", to="b.h1", seconds=1)
    assert result.ok != carried, result.summary
    numbers = result.numbers
    assert numbers["moved_bytes"] > 0
    if carried:
        assert numbers["carried_bytes"] >= numbers["moved_bytes"], numbers
    else:
        assert numbers["carried_bytes"] * 100 <= numbers["moved_bytes"], numbers
    assert result.summary.startswith("c carried "), result.summary


async def test_path_check_reports_what_show_said(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(parse_scenario(MESH3, "mesh3.toml"), gateway="l2bridge")
    assert lab.dns is None  # a lab without [lab] dns starts no dnsmasq
    assert [pid for pid in pids_in_netns(lab.plan.wan_ns) if _comm(pid) == "dnsmasq"] == []
    result = await lab.check("path", site="a", peer="b", expect="tcp", within=0.5)
    path = next(p for p in (await lab.show("a"))["peers"] if p["name"] == "b").get("path")
    if path == "tcp":  # a daemon with paths: a clean WAN is never on TCP
        pytest.fail("a path check saw tcp on a clean WAN")
    assert not result.ok
    assert result.summary.startswith(f"a → b: show says path {path or 'null'} via null after ")
    assert result.summary.endswith(" s (expected tcp)")
    assert 0.5 <= result.numbers["waited_s"] < 5


# ---------------------------------------------------------------- the five scenarios


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
async def test_reach_scenario_passes(name: str) -> None:
    """Each reach scenario, in full: every check and every event passes."""
    prefix = new_prefix()
    async with open_lab(scenario_path(name), prefix=prefix) as lab:
        results = await lab.run_checks()
        events = lab.event_results
    assert [f"{r.name}: {r.summary}" for r in results if not r.ok] == []
    assert [e.summary for e in events if not e.ok] == []
    assert lab_leftovers(prefix) == []
