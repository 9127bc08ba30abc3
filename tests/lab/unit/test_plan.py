"""Plans (no root): deterministic names and addresses, short interface names, no clashes."""

from __future__ import annotations

import ipaddress
import os
import tomllib

import pytest
from support import REPO

from l2bridge.core import keys
from netns.describe.plan import (
    IFNAME_MAX,
    AddAddress,
    AddNetns,
    AddVeth,
    SetLink,
    is_prefix,
    make_plan,
    new_prefix,
)
from netns.describe.scenario import ScenarioError, load_scenario, parse_scenario
from netns.lab import LabError, lab_offload_from_env

SCEN = os.path.join(REPO, "scenarios")
SHIPPED = ["two-offices.toml", "three-site-mesh.toml", "hub-and-spoke.toml"]


def mesh_text(sites: int, hosts: int = 2) -> str:
    parts = []
    for i in range(sites):
        parts.append(f'[[site]]\nname = "site{i:02d}"\n')
        parts += [f'[[site.host]]\nname = "host{j}"\n' for j in range(hosts)]
    return "\n".join(parts)


def plan_of(name: str, **kw: object) -> object:
    return make_plan(load_scenario(os.path.join(SCEN, name)), prefix="l2b0c0de", **kw)


def test_prefix_shape() -> None:
    prefixes = {new_prefix() for _ in range(50)}
    assert all(is_prefix(p) and len(p) == 8 for p in prefixes)
    assert len(prefixes) > 40
    assert not is_prefix("l2b0c0dex") and not is_prefix("abc0c0de") and not is_prefix("l2bXYZ12")


@pytest.mark.parametrize("name", SHIPPED)
def test_plan_is_deterministic(name: str) -> None:
    assert plan_of(name).describe() == plan_of(name).describe()


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("gateway", ["l2bridge", "vxlan"])
def test_names_fit_and_never_clash(name: str, gateway: str) -> None:
    plan = plan_of(name, gateway=gateway, wan_mtu=1550)
    assert all(ns.startswith("l2b0c0de-") for ns in plan.namespaces)
    assert len(set(plan.namespaces)) == len(plan.namespaces)
    ifnames: dict[str, set[str]] = {}
    for step in plan.steps:
        if isinstance(step, AddVeth):
            for ns, ifname in ((step.ns, step.ifname), (step.peer_ns, step.peer_ifname)):
                assert len(ifname) <= IFNAME_MAX
                assert ifname not in ifnames.setdefault(ns, set()), (ns, ifname)
                ifnames[ns].add(ifname)
    for site in plan.sites:
        for dev in site.vxlan:
            assert len(dev.ifname) <= IFNAME_MAX
    hosts = plan.hosts()
    for attr in ("ipv4", "ipv6", "mac"):
        values = [getattr(h, attr) for h in hosts]
        assert len(set(values)) == len(values), attr
    underlay = [s.underlay for s in plan.sites] + [s.router for s in plan.sites]
    assert len(set(underlay)) == len(underlay)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15") for a in underlay)


def test_two_offices_layout() -> None:
    plan = plan_of("two-offices.toml")
    assert plan.namespaces == (
        "l2b0c0de-wan",
        "l2b0c0de-london-gw", "l2b0c0de-london-sw", "l2b0c0de-london-h1", "l2b0c0de-london-h2",
        "l2b0c0de-berlin-gw", "l2b0c0de-berlin-sw", "l2b0c0de-berlin-h1",
        "l2b0c0de-berlin-dhcp",
    )
    h1 = plan.nodes["london.h1"]
    assert (h1.ns, h1.ifname, h1.ipv4, h1.ipv6, h1.mac) == (
        "l2b0c0de-london-h1", "eth0", "10.77.1.10/16", "fd00:77::1:1/64", "02:77:00:01:00:01")
    h2 = plan.nodes["london.h2"]
    assert (h2.ipv4, h2.mac) == ("10.77.1.2/16", "02:77:00:01:00:02")
    berlin = plan.site("berlin")
    assert (berlin.underlay, berlin.router, berlin.gw_ns) == (
        "198.18.2.2", "198.18.2.1", "l2b0c0de-berlin-gw")
    assert [p.name for p in berlin.peers] == ["london"]
    assert berlin.config_path == "/run/l2bridge/lab/l2b0c0de/berlin.toml"
    assert plan.steps[0] == AddNetns("l2b0c0de-wan")
    assert AddVeth("l2b0c0de-berlin-gw", "wan0", "l2b0c0de-wan", "berlin", 1500) in plan.steps
    assert AddVeth("l2b0c0de-berlin-gw", "eth1", "l2b0c0de-berlin-sw", "gw", 1500) in plan.steps
    assert SetLink("l2b0c0de-berlin-sw", "gw", master="br0") in plan.steps
    assert AddAddress("l2b0c0de-berlin-gw", "wan0", "198.18.2.2/24") in plan.steps


