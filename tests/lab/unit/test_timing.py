"""``l2bridge lab timing``: generated meshes, the table, targets (no root) and a real run (root)."""

from __future__ import annotations

import json

import pytest

from netns import cli
from netns.bench import timing
from netns.bench.timing import MininetRow, TimingRow
from netns.describe.plan import make_plan


def row(sites: int, gateway: str, build: float, start: float, down: float) -> TimingRow:
    return TimingRow(sites=sites, hosts=2 * sites, namespaces=1 + 4 * sites, gateway=gateway,
                     build_s=build, start_s=start, teardown_s=down, repeats=1)


def test_parse_sites() -> None:
    assert timing.parse_sites("2,4, 8,12,16") == [2, 4, 8, 12, 16]
    with pytest.raises(ValueError, match=r'--sites: expected numbers like "2,4,8", found "a,b"'):
        timing.parse_sites("a,b")
    with pytest.raises(ValueError, match=r"--sites: every count must be in 2\.\.64"):
        timing.parse_sites("1,4")


def test_mesh_scenario_is_a_full_mesh_of_two_host_sites() -> None:
    scenario = timing.mesh_scenario(12)
    assert len(scenario.sites) == 12 and scenario.hub is None and not scenario.checks
    assert all(len(s.hosts) == 2 for s in scenario.sites)
    plan = make_plan(scenario, prefix="l2b00000")
    assert len(plan.namespaces) == 1 + 12 * 4
    assert all(len(s.peers) == 11 for s in plan.sites)


def test_targets() -> None:
    assert timing.teardown_target_s(2) == 1.0 and timing.teardown_target_s(16) == 1.6
    assert timing.meets_targets(row(2, "l2bridge", 0.13, 0.22, 0.17))
    assert not timing.meets_targets(row(2, "l2bridge", 1.5, 0.6, 0.17))  # up 2.1 s
    assert timing.meets_targets(row(12, "l2bridge", 0.9, 1.7, 0.96))
    assert not timing.meets_targets(row(12, "l2bridge", 0.9, 1.7, 1.25))  # > 1.2 s down
    assert timing.meets_targets(row(8, "l2bridge", 5.0, 6.0, 0.5))  # no up target at 8
    assert timing.meets_targets(row(16, "l2bridge", 0.5, 1.5, 1.0))  # up 2 s: at most 2 s
    assert not timing.meets_targets(row(16, "l2bridge", 0.5, 1.6, 1.0))
    assert timing.meets_targets(row(32, "l2bridge", 1.0, 3.0, 2.0))
    assert not timing.meets_targets(row(32, "l2bridge", 1.0, 3.1, 2.0))


def test_table_and_mininet_ratio() -> None:
    rows = [row(2, "l2bridge", 0.13, 0.22, 0.17), row(2, "vxlan", 0.12, 0.01, 0.14)]
    mininet = [MininetRow(sites=2, hosts=4, build_s=0.15, start_s=0.02, stop_s=0.18,
                          ping_ok=True, ping_after_s=0.004)]
    assert timing.format_timing(rows, mininet) == (
        "sites  hosts  netns  gateway   build   start   up      teardown  targets\n"
        "-----  -----  -----  --------  ------  ------  ------  --------  "
        "---------------------------\n"
        "2      4      9      l2bridge  0.13 s  0.22 s  0.35 s  0.17 s    "
        "ok (up <= 2 s, down <= 1 s)\n"
        "2      4      9      vxlan     0.12 s  0.01 s  0.13 s  0.14 s    "
        "ok (up <= 2 s, down <= 1 s)\n"
        "\n"
        "Mininet (LinuxBridge switches, no controller, linear topology, same hosts) vs the "
        "lab (l2bridge gateways):\n"
        "switches  hosts  mininet build  start   up      stop    first ping after up  "
        "mininet up / lab up\n"
        "--------  -----  -------------  ------  ------  ------  -------------------  "
        "-------------------\n"
        "2         4      0.15 s         0.02 s  0.17 s  0.18 s  0.00 s               0.49\n"
    )
    doc = json.loads(timing.timing_json(rows, mininet))
    assert doc["rows"][0]["up_s"] == 0.35 and doc["rows"][0]["targets_met"] is True
    assert doc["mininet"][0]["up_s"] == 0.17


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["timing", "--sites", "1"]) == 2
    assert "--sites: every count must be in 2..64" in capsys.readouterr().err
    assert cli.main(["timing", "--repeat", "0"]) == 2
