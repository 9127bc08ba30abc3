"""Turn a validated scenario into a concrete plan: names, addresses and ordered steps (pure).

Naming scheme (P = the run prefix, ``l2b`` + 5 hex digits, e.g. ``l2b3f9a1``):

=====================  ==========================================================
namespace              contents
=====================  ==========================================================
``P-wan``              the WAN router (ip forwarding on); one veth per site,
                       named after the site, address 198.18.<i>.1/24 (100.64.<i>.1
                       for a site behind NAT); with a delay relay on the link also
                       the relay's legs ``<site>_g`` and ``<site>_r`` (impair.py);
                       the nftables table ``P`` when a link has loss, duplication
                       or NAT
``P-<site>-gw``        the gateway: ``wan0`` (198.18.<i>.2/24 or 100.64.<i>.2/24,
                       default route via .1) and ``eth1``, the veth standing in for
                       the physical NIC;
                       the gateway (l2bridge or kernel VXLAN) adds ``br0`` and its
                       tunnel device
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
from netns.describe.impair import (
    AddTbf,
    NftRuleset,
    RelayPlan,
    link_addresses,
    nft_ruleset,
    relay_plan,
    tbf_step,
    wan_mtu_for,
)
from netns.describe.scenario import Link, Scenario, ScenarioError, Site

LAB_RUN_DIR = "/run/l2bridge/lab"
PREFIX_HEAD = "l2b"
PREFIX_HEX_DIGITS = 5
PREFIX_SHAPE = f"{PREFIX_HEAD} and {PREFIX_HEX_DIGITS} hex digits, like {PREFIX_HEAD}3f9a1"
L2BRIDGE_PORT = 55555
VXLAN_PORT = 4789
VXLAN_MESH_VNI = 42
VXLAN_HUB_VNI_BASE = 1000
VXLAN_OVERHEAD_V4 = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
IFNAME_MAX = 15
LOOPBACK = "lo"
SWITCH_BRIDGE = "br0"  # the LAN switch's bridge, in P-<site>-sw
SWITCH_UPLINK = "gw"  # its port towards the gateway's eth1


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


# ---------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class AddNetns:
    ns: str

    def __str__(self) -> str:
        return f"netns add {self.ns}"


@dataclass(frozen=True, slots=True)
class Sysctl:
    ns: str
    key: str  # dotted, e.g. net.ipv4.ip_forward
    value: str

    def __str__(self) -> str:
        return f"sysctl {self.ns} {self.key}={self.value}"


@dataclass(frozen=True, slots=True)
class AddVeth:
    ns: str
    ifname: str
    peer_ns: str
    peer_ifname: str
    mtu: int

    def __str__(self) -> str:
        return (
            f"veth {self.ns}:{self.ifname} <-> {self.peer_ns}:{self.peer_ifname} mtu {self.mtu}"
        )


@dataclass(frozen=True, slots=True)
class AddBridge:
    ns: str
    ifname: str

    def __str__(self) -> str:
        return f"bridge {self.ns}:{self.ifname} stp off forward_delay 0"


@dataclass(frozen=True, slots=True)
class SetLink:
    ns: str
    ifname: str
    master: str | None = None
    mac: str | None = None

    def __str__(self) -> str:
        extra = f" master {self.master}" if self.master else ""
        extra += f" mac {self.mac}" if self.mac else ""
        return f"link {self.ns}:{self.ifname}{extra} up"


@dataclass(frozen=True, slots=True)
class AddAddress:
    ns: str
    ifname: str
    cidr: str

    def __str__(self) -> str:
        return f"addr {self.ns}:{self.ifname} {self.cidr}"


@dataclass(frozen=True, slots=True)
class AddRoute:
    ns: str
    dst: str
    via: str

    def __str__(self) -> str:
        return f"route {self.ns} {self.dst} via {self.via}"


@dataclass(frozen=True, slots=True)
class VlanPort:
    """A LAN switch port as an access port of VLAN ``vid`` (0: native, untagged only)."""

    ns: str
    ifname: str
    vid: int

    def __str__(self) -> str:
        if self.vid:
            return (f"vlan {self.ns}:{self.ifname} access vid {self.vid} "
                    "(tc bpf: push tag in, pass only vid and pop tag out)")
        return f"vlan {self.ns}:{self.ifname} native (tc bpf: pass only untagged out)"


Step = (AddNetns | Sysctl | AddVeth | AddBridge | SetLink | AddAddress | AddRoute | VlanPort
        | AddTbf | NftRuleset)


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
    address: str | None  # the peer gateway's underlay address; None: it dials in (NAT)


@dataclass(frozen=True, slots=True)
class SitePlan:
    name: str
    index: int  # 1-based
    hub: bool
    gateway: str  # "l2bridge" | "vxlan"
    gw_ns: str
    sw_ns: str
    underlay: str  # gateway's WAN address (bare)
    router: str  # router's address on this site's link (bare)
    peers: tuple[PeerPlan, ...]
    config_path: str
    log_path: str
    control_path: str
    config_text: str  # the daemon's TOML (l2bridge mode)
    private_key: bytes  # the site's key (l2bridge mode, unless the scenario is insecure)
    key_path: str
    vxlan: tuple[VxlanDev, ...]  # the kernel devices (vxlan mode)
    lan_ifname: str = "eth1"
    bridge: str = "br0"
    link: Link = Link()  # the WAN link as built (impairments, MTU, NAT)
    wan_if: str = ""  # the router's interface toward this site (named after the site)
    relay: RelayPlan | None = None  # the delay relay on this link, if any
    wan_mtu: int = 1500  # the daemon's wan_mtu: the smallest MTU on its paths


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
        for s in self.sites:
            peers = ", ".join(f"{p.name} {p.address or '(dials in)'}" for p in s.peers)
            role = " (hub)" if s.hub else ""
            if s.gateway == "l2bridge":
                lines.append(
                    f"gateway {s.name}{role}: l2bridge up -c {s.config_path} "
                    f"in {s.gw_ns}, peers: {peers}"
                )
            else:
                for dev in s.vxlan:
                    lines.append(
                        f"gateway {s.name}{role}: vxlan {s.gw_ns}:{dev.ifname} id {dev.vni} "
                        f"local {dev.local} port {VXLAN_PORT} mtu {dev.mtu} "
                        f"remotes {' '.join(dev.remotes)}"
                    )
        for check in self.scenario.checks:
            lines.append(f"check {check.index}: {check.kind}: {check.name}")
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
    if mode == "vxlan" and scenario.wan.mtu < scenario.lan.mtu + VXLAN_OVERHEAD_V4:
        need = scenario.lan.mtu + VXLAN_OVERHEAD_V4
        raise ScenarioError(
            scenario.path,
            "wan.mtu",
            f"vxlan gateways need wan.mtu >= {need} for a {scenario.lan.mtu}-byte LAN "
            f"(VXLAN adds {VXLAN_OVERHEAD_V4} bytes and never fragments), found "
            f"{scenario.wan.mtu}; raise it (--wan-mtu {need}) or use the l2bridge gateway",
        )
    if mode == "vxlan":
        _check_vxlan_links(scenario)
    rundir = rundir or f"{LAB_RUN_DIR}/{prefix}"
    wan_ns = f"{prefix}-wan"
    nodes: dict[str, Node] = {"wan": Node(ref="wan", ns=wan_ns, site=None, role="wan")}
    namespaces = [wan_ns]
    names = _Names(scenario.path)
    names.lab_owns(_ns(wan_ns), "the WAN router")
    names.lab_owns(_iface(wan_ns, LOOPBACK), "the loopback")
    hosts = _host_addressing(scenario)

    site_plans: list[SitePlan] = []
    peers_of = _peers(scenario)
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
        link = scenario.link(site.name)
        router, gateway_addr = link_addresses(i, link)
        site_plan = SitePlan(
            name=site.name,
            index=i,
            hub=site.hub,
            gateway=mode,
            gw_ns=gw_ns,
            sw_ns=sw_ns,
            underlay=gateway_addr,
            router=router,
            peers=(),
            config_path=f"{rundir}/{site.name}.toml",
            log_path=f"{rundir}/{site.name}.log",
            control_path=f"{rundir}/{site.name}.sock",
            config_text="",
            private_key=b"",
            key_path=f"{rundir}/{site.name}.key",
            vxlan=(),
            link=link,
            wan_if=site.name,
            relay=relay_plan(site.name, i, link, ns=wan_ns, seed=scenario.wan.seed,
                             rundir=rundir),
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
        peers = tuple(
            PeerPlan(p, None if by_name[p].link.nat else by_name[p].underlay)
            for p in peers_of[s.name]
        )
        s = dataclasses.replace(
            s, peers=peers,
            wan_mtu=wan_mtu_for(s.link, [by_name[p].link for p in peers_of[s.name]]),
        )
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
        lan_links=tuple(lan_links),
    )
    return dataclasses.replace(plan, steps=tuple(_steps(plan)))


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


def _check_vxlan_links(scenario: Scenario) -> None:
    """Kernel VXLAN has no dial-in peers and never fragments: no NAT, room on every link."""
    need = scenario.lan.mtu + VXLAN_OVERHEAD_V4
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
                f"{scenario.lan.mtu}-byte LAN (VXLAN adds {VXLAN_OVERHEAD_V4} bytes and never "
                f"fragments), found {link.mtu} on site {site.name}'s link; raise it or use the "
                "l2bridge gateway",
            )


def _peers(scenario: Scenario) -> dict[str, list[str]]:
    """Mesh: everyone peers with everyone; with a hub: spokes peer only with the hub."""
    names = [s.name for s in scenario.sites]
    hub = scenario.hub
    if hub is None:
        return {n: [p for p in names if p != n] for n in names}
    return {
        n: ([p for p in names if p != n] if n == hub.name else [hub.name]) for n in names
    }


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
    for s in plan.sites:
        yield from _wan_link_steps(plan, s)
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


def _wan_link_steps(plan: Plan, s: SitePlan) -> Iterator[Step]:
    """One site's WAN link: a veth, or two with the relay's legs between them; tbf."""
    mtu = s.link.mtu
    if s.relay is None:
        yield AddVeth(s.gw_ns, "wan0", plan.wan_ns, s.wan_if, mtu)
    else:
        yield AddVeth(s.gw_ns, "wan0", plan.wan_ns, s.relay.gw_leg, mtu)
        yield AddVeth(plan.wan_ns, s.relay.router_leg, plan.wan_ns, s.wan_if, mtu)
        for leg in (s.relay.gw_leg, s.relay.router_leg):
            yield Sysctl(plan.wan_ns, f"net.ipv6.conf.{leg}.disable_ipv6", "1")
            yield SetLink(plan.wan_ns, leg)
    yield AddAddress(plan.wan_ns, s.wan_if, f"{s.router}/24")
    yield SetLink(plan.wan_ns, s.wan_if)
    yield AddAddress(s.gw_ns, "wan0", f"{s.underlay}/24")
    yield SetLink(s.gw_ns, "wan0")
    yield AddRoute(s.gw_ns, "0.0.0.0/0", s.router)
    for ns, ifname in ((plan.wan_ns, s.wan_if), (s.gw_ns, "wan0")):
        tbf = tbf_step(ns, ifname, s.link)
        if tbf is not None:
            yield tbf


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
        ("listen", f"0.0.0.0:{L2BRIDGE_PORT}"),
        ("bridge", s.bridge),
        ("tap", "l2b0"),
        ("interfaces", [s.lan_ifname]),
        ("hub", s.hub),
        ("mtu", scenario.lan.mtu),
        ("wan_mtu", s.wan_mtu),
        ("control", s.control_path),
        ("keepalive", scenario.keepalive_s),
        ("dead_after", scenario.dead_after_s),
        # Lab gateways share one machine: one process each unless the scenario says.
        ("workers", 1),
    ]
    if offload is not None:
        table.append(("offload", offload))
    if scenario.insecure:
        table.append(("insecure", True))
    else:
        table.append(("private_key_file", s.key_path))
    merged: dict[str, object] = dict(table)
    merged.update(scenario.l2bridge)  # [lab] l2bridge: every site's daemon ...
    merged.update(site.l2bridge)  # ... a site's own win; keys the lab owns were rejected
    lines = ["[site]"] + [f"{k} = {_toml_value(v)}" for k, v in merged.items()]
    for p in s.peers:
        lines += ["", "[[peer]]", f"name = {_toml_value(p.name)}"]
        if p.address is not None:  # else a dial-in peer: bound to its HELLO's source
            lines.append(f"endpoint = {_toml_value(f'{p.address}:{L2BRIDGE_PORT}')}")
        if not scenario.insecure:
            public = keys.public_key(sites[p.name].private_key)
            lines.append(f"public_key = {_toml_value(keys.encode_key(public))}")
    return "\n".join(lines) + "\n"


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
