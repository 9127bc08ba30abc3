"""Turn a validated scenario into a concrete plan: names, addresses and ordered steps (pure).

Naming scheme (P = the run prefix, ``l2b`` + 5 hex digits, e.g. ``l2b3f9a1``):

=====================  ==========================================================
namespace              contents
=====================  ==========================================================
``P-wan``              the WAN router (forwarding on); one veth per site, named
                       after the site, address 198.18.<i>.1/24 and/or
                       2001:db8:<i>::1/64 (``underlay.py``); with a delay relay
                       on the link also the relay's legs ``<site>_g`` and
                       ``<site>_r`` (impair.py); the nftables table ``P`` when a
                       link has loss, duplication or blocks UDP; with ``[lab] dns``
                       the DNS server's addresses on ``lo`` (``dns.py``)
``P-<site>-gw``        the gateway: ``wan0`` (198.18.<i>.2/24 and/or
                       2001:db8:<i>::2/64, or 100.64.<i>.2/24 behind NAT; default
                       routes via .1 / ::1) and ``eth1``, the veth standing in for
                       the physical NIC;
                       the gateway (l2bridge or kernel VXLAN) adds ``br0`` and its
                       tunnel device
``P-<site>-nat``       behind NAT only: the site's NAT router, ``lan0``
                       100.64.<i>.1/24 toward the gateway, ``wan0`` 198.18.<i>.2/24
                       (the site's public address) toward the WAN router (nat.py)
``P-<site>-sw``        the LAN switch: bridge ``br0`` (STP off, forward delay 0)
                       with port ``gw`` (peer of the gateway's ``eth1``), one
                       port per host, named after the host, and ``lan<k>``
                       for the scenario's LAN link k (``[[lan_link]]``: a veth
                       straight to the other site's switch, beside the tunnel)
``P-<site>-<host>``    a LAN host: ``eth0`` with its MAC and addresses, ``lo`` up
=====================  ==========================================================

``<i>`` is the 1-based site index in file order.  Names in the scenario are at most
12 characters, so every interface name fits the kernel's 15.  Names may hold "-", so
different nodes could get the same name (site ``a`` host ``b-c`` and site ``a-b``
host ``c``); ``make_plan`` claims every generated name that must be unique (the
namespaces, the interfaces named after sites and hosts together with the lab's own
in the same namespace, the run files) and refuses a clash, naming both owners.  Derived host
addresses: host ``j`` (0-based) of site ``i`` gets offset ``i*256 + j + 1`` in the
LAN's IPv4 network and ``i*65536 + j + 1`` in its IPv6 network (10.77.<i>.<j+1>,
fd00:77::<i>:<j+1> by default), skipping addresses given explicitly; derived MACs
are ``02:77:00:00:<i>:<j+1>``.

Invariant: every link lives inside a lab namespace (veths are created with both
ends already in their namespaces), so removing the lab's namespaces removes every
link it made; nothing is ever created in the caller's namespace.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from l2bridge.core import config, keys
from l2bridge.core.caps import default_workers
from netns.describe.dns import HOSTS_FILE as DNS_HOSTS_FILE
from netns.describe.dns import LOG_FILE as DNS_LOG_FILE
from netns.describe.dns import RESOLV_FILE, DnsPlan, dns_name
from netns.describe.impair import RelayPlan, nft_ruleset, relay_plan, wan_mtu_for
from netns.describe.nat import NAT_SUFFIX, NatPlan
from netns.describe.openvpn import (
    CONFIG_SUFFIX as OPENVPN_CONFIG_SUFFIX,
)
from netns.describe.openvpn import (
    OPENVPN_PORT,
    OPENVPN_TAP,
    make_identity,
    render_config,
)
from netns.describe.openvpn import refusals as openvpn_refusals
from netns.describe.paths import L2BRIDGE_CHECKS
from netns.describe.scenario import Link, Scenario, ScenarioError, Site
from netns.describe.steps import (
    AddAddress,
    AddBridge,
    AddNetns,
    AddVeth,
    NftRuleset,
    SetLink,
    Step,
    Sysctl,
    VlanPort,
)
from netns.describe.timeline import L2BRIDGE_ONLY
from netns.describe.underlay import (
    DNS_ADDRESS4,
    DNS_ADDRESS6,
    SiteAddresses,
    host_port,
    peer_address,
    site_addresses,
)
from netns.describe.wanlink import link_steps

LAB_RUN_DIR = "/run/l2bridge/lab"
PREFIX_HEAD = "l2b"
PREFIX_HEX_DIGITS = 5
PREFIX_SHAPE = f"{PREFIX_HEAD} and {PREFIX_HEX_DIGITS} hex digits, like {PREFIX_HEAD}3f9a1"
L2BRIDGE_PORT = 55555
VXLAN_PORT = 4789
VXLAN_MESH_VNI = 42
VXLAN_HUB_VNI_BASE = 1000
VXLAN_OVERHEAD_V4 = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_OVERHEAD_V6 = 70  # outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
IFNAME_MAX = 15
LOOPBACK = "lo"
SWITCH_BRIDGE = "br0"  # the LAN switch's bridge, in P-<site>-sw
SWITCH_UPLINK = "gw"  # its port towards the gateway's eth1
# Daemon keys of [[peer]] a site's ``l2bridge = {...}`` may give: they go on every peer.
PEER_KEYS = ("transport",)
# Checks that read an l2bridge daemon's show: a reference gateway cannot run them.
SHOW_CHECKS = (*L2BRIDGE_CHECKS, "loop_blocked", "mac_flap", "storm")
# The daemon's performance keys: with ``[lab] daemon_defaults`` the lab writes none of them.
DAEMON_DEFAULT_KEYS = ("workers", "offload", "low_latency")


def new_prefix() -> str:
    """A fresh run prefix: ``l2b`` + 5 random hex digits."""
    return PREFIX_HEAD + secrets.token_hex(3)[:PREFIX_HEX_DIGITS]


def is_prefix(text: str) -> bool:
    """Whether ``text`` is a lab name (``PREFIX_SHAPE``): safe as one path component."""
    return (
        len(text) == len(PREFIX_HEAD) + PREFIX_HEX_DIGITS
        and text.startswith(PREFIX_HEAD)
        and all(c in "0123456789abcdef" for c in text[len(PREFIX_HEAD):])
    )


# ---------------------------------------------------------------- plan model


@dataclass(frozen=True, slots=True)
class Node:
    """Something a check or a user can act in: a host, a gateway, a switch or the WAN."""

    ref: str  # "london.h1", "london.gw", "london.sw", "wan"
    ns: str
    site: str | None
    role: str  # "host" | "gw" | "sw" | "wan"
    ifname: str | None = None  # the host's LAN interface
    ipv4: str | None = None  # CIDR
    ipv6: str | None = None  # CIDR
    mac: str | None = None
    vlan: int | None = None  # 802.1Q VLAN of the host's switch port (None: untagged)

    @property
    def ip(self) -> str:
        """The bare IPv4 address (hosts only)."""
        assert self.ipv4 is not None, self.ref
        return self.ipv4.split("/")[0]

    @property
    def ip6(self) -> str:
        assert self.ipv6 is not None, self.ref
        return self.ipv6.split("/")[0]


@dataclass(frozen=True, slots=True)
class VxlanDev:
    """One kernel VXLAN device of a gateway in ``vxlan`` mode."""

    ifname: str
    vni: int
    local: str
    remotes: tuple[str, ...]  # head-end replication targets (all-zero MAC fdb entries)
    mtu: int


@dataclass(frozen=True, slots=True)
class PeerPlan:
    name: str
    address: str | None  # the peer's public address this site dials; None: it dials in


@dataclass(frozen=True, slots=True)
class SitePlan:
    name: str
    index: int  # 1-based
    hub: bool
    gateway: str  # "l2bridge" | "vxlan" | "openvpn"
    gw_ns: str
    sw_ns: str
    underlay: str  # gateway's WAN address (bare; behind NAT its private one)
    router: str  # the gateway's next hop: the WAN router, or its NAT router (bare)
    peers: tuple[PeerPlan, ...]
    config_path: str
    log_path: str
    control_path: str
    config_text: str  # the daemon's TOML (l2bridge mode), or OpenVPN's config (openvpn mode)
    private_key: bytes  # the site's key (l2bridge mode, unless the scenario is insecure)
    key_path: str
    vxlan: tuple[VxlanDev, ...]  # the kernel devices (vxlan mode)
    lan_ifname: str = "eth1"
    bridge: str = "br0"
    link: Link = Link()  # the WAN link as built (impairments, MTU, NAT)
    wan_if: str = ""  # the router's interface toward this site (named after the site)
    relay: RelayPlan | None = None  # the delay relay on this link, if any
    wan_mtu: int = 1500  # the daemon's wan_mtu: the smallest MTU on its paths
    lan_mtu: int = 1500  # lan.mtu: eth1, and the bridge and tunnel of a reference gateway
    addrs: SiteAddresses | None = None  # every underlay address (underlay.py)
    nat: NatPlan | None = None  # its own NAT router, when it is behind NAT
    resolv_conf: str | None = None  # the resolv.conf its daemon sees (lab DNS)

    @property
    def addresses(self) -> SiteAddresses:
        assert self.addrs is not None, self.name
        return self.addrs


@dataclass(frozen=True, slots=True)
class LanLinkPlan:
    """A [[lan_link]] as built: a veth between two LAN switches (port ``lan<k>`` each)."""

    name: str
    a_ns: str
    b_ns: str
    ifname: str  # the same name at both ends

    def __str__(self) -> str:
        return f"lan link {self.name}: {self.a_ns}:{self.ifname} <-> {self.b_ns}:{self.ifname}"


@dataclass(frozen=True, slots=True)
class Plan:
    prefix: str
    scenario: Scenario
    gateway: str
    rundir: str
    wan_ns: str
    namespaces: tuple[str, ...]  # creation order
    nodes: dict[str, Node]
    sites: tuple[SitePlan, ...]
    steps: tuple[Step, ...]
    offload: bool | None = None  # what the daemon configs say about offloads (None: default)
    dns: DnsPlan | None = None  # the lab's DNS server ([lab] dns)
    lan_links: tuple[LanLinkPlan, ...] = ()

    def site(self, name: str) -> SitePlan:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def hosts(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "host"]

    def lan_link(self, name: str) -> LanLinkPlan:
        for link in self.lan_links:
            if link.name == name:
                return link
        raise KeyError(name)

    def describe(self) -> list[str]:
        """The plan as readable lines (what ``lab plan`` prints)."""
        lines = [
            f"lab {self.prefix}: scenario {self.scenario.name} ({self.scenario.path}), "
            f"{len(self.sites)} sites, {len(self.hosts())} hosts, gateway {self.gateway}, "
            f"run dir {self.rundir}"
        ]
        lines += [str(step) for step in self.steps]
        lines += [str(s.relay) for s in self.sites if s.relay is not None]
        lines += [str(s.nat) for s in self.sites if s.nat is not None]
        if self.dns is not None:
            lines.append(str(self.dns))
        for s in self.sites:
            peers = ", ".join(f"{p.name} {endpoint_text(self.scenario, p) or '(dials in)'}"
                              for p in s.peers)
            role = " (hub)" if s.hub else ""
            if s.gateway == "l2bridge":
                lines.append(
                    f"gateway {s.name}{role}: l2bridge up -c {s.config_path} "
                    f"in {s.gw_ns}, peers: {peers}"
                )
            elif s.gateway == "openvpn":
                lines.append(
                    f"gateway {s.name}: openvpn --config {s.config_path} in {s.gw_ns} "
                    f"(tap {OPENVPN_TAP} bridged with {s.lan_ifname} in {s.bridge}), peers: "
                    + ", ".join(f"{p.name} {host_port(p.address or '?', OPENVPN_PORT)}"
                                for p in s.peers)
                )
            else:
                for dev in s.vxlan:
                    lines.append(
                        f"gateway {s.name}{role}: vxlan {s.gw_ns}:{dev.ifname} id {dev.vni} "
                        f"local {dev.local} port {VXLAN_PORT} mtu {dev.mtu} "
                        f"remotes {' '.join(dev.remotes)}"
                    )
        for check in self.scenario.checks:
            when = "" if check.at is None else f" (timeline, t = {check.at:g} s)"
            lines.append(f"check {check.index}: {check.kind}: {check.name}{when}")
        for event in self.scenario.events:
            lines.append(f"event {event.index}: {event.when}: {event.name}")
        return lines


# ---------------------------------------------------------------- planning


class _Names:
    """Generated names that must be unique, each with the owner it was made for.

    An owner is a scenario key and a label (``site[0].host[1] "h2"``); the lab's
    own fixed names have no key.  A second claim on a name raises a one-line
    ``ScenarioError`` at the second owner's key, naming both owners.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.owners: dict[str, tuple[str, str]] = {}  # what -> (key, label)

    def claim(self, what: str, key: str, label: str) -> None:
        first_key, first = self.owners.setdefault(what, (key, label))
        if (first_key, first) == (key, label):
            return
        if not first_key:
            raise ScenarioError(self.path, key,
                                f"{label} would be {what}, which the lab uses for {first}; "
                                "rename it")
        raise ScenarioError(self.path, key, f"{first} and {label} would both be {what}; "
                            "rename one")

    def lab_owns(self, what: str, label: str) -> None:
        self.owners[what] = ("", label)