def test_every_namespace_is_created_before_use() -> None:
    plan = plan_of("hub-and-spoke.toml")
    created: set[str] = set()
    for step in plan.steps:
        if isinstance(step, AddNetns):
            created.add(step.ns)
            continue
        for attr in ("ns", "peer_ns"):
            if hasattr(step, attr):
                assert getattr(step, attr) in created, step


def test_mesh_peers_everyone_hub_peers_spokes() -> None:
    mesh = plan_of("three-site-mesh.toml")
    assert {s.name: [p.name for p in s.peers] for s in mesh.sites} == {
        "london": ["berlin", "paris"], "berlin": ["london", "paris"], "paris": ["london", "berlin"]}
    hub = plan_of("hub-and-spoke.toml")
    assert {s.name: [p.name for p in s.peers] for s in hub.sites} == {
        "hq": ["leeds", "york", "bath"], "leeds": ["hq"], "york": ["hq"], "bath": ["hq"]}


def test_vxlan_devices() -> None:
    mesh = plan_of("three-site-mesh.toml", gateway="vxlan", wan_mtu=1550)
    (dev,) = mesh.site("london").vxlan
    assert (dev.ifname, dev.vni, dev.local, dev.remotes, dev.mtu) == (
        "vxlan0", 42, "198.18.1.2", ("198.18.2.2", "198.18.3.2"), 1500)
    hub = plan_of("hub-and-spoke.toml", gateway="vxlan", wan_mtu=1550)
    assert [(d.ifname, d.vni, d.remotes) for d in hub.site("hq").vxlan] == [
        ("vx2", 1002, ("198.18.2.2",)), ("vx3", 1003, ("198.18.3.2",)),
        ("vx4", 1004, ("198.18.4.2",))]
    (spoke,) = hub.site("york").vxlan
    assert (spoke.ifname, spoke.vni, spoke.remotes) == ("vxlan0", 1003, ("198.18.1.2",))


def test_vxlan_needs_room_for_its_header() -> None:
    with pytest.raises(ScenarioError) as info:
        plan_of("two-offices.toml", gateway="vxlan")
    assert str(info.value) == (
        f"{SCEN}/two-offices.toml: wan.mtu: vxlan gateways need wan.mtu >= 1550 for a "
        "1500-byte LAN (VXLAN adds 50 bytes and never fragments), found 1500; raise it "
        "(--wan-mtu 1550) or use the l2bridge gateway")


def test_site_config_text() -> None:
    plan = plan_of("hub-and-spoke.toml")
    doc = tomllib.loads(plan.site("hq").config_text)
    assert doc["site"] == {
        "name": "hq", "listen": "0.0.0.0:55555", "bridge": "br0", "tap": "l2b0",
        "interfaces": ["eth1"], "hub": True, "mtu": 1500, "wan_mtu": 1500,
        "control": "/run/l2bridge/lab/l2b0c0de/hq.sock", "keepalive": 1.0, "dead_after": 3.0,
        "workers": 1,
        "private_key_file": "/run/l2bridge/lab/l2b0c0de/hq.key"}
    public = {s.name: keys.encode_key(keys.public_key(s.private_key)) for s in plan.sites}
    assert doc["peer"] == [
        {"name": "leeds", "endpoint": "198.18.2.2:55555", "public_key": public["leeds"]},
        {"name": "york", "endpoint": "198.18.3.2:55555", "public_key": public["york"]},
        {"name": "bath", "endpoint": "198.18.4.2:55555", "public_key": public["bath"]},
    ]
    assert len(set(public.values())) == 4  # a fresh key per site


