"""VLAN-tagged hosts: access-port programs, plan steps (no root) and real separation (root)."""

from __future__ import annotations

import importlib.util
import os
import struct

import pytest
from support import REPO

from netns.describe.plan import VlanPort, make_plan
from netns.describe.scenario import parse_scenario
from netns.realise.vlanport import egress_program, ingress_program

SCEN = os.path.join(REPO, "scenarios")
HAVE_L2BRIDGE = importlib.util.find_spec("l2bridge.ops.cli") is not None



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


# ---------------------------------------------------------------- no root


def test_ingress_program_pushes_the_vid() -> None:
    code = insns(ingress_program(10))
    assert (code[0][0], code[0][3]) == (0xB7, 0x0081)  # r2 = htons(0x8100)
    assert (code[1][0], code[1][3]) == (0xB7, 10)  # r3 = VID
    assert (code[2][0], code[2][3]) == (0x85, 18)  # call skb_vlan_push
    assert code[-1][0] == 0x95 and len(code) == 8


def test_egress_program_filters_on_the_vid_and_pops() -> None:
    code = insns(egress_program(20))
    assert [c[3] for c in code if c[0] == 0x85] == [19]  # skb_vlan_pop only
    assert [c[3] for c in code if c[0] == 0x55] == [20, 0]  # vid compare, pop result
    for n, (op, _regs, off, _imm) in enumerate(code):  # every jump lands inside
        if op in (0x15, 0x55):
            assert 0 <= n + 1 + off < len(code)
    native = insns(egress_program(0))
    assert not [c for c in native if c[0] == 0x85]  # no helper: just pass untagged


@pytest.mark.parametrize(("make", "vid"), [(ingress_program, 0), (ingress_program, 4095),
                                           (egress_program, -1), (egress_program, 4095)])
def test_programs_reject_bad_vids(make: object, vid: int) -> None:
    with pytest.raises(ValueError, match=f"VLAN ID {vid} out of range"):
        make(vid)  # type: ignore[operator]


def test_plan_gives_every_host_port_a_vlan_program_when_any_host_is_tagged() -> None:
    plan = make_plan(parse_scenario(MIXED, "mixed.toml"), prefix="l2b00000")
    ports = [(s.ns, s.ifname, s.vid) for s in plan.steps if isinstance(s, VlanPort)]
    assert ports == [("l2b00000-london-sw", "v10", 10), ("l2b00000-london-sw", "plain", 0),
                     ("l2b00000-berlin-sw", "v10", 10), ("l2b00000-berlin-sw", "v20", 20),
                     ("l2b00000-berlin-sw", "plain", 0)]
    assert plan.nodes["berlin.v20"].vlan == 20 and plan.nodes["london.plain"].vlan is None
    assert ("vlan l2b00000-london-sw:v10 access vid 10 (tc bpf: push tag in, pass only vid "
            "and pop tag out)") in plan.describe()


def test_plan_without_vlans_has_no_vlan_steps() -> None:
    text = MIXED.replace("vlan = 10\n", "").replace("vlan = 20\n", "")
    plan = make_plan(parse_scenario(text, "flat.toml"), prefix="l2b00000")
    assert not [s for s in plan.steps if isinstance(s, VlanPort)]
