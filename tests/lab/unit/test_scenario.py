"""Scenario parsing and validation (no root): shipped files load, bad input gets one exact line."""

from __future__ import annotations

import glob
import os

import pytest
from support import REPO

from netns.describe.scenario import (
    CHECK_SCHEMAS,
    ScenarioError,
    load_scenario,
    parse_check,
    parse_scenario,
)

SCENARIOS = sorted(glob.glob(os.path.join(REPO, "scenarios", "*.toml")))

TWO_SITES = """
[[site]]
name = "london"
[[site.host]]
name = "h1"

[[site]]
name = "berlin"
[[site.host]]
name = "h1"
"""


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "lab.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_scenarios_exist() -> None:
    names = {os.path.basename(p) for p in SCENARIOS}
    assert {"two-offices.toml", "three-site-mesh.toml", "hub-and-spoke.toml"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=os.path.basename)
def test_shipped_scenarios_validate(path: str) -> None:
    scenario = load_scenario(path)
    assert len(scenario.sites) >= 2
    assert scenario.checks


def test_hub_and_spoke_has_four_sites_and_one_hub() -> None:
    scenario = load_scenario(os.path.join(REPO, "scenarios", "hub-and-spoke.toml"))
    assert len(scenario.sites) == 4
    assert scenario.hub is not None and scenario.hub.name == "hq"


def test_minimal_scenario_defaults() -> None:
    scenario = parse_scenario(TWO_SITES, "/x/offices.toml")
    assert scenario.name == "offices"
    assert scenario.gateway == "l2bridge"
    assert scenario.wan.mtu == 1500
    assert scenario.lan.ipv4 == "10.77.0.0/16"
    assert scenario.keepalive_s == 1.0 and scenario.dead_after_s == 3.0
    assert scenario.host_refs() == ["london.h1", "berlin.h1"]
    assert scenario.checks == ()


def test_check_defaults_are_filled_in() -> None:
    scenario = parse_scenario(TWO_SITES + """
[[check]]
kind = "ping"
from = "london.h1"
to = "berlin.h1"
""")
    (check,) = scenario.checks
    assert check.params == {"from": "london.h1", "to": "berlin.h1", "count": 3, "size": 56,
                            "dont_fragment": False, "ipv6": False, "expect": "pass",
                            "min_received_percent": None}
    assert check.name == "ping london.h1 → berlin.h1"
    assert check.timeout_s == 15.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[lab]\nnmae = 'x'\n" + TWO_SITES,
         'lab.toml: lab.nmae: unknown key "nmae" (did you mean "name"?)'),
        ("sites = []\n",
         'lab.toml: sites: unknown key "sites" (did you mean "site"?)'),
        ("[wan]\nmtu = true\n" + TWO_SITES,
         "lab.toml: wan.mtu: expected an integer, found a boolean (true)"),
        ("[wan]\nmtu = 100\n" + TWO_SITES,
         "lab.toml: wan.mtu: expected a number in 576..9000, found 100"),
        ("[wan]\nloss_percent = 101\n" + TWO_SITES,
         "lab.toml: wan.loss_percent: expected a number in 0..100, found 101.0"),
        ("[wan]\nipv6 = true\n" + TWO_SITES,
         "lab.toml: wan.ipv6: an IPv6 underlay: not implemented in this version of the lab "
         "(remove the key)"),
        ("[lab]\ngateway = 'gre'\n" + TWO_SITES,
         'lab.toml: lab.gateway: expected "l2bridge" or "vxlan", found a string (\"gre\")'),
        ("[lab]\nkeepalive = 3\ndead_after = 2\n" + TWO_SITES,
         "lab.toml: lab.dead_after: must be greater than lab.keepalive (3), found 2"),
        ("[[site]]\nname = 'a'\n[[site.host]]\nname = 'h1'\n",
         "lab.toml: site: expected at least two [[site]] tables, found 1"),
        ("",
         "lab.toml: site: missing (expected at least two [[site]] tables)"),
        (TWO_SITES.replace('"berlin"', '"london"'),
         'lab.toml: site[1].name: duplicate site name "london" (also site[0])'),
        (TWO_SITES + "[[site.host]]\nname = 'h1'\n",
         'lab.toml: site[1].host[1].name: duplicate host name "h1" (also site[1].host[0])'),
        (TWO_SITES.replace('"london"', '"headquarters1"'),
         'lab.toml: site[0].name: name "headquarters1" is 13 chars; at most 12 so interface '
         "and namespace names stay short (shorten it)"),
        (TWO_SITES.replace('"london"', '"Lon_don"'),
         'lab.toml: site[0].name: name "Lon_don" must start with a-z and contain only a-z, '
         '0-9 and "-"'),
        (TWO_SITES.replace('name = "h1"\n\n', 'name = "gw"\n\n', 1),
         'lab.toml: site[0].host[0].name: "gw" is reserved for the site\'s own nodes'),
        (TWO_SITES.replace('name = "h1"\n\n', 'name = "h1"\nipv4 = "10.77.9.9/16"\n\n', 1)
         + 'ipv4 = "10.77.9.9"\n',
         "lab.toml: site[1].host[0].ipv4: address 10.77.9.9 clashes with site[0].host[0]"),
        (TWO_SITES + 'ipv4 = "10.78.0.1/16"\n',
         "lab.toml: site[1].host[0].ipv4: address 10.78.0.1 is outside the LAN 10.77.0.0/16"),
        (TWO_SITES + 'ipv4 = "10.77.0.1/24"\n',
         "lab.toml: site[1].host[0].ipv4: prefix length /24 differs from the LAN 10.77.0.0/16"),
        (TWO_SITES + 'ipv4 = "10.77.255.255"\n',
         "lab.toml: site[1].host[0].ipv4: address 10.77.255.255 is the network or broadcast "
         "address of 10.77.0.0/16"),
        (TWO_SITES + 'mac = "01:00:5e:00:00:01"\n',
         'lab.toml: site[1].host[0].mac: expected a unicast MAC like "02:00:00:00:00:01", '
         'found "01:00:5e:00:00:01"'),
        (TWO_SITES + "vlan = 4095\n",
         "lab.toml: site[1].host[0].vlan: expected a number in 1..4094, found 4095"),
        (TWO_SITES.replace('name = "london"', 'name = "london"\nhub = true').replace(
            'name = "berlin"', 'name = "berlin"\nhub = true'),
         "lab.toml: site[1].hub: only one hub site is supported (site[0] is the hub)"),
        (TWO_SITES.replace('name = "london"', 'name = "london"\nl2bridge = { tap = "x" }'),
         'lab.toml: site[0].l2bridge.tap: "tap" is set by the lab itself (remove it)'),
        (TWO_SITES.replace("[[site.host]]\nname = \"h1\"\n\n", "", 1),
         "lab.toml: site[0].host: expected at least one [[site.host]] table"),
        (TWO_SITES + "[[check]]\nkind = 'pign'\n",
         'lab.toml: check[0].kind: unknown check kind "pign" (did you mean "ping"?); known: '
         + ", ".join(CHECK_SCHEMAS)),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\n",
         'lab.toml: check[0].to: missing (expected a host reference "site.host")'),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\nto = 'paris.h1'\n",
         'lab.toml: check[0].to: no host "paris.h1" (expected "site.host", one of: '
         "berlin.h1, london.h1)"),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\nto = 'london.h1'\n",
         'lab.toml: check[0].to: "to" must differ from "from" (london.h1)'),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\nto = 'berlin.h1'\n"
         "count = '3'\n",
         'lab.toml: check[0].count: expected an integer, found a string (\"3\")'),
        (TWO_SITES + "[[check]]\nkind = 'restart'\nsite = 'paris'\nfrom = 'london.h1'\n"
         "to = 'berlin.h1'\n",
         'lab.toml: check[0].site: no site "paris" (one of: berlin, london)'),
        ("[[site]\n",
         "lab.toml: -: TOML syntax error: Expected ']]' at the end of an array declaration "
         "(at line 1, column 7)"),
    ],
)
def test_errors_are_one_exact_line(text: str, expected: str) -> None:
    assert error_of(text) == expected