def test_insecure_scenario_writes_no_keys() -> None:
    scenario = parse_scenario("[lab]\ninsecure = true\n" + mesh_text(2))
    plan = make_plan(scenario, prefix="l2b0c0de")
    doc = tomllib.loads(plan.site("site00").config_text)
    assert doc["site"]["insecure"] is True and "private_key_file" not in doc["site"]
    assert "public_key" not in doc["peer"][0]


def test_site_config_extra_keys_pass_through() -> None:
    scenario = parse_scenario(mesh_text(2).replace(
        'name = "site00"', 'name = "site00"\nl2bridge = { mss_clamp = true, wan_mtu = 1400 }'))
    plan = make_plan(scenario, prefix="l2b0c0de")
    site = tomllib.loads(plan.site("site00").config_text)["site"]
    assert site["mss_clamp"] is True and site["wan_mtu"] == 1400


@pytest.mark.parametrize("name", SHIPPED)
def test_site_configs_are_valid_daemon_configs(name: str) -> None:
    config = pytest.importorskip("l2bridge.core.config")
    plan = plan_of(name)
    for site in plan.sites:
        parsed = config.parse_config(site.config_text, site.config_path)
        assert parsed.name == site.name
        assert [p.name for p in parsed.peers] == [p.name for p in site.peers]


def test_twelve_site_mesh_plan() -> None:
    plan = make_plan(parse_scenario(mesh_text(12)), prefix="l2b0c0de", gateway="vxlan",
                     wan_mtu=1550)
    assert len(plan.namespaces) == 1 + 12 * 4
    assert len(plan.site("site11").vxlan[0].remotes) == 11


def test_derived_addresses_skip_explicit_ones() -> None:
    text = mesh_text(2, hosts=2).replace(
        '[[site.host]]\nname = "host0"\n', '[[site.host]]\nname = "host0"\nipv4 = "10.77.1.2"\n', 1)
    plan = make_plan(parse_scenario(text), prefix="l2b0c0de")
    assert plan.nodes["site00.host0"].ipv4 == "10.77.1.2/16"
    assert plan.nodes["site00.host1"].ipv4 == "10.77.1.3/16"


def test_daemon_keys_the_daemon_would_refuse_fail_at_plan_time() -> None:
    scenario = parse_scenario(mesh_text(2).replace(
        'name = "site01"', 'name = "site01"\nl2bridge = { rekey_after = 500 }'), "lab.toml")
    with pytest.raises(ScenarioError) as info:
        make_plan(scenario, prefix="l2b0c0de")
    assert str(info.value) == (
        "lab.toml: site[1].l2bridge: the daemon would refuse it: site.rekey_after:"
        " expected a number of seconds from 1 to 120, found 500"
    )


def test_offload_off_reaches_every_daemon_config_unless_the_site_says() -> None:
    scenario = parse_scenario(
        mesh_text(2).replace('name = "site01"', 'name = "site01"\nl2bridge = { offload = true }'))
    plan = make_plan(scenario, prefix="l2b0c0de", offload=False)
    offload = {s.name: tomllib.loads(s.config_text)["site"].get("offload") for s in plan.sites}
    assert offload == {"site00": False, "site01": True}
    default = make_plan(scenario, prefix="l2b0c0de")
    assert "offload" not in tomllib.loads(default.site("site00").config_text)["site"]


@pytest.mark.parametrize(("value", "expected"), [("", None), ("off", False), ("ON", True)])
def test_lab_offload_from_env(monkeypatch, value, expected) -> None:
    monkeypatch.setenv("L2BRIDGE_LAB_OFFLOAD", value)
    assert lab_offload_from_env() is expected


