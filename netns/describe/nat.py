"""A site's own NAT router (pure): its namespace, interfaces and nftables ruleset.

A site with ``wan = { nat = ... }`` sits behind a NAT router of its own,
``P-<site>-nat``, between its gateway and the WAN router::

    P-S-gw:wan0 (100.64.<i>.2) ═ P-S-nat:lan0 (100.64.<i>.1)
                                 P-S-nat:wan0 (198.18.<i>.2) ═ P-wan:S (198.18.<i>.1)

(with a delay relay, its legs sit between ``P-S-nat:wan0`` and ``P-wan:S`` as
for any link).  Each NAT has its own conntrack table, so two NAT sites see
each other's public address, as two homes on the internet do.

Flow of a datagram through it (table ``ip P`` in the NAT's namespace):
1. out (``lan0`` → ``wan0``): forwarded, then source-NATed in postrouting:
   - ``cone``: ``masquerade``: the source port is kept whenever the mapping is
     free, so one inside socket has one public port toward every destination
     (endpoint-independent mapping);
   - ``symmetric``: ``masquerade random``: every new flow (a new destination)
     gets its own pseudo-random public port, so the port a third site observes
     is not the one a peer must send to;
2. in (``wan0``): only what conntrack knows as the reply to something the site
   sent gets through (``ct state new`` dropped in forward and input, before
   conntrack confirms the entry, so an unsolicited datagram leaves no state that
   could later clash with the site's own mapping): filtering is
   address-and-port dependent, and a hole is punched by sending first.
"""

from __future__ import annotations

from dataclasses import dataclass

NAT_SUFFIX = "nat"  # namespace P-<site>-nat
INSIDE_IF = "lan0"  # toward the gateway
OUTSIDE_IF = "wan0"  # toward the WAN router
MASQUERADE = {"cone": "masquerade", "symmetric": "masquerade random"}


@dataclass(frozen=True, slots=True)
class NatPlan:
    """One site's NAT router."""

    site: str
    ns: str
    kind: str  # "cone" | "symmetric"
    inside: str  # its address toward the gateway (bare)
    public: str  # its address on the WAN link: the site's public address (bare)

    @property
    def inside_if(self) -> str:
        return INSIDE_IF

    @property
    def outside_if(self) -> str:
        return OUTSIDE_IF

    def __str__(self) -> str:
        return (f"nat {self.site}: {self.ns} {self.kind}, {INSIDE_IF} {self.inside} (private) "
                f"↔ {OUTSIDE_IF} {self.public} (public)")


def nat_ruleset(table: str, kind: str) -> str:
    """The NAT router's ruleset (module doc, flow)."""
    out = f'"{OUTSIDE_IF}"'
    return (
        f"table ip {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    iifname {out} ct state new drop\n"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    iifname {out} ct state new drop\n"
        "  }\n"
        "  chain nat {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    oifname {out} {MASQUERADE[kind]}\n"
        "  }\n"
        "}\n"
    )
