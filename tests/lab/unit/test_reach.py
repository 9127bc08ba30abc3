"""Reaching every office, without root: NAT routers, an IPv6 WAN, blocked UDP, the lab's
DNS and readdressing, the path and quiet checks."""

from __future__ import annotations

import tomllib

import pytest
from support import scenario_path
from test_impair import error_of, plan_of, sites  # tests/lab/unit is on sys.path

from l2bridge.core import config
from netns.describe.dns import DnsPlan, dns_name, hosts_text, resolv_text
from netns.describe.impair import nft_ruleset
from netns.describe.nat import nat_ruleset
from netns.describe.paths import path_seen, path_verdict, peer_bytes, quiet_verdict
from netns.describe.plan import dns_records, make_plan
from netns.describe.scenario import Link, ScenarioError, load_scenario, parse_scenario
from netns.describe.steps import AddAddress, AddRoute, AddVeth, NftRuleset, Sysctl
from netns.describe.underlay import peer_address, readdressed, site_addresses

NEW = ["udp-blocked", "nat-to-nat", "nat-symmetric", "ipv6-wan", "dynamic-dns"]


def peers(plan, site: str) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    return [(p["name"], p.get("endpoint"))
            for p in tomllib.loads(plan.site(site).config_text)["peer"]]


# ---------------------------------------------------------------- shipped scenarios


@pytest.mark.parametrize("name", NEW)
def test_new_scenarios_parse_and_plan(name: str) -> None:
    scenario = load_scenario(scenario_path(name))
    plan = make_plan(scenario, prefix="l2b0c0de")
    assert plan.describe()[0].startswith(f"lab l2b0c0de: scenario {name}")
    kinds = {c.kind for c in scenario.checks}
    assert {"reachability", "iperf3", "dhcp"} <= kinds, kinds
    for s in plan.sites:  # the daemon of this tree accepts every config the lab writes
        config.parse_config(s.config_text, s.config_path)


def test_the_lab_sets_the_daemons_resolve_interval() -> None:
    dns = load_scenario(scenario_path("dynamic-dns"))
    site = tomllib.loads(make_plan(dns, prefix="l2b0c0de").site("hq").config_text)["site"]
    assert site["resolve_interval"] == 2.0


# ---------------------------------------------------------------- NAT routers


def test_nat_rulesets_cone_and_symmetric() -> None:
    cone = nat_ruleset("l2b0c0de", "cone")
    assert cone == """table ip l2b0c0de {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wan0" ct state new drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state new drop
  }
  chain nat {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade
  }
}
"""
    assert nat_ruleset("l2b0c0de", "symmetric") == cone.replace("masquerade", "masquerade random")


def test_two_nat_sites_get_a_router_each_and_list_each_other_as_dial_in() -> None:
    plan = plan_of(sites("", "wan = { nat = 'cone' }", "wan = { nat = 'symmetric' }"))
    b, c = plan.site("b"), plan.site("c")
    assert (b.nat and b.nat.kind, c.nat and c.nat.kind) == ("cone", "symmetric")
    assert [n for n in plan.namespaces if n.endswith("-nat")] == ["l2b0c0de-b-nat",
                                                                  "l2b0c0de-c-nat"]
    assert peers(plan, "a") == [("b", None), ("c", None)]
    assert peers(plan, "b") == [("a", "198.18.1.2:55555"), ("c", None)]
    assert peers(plan, "c") == [("a", "198.18.1.2:55555"), ("b", None)]
    rules = {s.ns: s.text for s in plan.steps if isinstance(s, NftRuleset)}
    assert "masquerade random" in rules["l2b0c0de-c-nat"]
    assert "masquerade\n" in rules["l2b0c0de-b-nat"]
    assert "l2b0c0de-wan" not in rules  # the WAN router has nothing to do for NAT
    assert plan.nodes["c.nat"].role == "nat"
    assert "nat c: l2b0c0de-c-nat symmetric, lan0 100.64.3.1 (private) ↔ wan0 198.18.3.2 " \
           "(public)" in plan.describe()
    assert "gateway a: l2bridge up -c /run/l2bridge/lab/l2b0c0de/a.toml in l2b0c0de-a-gw, " \
           "peers: b (dials in), c (dials in)" in plan.describe()


