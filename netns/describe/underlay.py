"""Underlay addressing of a lab's WAN (pure): who has which address on which link.

Site ``i`` (1-based) has one public link to the WAN router:

=====================  ======================  =========================================
                       IPv4                    IPv6 (``[wan] ipv6 = true``)
=====================  ======================  =========================================
router on the link     198.18.<i>.1/24         2001:db8:<i>::1/64
the site's public      198.18.<i>.2/24         2001:db8:<i>::2/64 (never behind NAT)
address
behind NAT: NAT        100.64.<i>.1/24         -
router's inside
behind NAT: gateway    100.64.<i>.2/24         -
=====================  ======================  =========================================

A public site's gateway holds its public address(es) on ``wan0``; a NAT site's
NAT router (``P-<site>-nat``) holds the public IPv4 address on its ``wan0`` and
the gateway sits behind it.  With ``[wan] ipv6`` and no NAT site the WAN is
IPv6 only (no IPv4 address on any link); with NAT sites it is dual-stack: public
sites have both families, NAT sites IPv4 only (no NAT66), and anything that
talks to a NAT site uses IPv4.  A ``readdress`` event moves the public address
to the next host of its subnet (.3, .4, ... / ::3, ::4, ...).

The lab's DNS server (``[lab] dns``) answers on ``198.18.0.53`` and
``2001:db8::53`` on the router's loopback: no site has index 0, so neither
address is on any link, and every gateway reaches it by its default route.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

UNDERLAY_NET = "198.18.0.0/15"  # the benchmarking range: site i is 198.18.<i>.0/24
UNDERLAY_NET6 = "2001:db8::/32"  # the documentation prefix: site i is 2001:db8:<i>::/64
NAT_NET = "100.64.0.0/10"  # shared address space: behind NAT, site i is 100.64.<i>.0/24
PREFIX4 = 24
PREFIX6 = 64
ROUTER_HOST = 1
PUBLIC_HOST = 2  # the first public address; readdress n gives PUBLIC_HOST + n
DNS_ADDRESS4 = "198.18.0.53"
DNS_ADDRESS6 = "2001:db8::53"
DEFAULT4 = "0.0.0.0/0"
DEFAULT6 = "::/0"


@dataclass(frozen=True, slots=True)
class SiteAddresses:
    """Every underlay address of one site (bare addresses; None: that family is absent)."""

    router4: str | None  # the WAN router on the site's public link
    router6: str | None
    public4: str | None  # what the other sites see: the gateway's own, or its NAT router's
    public6: str | None
    private4: str | None = None  # behind NAT: the gateway's wan0
    inside4: str | None = None  # behind NAT: the NAT router's inside address

    @property
    def nat(self) -> bool:
        return self.private4 is not None

    @property
    def gw4(self) -> str | None:
        """The gateway's own IPv4 address on ``wan0``."""
        return self.private4 or self.public4

    @property
    def gw6(self) -> str | None:
        return None if self.nat else self.public6

    @property
    def next4(self) -> str | None:
        """The gateway's IPv4 next hop: its NAT router, or the WAN router."""
        return self.inside4 or self.router4

    @property
    def underlay(self) -> str:
        """The gateway's main address: IPv4 when the WAN has it, else IPv6."""
        found = self.gw4 or self.gw6
        assert found is not None
        return found

    @property
    def router(self) -> str:
        """The gateway's main next hop, in the family of ``underlay``."""
        found = self.next4 if self.gw4 else self.router6
        assert found is not None
        return found


def _host(net: str, index: int, host: int) -> str:
    """Host ``host`` of site ``index``'s subnet of ``net`` (a /24 of IPv4, a /64 of IPv6)."""
    network = ipaddress.ip_network(net)
    if network.version == 4:
        return str(network[index * 256 + host])
    return str(network.network_address + (index << 80) + host)


def site_addresses(index: int, *, nat: bool, ipv4: bool, ipv6: bool) -> SiteAddresses:
    """Site ``index``'s addresses (module doc); ``ipv4``/``ipv6``: the WAN's families."""
    v4 = ipv4 or nat
    v6 = ipv6 and not nat
    return SiteAddresses(
        router4=_host(UNDERLAY_NET, index, ROUTER_HOST) if v4 else None,
        router6=_host(UNDERLAY_NET6, index, ROUTER_HOST) if v6 else None,
        public4=_host(UNDERLAY_NET, index, PUBLIC_HOST) if v4 else None,
        public6=_host(UNDERLAY_NET6, index, PUBLIC_HOST) if v6 else None,
        private4=_host(NAT_NET, index, PUBLIC_HOST) if nat else None,
        inside4=_host(NAT_NET, index, ROUTER_HOST) if nat else None,
    )


def readdressed(addresses: SiteAddresses, index: int, moves: int) -> SiteAddresses:
    """The addresses after the ``moves``-th readdress: the public ones move to host 2 + moves."""
    host = PUBLIC_HOST + moves
    return dataclasses.replace(
        addresses,
        public4=_host(UNDERLAY_NET, index, host) if addresses.public4 else None,
        public6=_host(UNDERLAY_NET6, index, host) if addresses.public6 else None,
    )


def peer_address(own: SiteAddresses, peer: SiteAddresses) -> str:
    """The address of ``peer`` that ``own`` dials: IPv6 when both have it, else IPv4."""
    if own.gw6 is not None and peer.public6 is not None:
        return peer.public6
    assert peer.public4 is not None and own.gw4 is not None, (own, peer)
    return peer.public4


def host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cidr(address: str) -> str:
    """A public or link address with its subnet's prefix length."""
    return f"{address}/{PREFIX6 if ':' in address else PREFIX4}"
