"""The OpenVPN reference gateway for real (root): two sites joined by OpenVPN in tap mode
pass pings and a layer-2 broadcast, each says its peer is up, and nothing is left."""

from __future__ import annotations

import os
import shutil

import pytest
from support import lab_leftovers as leftovers
from support import two_sites

from netns.describe.openvpn import OPENVPN_PACKAGE, OPENVPN_PROGRAM
from netns.describe.plan import new_prefix
from netns.describe.scenario import parse_scenario
from netns.lab import open_lab
from netns.realise.nsenter import pids_in_netns

pytestmark = pytest.mark.netns

CHECKS = """
[[check]]
kind = "ping"
from = "west.h1"
to = "east.h1"
count = 5

[[check]]
kind = "broadcast_once"
from = "east.h1"
count = 3
"""


@pytest.fixture(autouse=True)
def root_and_openvpn() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")
    if shutil.which(OPENVPN_PROGRAM) is None:
        pytest.skip(f"the openvpn gateway needs {OPENVPN_PROGRAM} "
                    f"(apt-get install {OPENVPN_PACKAGE})")


async def test_two_site_openvpn_lab_passes_ping_and_leaves_nothing() -> None:
    prefix = new_prefix()
    scenario = parse_scenario(two_sites("west", "east", tail=CHECKS), "openvpn.toml")
    async with open_lab(scenario, prefix=prefix, gateway="openvpn", wan_mtu=1600) as lab:
        results = await lab.run_checks()
        shows = [await lab.show(site) for site in ("west", "east")]
        gateway_pids = [pid for s in lab.plan.sites for pid in pids_in_netns(s.gw_ns)]
        with open(lab.plan.sites[0].config_path) as f:
            config = f.read()
    assert [f"{r.name}: {r.summary}" for r in results if not r.ok] == []
    assert [r.kind for r in results] == ["ping", "broadcast_once"]
    assert [(s["gateway"], s["state"], [p["state"] for p in s["peers"]]) for s in shows] == [
        ("openvpn", "CONNECTED", ["up"]), ("openvpn", "CONNECTED", ["up"])]
    assert len(gateway_pids) == 2  # one openvpn process per gateway
    assert "data-ciphers AES-256-GCM" in config
    assert leftovers(prefix) == []
    assert all(not os.path.exists(f"/proc/{pid}") for pid in gateway_pids)