def test_a_nat_link_keeps_its_impairments_on_the_router_side() -> None:
    plan = plan_of(sites("", "wan = { nat = true, delay_ms = 10, rate_mbit = 20, mtu = 1400 }"))
    b = plan.site("b")
    assert b.relay is not None
    wan, nat = "l2b0c0de-wan", "l2b0c0de-b-nat"
    for step in (AddVeth("l2b0c0de-b-gw", "wan0", nat, "lan0", 1400),
                 AddVeth(nat, "wan0", wan, "b_g", 1400), AddVeth(wan, "b_r", wan, "b", 1400)):
        assert step in plan.steps, step
    tbf = [(s.ns, s.ifname) for s in plan.steps if type(s).__name__ == "AddTbf"]
    assert tbf == [(wan, "b"), (nat, "wan0")]


def test_nat_node_name_clashes_are_one_line() -> None:
    text = sites("", "wan = { nat = true }\n[[site.host]]\nname = \"nat\"")
    with pytest.raises(ScenarioError) as info:
        plan_of(text)
    assert str(info.value) == (
        'lab.toml: site[1].host[0].name: site[1] "b" (its NAT router) and site[1].host[0] '
        '"nat" would both be namespace "l2b0c0de-b-nat"; rename one')


# ---------------------------------------------------------------- IPv6 WAN


def test_ipv6_wan_addresses_routes_and_configs() -> None:
    plan = plan_of("[wan]\nipv6 = true\n" + sites("", ""))
    a = plan.site("a")
    assert (a.underlay, a.router) == ("2001:db8:1::2", "2001:db8:1::1")
    wan = "l2b0c0de-wan"
    for step in (Sysctl(wan, "net.ipv6.conf.all.forwarding", "1"),
                 AddAddress(wan, "a", "2001:db8:1::1/64"),
                 AddAddress("l2b0c0de-a-gw", "wan0", "2001:db8:1::2/64"),
                 AddRoute("l2b0c0de-a-gw", "::/0", "2001:db8:1::1")):
        assert step in plan.steps, step
    assert not [s for s in plan.steps if isinstance(s, AddAddress) and "198.18." in s.cidr]
    site = tomllib.loads(a.config_text)["site"]
    assert site["listen"] == "[::]:55555"
    assert peers(plan, "a") == [("b", "[2001:db8:2::2]:55555")]
    assert peers(plan, "b") == [("a", "[2001:db8:1::2]:55555")]


def test_ipv6_wan_with_a_nat_site_is_dual_stack() -> None:
    plan = plan_of("[wan]\nipv6 = true\n" + sites("", "", "wan = { nat = true }"))
    a, c = plan.site("a"), plan.site("c")
    assert (a.addresses.public4, a.addresses.public6) == ("198.18.1.2", "2001:db8:1::2")
    assert (c.addresses.public4, c.addresses.public6) == ("198.18.3.2", None)
    assert peers(plan, "a") == [("b", "[2001:db8:2::2]:55555"), ("c", None)]
    assert peers(plan, "c") == [("a", "198.18.1.2:55555"), ("b", "198.18.2.2:55555")]
    assert tomllib.loads(c.config_text)["site"]["listen"] == "0.0.0.0:55555"
    assert tomllib.loads(a.config_text)["site"]["listen"] == "[::]:55555"
    assert peer_address(c.addresses, a.addresses) == "198.18.1.2"


def test_ipv6_vxlan_devices_and_their_overhead() -> None:
    text = "[wan]\nipv6 = true\n" + sites("", "")
    with pytest.raises(ScenarioError) as info:
        plan_of(text, gateway="vxlan", wan_mtu=1550)
    assert "vxlan gateways need wan.mtu >= 1570" in str(info.value)
    plan = plan_of(text, gateway="vxlan", wan_mtu=1570)
    (dev,) = plan.site("a").vxlan
    assert (dev.local, dev.remotes) == ("2001:db8:1::2", ("2001:db8:2::2",))


# ---------------------------------------------------------------- blocked UDP


def test_block_udp_from_wan_defaults_and_per_site() -> None:
    scenario = parse_scenario("[wan]\nblock_udp = true\n" + sites("", "wan = { block_udp = "
                                                                   "false }"))
    assert [scenario.link(s).block_udp for s in "ab"] == [True, False]
    text = nft_ruleset("t", [("a", Link(block_udp=True))])
    assert text is not None and text.count("meta l4proto udp drop") == 2
    assert "table inet t" in text  # IPv4 and IPv6 alike


