"""CI outputs without root: pcap specs (one line, exit 2), JUnit XML, the topology as DOT."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest
from support import scenario_path

from netns import cli
from netns.checks.junit import to_junit
from netns.checks.report import CheckResult, EventResult, make_report
from netns.describe.graph import to_dot
from netns.describe.pcap import resolve
from netns.describe.plan import make_plan
from netns.describe.scenario import ScenarioError, load_scenario


def plan_of(name: str):  # type: ignore[no-untyped-def]
    return make_plan(load_scenario(scenario_path(name)), prefix="l2b00000")


def test_pcap_specs_resolve_each_interface_once() -> None:
    plan = plan_of("lossy-wan")
    got = resolve(plan, ["london.gw:eth1", "wan:berlin_g", "london.gw:eth1"], "--pcap")
    assert [(str(c), c.ns, c.file_name) for c in got] == [
        ("london.gw:eth1", "l2b00000-london-gw", "london-gw-eth1.pcap"),
        ("wan:berlin_g", "l2b00000-wan", "wan-berlin_g.pcap")]
    every = resolve(plan, ["all"], "--pcap")
    assert len(every) == 2 * 2 + 4  # wan0 and eth1 per gateway, eth0 per host


@pytest.mark.parametrize(("spec", "message"), [
    ("london.gw:eth9", 'london.gw:eth9: node london.gw has no interface "eth9" (it has: wan0, '
                       "eth1, br0, l2b0)"),
    ("paris.h1:eth0", 'paris.h1:eth0: no node "paris.h1" (one of: wan, london.gw, london.sw, '
                      "london.h1, london.h2, berlin.gw, berlin.sw, berlin.h1, berlin.dhcp)"),
    ("london.h1", 'expected NODE:IF like "london.gw:eth1" or "all", found "london.h1"'),
])
def test_bad_pcap_is_one_line_and_exit_2(spec: str, message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario_path("two-offices")
    with pytest.raises(ScenarioError) as info:
        resolve(plan_of("two-offices"), [spec], "--pcap")
    assert str(info.value) == f"{path}: --pcap: {message}"
    assert cli.main(["run", path, "--pcap", spec]) == 2
    assert capsys.readouterr().err == f"{path}: --pcap: {message}\n"


def test_junit_has_one_case_per_check_with_failures_and_figures() -> None:
    scenario = load_scenario(scenario_path("two-offices"))
    results = [CheckResult(0, "ping a → b", "ping", True, "3/3 replies", 0.5, {"sent": 3}),
               CheckResult(1, "stream", "stream", False, "longest outage 4.00 s", 9.0,
                           {"outage_s": 4.0})]
    events = [EventResult(2, "kill berlin", "kill", 1.0, 1.0, False, "kill berlin: gone")]
    suite = ET.fromstring(to_junit(make_report("l2b00000", scenario, "l2bridge", 4, results,
                                               {"build_s": 0.3}, events)))
    assert (suite.get("tests"), suite.get("failures")) == ("3", "2")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["check[0] ping a → b", "check[1] stream",
                                              "event[2] kill berlin"]
    assert cases[0].find("failure") is None
    assert cases[1].find("failure").get("message") == "longest outage 4.00 s"  # type: ignore[union-attr]
    assert '"outage_s": 4.0' in (cases[1].findtext("system-out") or "")


def test_topology_dot_names_addresses_impairments_and_nat() -> None:
    dot = to_dot(plan_of("site-behind-nat"))
    assert '"home/gw" -- wan [label="100.64.3.1/24\\nNAT (outbound only)"' in dot
    assert "10.77.1.1/16\\nfd00:77::1:1/64\\n02:77:00:01:00:01" in dot
    lossy = to_dot(plan_of("lossy-wan"))
    assert "198.18.2.1/24\\n2% loss\\n40 ± 10 ms\\n5% reorder" in lossy
    assert "timeline: 9 events" in to_dot(plan_of("flaky-wan"))


def test_graph_command(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["graph", scenario_path("two-offices"), "-o", f"{tmp_path}/x.gif"]) == 2
    assert capsys.readouterr().err.endswith("x.gif: expected a file name ending in .svg or "
                                            ".png\n")
    if shutil.which("dot") is None:
        pytest.skip("graphviz is not installed")
    out = f"{tmp_path}/t.svg"
    assert cli.main(["graph", scenario_path("hub-and-spoke"), "-o", out]) == 0
    with open(out) as f:
        assert "<svg" in f.read()
