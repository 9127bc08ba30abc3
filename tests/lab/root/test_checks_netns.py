"""The new check kinds for real (root): each passes on a healthy lab and fails when it must.

Labs use the kernel-VXLAN reference gateway where the gateway does not matter (it
comes up in ~0.2 s); the shipped scale scenario runs with the real daemon.
"""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
from support import REPO
from support import lab_leftovers as leftovers

from netns.describe.plan import new_prefix
from netns.describe.scenario import parse_scenario
from netns.lab import open_lab
from netns.realise.build import netlink
from netns.realise.nsenter import pids_in_netns

pytestmark = pytest.mark.netns

SCEN = os.path.join(REPO, "scenarios")
HAVE_L2BRIDGE = importlib.util.find_spec("l2bridge.ops.cli") is not None

TWO_SITES = """
[[site]]
name = "london"
[[site.host]]
name = "h1"
[[site.host]]
name = "h2"

[[site]]
name = "berlin"
[[site.host]]
name = "h1"
"""
VXLAN = {"gateway": "vxlan", "wan_mtu": 1550}


@pytest.fixture(autouse=True)
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")



async def test_reachability_both_families_then_a_dead_site() -> None:
    prefix = new_prefix()
    async with open_lab(parse_scenario(TWO_SITES, "two.toml"), prefix=prefix, **VXLAN) as lab:
        good = await lab.check("reachability")
        assert good.ok, good.summary
        assert good.summary == "3 host pairs × ipv4+ipv6: 6/6 pings answer"
        assert good.numbers["per_family"]["ipv6"]["answered"] == 3
        await lab.kill_site("berlin")
        bad = await lab.check("reachability", families=["ipv6"])
    assert not bad.ok
    assert bad.numbers["failed"] == ["london.h1→berlin.h1 ipv6", "london.h2→berlin.h1 ipv6"]
    assert bad.summary == ("3 host pairs × ipv6: 1/3 pings answer; no answer: "
                           "london.h1→berlin.h1 ipv6, london.h2→berlin.h1 ipv6")
    assert leftovers(prefix) == []


async def test_ping_expect_fail() -> None:
    async with open_lab(parse_scenario(TWO_SITES, "two.toml"), **VXLAN) as lab:
        wrong = await lab.check("ping", from_="london.h1", to="berlin.h1", expect="fail")
        assert not wrong.ok
        assert wrong.numbers["received"] == 3
        await lab.kill_site("berlin")
        started = time.monotonic()
        right = await lab.check("ping", from_="london.h1", to="berlin.h1", expect="fail",
                                count=2)
        assert time.monotonic() - started < 8.0  # ping -w 2 (2 echoes × 0.2 s + 1 s), not 10 s
    assert right.ok, right.summary
    assert right.numbers["received"] == 0 and right.numbers["sent"] >= 2


async def test_iperf3_udp_reports_rate_loss_and_jitter() -> None:
    async with open_lab(parse_scenario(TWO_SITES, "two.toml"), **VXLAN) as lab:
        good = await lab.check("iperf3", from_="london.h1", to="berlin.h1", udp=True,
                               bitrate="20M", seconds=1, max_lost_percent=5)
        greedy = await lab.check("iperf3", from_="london.h1", to="berlin.h1", udp=True,
                                 bitrate="10M", seconds=1, min_mbit_s=1000)
    assert good.ok, good.summary
    assert 18 < good.numbers["mbit_s"] < 22
    assert good.numbers["protocol"] == "UDP"
    assert 0 <= good.numbers["lost_percent"] <= 5
    assert good.numbers["jitter_ms"] is not None
    assert not greedy.ok
    assert greedy.numbers["mbit_s"] < 1000
    assert "(min 1000 Mbit/s)" in greedy.summary


async def test_mtu_search_finds_the_path_mtu() -> None:
    async with open_lab(parse_scenario(TWO_SITES, "two.toml"), **VXLAN) as lab:
        full = await lab.check("mtu", from_="london.h1", to="berlin.h1", mode="search")
        # Narrow berlin's LAN: the switch port towards the gateway drops frames > 1400.
        with netlink(lab.plan.site("berlin").sw_ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="gw")[0], mtu=1400)
        narrow = await lab.check("mtu", from_="london.h1", to="berlin.h1", mode="search")
        fixed = await lab.check("mtu", from_="london.h1", to="berlin.h1", size=1372)
    assert full.ok, full.summary
    assert (full.numbers["largest_payload"], full.numbers["frame_bytes"],
            full.numbers["probes"]) == (1472, 1514, 1)
    assert not narrow.ok
    # A veth forwards up to MTU + 14 + 4 bytes (the kernel leaves room for one VLAN
    # tag), so 1404-byte packets still cross a 1400-byte port; 1405 do not.
    assert narrow.numbers["largest_payload"] == 1376
    assert narrow.numbers["packet_bytes"] == 1404
    assert narrow.numbers["probes"] <= 13
    assert narrow.summary.startswith("largest DF ping 1376 bytes (1404-byte packets, "
                                     "1418-byte frames) in ")
    assert narrow.summary.endswith("; need ≥ 1472")
    assert fixed.ok, fixed.summary


async def test_command_check_status_output_and_timeout() -> None:
    async with open_lab(parse_scenario(TWO_SITES, "two.toml"), **VXLAN) as lab:
        shell = await lab.check("command", host="berlin.h1",
                                shell="ip -4 -br addr show dev eth0; exit 3",
                                expect_status=3, expect_output=r"10\.77\.2\.1/16", regex=True)
        argv = await lab.check("command", host="london.h2", argv=["ping", "-c1", "-W1",
                                                                  "10.77.2.1"],
                               expect_output="1 received")
        wrong = await lab.check("command", host="london.h1", argv=["false"])
        started = time.monotonic()
        hung = await lab.check("command", host="london.h1", argv=["sleep", "60"], timeout_s=1.5)
        elapsed = time.monotonic() - started
        assert pids_in_netns(lab.ns("london.h1")) == []
    assert shell.ok, shell.summary
    assert shell.numbers["status"] == 3 and shell.numbers["output_matched"] is True
    assert argv.ok, argv.summary
    assert not wrong.ok
    assert wrong.summary.startswith("exit 1 (want 0); no output in ")
    assert not hung.ok and hung.numbers["timed_out"]
    assert hung.summary == "killed after 1 s (still running)"
    assert elapsed < 30.0  # killed at 1.5 s, far from sleep's 60 s


async def test_command_with_a_missing_program_fails_cleanly() -> None:
    async with open_lab(parse_scenario(TWO_SITES, "two.toml"), **VXLAN) as lab:
        result = await lab.check("command", host="london.h1", argv=["no-such-program-l2b"])
    assert not result.ok
    assert result.summary == "no-such-program-l2b: not found on PATH; install it or fix PATH"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_L2BRIDGE, reason="the l2bridge daemon (l2bridge.ops.cli) is missing")
async def test_shipped_mesh_12_passes_with_the_daemon() -> None:
    prefix = new_prefix()
    async with open_lab(os.path.join(SCEN, "mesh-12.toml"), prefix=prefix) as lab:
        assert len(lab.plan.sites) == 12 and len(lab.hosts()) == 24
        results = await lab.run_checks()
    failed = [f"{r.name}: {r.summary}" for r in results if not r.ok]
    assert not failed
    assert results[0].numbers["pairs"] == 276 and results[0].numbers["probes"] == 552
    assert results[2].numbers["received"]["athens.h2"] == 5
    assert leftovers(prefix) == []
