"""CI outputs for real (root): a run with a failing check keeps its captures, writes JUnit
and gathers the artifacts (logs, each gateway's show at the failure and at the end)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest
from support import two_sites

from netns import cli
from netns.checks.frames import parse_pcap

FAILING = two_sites(lab="keepalive = 0.5\ndead_after = 2", tail="""
[[check]]
kind = "ping"
from = "a.h1"
to = "b.h1"
count = 3

[[check]]
kind = "command"
host = "b.h1"
argv = ["false"]
""")


@pytest.mark.slow
def test_failing_run_keeps_pcaps_and_gathers_artifacts(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = f"{tmp_path}/fail.toml"
    with open(scenario, "w") as f:
        f.write(FAILING)
    art = f"{tmp_path}/art"
    junit = f"{tmp_path}/j.xml"
    status = cli.main(["run", scenario, "--pcap", "a.gw:eth1", "--pcap", "b.h1:eth0",
                       "--artifacts", art, "--junit", junit])
    err = capsys.readouterr().err
    assert status == 1
    assert f"captures kept in {art}/pcap" in err
    for name in ("a-gw-eth1.pcap", "b-h1-eth0.pcap"):
        with open(f"{art}/pcap/{name}", "rb") as f:
            assert len(parse_pcap(f.read())) >= 6  # the pings and their answers at least
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert sorted(os.listdir(art)) == ["junit.xml", "logs", "pcap", "report.json",
                                       "report.txt", "show", "topology.png", "topology.svg"]
    assert sorted(os.listdir(f"{art}/show")) == ["a-at-check-1.json", "a.json",
                                                 "b-at-check-1.json", "b.json"]
    with open(f"{art}/show/a.json") as f:
        assert json.load(f)["peers"][0]["state"] == "up"
    assert {"a.log", "b.log"} <= set(os.listdir(f"{art}/logs"))
    with open(f"{art}/report.json") as f:
        assert json.load(f)["ok"] is False
