"""WAN impairments and NAT of one lab, as data (pure: no I/O, tested without root).

Which mechanism does what (this kernel has no netem):

==================  =========================================================  ==========
knob                mechanism                                                  where
==================  =========================================================  ==========
``rate_mbit``       tbf (pyroute2 tc) on the router's interface toward the     both ends
                    site (download) and on the gateway's ``wan0`` (upload)     of the link
``loss_percent``    nftables ``numgen random mod 10000 < N drop`` in the       router,
                    router's forward chain, once for ``iifname SITE`` and      forward
                    once for ``oifname SITE``
``duplicate_...``   nftables ``dup to ip daddr device oif`` (``ip6`` for IPv6; router,
                    same numgen test) in a postrouting chain               postrouting
``block_udp``       nftables ``meta l4proto udp drop``, once for ``iifname   router,
                    SITE`` and once for ``oifname SITE`` (IPv4 and IPv6)       forward
``delay_ms``        the userspace relay (``netns/relay.py``), a layer-2 bump   router ns,
``jitter_ms``       in the site link; inserted only when one of these three    between the
``reorder_...``     is set (or ``relay = true``)                               veth legs
``mtu``             the MTU of every veth of the link; the daemon's            link
                    ``wan_mtu`` is the smallest MTU on its paths
``nat``             the site's own NAT router between its gateway and the      ``P-S-nat``
                    link (``nat.py``)
==================  =========================================================  ==========

The router's rules live in one ``inet`` table named after the lab, so they
apply to IPv4 and IPv6 alike (``[wan] ipv6``); tbf is family-neutral and the
relay works at layer 2.

Every knob applies to each direction of the site's link, as a cable would: a
frame between two sites crosses both sites' links, so two links with 2% loss
each lose about 4% of the frames each way, and two 40 ms links add 80 ms each
way.  Loss and duplication resolve to 0.01% (``numgen`` draws 0..9999).
``numgen random`` is the kernel's PRNG: nftables runs cannot be seeded; only
the relay's decisions are (``[wan] seed``).

Relay layout for site ``S`` (site names carry no ``_``, so these never clash)::

    P-S-gw:wan0 ═ P-wan:S_g ┄┄ relay ┄┄ P-wan:S_r ═ P-wan:S (router address)

(behind NAT, ``P-S-nat:wan0`` stands where ``P-S-gw:wan0`` is.)

``S_g`` and ``S_r`` have no addresses and IPv6 off; the relay moves frames
between them.  They must stay invisible to the router's own stack (else it would
answer ARP for its addresses on them and the frames would bypass the relay):
a netdev-family ingress chain drops every frame arriving on them, which the
kernel does after the relay's packet sockets got their copy.  Without a relay
the link is one veth ``P-S-gw:wan0 ═ P-wan:S``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from netns.describe.scenario import Link

NUMGEN_RANGE = 10_000  # loss and duplication resolve to 0.01 %
TBF_LATENCY_MS = 50  # the most a frame waits in tbf's queue before it is dropped
TBF_BURST_S = 0.004  # bucket depth in seconds at the rate (a 250 Hz tick)
ETH_HLEN = 14
GW_LEG_SUFFIX = "_g"  # relay leg toward the gateway
ROUTER_LEG_SUFFIX = "_r"  # relay leg toward the router's address
RELAY_QUEUE_FRAMES = 10_000  # per direction; beyond it frames are dropped and counted
DUP_CHAIN_PRIORITY = "srcnat + 10"  # after any source NAT: copies carry the final headers
DUP_FAMILIES = ("ip", "ip6")  # "dup to ADDRESS" takes one family: a table each
ROUTER_FAMILIES = ("inet", *DUP_FAMILIES)  # the router's filter tables named after the lab


# ---------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class AddTbf:
    """A root tbf qdisc: the egress of ``ifname`` in ``ns`` at ``rate_kbit``."""

    ns: str
    ifname: str
    rate_kbit: int
    burst_bytes: int
    latency_ms: int

    def __str__(self) -> str:
        return (f"tbf {self.ns}:{self.ifname} rate {self.rate_kbit}kbit "
                f"burst {self.burst_bytes} latency {self.latency_ms}ms")


@dataclass(frozen=True, slots=True)
class NftRuleset:
    """An nftables ruleset loaded with ``nft -f -`` inside ``ns`` (one table, ``table``)."""

    ns: str
    table: str
    text: str

    def __str__(self) -> str:
        rules = sum(1 for line in self.text.splitlines()
                    if line.strip() and not line.strip().startswith(("table", "chain", "type",
                                                                     "}")))
        tables = ", ".join(line.split("{")[0].strip().removeprefix("table ")
                           for line in self.text.splitlines() if line.startswith("table"))
        return f"nft {self.ns}: {tables} ({rules} rules)"


# ---------------------------------------------------------------- MTU


def wan_mtu_for(own: Link, peers: Sequence[Link]) -> int:
    """The daemon's ``wan_mtu``: the smallest MTU on any of its paths (own link, peers')."""
    return min([own.mtu, *(p.mtu for p in peers)])


# ---------------------------------------------------------------- relay


@dataclass(frozen=True, slots=True)
class RelayPlan:
    """One relay process: two legs in the WAN namespace and its seeded knobs."""

    site: str
    ns: str
    gw_leg: str
    router_leg: str
    delay_ms: float
    jitter_ms: float
    reorder_percent: float
    seed: int
    queue_frames: int
    log_path: str

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "netns.realise.relay",
            "--a", self.gw_leg, "--b", self.router_leg,
            "--delay-ms", f"{self.delay_ms:g}", "--jitter-ms", f"{self.jitter_ms:g}",
            "--reorder-percent", f"{self.reorder_percent:g}", "--seed", str(self.seed),
            "--queue-frames", str(self.queue_frames), "--knobs", self.knobs_path,
        ]

    @property
    def knobs_path(self) -> str:
        """Where an impair event writes new knobs before it sends the relay SIGHUP."""
        return self.log_path.removesuffix(".log") + ".json"

    def __str__(self) -> str:
        return (f"relay {self.ns}: {self.gw_leg} <-> {self.router_leg} delay "
                f"{self.delay_ms:g}ms jitter {self.jitter_ms:g}ms reorder "
                f"{self.reorder_percent:g}% seed {self.seed}")


def relay_legs(site: str) -> tuple[str, str]:
    """(gateway-side leg, router-side leg) of site ``site``'s relay."""
    return site + GW_LEG_SUFFIX, site + ROUTER_LEG_SUFFIX