def make_plan(
    scenario: Scenario,
    *,
    prefix: str,
    gateway: str | None = None,
    wan_mtu: int | None = None,
    rundir: str | None = None,
    site_keys: Mapping[str, bytes] | None = None,
    offload: bool | None = None,
) -> Plan:
    """Compute every name, address and step; ``gateway``/``wan_mtu`` override the file.

    ``offload=False`` writes ``offload = false`` into every daemon config (a
    site's own ``l2bridge`` table still wins); None leaves the daemon default.

    Each l2bridge gateway gets a fresh private key (or the one in ``site_keys``),
    and every site's config lists its peers' public keys.
    """
    if wan_mtu is not None:
        scenario = dataclasses.replace(
            scenario, wan=dataclasses.replace(scenario.wan, mtu=wan_mtu)
        )
    mode = gateway or scenario.gateway
    overhead = VXLAN_OVERHEAD_V4 if scenario.ipv4_wan else VXLAN_OVERHEAD_V6
    if mode == "vxlan" and scenario.wan.mtu < scenario.lan.mtu + overhead:
        need = scenario.lan.mtu + overhead
        raise ScenarioError(
            scenario.path,
            "wan.mtu",
            f"vxlan gateways need wan.mtu >= {need} for a {scenario.lan.mtu}-byte LAN "
            f"(VXLAN adds {overhead} bytes and never fragments), found "
            f"{scenario.wan.mtu}; raise it (--wan-mtu {need}) or use the l2bridge gateway",
        )
    if mode == "vxlan":
        _check_vxlan_links(scenario, overhead)
    if mode == "openvpn":
        for key, message in openvpn_refusals(scenario):
            raise ScenarioError(scenario.path, key, message)
    if mode != "l2bridge":
        _check_tunnel_events(scenario, mode)
    rundir = rundir or f"{LAB_RUN_DIR}/{prefix}"
    wan_ns = f"{prefix}-wan"
    nodes: dict[str, Node] = {"wan": Node(ref="wan", ns=wan_ns, site=None, role="wan")}
    namespaces = [wan_ns]
    names = _Names(scenario.path)
    names.lab_owns(_ns(wan_ns), "the WAN router")
    names.lab_owns(_iface(wan_ns, LOOPBACK), "the loopback")
    hosts = _host_addressing(scenario)
    dns = _dns_plan(scenario, wan_ns, rundir)

    site_plans: list[SitePlan] = []
    peers_of = scenario.peers_of()
    for i, site in enumerate(scenario.sites, start=1):
        key = f"site[{i - 1}]"
        owner = f'{key} "{site.name}"'
        gw_ns, sw_ns = f"{prefix}-{site.name}-gw", f"{prefix}-{site.name}-sw"
        names.claim(_ns(gw_ns), f"{key}.name", f"{owner} (its gateway)")
        names.claim(_ns(sw_ns), f"{key}.name", f"{owner} (its LAN switch)")
        names.lab_owns(_iface(sw_ns, LOOPBACK), "the loopback")
        names.lab_owns(_iface(sw_ns, SWITCH_BRIDGE), "the LAN bridge")
        names.lab_owns(_iface(sw_ns, SWITCH_UPLINK), "the port towards the gateway")
        namespaces += [gw_ns, sw_ns]
        nodes[f"{site.name}.gw"] = Node(f"{site.name}.gw", gw_ns, site.name, "gw")
        nodes[f"{site.name}.sw"] = Node(f"{site.name}.sw", sw_ns, site.name, "sw")
        link = scenario.link(site.name)
        addrs = site_addresses(i, nat=bool(link.nat), ipv4=scenario.ipv4_wan,
                               ipv6=scenario.wan.ipv6)
        nat = None
        if link.nat:
            nat_ns = f"{prefix}-{site.name}-{NAT_SUFFIX}"
            names.claim(_ns(nat_ns), f"{key}.wan.nat", f"{owner} (its NAT router)")
            namespaces.append(nat_ns)
            ref = f"{site.name}.{NAT_SUFFIX}"
            nodes[ref] = Node(ref, nat_ns, site.name, NAT_SUFFIX)
            assert addrs.inside4 is not None and addrs.public4 is not None
            nat = NatPlan(site.name, nat_ns, link.nat, addrs.inside4, addrs.public4)
        for j, host in enumerate(site.hosts):
            ref = f"{site.name}.{host.name}"
            ns = f"{prefix}-{site.name}-{host.name}"
            host_owner = f'{key}.host[{j}] "{host.name}"'
            names.claim(_ns(ns), f"{key}.host[{j}].name", host_owner)
            names.claim(_iface(sw_ns, host.name), f"{key}.host[{j}].name",
                        f"{host_owner} (its switch port)")
            namespaces.append(ns)
            v4, v6, mac = hosts[ref]
            nodes[ref] = Node(ref, ns, site.name, "host", "eth0", v4, v6, mac, host.vlan)
        site_plan = SitePlan(
            name=site.name,
            index=i,
            hub=site.hub,
            gateway=mode,
            gw_ns=gw_ns,
            sw_ns=sw_ns,
            underlay=addrs.underlay,
            router=addrs.router,
            peers=(),
            config_path=f"{rundir}/{site.name}"
                        f"{OPENVPN_CONFIG_SUFFIX if mode == 'openvpn' else '.toml'}",
            log_path=f"{rundir}/{site.name}.log",
            control_path=f"{rundir}/{site.name}.sock",
            config_text="",
            private_key=b"",
            key_path=f"{rundir}/{site.name}.key",
            vxlan=(),
            link=link,
            wan_if=site.name,
            lan_mtu=scenario.lan.mtu,
            relay=relay_plan(site.name, i, link, ns=wan_ns, seed=scenario.wan.seed,
                             rundir=rundir),
            addrs=addrs,
            nat=nat,
            resolv_conf=dns.resolv_path if dns is not None else None,
        )
        _claim_site_names(names, site_plan, key, owner, wan_ns)
        site_plans.append(site_plan)
    by_name = {s.name: s for s in site_plans}
    if not scenario.insecure:
        chosen = site_keys or {}
        site_plans = [
            dataclasses.replace(s, private_key=chosen.get(s.name) or keys.generate_private_key())
            for s in site_plans
        ]
        by_name = {s.name: s for s in site_plans}
    identities = {s.name: make_identity(s.name) for s in site_plans} if mode == "openvpn" else {}
    lan_links = []
    for k, lan in enumerate(scenario.lan_links):
        ifname = f"lan{k}"
        planned = LanLinkPlan(lan.name, by_name[lan.a].sw_ns, by_name[lan.b].sw_ns, ifname)
        for ns in (planned.a_ns, planned.b_ns):
            names.claim(_iface(ns, ifname), f"lan_link[{k}]",
                        f'lan_link[{k}] "{lan.name}" (its switch port)')
        lan_links.append(planned)
    finished = []
    for s in site_plans:
        dials = scenario.site(s.name).dial_out
        peers = tuple(
            PeerPlan(p, None if by_name[p].nat is not None or not dials
                     else peer_address(s.addresses, by_name[p].addresses))
            for p in peers_of[s.name]
        )
        s = dataclasses.replace(
            s, peers=peers,
            wan_mtu=wan_mtu_for(s.link, [by_name[p].link for p in peers_of[s.name]]),
        )
        if mode == "openvpn":
            (peer,) = peers  # openvpn_refusals: exactly two sites, each dials the other
            assert peer.address is not None
            text = render_config(site=s.name, remote=peer.address, tls_server=s.index == 1,
                                 own=identities[s.name],
                                 peer_fingerprint=identities[peer.name].fingerprint,
                                 management=s.control_path, lan_mtu=scenario.lan.mtu)
            finished.append(dataclasses.replace(s, config_text=text))
            continue
        s = dataclasses.replace(
            s,
            config_text=render_site_config(scenario, scenario.site(s.name), s, by_name,
                                           offload=offload),
            vxlan=_vxlan_devices(scenario, s, by_name),
        )
        _check_daemon_config(scenario, s)
        finished.append(s)

    plan = Plan(
        prefix=prefix,
        scenario=scenario,
        gateway=mode,
        rundir=rundir,
        wan_ns=wan_ns,
        namespaces=tuple(namespaces),
        nodes=nodes,
        sites=tuple(finished),
        steps=(),
        offload=offload,
        dns=dns,
        lan_links=tuple(lan_links),
    )
    return dataclasses.replace(plan, steps=tuple(_steps(plan)))


