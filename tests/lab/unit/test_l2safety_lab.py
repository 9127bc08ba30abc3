"""The lab's layer-2 safety parts without root: [[lan_link]], lab-wide daemon keys, the
new check kinds' validation and verdicts, the plan's LAN-link steps, the helpers' frames."""

from __future__ import annotations

import os
import tomllib

import pytest
from support import REPO, two_sites

from l2bridge.core.config import parse_config
from netns.checks import dhcp6, kinds
from netns.checks.kinds import WanCount, dhcp_local_verdict, wan_frames_verdict
from netns.describe.plan import AddVeth, SetLink, make_plan
from netns.describe.plan import Node as PlanNode
from netns.describe.scenario import ScenarioError, load_scenario, parse_scenario

SCEN = os.path.join(REPO, "scenarios")
LINKED = two_sites(hosts=("h1", "h2"), lab='l2bridge = { arp_suppress = true }',
                   tail='\n[[lan_link]]\na = "a"\nb = "b"\n')


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "s.toml")
    return str(info.value)


def test_a_lan_link_and_lab_wide_daemon_keys() -> None:
    scenario = parse_scenario(LINKED, "s.toml")
    assert [(link.name, link.a, link.b) for link in scenario.lan_links] == [("a-b", "a", "b")]
    plan = make_plan(scenario, prefix="l2b0c0de")
    link = plan.lan_link("a-b")
    assert (link.a_ns, link.b_ns, link.ifname) == ("l2b0c0de-a-sw", "l2b0c0de-b-sw", "lan0")
    assert AddVeth("l2b0c0de-a-sw", "lan0", "l2b0c0de-b-sw", "lan0", 1500) in plan.steps
    assert SetLink("l2b0c0de-b-sw", "lan0", master="br0") in plan.steps
    for site in plan.sites:  # every daemon gets the lab-wide key
        assert parse_config(site.config_text, site.config_path).arp_suppress
    # a site's own value wins
    own = LINKED.replace('name = "b"\n', 'name = "b"\nl2bridge = { arp_suppress = false }\n', 1)
    plan = make_plan(parse_scenario(own, "s.toml"), prefix="l2b0c0de")
    assert [parse_config(s.config_text, s.config_path).arp_suppress for s in plan.sites] == [
        True, False]


@pytest.mark.parametrize(("tail", "expected"), [
    ('[[lan_link]]\na = "a"\nb = "a"\n',
     "s.toml: lan_link[0].b: \"b\" must differ from \"a\" (a): a LAN link joins two sites' LANs"),
    ('[[lan_link]]\na = "a"\nb = "x"\n', 's.toml: lan_link[0].b: no site "x" (one of: a, b)'),
    ('[[lan_link]]\na = "a"\nb = "b"\n[[lan_link]]\na = "b"\nb = "a"\n',
     "s.toml: lan_link[1]: a second link between b and a (also lan_link[0])"),
    ('[[check]]\nkind = "unplug"\nlink = "x"\nfrom = "a.h1"\nto = "b.h1"\n',
     's.toml: check[0].link: no LAN link "x" (one of: none: add a [[lan_link]])'),
    ('[[check]]\nkind = "wan_frames"\n',
     's.toml: check[0]: give "from" (the sender), "during" (an earlier check) or '
     'send = "nothing"'),
    ('[[check]]\nkind = "wan_frames"\nduring = 0\n',
     "s.toml: check[0].during: expected the index of an earlier check (0 to -1), found 0"),
    ('[[check]]\nkind = "loop_blocked"\nsite = "a"\npeers = ["a"]\n',
     's.toml: check[0].peers[0]: no other site "a" (one of: b)'),
    ('[[check]]\nkind = "storm"\nfrom = "a.h1"\niperf_from = "a.h1"\niperf_to = "b.h1"\n',
     "s.toml: check[0].iperf_to: the flooding host and the two iperf3 hosts must be three "
     "different hosts"),
    ('[[check]]\nkind = "dhcp_local"\nservers = ["a.h1"]\nclients = ["a.x"]\n',
     's.toml: check[0].clients[0]: no host "a.x" (expected "site.host", one of: a.h1, b.h1)'),
    ('[[check]]\nkind = "mac_flap"\nfrom = "a.h1"\nto = "a.h1"\n',
     's.toml: check[0].to: "to" must differ from "from" (a.h1)'),
])
def test_bad_layer2_input_is_one_line(tail: str, expected: str) -> None:
    assert error_of(two_sites(tail="\n" + tail)) == expected