DEEPLY_NESTED = {
    "arrays": "a = " + "[" * 5000 + "]" * 5000 + "\n",
    "inline tables": "a = " + "{ b = " * 5000 + "1" + " }" * 5000 + "\n",
}


@pytest.mark.parametrize("text", DEEPLY_NESTED.values(), ids=DEEPLY_NESTED.keys())
def test_nesting_too_deep_for_the_parser_is_one_line(text: str) -> None:
    assert error_of(text + TWO_SITES) == (
        "lab.toml: -: nested too deeply to parse (arrays or inline tables inside each "
        "other); flatten it")


DAEMON_VALUE = "expected a string, a number, a boolean or an array of them"


@pytest.mark.parametrize(
    ("l2bridge", "expected"),
    [
        ("l2bridge = { extra = { x = 1 } }",
         f"site[0].l2bridge.extra: {DAEMON_VALUE}, found a table"),
        # Dotted keys nest tables without nesting brackets: the parser takes any depth.
        ("l2bridge." + ".".join(["a"] * 3000) + " = 1",
         f"site[0].l2bridge.a: {DAEMON_VALUE}, found a table"),
        ("l2bridge = { x = " + "[" * 400 + "]" * 400 + " }",
         f"site[0].l2bridge.x: {DAEMON_VALUE}, found an array holding an array"),
        ("l2bridge = { x = [{ y = 1 }] }",
         f"site[0].l2bridge.x: {DAEMON_VALUE}, found an array holding a table"),
        ("l2bridge = { x = 1979-05-27 }",
         f"site[0].l2bridge.x: {DAEMON_VALUE}, found a date/time (1979-05-27)"),
    ],
    ids=["table", "dotted keys 3000 deep", "arrays 400 deep", "array of tables", "date"],
)
def test_daemon_keys_take_only_what_a_daemon_config_can_hold(l2bridge: str,
                                                             expected: str) -> None:
    text = TWO_SITES.replace('name = "london"', f'name = "london"\n{l2bridge}')
    assert error_of(text) == f"lab.toml: {expected}"


def test_flat_daemon_values_pass() -> None:
    text = TWO_SITES.replace('name = "london"', 'name = "london"\nl2bridge = { mss_clamp = '
                             'true, pinned_macs = ["02:00:00:00:00:01"], ageing = 60.5 }')
    assert dict(parse_scenario(text).sites[0].l2bridge) == {
        "mss_clamp": True, "pinned_macs": ["02:00:00:00:00:01"], "ageing": 60.5}


def test_missing_file_names_the_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "nope.toml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == f"{path}: -: no such file (give the path to a .toml scenario)"


def test_parse_check_validates_against_the_scenario() -> None:
    scenario = parse_scenario(TWO_SITES)
    check = parse_check({"kind": "mtu", "from": "london.h1", "to": "berlin.h1"}, scenario)
    assert check.params["size"] == 1472
    with pytest.raises(ScenarioError, match='no host "x.y"'):
        parse_check({"kind": "mtu", "from": "x.y", "to": "berlin.h1"}, scenario)