def _dns_plan(scenario: Scenario, wan_ns: str, rundir: str) -> DnsPlan | None:
    """The lab's DNS server, when ``[lab] dns`` asks for one (``dns.py``)."""
    if not scenario.dns:
        return None
    listen = ((DNS_ADDRESS4,) if scenario.ipv4_wan else ()) + (
        (DNS_ADDRESS6,) if scenario.wan.ipv6 else ())
    return DnsPlan(ns=wan_ns, listen=listen, hosts_path=f"{rundir}/{DNS_HOSTS_FILE}",
                   resolv_path=f"{rundir}/{RESOLV_FILE}", log_path=f"{rundir}/{DNS_LOG_FILE}")


def dns_records(plan: Plan, addresses: Mapping[str, SiteAddresses] | None = None
                ) -> dict[str, tuple[str | None, ...]]:
    """Each site's public addresses for the DNS (``addresses``: as they are now)."""
    now = addresses or {}
    return {s.name: ((a := now.get(s.name, s.addresses)).public4, a.public6)
            for s in plan.sites}


def _ns(name: str) -> str:
    return f'namespace "{name}"'


def _iface(ns: str, ifname: str) -> str:
    return f'interface "{ifname}" in namespace "{ns}"'


def _claim_site_names(names: _Names, s: SitePlan, key: str, owner: str, wan_ns: str) -> None:
    """A site's names beside its namespaces: WAN interfaces (and relay legs), run files."""
    where = f"{key}.name"
    names.claim(_iface(wan_ns, s.wan_if), where, f"{owner} (its WAN link)")
    for path, what in ((s.config_path, "config"), (s.log_path, "log"),
                       (s.control_path, "control socket"), (s.key_path, "key")):
        names.claim(f'run file "{path}"', where, f"{owner} (its {what})")
    if s.relay is not None:
        for leg in (s.relay.gw_leg, s.relay.router_leg):
            names.claim(_iface(wan_ns, leg), where, f"{owner} (its relay)")
        names.claim(f'run file "{s.relay.log_path}"', where, f"{owner} (its relay log)")


