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
         "lab.toml: wan.mtu: expected an integer from 576 to 9000, found a boolean (true)"),
        ("[wan]\nmtu = 100\n" + TWO_SITES,
         "lab.toml: wan.mtu: expected an integer from 576 to 9000, found 100"),
        ("[wan]\nloss_percent = 101\n" + TWO_SITES,
         "lab.toml: wan.loss_percent: expected a number from 0 to 100, found 101"),
        ("[wan]\nipv6 = 1\n" + TWO_SITES,
         "lab.toml: wan.ipv6: expected true or false, found an integer (1)"),
        ("[lab]\ngateway = 'gre'\n" + TWO_SITES,
         'lab.toml: lab.gateway: expected one of "l2bridge", "vxlan", found "gre"'),
        ("[lab]\nkeepalive = 3\ndead_after = 2\n" + TWO_SITES,
         "lab.toml: lab.dead_after: expected more than lab.keepalive (3 s), found 2"),
        ("[[site]]\nname = 'a'\n[[site.host]]\nname = 'h1'\n",
         "lab.toml: site: expected an array of 2 to 200 tables [[site]], found 1"),
        ("",
         "lab.toml: site: missing required key; expected an array of 2 to 200 tables [[site]]"),
        (TWO_SITES.replace('"berlin"', '"london"'),
         'lab.toml: site[1].name: duplicate site name "london" (also site[0].name)'),
        (TWO_SITES + "[[site.host]]\nname = 'h1'\n",
         'lab.toml: site[1].host[1].name: duplicate host name "h1"'
         " (also site[1].host[0].name)"),
        (TWO_SITES.replace('"london"', '"headquarters1"'),
         "lab.toml: site[0].name: expected a name of 1 to 12 characters from a-z 0-9 - "
         "(the first one a-z),"
         ' found "headquarters1" (13 characters)'),
        (TWO_SITES.replace('"london"', '"Lon_don"'),
         "lab.toml: site[0].name: expected a name of 1 to 12 characters from a-z 0-9 - "
         "(the first one a-z),"
         ' found "Lon_don"'),
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
         'lab.toml: site[1].host[0].mac: expected a unicast MAC address like "02:00:00:00:00:01", '
         'found "01:00:5e:00:00:01"'),
        (TWO_SITES + "vlan = 4095\n",
         "lab.toml: site[1].host[0].vlan: expected an integer from 1 to 4094, found 4095"),
        (TWO_SITES.replace('name = "london"', 'name = "london"\nhub = true').replace(
            'name = "berlin"', 'name = "berlin"\nhub = true'),
         "lab.toml: site[1].hub: only one hub site is supported (site[0] is the hub)"),
        (TWO_SITES.replace('name = "london"', 'name = "london"\nl2bridge = { tap = "x" }'),
         'lab.toml: site[0].l2bridge.tap: "tap" is set by the lab itself (remove it)'),
        (TWO_SITES.replace("[[site.host]]\nname = \"h1\"\n\n", "", 1),
         "lab.toml: site[0].host: missing required key; expected an array of 1 to 200 tables"
         " [[site.host]]"),
        (TWO_SITES + "[[check]]\nkind = 'pign'\n",
         "lab.toml: check[0].kind: expected one of "
         + ", ".join(f'"{kind}"' for kind in CHECK_SCHEMAS)
         + ', found "pign" (did you mean "ping"?)'),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\n",
         'lab.toml: check[0].to: missing required key; expected a host reference "site.host"'),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\nto = 'paris.h1'\n",
         'lab.toml: check[0].to: no host "paris.h1" (expected "site.host", one of: '
         "berlin.h1, london.h1)"),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\nto = 'london.h1'\n",
         'lab.toml: check[0].to: "to" must differ from "from" (london.h1)'),
        (TWO_SITES + "[[check]]\nkind = 'ping'\nfrom = 'london.h1'\nto = 'berlin.h1'\n"
         "count = '3'\n",
         'lab.toml: check[0].count: expected an integer from 1 to 1000, found a string ("3")'),
        (TWO_SITES + "[[check]]\nkind = 'restart'\nsite = 'paris'\nfrom = 'london.h1'\n"
         "to = 'berlin.h1'\n",
         'lab.toml: check[0].site: no site "paris" (one of: berlin, london)'),
        ("[[site]\n",
         "lab.toml: -: TOML syntax error at line 1, column 7: Expected ']]' at the end of an "
         "array declaration"),
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


# ---------------------------------------------------------------- the site config's words

SITE_CONFIG = '[site]\nname = "london"\ninsecure = true\n'


@pytest.mark.parametrize(
    ("config_key", "scenario_key", "value", "words"),
    [
        ("mtuu", "mtuu", "1500", 'unknown key "mtuu" (did you mean "mtu"?)'),
        ("mtu", "mtu", "100", "expected an integer from 576 to 9000, found 100"),
        ("mtu", "mtu", "true", "expected an integer from 576 to 9000, found a boolean (true)"),
        ("mtu", "mtu", '"1500"',
         'expected an integer from 576 to 9000, found a string ("1500")'),
        ("keepalive", "keepalive", "0.01",
         "expected a number of seconds from 0.1 to %s, found 0.01"),
    ],
    ids=["unknown key", "integer out of range", "boolean for an integer", "string for an integer",
         "seconds out of range"],
)
def test_the_same_mistake_reads_the_same_in_a_site_config_and_a_scenario(
        config_key: str, scenario_key: str, value: str, words: str) -> None:
    from l2bridge.core.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as config_error:
        parse_config(f"{SITE_CONFIG}{config_key} = {value}\n", "site.toml")
    table = "lab" if scenario_key == "keepalive" else "wan"
    with pytest.raises(ScenarioError) as scenario_error:
        parse_scenario(f"[{table}]\n{scenario_key} = {value}\n" + TWO_SITES, "lab.toml")
    assert config_error.value.key == f"site.{config_key}"
    assert scenario_error.value.key == f"{table}.{scenario_key}"
    if "%s" in words:  # the same words, each with its own upper bound
        assert config_error.value.message == words % "3600"
        assert scenario_error.value.message == words % "60"
    else:
        assert config_error.value.message == scenario_error.value.message == words


def test_toml_syntax_errors_read_the_same_in_a_site_config_and_a_scenario() -> None:
    from l2bridge.core.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as config_error:
        parse_config("[[site]\n", "x.toml")
    with pytest.raises(ScenarioError) as scenario_error:
        parse_scenario("[[site]\n", "x.toml")
    assert str(config_error.value) == str(scenario_error.value) == (
        "x.toml: -: TOML syntax error at line 1, column 7: Expected ']]' at the end of an array"
        " declaration"
    )


def test_a_missing_name_reads_the_same_in_a_site_config_and_a_scenario() -> None:
    from l2bridge.core.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as config_error:
        parse_config(SITE_CONFIG + "[[peer]]\nendpoint = '192.0.2.1:1'\n", "site.toml")
    with pytest.raises(ScenarioError) as scenario_error:
        parse_scenario(TWO_SITES.replace('name = "h1"', "vlan = 3", 1), "lab.toml")
    assert (config_error.value.key, scenario_error.value.key) == ("peer[0].name",
                                                                  "site[0].host[0].name")
    for message, chars in ((config_error.value.message, "32 characters from A-Z a-z 0-9 _ . -"),
                           (scenario_error.value.message, "12 characters from a-z 0-9 -")):
        assert message.startswith(f"missing required key; expected a name of 1 to {chars}")