def relay_plan(site: str, index: int, link: Link, *, ns: str, seed: int,
               rundir: str) -> RelayPlan | None:
    """The relay of one link, or None when the link needs none.

    Each link gets its own seed (``seed`` + site index), so two links with the
    same knobs still make independent decisions, and a run is reproducible.
    """
    if not link.needs_relay:
        return None
    gw_leg, router_leg = relay_legs(site)
    return RelayPlan(
        site=site, ns=ns, gw_leg=gw_leg, router_leg=router_leg, delay_ms=link.delay_ms,
        jitter_ms=link.jitter_ms, reorder_percent=link.reorder_percent,
        seed=(seed + index) % 2**32, queue_frames=RELAY_QUEUE_FRAMES,
        log_path=f"{rundir}/relay-{site}.log",
    )


# ---------------------------------------------------------------- tbf


def tbf_step(ns: str, ifname: str, link: Link) -> AddTbf | None:
    """tbf for ``link``'s rate on ``ifname``: a bucket of 4 ms at the rate (at least two
    full frames), a queue of 50 ms beyond it."""
    if link.rate_mbit is None:
        return None
    rate_kbit = max(1, round(link.rate_mbit * 1000))
    burst = max(2 * (link.mtu + ETH_HLEN), math.ceil(rate_kbit * 1000 / 8 * TBF_BURST_S))
    return AddTbf(ns, ifname, rate_kbit, burst, TBF_LATENCY_MS)


# ---------------------------------------------------------------- nftables


