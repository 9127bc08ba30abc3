"""VLAN-tagged hosts: access-port programs, plan steps (no root) and real separation (root)."""

from __future__ import annotations

import importlib.util
import os
import struct

import pytest
import trio
from support import REPO
from support import lab_leftovers as leftovers

from netns.checks import frames, traffic
from netns.checks.kinds import new_marker
from netns.describe.plan import new_prefix
from netns.describe.scenario import parse_scenario
from netns.lab import open_lab

SCEN = os.path.join(REPO, "scenarios")
HAVE_L2BRIDGE = importlib.util.find_spec("l2bridge.ops.cli") is not None
GATEWAYS = [
    "vxlan",
    pytest.param("l2bridge", marks=pytest.mark.skipif(
        not HAVE_L2BRIDGE, reason="the l2bridge daemon (l2bridge.ops.cli) is not available")),
]

MIXED = """
[[site]]
name = "london"
[[site.host]]
name = "v10"
vlan = 10
[[site.host]]
name = "plain"

[[site]]
name = "berlin"
[[site.host]]
name = "v10"
vlan = 10
[[site.host]]
name = "v20"
vlan = 20
[[site.host]]
name = "plain"
"""


def insns(program: bytes) -> list[tuple[int, int, int, int]]:
    """(opcode, registers, offset, immediate) per 8-byte instruction."""
    return [struct.unpack_from("<BBhi", program, i) for i in range(0, len(program), 8)]


# ---------------------------------------------------------------- root



def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")


@pytest.mark.netns
@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_vlan_trunk_scenario_passes(gateway: str) -> None:
    need_root()
    prefix = new_prefix()
    wan_mtu = 1550 if gateway == "vxlan" else None
    async with open_lab(os.path.join(SCEN, "vlan-trunk.toml"), prefix=prefix, gateway=gateway,
                        wan_mtu=wan_mtu) as lab:
        results = await lab.run_checks()
    failed = [f"{r.name}: {r.summary}" for r in results if not r.ok]
    assert not failed
    reach = results[0].numbers
    assert (reach["ok"], reach["expected_ok"], reach["silent"], reach["expected_silent"]) == (
        4, 4, 8, 8)
    tags = results[3].numbers["gateway_vids"]
    assert tags == {"london": [10] * 5, "berlin": [10] * 5}
    assert results[4].numbers["gateway_vids"] == {"berlin": [20] * 5, "london": [20] * 5}
    assert leftovers(prefix) == []


@pytest.mark.netns
async def test_untagged_and_tagged_hosts_share_a_site_but_not_a_segment() -> None:
    need_root()
    async with open_lab(parse_scenario(MIXED, "mixed.toml"), gateway="vxlan",
                        wan_mtu=1550) as lab:
        reach = await lab.check("reachability", families=["ipv4"])
        plain = await lab.check("broadcast_once", from_="london.plain", count=4)
        tagged = await lab.check("broadcast_once", from_="berlin.v10", count=4)
    assert reach.ok, reach.summary
    assert reach.summary == ("10 host pairs × ipv4: 2/2 same-VLAN pings answer, "
                             "8/8 cross-VLAN pings silent")
    assert plain.ok, plain.summary
    assert plain.numbers["received"] == {"london.v10": 0, "london.plain": 0, "berlin.v10": 0,
                                         "berlin.v20": 0, "berlin.plain": 4}
    assert tagged.ok, tagged.summary
    assert tagged.numbers["received"] == {"london.v10": 4, "london.plain": 0, "berlin.v10": 0,
                                          "berlin.v20": 0, "berlin.plain": 0}


@pytest.mark.netns
@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_host_cannot_hop_vlans_by_tagging_its_own_frames(gateway: str) -> None:
    """london.v10 sends frames already tagged 20: the access port adds its own tag 10
    outside, so they stay in VLAN 10 and no VLAN 20 host sees them."""
    need_root()
    wan_mtu = 1550 if gateway == "vxlan" else None
    async with open_lab(parse_scenario(MIXED, "mixed.toml"), gateway=gateway,
                        wan_mtu=wan_mtu) as lab:
        src = lab.node("london.v10")
        marker = new_marker(lab)
        sent = [frames.make_frame(frames.BROADCAST_MAC, bytes.fromhex(src.mac.replace(":", "")),
                                  frames.ETHERTYPE_EXPERIMENTAL,
                                  frames.marker_payload(marker, seq), vlan=20)
                for seq in range(6)]
        async with traffic.FrameCounter(lab.ns("berlin.v20"), "eth0", marker) as v20, \
                traffic.FrameCounter(lab.ns("berlin.v10"), "eth0", marker) as v10, \
                traffic.FrameCounter(lab.ns("berlin.plain"), "eth0", marker) as plain:
            await traffic.send_frames(src.ns, "eth0", sent, interval_s=0.002)
            with trio.move_on_after(30):  # until the VLAN 10 host got them all (bounded)
                while v10.incoming < len(sent):
                    await trio.sleep(0.01)
    assert (v20.incoming, plain.incoming) == (0, 0)
    assert v10.incoming == 6
    # VLAN 10 delivers them with the access tag popped: the sender's own tag 20 is left.
    assert {f[12:16] for f in v10.frames} == {bytes.fromhex("81000014")}


@pytest.mark.netns
async def test_vlan_tags_fails_when_the_far_gateway_is_down() -> None:
    need_root()
    async with open_lab(os.path.join(SCEN, "vlan-trunk.toml"), gateway="vxlan",
                        wan_mtu=1550) as lab:
        await lab.kill_site("berlin")
        result = await lab.check("vlan_tags", from_="london.v20", to="berlin.v20", count=3)
    assert not result.ok
    assert result.numbers["gateway_vids"] == {"london": [20, 20, 20], "berlin": []}
    assert result.summary.startswith("gateways' eth1 VID 20: london 3/3, berlin 0/3 (seen: 0 "
                                     "frames, VIDs none); berlin.v20 got 0/3")
