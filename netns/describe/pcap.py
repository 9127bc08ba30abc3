"""Which interfaces a run captures (pure): ``--pcap NODE:IF`` (repeatable) or ``all``, and
the scenario's ``[lab] pcap`` with the same values.

Every node's interfaces are known from the plan: a host has ``eth0``; a gateway
``wan0`` and ``eth1`` (and, once its daemon runs, ``br0`` and ``l2b0``); a LAN
switch ``br0``, ``gw`` and one port per host; the WAN router one interface per
site (plus a relay's legs).  ``all`` is every host's ``eth0`` and every
gateway's ``wan0`` and ``eth1``.  An unknown node or interface is a
``ScenarioError`` naming the key (``--pcap`` or ``lab.pcap``): exit 2, nothing built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from netns.describe.plan import SWITCH_BRIDGE, SWITCH_UPLINK, Plan
from netns.describe.scenario import ScenarioError

ALL = "all"


@dataclass(frozen=True, slots=True)
class Capture:
    """One interface to capture: node ``ref``, namespace, interface, the pcap's file name."""

    ref: str
    ns: str
    ifname: str

    @property
    def file_name(self) -> str:
        return f"{self.ref.replace('.', '-')}-{self.ifname}.pcap"

    def __str__(self) -> str:
        return f"{self.ref}:{self.ifname}"


def interfaces(plan: Plan) -> dict[str, list[str]]:
    """Every node's interfaces, by node reference (see the module doc)."""
    out: dict[str, list[str]] = {"wan": []}
    for s in plan.sites:
        out["wan"].append(s.wan_if)
        if s.relay is not None:
            out["wan"] += [s.relay.gw_leg, s.relay.router_leg]
        gw = ["wan0", s.lan_ifname]
        if s.gateway == "l2bridge":
            gw += [s.bridge, "l2b0"]
        else:
            gw += [s.bridge, *(d.ifname for d in s.vxlan)]
        out[f"{s.name}.gw"] = gw
        hosts = [n for n in plan.hosts() if n.site == s.name]
        out[f"{s.name}.sw"] = [SWITCH_BRIDGE, SWITCH_UPLINK, *(n.ref.split(".", 1)[1]
                                                              for n in hosts)]
        for n in hosts:
            out[n.ref] = [n.ifname or "eth0"]
    return out


def resolve(plan: Plan, specs: Sequence[str], key: str) -> list[Capture]:
    """The captures ``specs`` ask for, each once, in order; ``key`` names them in errors."""
    known = interfaces(plan)
    wanted: list[tuple[str, str]] = []
    for spec in specs:
        if spec == ALL:
            for s in plan.sites:
                wanted += [(f"{s.name}.gw", "wan0"), (f"{s.name}.gw", s.lan_ifname)]
            wanted += [(n.ref, n.ifname or "eth0") for n in plan.hosts()]
            continue
        ref, colon, ifname = spec.rpartition(":")
        if not colon or not ref or not ifname:
            raise ScenarioError(plan.scenario.path, key, f'expected NODE:IF like "london.gw:eth1"'
                                f' or "all", found "{spec}"')
        if ref not in known:
            raise ScenarioError(plan.scenario.path, key, f'{spec}: no node "{ref}" (one of: '
                                f"{', '.join(known)})")
        if ifname not in known[ref]:
            raise ScenarioError(plan.scenario.path, key, f'{spec}: node {ref} has no interface '
                                f'"{ifname}" (it has: {", ".join(known[ref])})')
        wanted.append((ref, ifname))
    return [Capture(ref, plan.nodes[ref].ns, ifname) for ref, ifname in dict.fromkeys(wanted)]