def test_a_lab_wide_daemon_key_the_lab_owns_is_refused() -> None:
    assert error_of(two_sites(lab='l2bridge = { tap = "x" }')) == (
        's.toml: lab.l2bridge.tap: "tap" is set by the lab itself (remove it)')


@pytest.mark.parametrize("name", ["lan-loop", "lan-loop-3", "broadcast-storm", "dhcp-local",
                                  "mac-flap"])
def test_the_layer2_scenarios_plan(name: str) -> None:
    plan = make_plan(load_scenario(os.path.join(SCEN, f"{name}.toml")), prefix="l2b0c0de")
    assert plan.scenario.checks
    assert all(len(step.ifname) <= 15 for step in plan.steps if hasattr(step, "ifname"))


def test_wan_frames_verdict_counts_and_caps() -> None:
    before = WanCount(0.0, 100, (1, 2, 3))
    after = WanCount(10.0, 133, (1, 9, 3))
    p = {"max_datagrams": 100, "max_broadcast": 0, "max_multicast": None,
         "max_unknown_unicast": None}
    ok, summary, numbers = wan_frames_verdict("one broadcast", before, after, p)
    assert ok and numbers == {"datagrams": 33, "seconds": 10.0, "flooded": {
        "broadcast": 0, "multicast": 7, "unknown_unicast": 0}}
    assert summary.startswith("one broadcast: 33 WAN datagrams; flooded 0 broadcast, 7 multicast")
    ok, summary, _ = wan_frames_verdict("x", before, after, {**p, "max_multicast": 5})
    assert not ok and summary.endswith("over: multicast 7 > 5")


def host(ref: str, mac: str) -> PlanNode:
    return PlanNode(ref, f"p-{ref}", ref.split(".")[0], "host", "eth0", "10.77.1.1/16",
                    "fd00:77::1/64", mac)


def test_dhcp_local_verdict_needs_the_own_site_only() -> None:
    servers = [host("a.srv", "02:00:00:00:00:01"), host("b.srv", "02:00:00:00:00:02")]
    clients = [host("a.cli", "02:00:00:00:00:03"), host("b.cli", "02:00:00:00:00:04")]
    ranges = {"a.srv": (("10.77.255.200", "10.77.255.249"), ("fd00:77::1", "fd00:77::9")),
              "b.srv": (("10.77.255.150", "10.77.255.199"), ("fd00:77::11", "fd00:77::19"))}
    good = {"a.cli": {"lease": "10.77.255.201", "heard_by": ["a.srv"]},
            "b.cli": {"lease": "10.77.255.151", "heard_by": ["b.srv"]}}
    assert dhcp_local_verdict(servers, clients, ranges, good, False)[0]
    leak = {**good, "b.cli": {"lease": "10.77.255.151", "heard_by": ["a.srv", "b.srv"]}}
    ok, summary, numbers = dhcp_local_verdict(servers, clients, ranges, leak, False)
    assert not ok and "b.cli ← b.srv (also heard a.srv)" in summary
    assert numbers["wrong"] == ["b.cli"]
    # IPv6: its own router must be heard, and nobody else's
    a_router = kinds._eui64_link_local("02:00:00:00:00:01")
    assert a_router == "fe80::ff:fe00:1"
    v6 = {"a.cli": {"lease": "fd00:77::2", "advertised": [{"source": a_router}],
                    "ras": [a_router]},
          "b.cli": {"lease": "fd00:77::12", "advertised": [], "ras": []}}
    ok, _, numbers = dhcp_local_verdict(servers, clients, ranges, v6, True)
    assert not ok and numbers["wrong"] == ["b.cli"]


def test_the_dhcpv6_client_builds_and_reads_messages() -> None:
    solicit = dhcp6.message(dhcp6.SOLICIT, b"\x01\x02\x03", b"\x00\x03\x00\x01" + bytes(6))
    assert solicit[:4] == b"\x01\x01\x02\x03"
    opts = dhcp6.options(solicit[4:])
    assert set(opts) == {dhcp6.OPT_CLIENTID, dhcp6.OPT_ELAPSED, dhcp6.OPT_IA_NA}
    address = bytes.fromhex("fd000077" + "00" * 10 + "1234")
    ia = bytes(12) + dhcp6.option(dhcp6.OPT_IAADDR, address + bytes(8))
    assert dhcp6.ia_address(ia) == "fd00:77::1234"


def test_the_mesh_12_scenario_counts_its_reachability_check() -> None:
    with open(os.path.join(SCEN, "mesh-12.toml"), "rb") as f:
        checks = tomllib.load(f)["check"]
    assert checks[1] == {"kind": "wan_frames", "during": 0}