def test_block_udp_changes_by_an_impair_event() -> None:
    scenario = parse_scenario(sites("", "wan = { block_udp = true }") + """
[[check]]
kind = "ping"
from = "a.h1"
to = "b.h1"
[[event]]
after_check = 0
kind = "impair"
site = "b"
block_udp = false
""", "lab.toml")
    (event,) = scenario.events
    assert event.changes == {"block_udp": False}
    assert event.name == "impair b: block_udp false"
    assert error_of(sites("", "") + '[[event]]\nat = 1\nkind = "impair"\nsite = "b"\n'
                    "block_udp = 1\n") == (
        "lab.toml: event[0].block_udp: expected true or false, found an integer (1)")


# ---------------------------------------------------------------- DNS and readdressing


def test_dns_names_endpoints_and_the_server() -> None:
    plan = plan_of("[lab]\ndns = true\nresolve_interval = 2\n" + sites("", "dial_out = false"))
    assert plan.dns is not None
    assert plan.dns.listen == ("198.18.0.53",)
    assert peers(plan, "a") == [("b", "b.wan.test:55555")]
    assert peers(plan, "b") == [("a", None)]  # dial_out = false: it waits for a
    assert plan.site("a").resolv_conf == plan.dns.resolv_path
    assert AddAddress("l2b0c0de-wan", "lo", "198.18.0.53/32") in plan.steps
    argv = plan.dns.argv("dnsmasq")
    for flag in ("--no-resolv", "--no-hosts", f"--addn-hosts={plan.rundir}/dns-hosts",
                 "--listen-address=198.18.0.53", "--local-ttl=1", "--keep-in-foreground"):
        assert flag in argv
    assert dns_records(plan) == {"a": ("198.18.1.2", None), "b": ("198.18.2.2", None)}
    assert hosts_text(dns_records(plan)) == "198.18.1.2 a.wan.test\n198.18.2.2 b.wan.test\n"
    assert resolv_text("198.18.0.53").startswith("nameserver 198.18.0.53\n")
    assert dns_name("office") == "office.wan.test"


def test_dns_over_an_ipv6_wan() -> None:
    plan = plan_of("[lab]\ndns = true\n[wan]\nipv6 = true\n" + sites("", ""))
    assert plan.dns == DnsPlan(plan.wan_ns, ("2001:db8::53",), f"{plan.rundir}/dns-hosts",
                               f"{plan.rundir}/resolv.conf", f"{plan.rundir}/dnsmasq.log")
    assert hosts_text(dns_records(plan)) == ("2001:db8:1::2 a.wan.test\n"
                                             "2001:db8:2::2 b.wan.test\n")
    assert AddAddress(plan.wan_ns, "lo", "2001:db8::53/128") in plan.steps


def test_readdress_moves_public_addresses_to_the_next_host() -> None:
    a = site_addresses(2, nat=False, ipv4=True, ipv6=True)
    assert readdressed(a, 2, 1).public4 == "198.18.2.3"
    assert readdressed(a, 2, 3).public6 == "2001:db8:2::5"
    n = site_addresses(2, nat=True, ipv4=True, ipv6=True)
    moved = readdressed(n, 2, 1)
    assert (moved.public4, moved.private4, moved.gw4) == ("198.18.2.3", "100.64.2.2",
                                                          "100.64.2.2")


READDRESS = '[[event]]\nat = {at}\nkind = "readdress"\nsite = "{site}"\n'


@pytest.mark.parametrize(("text", "message"), [
    (READDRESS.format(at=1, site="paris"),
     'lab.toml: event[0].site: no site "paris" (one of: a, b)'),
    (READDRESS.format(at=1, site="b") + READDRESS.format(at=1, site="b"),
     "lab.toml: event[1].at: event[0] (readdress b) also acts on b's public address at 1 s; "
     "two events on one target at one time contradict each other (move one)"),
    ('[[event]]\nat = 1\nkind = "readdress"\nsite = "b"\naddress = "1.2.3.4"\n',
     'lab.toml: event[0].address: unknown key "address"; expected one of kind, name, at, '
     "after_check, site"),
])
def test_bad_readdress_events_are_one_line(text: str, message: str) -> None:
    assert error_of(sites("", "") + text) == message


def test_readdress_is_refused_with_vxlan_gateways() -> None:
    text = sites("", "") + READDRESS.format(at=1, site="b")
    assert parse_scenario(text).events[0].target == "b's public address"
    with pytest.raises(ScenarioError) as info:
        plan_of(text, gateway="vxlan", wan_mtu=1550)
    assert str(info.value).startswith("lab.toml: event[0].kind: vxlan gateways know their "
                                      "remotes by address")