def _check_vxlan_links(scenario: Scenario, overhead: int) -> None:
    """Kernel VXLAN has no dial-in peers and never fragments: no NAT, room on every link."""
    need = scenario.lan.mtu + overhead
    for i, site in enumerate(scenario.sites):
        link = scenario.link(site.name)
        if link.nat:
            raise ScenarioError(
                scenario.path, f"site[{i}].wan.nat",
                f"site {site.name} is behind NAT, which vxlan gateways cannot cross (kernel "
                "VXLAN needs every remote's address); use the l2bridge gateway or remove nat",
            )
        if link.mtu < need:
            raise ScenarioError(
                scenario.path, f"site[{i}].wan.mtu",
                f"vxlan gateways need an MTU >= {need} on every link for a "
                f"{scenario.lan.mtu}-byte LAN (VXLAN adds {overhead} bytes and never "
                f"fragments), found {link.mtu} on site {site.name}'s link; raise it or use the "
                "l2bridge gateway",
            )


def _check_tunnel_events(scenario: Scenario, mode: str) -> None:
    """The first thing the reference gateways (``mode``: vxlan, openvpn) cannot do, as a
    one-line error."""
    for key, why, what in _tunnel_refusals(scenario, mode):
        raise ScenarioError(scenario.path, key,
                            f"{why}; use the l2bridge gateway or remove {what}")


