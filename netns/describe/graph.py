"""A picture of a scenario: its plan as a Graphviz graph (pure: DOT text, no layout here).

``to_dot(plan)`` draws each site as a cluster (its hosts with addresses, MACs
and VLANs, its LAN switch, its gateway with its underlay address and role),
the WAN router in the middle, each site's link to it labelled with its
impairments (rate, loss, duplication, delay and jitter, reordering, MTU, NAT),
and (in the title) who tunnels to whom: a full mesh or a hub.  Graphviz (``dot``) lays it out;
``netns/artifacts.py`` renders it to SVG or PNG.
"""

from __future__ import annotations

from netns.describe.plan import Plan, SitePlan
from netns.describe.scenario import Link

FONT = "Helvetica"
NEWLINE = "\\n"  # a line break inside a DOT label


def _q(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _id(*parts: str) -> str:
    return _q("/".join(parts))


def link_label(link: Link, router: str) -> str:
    """The words on a site's WAN link: its router address and every impairment."""
    parts = [f"{router}/24"]
    if link.nat:
        parts.append("NAT (outbound only)")
    if link.rate_mbit:
        parts.append(f"{link.rate_mbit:g} Mbit/s")
    if link.loss_percent:
        parts.append(f"{link.loss_percent:g}% loss" + (
            " (periodic)" if link.loss_pattern == "periodic" else ""))
    if link.duplicate_percent:
        parts.append(f"{link.duplicate_percent:g}% dup")
    if link.delay_ms or link.jitter_ms:
        parts.append(f"{link.delay_ms:g} ± {link.jitter_ms:g} ms")
    if link.reorder_percent:
        parts.append(f"{link.reorder_percent:g}% reorder")
    if link.needs_relay and not (link.delay_ms or link.jitter_ms):
        parts.append("delay relay (0 ms)")
    if link.mtu != 1500:
        parts.append(f"MTU {link.mtu}")
    return "\\n".join(parts)


def _gateway_label(s: SitePlan) -> str:
    role = " (hub)" if s.hub else ""
    kind = "l2bridge" if s.gateway == "l2bridge" else "kernel VXLAN"
    tunnel = "l2b0" if s.gateway == "l2bridge" else "vxlan"
    return NEWLINE.join([f"gateway{role}", kind, f"wan0 {s.underlay}", f"br0 + {tunnel}"])


def to_dot(plan: Plan) -> str:
    sc = plan.scenario
    lines = [
        "graph lab {",
        f'  graph [fontname="{FONT}", label={_q(_title(plan))}, labelloc=t, fontsize=16, '
        'rankdir=TB, nodesep=0.3, ranksep=0.6, newrank=true];',
        f'  node [fontname="{FONT}", fontsize=10, shape=box, style="rounded,filled", '
        'fillcolor="#ffffff"];',
        f'  edge [fontname="{FONT}", fontsize=9];',
        f'  wan [label={_q(NEWLINE.join(["WAN router", "198.18.0.0/15"]))}, shape=ellipse, '
        'fillcolor="#dfe9f7"];',
    ]
    for s in plan.sites:
        site = sc.site(s.name)
        lines += [f"  subgraph {_q('cluster_' + s.name)} {{",
                  f'    label={_q("site " + s.name + (" (hub)" if s.hub else ""))}; '
                  'style="rounded"; color="#888888"; fontsize=12;',
                  f'    {_id(s.name, "gw")} [label={_q(_gateway_label(s))}, '
                  'fillcolor="#fde9c9"];',
                  f'    {_id(s.name, "sw")} [label="LAN switch\\nbr0", shape=box, '
                  'fillcolor="#e4f2e1"];',
                  f'    {_id(s.name, "sw")} -- {_id(s.name, "gw")} [label=" eth1"];']
        for host in site.hosts:
            node = plan.nodes[f"{s.name}.{host.name}"]
            text = [host.name, node.ipv4 or ""]
            if node.ipv6:
                text.append(node.ipv6)
            text.append(node.mac or "")
            if node.vlan is not None:
                text.append(f"VLAN {node.vlan}")
            label = _q(NEWLINE.join(text))
            lines.append(f"    {_id(s.name, host.name)} [label={label}];")
            lines.append(f"    {_id(s.name, host.name)} -- {_id(s.name, 'sw')};")
        if len(site.hosts) > 1:  # hosts left to right in file order
            chain = " -- ".join(_id(s.name, h.name) for h in site.hosts)
            lines.append(f"    {{ rank=same; {chain} [style=invis]; }}")
        lines.append("  }")
        color = "#c0392b" if (s.link.loss_percent or s.link.delay_ms or s.link.rate_mbit
                              or s.link.duplicate_percent) else "#34495e"
        style = "bold" if s.link.nat else "solid"
        lines.append(f"  {_id(s.name, 'gw')} -- wan [label={_q(link_label(s.link, s.router))}, "
                     f'color="{color}", fontcolor="{color}", style={style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _title(plan: Plan) -> str:
    sc = plan.scenario
    shape = (f"hub and spoke: spokes tunnel to {sc.hub.name} only" if sc.hub
             else "full mesh: every gateway tunnels to every other")
    hosts = len(plan.hosts())
    text = f"{sc.name}: {len(plan.sites)} sites, {hosts} hosts, {plan.gateway} gateways"
    text += f"\n{shape}"
    text += f"\nLAN {sc.lan.ipv4}" + (f" + {sc.lan.ipv6}" if sc.lan.ipv6 else "")
    text += f", MTU {sc.lan.mtu}"
    if sc.events:
        text += f"\ntimeline: {len(sc.events)} events"
    return text