@pytest.mark.parametrize(("text", "message"), [
    ("[lab]\ndns = 'yes'\n",
     'lab.toml: lab.dns: expected true or false, found a string ("yes")'),
    ("[lab]\nresolve_interval = 0.5\n",
     "lab.toml: lab.resolve_interval: expected a number of seconds from 1 to 3600, found 0.5"),
    ("[lab]\nup_within = 0\n",
     "lab.toml: lab.up_within: expected a number of seconds from 1 to 600, found 0"),
])
def test_bad_lab_keys_are_one_line(text: str, message: str) -> None:
    assert error_of(text + sites("", "")) == message


# ---------------------------------------------------------------- path and quiet checks

PATH = '[[check]]\nkind = "path"\nsite = "{site}"\npeer = "{peer}"\nexpect = "{expect}"\n'


@pytest.mark.parametrize(("text", "message"), [
    (PATH.format(site="a", peer="x", expect="udp"),
     'lab.toml: check[0].peer: "x" is not a peer of a (its peers: b, c)'),
    (PATH.format(site="z", peer="b", expect="udp"),
     'lab.toml: check[0].site: no site "z" (one of: a, b, c)'),
    (PATH.format(site="a", peer="b", expect="quic"),
     'lab.toml: check[0].expect: expected one of "udp", "tcp", "relay", found "quic"'),
    (PATH.format(site="a", peer="b", expect="udp") + 'via = "c"\n',
     'lab.toml: check[0].via: only with expect = "relay" (found expect = "udp")'),
    ('[[check]]\nkind = "quiet"\nsite = "a"\nfrom = "a.h1"\nto = "b.h1"\n',
     "lab.toml: check[0].from: a.h1 must be at a peer of a (another site: b, c)"),
    ('[[check]]\nkind = "quiet"\nsite = "a"\nfrom = "b.h1"\nto = "c.h2"\n',
     'lab.toml: check[0].to: no host "c.h2" (expected "site.host", one of: a.h1, b.h1, c.h1)'),
])
def test_bad_path_and_quiet_checks_are_one_line(text: str, message: str) -> None:
    assert error_of(sites("", "", "") + text) == message


def test_path_and_quiet_checks_need_the_l2bridge_gateway() -> None:
    text = sites("", "") + PATH.format(site="a", peer="b", expect="udp")
    with pytest.raises(ScenarioError) as info:
        plan_of(text, gateway="vxlan", wan_mtu=1550)
    assert str(info.value).startswith("lab.toml: check[0].kind: a path check reads an "
                                      "l2bridge daemon's show")


def test_path_verdict_says_what_show_said() -> None:
    show = {"peers": [{"name": "rome", "path": "relay", "via": "hub", "bytes_in": 10,
                       "bytes_out": 5}, {"name": "hub", "path": "udp", "via": None}]}
    seen = path_seen(show, "rome")
    assert path_verdict("paris", "rome", seen, "relay", "hub", 1.0)[0]
    assert path_verdict("paris", "rome", seen, "relay", None, 1.0)[0]
    ok, summary, numbers = path_verdict("paris", "rome", seen, "udp", None, 10.0)
    assert not ok and summary == ("paris → rome: show says path relay via hub after 10.0 s "
                                  "(expected udp)")
    assert numbers["path"] == "relay"
    ok, summary, _ = path_verdict("paris", "nowhere", path_seen(show, "nowhere"), "udp", None,
                                  0.0)
    assert not ok and summary == "paris has no peer nowhere in show"
    ok, summary, _ = path_verdict("paris", "hub", path_seen({"peers": [{"name": "hub"}]}, "hub"),
                                  "udp", None, 10.0)  # a daemon without paths
    assert summary == "paris → hub: show says path null via null after 10.0 s (expected udp)"
    assert peer_bytes(show, ["rome"]) == 15 and peer_bytes(show, ["hub", "rome"]) == 15


def test_quiet_verdict_bounds_and_words() -> None:
    ok, summary, numbers = quiet_verdict("hub", ["paris", "rome"], 2_000, 400_000_000, 1.0,
                                         None)
    assert ok and summary == ("hub carried 2000 bytes for paris/rome while iperf3 moved "
                              "400000000 (0.001%; max 1%)")
    assert not quiet_verdict("hub", ["paris"], 8_000_000, 400_000_000, 1.0, None)[0]
    assert quiet_verdict("hub", ["paris"], 900, 10, 1.0, 1000)[0]  # a fixed bound
    assert not quiet_verdict("hub", ["paris"], 0, 0, 1.0, None)[0]  # nothing moved at all
    assert numbers["percent"] == 0.0005