def _tunnel_refusals(scenario: Scenario, mode: str) -> Iterator[tuple[str, str, str]]:
    """(key, why, what to remove): stopping, continuing and reloading act on an l2bridge
    process and a path shows in its ``show``; the reference gateways have neither, know
    their remotes by address only, and never ask a DNS server."""
    for e in scenario.events:
        if e.kind in L2BRIDGE_ONLY:
            yield (f"event[{e.index}].kind", f'"{e.kind}" acts on an l2bridge process, which '
                   f"{mode} gateways do not have", "the event")
        elif e.kind == "readdress":
            yield (f"event[{e.index}].kind", f"{mode} gateways know their remotes by address "
                   "and never find a moved one", "the event")
    for c in scenario.checks:
        if c.kind in SHOW_CHECKS:
            yield (f"check[{c.index}].kind", f"a {c.kind} check reads an l2bridge daemon's "
                   f"show, which {mode} gateways do not have", "the check")
    if scenario.dns:
        yield "lab.dns", f"{mode} gateways take addresses, not names", "dns"


def reload_config(plan: Plan, site: str, changes: Mapping[str, object]) -> str:
    """Site ``site``'s daemon config with ``changes`` to its ``[site]`` keys (a reload event)."""
    scenario = plan.scenario
    own = scenario.site(site)
    changed = dataclasses.replace(own, l2bridge={**own.l2bridge, **changes})
    by_name = {s.name: s for s in plan.sites}
    return render_site_config(scenario, changed, by_name[site], by_name, offload=plan.offload)


