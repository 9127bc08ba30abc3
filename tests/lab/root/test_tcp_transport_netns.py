"""Real sites reaching each other without UDP (root): the WAN router drops every UDP
datagram (nftables, in the lab's WAN namespace), and two l2bridge gateways with the
default ``transport = "auto"`` and two workers each are joined over TCP: ping, frames
bigger than the WAN MTU, and iperf3 cross, the followers' frames handed to worker 0.
UDP back: they move to UDP.  ``transport = "tcp"`` never sends a UDP datagram.
"""

from __future__ import annotations

import subprocess

import trio

from netns.checks import traffic
from netns.describe.scenario import parse_scenario
from netns.lab import Lab
from netns.realise.nsenter import netns_preexec

SCENARIO = """
[lab]
keepalive = 1
dead_after = 3
[[site]]
name = "london"
l2bridge = {{ workers = 2{extra} }}
[[site.host]]
name = "h1"
ipv4 = "10.77.1.10/16"
[[site]]
name = "berlin"
l2bridge = {{ workers = 2{extra} }}
[[site.host]]
name = "h1"
ipv4 = "10.77.2.10/16"
"""
BLOCK = """table inet udpblock {
  chain forward {
    type filter hook forward priority -10; policy accept;
    meta l4proto udp counter drop
  }
}
"""
JOIN_BOUND_S = 20.0


def nft(ns: str, text: str) -> str:
    done = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True,
                          preexec_fn=netns_preexec(ns), timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def udp_dropped(ns: str) -> int:
    done = subprocess.run(["nft", "list", "table", "inet", "udpblock"], capture_output=True,
                          text=True, preexec_fn=netns_preexec(ns), timeout=10, check=False)
    for word_index, word in enumerate(done.stdout.split()):
        if word == "packets":
            return int(done.stdout.split()[word_index + 1])
    return 0


async def paths(lab: Lab) -> dict[str, tuple[str, str]]:
    out = {}
    for site in ("london", "berlin"):
        [peer] = (await lab.show(site))["peers"]
        out[site] = (peer["state"], peer["path"])
    return out


async def wait_paths(lab: Lab, path: str) -> None:
    with trio.fail_after(JOIN_BOUND_S):
        while set((await paths(lab)).values()) != {("up", path)}:
            await trio.sleep(0.2)


async def test_udp_blocked_sites_join_over_tcp_with_workers_and_move_back(lab_scenario):
    lab = await lab_scenario(parse_scenario(SCENARIO.format(extra=""), "tcp.toml"),
                             gateway="l2bridge")
    wan = lab.plan.wan_ns
    nft(wan, BLOCK)
    await wait_paths(lab, "tcp")
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    ping = await traffic.ping(src.ns, dst.ip, count=50, interval_s=0.02, deadline_s=10)
    assert ping.received >= 48, ping.output  # a link change may cost one or two
    big = await traffic.ping(src.ns, dst.ip, count=5, interval_s=0.1, size=1472,
                             dont_fragment=True, deadline_s=10)
    assert big.ok, big.output  # a full 1514-byte frame crosses a TCP link whole
    result = await traffic.iperf3(dst.ns, dst.ip, src.ns, seconds=2, parallel=4)
    assert result.mbit_s > 1, result  # four flows: both workers' frames cross
    show = await lab.show("london")
    assert show["workers"]["count"] == 2
    assert show["local"]["carried_frames"] > 0  # the follower's frames, sent by worker 0
    link = show["peers"][0]["tcp_link"]
    assert link is not None and link["records_out"] > 0
    # UDP comes back: both move to UDP, and the link goes quiet.
    nft(wan, "delete table inet udpblock\n")
    await wait_paths(lab, "udp")
    again = await traffic.ping(src.ns, dst.ip, count=20, interval_s=0.02, deadline_s=10)
    assert again.ok, again.output


async def test_transport_tcp_sends_no_udp_at_all(lab_scenario):
    lab = await lab_scenario(parse_scenario(SCENARIO.format(extra=', transport = "tcp"'),
                                            "tcp-only.toml"), gateway="l2bridge")
    wan = lab.plan.wan_ns
    nft(wan, BLOCK)
    await wait_paths(lab, "tcp")
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    ping = await traffic.ping(src.ns, dst.ip, count=20, interval_s=0.02, deadline_s=10)
    assert ping.ok, ping.output
    assert udp_dropped(wan) == 0  # not one UDP datagram tried to cross