def numgen_match(percent: float, pattern: str = "random") -> str:
    """The nftables expression that matches ``percent`` of the packets.

    random: ``numgen random mod 10000 < N`` (the kernel's generator, not seedable);
    periodic: ``numgen inc mod M 0``, every M-th packet of the rule with
    M = round(100 / percent) — the same packets in every run (exact for 1, 2, 5,
    10, 20, 25, 50 %; otherwise the nearest 1/M).
    """
    if pattern == "periodic":
        period = max(1, round(100 / percent))
        return f"numgen inc mod {period} 0"
    threshold = numgen_threshold(percent)
    if threshold >= NUMGEN_RANGE:
        return ""  # every packet (nft refuses "< 10000": the values are 0..9999)
    return f"numgen random mod {NUMGEN_RANGE} < {threshold}"


def numgen_threshold(percent: float) -> int:
    """``numgen random mod 10000 < N`` hits with probability ``percent`` / 100."""
    return min(NUMGEN_RANGE, round(percent * NUMGEN_RANGE / 100))


def _q(ifname: str) -> str:
    return f'"{ifname}"'


def nft_ruleset(table: str, links: Sequence[tuple[str, Link]],
                relay_legs: Sequence[str] = ()) -> str | None:
    """The router's ruleset for every link (``(router ifname, link)``), or None if empty.

    Flow of a packet through the router: 0. arriving on a relay leg: dropped at
    netdev ingress (the relay already has it)  1. forward chain (table ``inet``,
    both families): UDP to or from a link that blocks it dropped, then loss on the
    incoming link, then loss on the outgoing link  2. postrouting at srcnat + 10
    (tables ``ip`` and ``ip6``: ``dup`` takes one family's address): duplication
    on the incoming link, then on the outgoing one (a copy is never copied again).
    NAT is not the router's: each NAT site has its own (``nat.py``).
    """
    forward: list[str] = []
    dup: list[str] = []
    for direction in ("iifname", "oifname"):
        for ifname, link in links:
            if link.block_udp:
                forward.append(f"{direction} {_q(ifname)} meta l4proto udp drop")
    for direction in ("iifname", "oifname"):
        for ifname, link in links:
            if link.loss_percent:
                hit = numgen_match(link.loss_percent, link.loss_pattern)
                forward.append(_words(direction, _q(ifname), hit, "drop"))
            if link.duplicate_percent:
                hit = numgen_match(link.duplicate_percent, link.loss_pattern)
                dup.append(_words(direction, _q(ifname), hit))
    if not (forward or dup or relay_legs):
        return None
    lines = []
    if relay_legs:
        devices = ", ".join(_q(leg) for leg in relay_legs)
        lines += [f"table netdev {table} {{", "  chain relay_legs {",
                  f"    type filter hook ingress devices = {{ {devices} }} priority filter; "
                  "policy drop;", "  }", "}"]
    if forward:
        lines += _table("inet", table, "forward",
                        "type filter hook forward priority filter; policy accept;", forward)
    if dup:
        for family in DUP_FAMILIES:
            lines += _table(family, table, "duplicate",
                            f"type filter hook postrouting priority {DUP_CHAIN_PRIORITY}; "
                            "policy accept;", [f"{rule} dup to {family} daddr device oif"
                                               for rule in dup])
    return "\n".join(lines) + "\n"


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _table(family: str, table: str, chain: str, header: str, rules: Sequence[str]) -> list[str]:
    return [f"table {family} {table} {{", f"  chain {chain} {{", f"    {header}",
            *(f"    {rule}" for rule in rules), "  }", "}"]


def nft_replace(table: str, links: Sequence[tuple[str, Link]]) -> str:
    """One ``nft -f`` transaction that replaces the router's filter tables (the netdev
    table of the relay legs stays): each family's table made if absent, deleted, and
    built again from ``links``."""
    text = "".join(f"table {family} {table} {{}}\ndelete table {family} {table}\n"
                   for family in ROUTER_FAMILIES)
    return text + (nft_ruleset(table, links) or "")