def _vxlan_devices(
    scenario: Scenario, s: SitePlan, by_name: dict[str, SitePlan]
) -> tuple[VxlanDev, ...]:
    """Mesh: one device (VNI 42) replicating to every peer; the bridge never sends a
    frame back out the port it came in, which is split horizon.  Hub and spoke: one
    device per spoke link (VNI 1000 + spoke index) so the hub's bridge relays between
    spokes like a switch."""
    mtu = scenario.lan.mtu
    hub = scenario.hub
    if hub is None:
        return (VxlanDev("vxlan0", VXLAN_MESH_VNI, s.underlay,
                         tuple(by_name[p.name].underlay for p in s.peers), mtu),)
    if s.hub:
        return tuple(
            VxlanDev(f"vx{by_name[p.name].index}", VXLAN_HUB_VNI_BASE + by_name[p.name].index,
                     s.underlay, (by_name[p.name].underlay,), mtu)
            for p in s.peers
        )
    return (VxlanDev("vxlan0", VXLAN_HUB_VNI_BASE + s.index, s.underlay,
                     (by_name[hub.name].underlay,), mtu),)


def _host_addressing(scenario: Scenario) -> dict[str, tuple[str, str | None, str]]:
    """Addresses and MACs for every host: explicit ones kept, the rest derived."""
    v4 = ipaddress.ip_network(scenario.lan.ipv4)
    v6 = ipaddress.ip_network(scenario.lan.ipv6) if scenario.lan.ipv6 else None
    used: set[str] = set()
    used_macs: set[str] = set()
    for site in scenario.sites:
        for h in site.hosts:
            used.update(str(ipaddress.ip_interface(a).ip) for a in (h.ipv4, h.ipv6) if a)
            if h.mac:
                used_macs.add(h.mac)
    out: dict[str, tuple[str, str | None, str]] = {}
    for i, site in enumerate(scenario.sites, start=1):
        for j, h in enumerate(site.hosts):
            ref = f"{site.name}.{h.name}"
            a4 = _with_prefix(h.ipv4, v4) if h.ipv4 else _derive(v4, i * 256 + j + 1, used,
                                                                   scenario, "lan.ipv4")
            a6 = None
            if v6 is not None:
                a6 = _with_prefix(h.ipv6, v6) if h.ipv6 else _derive(
                    v6, i * 65536 + j + 1, used, scenario, "lan.ipv6")
            mac = h.mac or _derive_mac(i, j, used_macs)
            out[ref] = (a4, a6, mac)
    return out


