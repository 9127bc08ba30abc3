"""The steps of one site's WAN link (pure): veths, addresses, routes, tbf, its NAT router.

Layout (``underlay.py`` has the addresses, ``impair.py`` the relay, ``nat.py``
the NAT router)::

    public site:  P-S-gw:wan0 ═══════════════════════════════ P-wan:S
    behind NAT:   P-S-gw:wan0 ═ P-S-nat:lan0   P-S-nat:wan0 ═ P-wan:S
    with a relay: ... wan0 ═ P-wan:S_g ┄┄ relay ┄┄ P-wan:S_r ═ P-wan:S

The **public end** of the link (the gateway's ``wan0``, or its NAT router's)
holds the site's public address(es) and a default route per family via the
router's address on the link.  Every veth of the link (the NAT's inside veth
included) has the link's MTU; tbf shapes both ends of the public link.
"""

from __future__ import annotations

from collections.abc import Iterator

from netns.describe.impair import RelayPlan, tbf_step
from netns.describe.nat import INSIDE_IF, OUTSIDE_IF, NatPlan, nat_ruleset
from netns.describe.scenario import Link
from netns.describe.steps import AddAddress, AddRoute, AddVeth, NftRuleset, SetLink, Step, Sysctl
from netns.describe.underlay import DEFAULT4, DEFAULT6, SiteAddresses, cidr

GW_WAN_IF = "wan0"


def public_end(gw_ns: str, nat: NatPlan | None) -> tuple[str, str]:
    """(namespace, interface) holding the site's public address(es)."""
    return (nat.ns, OUTSIDE_IF) if nat is not None else (gw_ns, GW_WAN_IF)


def link_ends(wan_ns: str, wan_if: str, gw_ns: str, relay: RelayPlan | None,
              nat: NatPlan | None) -> list[tuple[str, str]]:
    """Every veth end of the link (what an MTU change touches)."""
    ends = [(gw_ns, GW_WAN_IF), (wan_ns, wan_if)]
    if nat is not None:
        ends += [(nat.ns, INSIDE_IF), (nat.ns, OUTSIDE_IF)]
    if relay is not None:
        ends += [(wan_ns, relay.gw_leg), (wan_ns, relay.router_leg)]
    return ends


def link_steps(*, wan_ns: str, wan_if: str, gw_ns: str, link: Link, addrs: SiteAddresses,
               relay: RelayPlan | None, nat: NatPlan | None, table: str) -> Iterator[Step]:
    """One site's WAN link (module doc), in the order they can be applied."""
    mtu = link.mtu
    end_ns, end_if = public_end(gw_ns, nat)
    if nat is not None:
        yield Sysctl(nat.ns, "net.ipv4.ip_forward", "1")
        yield AddVeth(gw_ns, GW_WAN_IF, nat.ns, INSIDE_IF, mtu)
        yield AddAddress(nat.ns, INSIDE_IF, cidr(nat.inside))
        yield SetLink(nat.ns, INSIDE_IF)
    if relay is None:
        yield AddVeth(end_ns, end_if, wan_ns, wan_if, mtu)
    else:
        yield AddVeth(end_ns, end_if, wan_ns, relay.gw_leg, mtu)
        yield AddVeth(wan_ns, relay.router_leg, wan_ns, wan_if, mtu)
        for leg in (relay.gw_leg, relay.router_leg):
            yield Sysctl(wan_ns, f"net.ipv6.conf.{leg}.disable_ipv6", "1")
            yield SetLink(wan_ns, leg)
    for router in (addrs.router4, addrs.router6):
        if router is not None:
            yield AddAddress(wan_ns, wan_if, cidr(router))
    yield SetLink(wan_ns, wan_if)
    for public in (addrs.public4, addrs.public6):
        if public is not None:
            yield AddAddress(end_ns, end_if, cidr(public))
    yield SetLink(end_ns, end_if)
    for default, router in ((DEFAULT4, addrs.router4), (DEFAULT6, addrs.router6)):
        if router is not None:
            yield AddRoute(end_ns, default, router)
    if nat is not None:
        assert addrs.private4 is not None and addrs.inside4 is not None
        yield AddAddress(gw_ns, GW_WAN_IF, cidr(addrs.private4))
        yield SetLink(gw_ns, GW_WAN_IF)
        yield AddRoute(gw_ns, DEFAULT4, addrs.inside4)
        yield NftRuleset(nat.ns, table, nat_ruleset(table, nat.kind))
    for ns, ifname in ((wan_ns, wan_if), (end_ns, end_if)):
        tbf = tbf_step(ns, ifname, link)
        if tbf is not None:
            yield tbf