def test_lab_offload_from_env_names_a_bad_value(monkeypatch) -> None:
    monkeypatch.setenv("L2BRIDGE_LAB_OFFLOAD", "maybe")
    with pytest.raises(LabError, match=r"L2BRIDGE_LAB_OFFLOAD='maybe': expected on or off"):
        lab_offload_from_env()


def sites_text(*sites: tuple[str, str, list[str]]) -> str:
    """Sites as (name, extra lines of the [[site]] table, host names)."""
    parts = []
    for name, extra, hosts in sites:
        parts.append(f'[[site]]\nname = "{name}"\n{extra}')
        parts += [f'[[site.host]]\nname = "{host}"\n' for host in hosts]
    return "\n".join(parts)


P = "l2b0c0de"
RUN = f"/run/l2bridge/lab/{P}"


@pytest.mark.parametrize(
    ("sites", "expected"),
    [
        # {prefix}-{site}-{host}: site "a" + host "b-c" = site "a-b" + host "c"
        ((("a", "", ["b-c"]), ("a-b", "", ["c"])),
         f'site[1].host[0].name: site[0].host[0] "b-c" and site[1].host[0] "c" would both be '
         f'namespace "{P}-a-b-c"; rename one'),
        # a host named like another site's gateway or switch namespace
        ((("a", "", ["b-gw"]), ("a-b", "", ["h1"])),
         f'site[1].name: site[0].host[0] "b-gw" and site[1] "a-b" (its gateway) would both be '
         f'namespace "{P}-a-b-gw"; rename one'),
        ((("a-b", "", ["h1"]), ("a", "", ["b-sw"])),
         f'site[1].host[0].name: site[0] "a-b" (its LAN switch) and site[1].host[0] "b-sw" '
         f'would both be namespace "{P}-a-b-sw"; rename one'),
        # interfaces in one namespace: switch ports are named after hosts, WAN links after sites
        ((("a", "", ["br0"]), ("b", "", ["h1"])),
         f'site[0].host[0].name: site[0].host[0] "br0" (its switch port) would be interface '
         f'"br0" in namespace "{P}-a-sw", which the lab uses for the LAN bridge; rename it'),
        ((("a", "", ["h1", "lo"]), ("b", "", ["h1"])),
         f'site[0].host[1].name: site[0].host[1] "lo" (its switch port) would be interface '
         f'"lo" in namespace "{P}-a-sw", which the lab uses for the loopback; rename it'),
        ((("a", "", ["h1"]), ("lo", "", ["h1"])),
         f'site[1].name: site[1] "lo" (its WAN link) would be interface "lo" in namespace '
         f'"{P}-wan", which the lab uses for the loopback; rename it'),
        # run files: a relay's log is relay-<site>.log, a site's log <site>.log
        ((("b", "wan = { delay_ms = 5 }\n", ["h1"]), ("relay-b", "", ["h1"])),
         f'site[1].name: site[0] "b" (its relay log) and site[1] "relay-b" (its log) would both '
         f'be run file "{RUN}/relay-b.log"; rename one'),
    ],
    ids=["host namespaces", "host = gateway", "switch = host", "host br0", "host lo",
         "site lo", "relay log"],
)
@pytest.mark.parametrize("gateway", ["l2bridge", "vxlan"])
def test_colliding_names_are_refused_at_plan_time_naming_both(
        sites: tuple[tuple[str, str, list[str]], ...], expected: str, gateway: str) -> None:
    scenario = parse_scenario(sites_text(*sites), "lab.toml")
    with pytest.raises(ScenarioError) as info:
        make_plan(scenario, prefix=P, gateway=gateway, wan_mtu=1550)
    assert str(info.value) == f"lab.toml: {expected}"


def test_a_site_named_wan_is_not_the_router() -> None:
    plan = make_plan(parse_scenario(sites_text(("wan", "", ["h1"]), ("b", "", ["h1"]))),
                     prefix=P)
    assert plan.nodes["wan"].ns == f"{P}-wan" and plan.nodes["wan.gw"].ns == f"{P}-wan-gw"
    assert len(set(plan.namespaces)) == len(plan.namespaces)