def _with_prefix(addr: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return addr if "/" in addr else f"{addr}/{net.prefixlen}"


def _derive(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    offset: int,
    used: set[str],
    scenario: Scenario,
    key: str,
) -> str:
    last = net.num_addresses - 2  # keep clear of the broadcast address
    offset = offset if offset <= last else 1
    start = offset
    while True:
        addr = str(net[offset])
        if addr not in used:
            used.add(addr)
            return f"{addr}/{net.prefixlen}"
        offset = offset + 1 if offset < last else 1
        if offset == start:
            raise ScenarioError(scenario.path, key, f"network {net} has no free address left")


def _derive_mac(i: int, j: int, used: set[str]) -> str:
    n = (i << 16) | (j + 1)
    while True:
        mac = "02:77:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (24, 16, 8, 0))
        if mac not in used:
            used.add(mac)
            return mac
        n += 1


def _steps(plan: Plan) -> Iterator[Step]:
    sc = plan.scenario
    # With any tagged host, every host port gets a VLAN program (untagged hosts a
    # native one), so tagged frames never reach a host of another VLAN at any site.
    vlans = any(h.vlan is not None for s in sc.sites for h in s.hosts)
    for ns in plan.namespaces:
        yield AddNetns(ns)
        yield SetLink(ns, LOOPBACK)
    yield Sysctl(plan.wan_ns, "net.ipv4.ip_forward", "1")
    if sc.wan.ipv6:
        yield Sysctl(plan.wan_ns, "net.ipv6.conf.all.forwarding", "1")
        # addresses are added without DAD; link-local ones need none either
        for ns in [plan.wan_ns] + [s.gw_ns for s in plan.sites if s.addresses.gw6]:
            yield Sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
    if plan.dns is not None:
        for address in plan.dns.listen:
            yield AddAddress(plan.wan_ns, LOOPBACK, f"{address}/{32 if '.' in address else 128}")
    for s in plan.sites:
        yield from link_steps(wan_ns=plan.wan_ns, wan_if=s.wan_if, gw_ns=s.gw_ns, link=s.link,
                              addrs=s.addresses, relay=s.relay, nat=s.nat, table=plan.prefix)
        yield AddBridge(s.sw_ns, SWITCH_BRIDGE)
        yield AddVeth(s.gw_ns, s.lan_ifname, s.sw_ns, SWITCH_UPLINK, sc.lan.mtu)
        yield SetLink(s.sw_ns, SWITCH_UPLINK, master=SWITCH_BRIDGE)
        yield SetLink(s.gw_ns, s.lan_ifname)
        for host in sc.site(s.name).hosts:
            node = plan.nodes[f"{s.name}.{host.name}"]
            yield AddVeth(node.ns, "eth0", s.sw_ns, host.name, sc.lan.mtu)
            yield SetLink(s.sw_ns, host.name, master=SWITCH_BRIDGE)
            if vlans:
                yield VlanPort(s.sw_ns, host.name, host.vlan or 0)
            yield SetLink(node.ns, "eth0", mac=node.mac)
            assert node.ipv4 is not None
            yield AddAddress(node.ns, "eth0", node.ipv4)
            if node.ipv6:
                yield AddAddress(node.ns, "eth0", node.ipv6)
    for link in plan.lan_links:  # another layer-2 path between two LANs (STP off: a loop)
        yield AddVeth(link.a_ns, link.ifname, link.b_ns, link.ifname, sc.lan.mtu)
        yield SetLink(link.a_ns, link.ifname, master=SWITCH_BRIDGE)
        yield SetLink(link.b_ns, link.ifname, master=SWITCH_BRIDGE)
    legs = [leg for s in plan.sites if s.relay for leg in (s.relay.gw_leg, s.relay.router_leg)]
    ruleset = nft_ruleset(plan.prefix, [(s.wan_if, s.link) for s in plan.sites], legs)
    if ruleset is not None:
        yield NftRuleset(plan.wan_ns, plan.prefix, ruleset)


# ---------------------------------------------------------------- daemon config


def _check_daemon_config(scenario: Scenario, s: SitePlan) -> None:
    """The daemon must accept what the lab writes: a bad ``l2bridge = {...}`` fails now."""
    try:
        config.parse_config(s.config_text, s.config_path)
    except config.ConfigError as exc:
        index = [site.name for site in scenario.sites].index(s.name)
        raise ScenarioError(
            scenario.path, f"site[{index}].l2bridge",
            f"the daemon would refuse it: {exc.key}: {exc.message}",
        ) from None


def render_site_config(
    scenario: Scenario, site: Site, s: SitePlan, sites: Mapping[str, SitePlan],
    *, offload: bool | None = None,
) -> str:
    """The ``l2bridge up`` configuration of one site (TOML text)."""
    table: list[tuple[str, object]] = [
        ("name", s.name),
        ("listen", f"[::]:{L2BRIDGE_PORT}" if s.addresses.gw6 else f"0.0.0.0:{L2BRIDGE_PORT}"),
        ("bridge", s.bridge),
        ("tap", "l2b0"),
        ("interfaces", [s.lan_ifname]),
        ("hub", s.hub),
        ("mtu", scenario.lan.mtu),
        ("wan_mtu", s.wan_mtu),
        ("control", s.control_path),
        ("keepalive", scenario.keepalive_s),
        ("dead_after", scenario.dead_after_s),
    ]
    if not scenario.daemon_defaults:
        # Lab gateways share one machine: one process each unless the scenario says.
        table.append(("workers", 1))
    if scenario.resolve_interval_s is not None:
        table.append(("resolve_interval", scenario.resolve_interval_s))
    if offload is not None and not scenario.daemon_defaults:
        table.append(("offload", offload))
    if scenario.insecure:
        table.append(("insecure", True))
    else:
        table.append(("private_key_file", s.key_path))
    merged: dict[str, object] = dict(table)
    merged.update(scenario.l2bridge)  # [lab] l2bridge: every site's daemon ...
    merged.update(site.l2bridge)  # ... a site's own win; keys the lab owns were rejected
    per_peer = {k: merged.pop(k) for k in PEER_KEYS if k in merged}
    lines = ["[site]"] + [f"{k} = {_toml_value(v)}" for k, v in merged.items()]
    if scenario.daemon_defaults:
        left = [k for k in DAEMON_DEFAULT_KEYS if k not in merged]
        if left:
            lines.append(f"# {', '.join(left)}: the daemon's own defaults (workers: "
                         f"{default_workers()} on this machine)")
    for p in s.peers:
        lines += ["", "[[peer]]", f"name = {_toml_value(p.name)}"]
        endpoint = endpoint_text(scenario, p)
        if endpoint is not None:  # else a dial-in peer: bound to its HELLO's source
            lines.append(f"endpoint = {_toml_value(endpoint)}")
        lines += [f"{k} = {_toml_value(v)}" for k, v in per_peer.items()]
        if not scenario.insecure:
            public = keys.public_key(sites[p.name].private_key)
            lines.append(f"public_key = {_toml_value(keys.encode_key(public))}")
    return "\n".join(lines) + "\n"


def endpoint_text(scenario: Scenario, p: PeerPlan) -> str | None:
    """Peer ``p``'s endpoint in a daemon config: its DNS name with ``[lab] dns``, else its
    address; None for a peer that dials in."""
    if p.address is None:
        return None
    return f"{dns_name(p.name)}:{L2BRIDGE_PORT}" if scenario.dns else host_port(
        p.address, L2BRIDGE_PORT)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Sequence):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
