"""Scenario files: parse and validate a lab description (pure; no root, no I/O but reading).

Flow: 1. ``tomllib`` parses the text (``schema.Checker.parse``)  2. the document
is checked against ``TOP_SCHEMA`` by ``l2bridge.core.schema``, the site config's
checker (unknown keys get a "did you mean" hint, types are exact: a bool is not an
int, numbers are in range); each check table against its kind's schema
3. names, addresses and host references are cross-checked  4. the result is a tree
of frozen dataclasses that ``plan.py`` turns into namespaces, links and steps.

Every problem is a ``ScenarioError`` whose ``str()`` is one line:
``FILE: key.path: what is wrong (what is expected)``, worded as the site config
words the same mistake.  Key paths use 0-based array indexes as they appear in
the file: ``site[1].host[0].ipv4``, ``check[2].to``.

Invariants guaranteed to the planner:
- nothing nests deeper than a flat array: the parser's own recursion is caught
  (``RecursionError`` becomes a one-line error), and the only free-form table,
  a site's ``l2bridge = {...}``, holds scalars and flat arrays of them;
- at least two sites, unique site names, unique host names within a site;
- names match ``NAME_RE`` (at most ``NAME_MAX`` chars) so derived interface names
  fit in 15 bytes;
- host addresses (given or derived later) never clash, lie inside the LAN prefix
  and are neither its network nor its broadcast address;
- at most one hub site;
- every check kind is known, its parameters typed, its host references exist;
- every site link (``Scenario.link``): jitter <= delay, reordering only with a
  delay;
- every pair of sites that peer can reach each other (``reach_problem``): one
  of them dials the other (it dials out and the other is not behind NAT), or
  both are behind NAT and share a third site that is not, which tells each the
  other's public address and relays when punching fails;
- every LAN link (``[[lan_link]]``: another layer-2 path between two sites' LAN
  switches, e.g. a backup cable that makes a loop) joins two different sites,
  has a unique name and no twin between the same two sites.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core import schema
from l2bridge.core.config import MAC_RULE
from l2bridge.core.schema import (
    Checker,
    Hook,
    Param,
    SchemaError,
    Unexpected,
    describe_value,
    duplicate,
    expected,
    format_number,
)
from netns.describe import timeline
from netns.describe.paths import (
    L2BRIDGE_CHECKS,
    PATH_CHECK_SCHEMAS,
    PATH_CHECK_TIMEOUT_S,
    site_problem,
)
from netns.describe.timeline import HOST_REF, TIMELINE_CHECK_SCHEMAS, Event

NAME_MAX = 12
NAME_RE = re.compile(r"[a-z][a-z0-9-]*")
MAX_SITES = 200
MAX_HOSTS_PER_SITE = 200
GATEWAY_MODES = ("l2bridge", "vxlan", "openvpn")
DEFAULT_LAN_IPV4 = "10.77.0.0/16"
DEFAULT_LAN_IPV6 = "fd00:77::/64"
DEFAULT_MTU = 1500
DEFAULT_KEEPALIVE_S = 1.0
DEFAULT_DEAD_AFTER_S = 3.0
MIN_MTU = 576
DEFAULT_WAN_SEED = 1
MAX_MTU = 9000
DEFAULT_UP_WITHIN_S = 10.0
NAT_KINDS = ("cone", "symmetric")  # nat = true means "cone"


class ScenarioError(SchemaError):
    """A scenario problem; ``str()`` is ``FILE: key.path: message`` on one line."""


# ---------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Host:
    """One LAN host: a namespace with ``eth0`` on its site's LAN switch."""

    name: str
    ipv4: str | None = None  # "10.77.1.10/16"; None = derived by the planner
    ipv6: str | None = None
    mac: str | None = None  # None = derived (locally administered, deterministic)
    vlan: int | None = None  # 802.1Q VLAN ID of the host's switch port; None = untagged


@dataclass(frozen=True, slots=True)
class Site:
    """One office: a gateway, a LAN switch and its hosts."""

    name: str
    hosts: tuple[Host, ...]
    hub: bool = False
    l2bridge: Mapping[str, Any] = field(default_factory=dict)  # extra daemon [site] keys
    wan: Mapping[str, Any] = field(default_factory=dict)  # link keys overriding [wan]
    dial_out: bool = True  # False: its config lists its peers without endpoints


@dataclass(frozen=True, slots=True)
class Wan:
    """The WAN between the gateways: one router namespace, one link per site.

    The link keys here are the defaults of every site link; a site's own
    ``wan = { ... }`` overrides them for its link (``Scenario.link``).
    """

    mtu: int = DEFAULT_MTU
    rate_mbit: float | None = None  # tbf, each direction
    loss_percent: float = 0.0  # nftables numgen, each direction
    duplicate_percent: float = 0.0  # nftables dup, each direction
    delay_ms: float = 0.0  # the userspace relay, each direction
    jitter_ms: float = 0.0
    reorder_percent: float = 0.0
    loss_pattern: str = "random"  # "periodic": every Nth packet (the same in every run)
    relay: bool = False  # insert the relay even with delay, jitter and reorder at 0
    nat: str = ""  # per site only (validation rejects it here)
    block_udp: bool = False  # the router drops every UDP datagram to or from the link
    seed: int = DEFAULT_WAN_SEED  # the relay's random decisions
    ipv6: bool = False  # an IPv6 WAN (dual-stack when a site is behind NAT)


@dataclass(frozen=True, slots=True)
class Link:
    """One site's WAN link as built: the ``[wan]`` defaults with the site's overrides."""

    mtu: int = DEFAULT_MTU
    rate_mbit: float | None = None
    loss_percent: float = 0.0
    duplicate_percent: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_percent: float = 0.0
    loss_pattern: str = "random"  # or "periodic": loss and duplication hit every Nth packet
    relay: bool = False
    nat: str = ""  # "" (a public address), "cone" or "symmetric": the site's own NAT router
    block_udp: bool = False

    @property
    def needs_relay(self) -> bool:
        """Delay, jitter and reordering live in the relay; it is inserted only for them."""
        return self.relay or bool(self.delay_ms or self.jitter_ms or self.reorder_percent)

    @property
    def needs_nft(self) -> bool:
        """Whether the WAN router needs rules for this link (NAT lives in its own router)."""
        return bool(self.loss_percent or self.duplicate_percent or self.block_udp)


@dataclass(frozen=True, slots=True)
class Lan:
    """Addressing shared by every LAN (all sites form one layer-2 segment)."""

    ipv4: str = DEFAULT_LAN_IPV4
    ipv6: str | None = DEFAULT_LAN_IPV6
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True, slots=True)
class LanLink:
    """A direct layer-2 link between two sites' LAN switches (beside the tunnel)."""

    name: str
    a: str
    b: str


@dataclass(frozen=True, slots=True)
class Check:
    """One check: a kind, its parameters (defaults filled in) and a timeout."""

    kind: str
    name: str
    params: Mapping[str, Any]
    timeout_s: float
    index: int
    at: float | None = None  # seconds on the timeline (timeline.py); None: sequential


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    path: str
    description: str
    gateway: str
    keepalive_s: float
    dead_after_s: float
    lan: Lan
    wan: Wan
    sites: tuple[Site, ...]
    checks: tuple[Check, ...]
    insecure: bool = False  # l2bridge gateways without keys (cleartext)
    lan_links: tuple[LanLink, ...] = ()
    l2bridge: Mapping[str, Any] = field(default_factory=dict)  # daemon keys of every site
    events: tuple[Event, ...] = ()  # [[event]]: faults on the timeline or between checks
    pcap: tuple[str, ...] = ()  # [lab] pcap: interfaces to capture ("NODE:IF" or "all")
    dns: bool = False  # a dnsmasq in the WAN router; peers' endpoints are names
    resolve_interval_s: float | None = None  # the daemons' resolve_interval (None: default)
    up_within_s: float = DEFAULT_UP_WITHIN_S  # how long start-up waits for all peers up
    # True: the lab writes none of the daemon's performance keys (workers, offload,
    # low_latency), so each daemon runs with its own defaults; False: workers = 1.
    daemon_defaults: bool = False

    def site(self, name: str) -> Site:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    @property
    def hub(self) -> Site | None:
        return next((s for s in self.sites if s.hub), None)

    def link(self, name: str) -> Link:
        """Site ``name``'s WAN link: the ``[wan]`` defaults, then the site's own keys."""
        link = _link(self.wan, self.site(name))
        if name in timeline.impaired_sites(self.events):
            # an event changes its delay: the relay is there from the start
            link = dataclasses.replace(link, relay=True)
        return link

    @property
    def natted(self) -> set[str]:
        """The sites behind a NAT router of their own."""
        return {s.name for s in self.sites if _link(self.wan, s).nat}

    @property
    def ipv4_wan(self) -> bool:
        """Whether the WAN carries IPv4: always, except an IPv6 WAN without NAT sites."""
        return not self.wan.ipv6 or bool(self.natted)

    def peers_of(self) -> dict[str, list[str]]:
        """Mesh: everyone peers with everyone; with a hub: spokes peer only with the hub."""
        return peerings(self.sites)

    def host_refs(self) -> list[str]:
        """Every host as ``"site.host"``, in file order."""
        return [f"{s.name}.{h.name}" for s in self.sites for h in s.hosts]


# ---------------------------------------------------------------- schemas


def _per_site_nat(value: bool | str) -> str:
    if value:
        raise ValueError("NAT is per site: set it in the site's own table, "
                         "[[site]] wan = { nat = true } (remove it from [wan])")
    return ""


def _nat_kind(value: bool | str) -> str:
    """``true`` is a cone NAT, ``false`` none (``""``); a kind is kept (``schema`` hook)."""
    if value is True:
        return NAT_KINDS[0]
    return value or ""


def _families(value: list[str]) -> list[str]:
    if len(set(value)) != len(value) or not set(value) <= set(FAMILIES):
        raise Unexpected()
    return value


def _network(version: int, example: str) -> Hook:
    """The LAN's IPv4 or IPv6 network, kept as written (``schema`` hook)."""

    def check(text: str) -> str:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise ValueError(f"expected a network like {example}: {e}") from None
        if net.version != version:
            raise ValueError(f"expected an IPv{version} network, found {net}")
        if net.num_addresses < 4:
            raise ValueError(f"network {net} is too small for hosts")
        return text

    return check


def _unicast_mac(text: str) -> str:
    """A unicast MAC written with colons, kept in lower case (``schema`` hook)."""
    mac = text.lower()
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        raise Unexpected()
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise Unexpected()
    return mac


def _seconds(low: float, high: float, default: Any = None) -> Param:
    return schema.number(low, high, default, unit="seconds")


def _ms(default: float) -> Param:
    return schema.number(0, 10_000, default, unit="milliseconds")


def _percent(default: Any) -> Param:
    return schema.number(0, 100, default)


def _count(high: int, default: int | None) -> Param:
    return schema.integer(1, high, default)


NAME = schema.name(NAME_RE, NAME_MAX, "a-z 0-9 - (the first one a-z)")
# Every check parameter naming a host is one object, HOST_REF: ``checks`` finds them by it.
FAMILIES = ("ipv4", "ipv6")
LOSS_PATTERNS = ("random", "periodic")  # periodic: every Nth packet, the same in every run

LAB_SCHEMA: dict[str, Param] = {
    "name": schema.string(default=None),
    "description": schema.string(default=""),
    "gateway": schema.choice(GATEWAY_MODES, "l2bridge"),
    "keepalive": _seconds(0.1, 60, DEFAULT_KEEPALIVE_S),
    "dead_after": _seconds(0.2, 600, DEFAULT_DEAD_AFTER_S),
    "insecure": schema.boolean(False),  # true: cleartext gateways (the demonstration only)
    "l2bridge": schema.table(None, None),  # daemon [site] keys of every site (a site's win)
    "pcap": schema.strings([], of='"NODE:IF" strings or "all"'),  # captures (describe/pcap.py)
    "dns": schema.boolean(False),  # dnsmasq in the WAN router; endpoints by name
    "resolve_interval": _seconds(1, 3600),  # the daemons' [site] resolve_interval
    "up_within": _seconds(1, 600, DEFAULT_UP_WITHIN_S),  # start-up: every peer up by then
    "daemon_defaults": schema.boolean(False),  # true: no workers = 1, the daemon's defaults
}
LAN_SCHEMA: dict[str, Param] = {
    "ipv4": schema.string(f'an IPv4 network like "{DEFAULT_LAN_IPV4}"', DEFAULT_LAN_IPV4,
                          check=_network(4, DEFAULT_LAN_IPV4)),
    "ipv6": schema.string(f'an IPv6 network like "{DEFAULT_LAN_IPV6}"', DEFAULT_LAN_IPV6,
                          check=_network(6, DEFAULT_LAN_IPV6)),
    "mtu": schema.integer(MIN_MTU, MAX_MTU, DEFAULT_MTU),
}
# The keys of one site link: [wan] holds their defaults, [[site]] wan = {...} overrides.
SITE_WAN_SCHEMA: dict[str, Param] = {
    "mtu": schema.integer(MIN_MTU, MAX_MTU, DEFAULT_MTU),
    "rate_mbit": schema.number(0.01, 10_000, None, unit="Mbit/s"),
    "loss_percent": _percent(0.0),
    "duplicate_percent": _percent(0.0),
    "delay_ms": _ms(0.0),
    "jitter_ms": _ms(0.0),
    "reorder_percent": _percent(0.0),
    "loss_pattern": schema.choice(LOSS_PATTERNS, "random"),
    "relay": schema.boolean(False),
    "nat": dataclasses.replace(
        schema.either('true, false, "cone" or "symmetric"', schema.boolean(),
                      schema.choice(NAT_KINDS), default=False), check=_nat_kind),
    "block_udp": schema.boolean(False),
}
LINK_KEYS = tuple(SITE_WAN_SCHEMA)
WAN_SCHEMA: dict[str, Param] = {
    **SITE_WAN_SCHEMA,
    "nat": dataclasses.replace(SITE_WAN_SCHEMA["nat"], check=_per_site_nat),
    "seed": schema.integer(0, 2**32 - 1, DEFAULT_WAN_SEED),
    "ipv6": schema.boolean(False),
}
# A site's own link keys: absent ones are None, so only what the site sets overrides [wan].
_OVERRIDES_SCHEMA = {k: dataclasses.replace(p, default=None) for k, p in SITE_WAN_SCHEMA.items()}
HOST_SCHEMA: dict[str, Param] = {
    "name": NAME,
    "ipv4": schema.string("an IPv4 address", None),
    "ipv6": schema.string("an IPv6 address", None),
    "mac": schema.string(MAC_RULE, None, check=_unicast_mac),
    "vlan": schema.integer(1, 4094, None),
}
SITE_SCHEMA: dict[str, Param] = {
    "name": NAME,
    "hub": schema.boolean(False),
    "dial_out": schema.boolean(True),  # false: its peers are listed without endpoints
    "l2bridge": schema.table(None, None),  # extra keys of the daemon's [site]: checked below
    "wan": schema.table(_OVERRIDES_SCHEMA, None),
    "host": schema.tables(HOST_SCHEMA, "site.host", min_items=1, max_items=MAX_HOSTS_PER_SITE),
}
LAN_LINK_SCHEMA: dict[str, Param] = {
    "name": schema.string(default=None),
    "a": schema.string("a site name"),
    "b": schema.string("a site name"),
}
# Keys of the daemon's own [site] table the lab writes itself.
L2BRIDGE_OWNED = frozenset(
    {"name", "listen", "bridge", "tap", "interfaces", "hub", "control", "peer"}
)

CHECK_SCHEMAS: dict[str, dict[str, Param]] = {
    "ping": {
        "from": HOST_REF,
        "to": HOST_REF,
        "count": _count(1000, 3),
        "size": schema.integer(0, 65000, 56),
        "dont_fragment": schema.boolean(False),
        "ipv6": schema.boolean(False),
        "expect": schema.choice(("pass", "fail"), "pass"),
        # a lossy path: pass when at least this share of the echoes sent was answered
        "min_received_percent": _percent(None),
    },
    "reachability": {
        "count": _count(100, 1),
        "families": schema.strings(list(FAMILIES), of='distinct "ipv4", "ipv6"', min_items=1,
                                   check=_families),
        "sample": _count(1_000_000, None),
    },
    "iperf3": {
        "from": HOST_REF,
        "to": HOST_REF,
        "seconds": _seconds(0.5, 600, 2.0),
        "udp": schema.boolean(False),
        "bitrate": schema.string(default=None),
        "parallel": _count(32, 1),
        "min_mbit_s": schema.number(0, 1_000_000, None),
        "max_lost_percent": _percent(None),
    },
    "dhcp": {
        "server": HOST_REF,
        "client": HOST_REF,
        "range_start": schema.string(default=None),
        "range_end": schema.string(default=None),
    },
    "broadcast_once": {
        "from": HOST_REF,
        "count": _count(10_000, 5),
    },
    "unicast_isolation": {
        "from": HOST_REF,
        "to": HOST_REF,
        "count": _count(10_000, 5),
    },
    "mtu": {
        "from": HOST_REF,
        "to": HOST_REF,
        "size": schema.integer(0, 65000, 1472),
        "mode": schema.choice(("fixed", "search"), "fixed"),
    },
    "restart": {
        "site": schema.string("a site name"),
        "from": HOST_REF,
        "to": HOST_REF,
        "within_s": _seconds(0.1, 600, 5.0),
    },
    "command": {
        "host": HOST_REF,
        "argv": schema.strings(None, min_items=1),
        "shell": schema.string(default=None),
        "expect_status": schema.integer(0, 255, 0),
        "expect_output": schema.string(default=None),
        "regex": schema.boolean(False),
    },
    **TIMELINE_CHECK_SCHEMAS,  # stream, recovers
    **PATH_CHECK_SCHEMAS,  # path, quiet
    "vlan_tags": {
        "from": HOST_REF,
        "to": HOST_REF,
        "count": _count(10_000, 5),
    },
    # Frames crossing the WAN: during an action of its own (``send`` from ``from``) or
    # during an earlier check (``during`` = its index); caps fail the check.
    "wan_frames": {
        "from": schema.string('a host reference "site.host"', None),
        "send": schema.choice(("broadcast", "nothing"), "broadcast"),
        "count": _count(10_000, 1),
        "seconds": _seconds(0.1, 600, 10.0),
        "during": schema.integer(0, 10_000, None),
        "max_datagrams": schema.integer(0, 10**9, None),
        "max_broadcast": schema.integer(0, 10**9, None),
        "max_multicast": schema.integer(0, 10**9, None),
        "max_unknown_unicast": schema.integer(0, 10**9, None),
    },
    # The peers a site's loop protection blocks (what its ``show`` names), within a bound.
    "loop_blocked": {
        "site": schema.string("a site name"),
        "peers": schema.strings(None, of="site names", min_items=0),
        "within_s": _seconds(0.1, 600, 5.0),
    },
    # Remove a [[lan_link]]; then time until ``from`` reaches ``to`` again (the tunnel).
    "unplug": {
        "link": schema.string("a [[lan_link]] name"),
        "from": HOST_REF,
        "to": HOST_REF,
        "within_s": _seconds(0.1, 600, 6.0),
    },
    # A host floods broadcasts for ``seconds`` while iperf3 runs between two others;
    # the WAN must carry at most the sending site's limit, iperf3 keep its share.
    "storm": {
        "from": HOST_REF,
        "iperf_from": HOST_REF,
        "iperf_to": HOST_REF,
        "seconds": _seconds(1, 60, 4.0),
        "min_kept_percent": _percent(90.0),
    },
    # A DHCP server (and, for IPv6, a router) at each server host; every client must
    # get its lease (and its RAs) from a server at its own site only.
    "dhcp_local": {
        "servers": schema.strings(None, of="host references", min_items=1),
        "clients": schema.strings(None, of="host references", min_items=1),
        "ipv6": schema.boolean(False),
    },
    # The same MAC alternately at two sites' LANs: each gateway holds and reports it.
    "mac_flap": {
        "from": HOST_REF,
        "to": HOST_REF,
        "moves": _count(1000, 8),
    },
}
CHECK_KIND = schema.choice(tuple(CHECK_SCHEMAS))
LAYER2_KINDS = frozenset({"wan_frames", "loop_blocked", "unplug", "storm", "dhcp_local",
                          "mac_flap"})
_COMMON_CHECK: dict[str, Param] = {
    "kind": CHECK_KIND,
    "name": schema.string(default=None),
    "timeout": _seconds(0.1, 3600),
    "at": schema.number(-timeline.TIMELINE_MAX_S, timeline.TIMELINE_MAX_S, None,
                        unit="seconds"),
}
CHECK_TIMEOUT_S: dict[str, float] = {
    "ping": 15.0,
    "reachability": 60.0,
    "iperf3": 30.0,
    "dhcp": 20.0,
    "broadcast_once": 15.0,
    "unicast_isolation": 20.0,
    "mtu": 20.0,
    "restart": 30.0,
    "command": 30.0,
    "vlan_tags": 15.0,
    "wan_frames": 30.0,
    "loop_blocked": 15.0,
    "unplug": 20.0,
    "storm": 60.0,
    "dhcp_local": 40.0,
    "mac_flap": 20.0,
    **timeline.TIMELINE_CHECK_TIMEOUT_S,
    **PATH_CHECK_TIMEOUT_S,
}
TOP_SCHEMA: dict[str, Param] = {
    "lab": schema.table(LAB_SCHEMA, {}, rule="a table [lab]"),
    "lan": schema.table(LAN_SCHEMA, {}, rule="a table [lan]"),
    "wan": schema.table(WAN_SCHEMA, {}, rule="a table [wan]"),
    "site": schema.tables(SITE_SCHEMA, "site", min_items=2, max_items=MAX_SITES),
    "lan_link": schema.tables(LAN_LINK_SCHEMA, "lan_link", []),
    "check": schema.tables(None, "check", []),  # each against its kind's schema, below
    "event": schema.tables(None, "event", []),  # each against its kind's schema (timeline.py)
}


# ---------------------------------------------------------------- parsing


def load_scenario(path: str) -> Scenario:
    """Read and validate the scenario at ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ScenarioError(path, "-", "no such file (give the path to a .toml scenario)") from None
    except OSError as e:
        raise ScenarioError(path, "-", f"cannot read: {e.strerror}") from None
    return _Parser(path).parse(data)


def parse_scenario(text: str, path: str = "<string>") -> Scenario:
    """Validate scenario ``text``; ``path`` names the file in error messages."""
    return _Parser(path).parse(text)


class _Parser:
    def __init__(self, path: str, vlans: Mapping[str, int | None] | None = None,
                 link_names: set[str] | None = None) -> None:
        self.path = path
        self.checker = Checker(ScenarioError, path)
        self.vlans: dict[str, int | None] = dict(vlans or {})  # host ref -> VLAN
        self.link_names: set[str] = set(link_names or ())  # the [[lan_link]] names
        self.timeouts_given: set[str] = set()  # check keys with their own timeout
        self.peers: dict[str, list[str]] = {}  # site -> the sites it peers with

    def fail(self, key: str, message: str) -> SchemaError:
        return self.checker.fail(key, message)

    def parse(self, data: str | bytes) -> Scenario:
        return self.scenario(self.checker.parse(data))

    # -- sections

    def scenario(self, raw: dict[str, Any]) -> Scenario:
        doc = self.checker.table(raw, "", TOP_SCHEMA)
        lab = doc["lab"]
        if lab["dead_after"] <= lab["keepalive"]:
            raise self.fail("lab.dead_after", expected(
                f"more than lab.keepalive ({format_number(lab['keepalive'])} s)",
                format_number(lab["dead_after"]),
            ))
        lan = Lan(**doc["lan"])
        wan = Wan(**doc["wan"])
        sites = self.sites(doc["site"], lan)
        self.links(wan, sites)
        problem = reach_problem(wan, sites)
        if problem is not None:
            raise self.fail(*problem)
        extra = self.daemon_keys(lab["l2bridge"] or {}, "lab")
        lan_links = self.lan_links(doc["lan_link"], {s.name for s in sites})
        refs = {f"{s.name}.{h.name}" for s in sites for h in s.hosts}
        self.peers = peerings(sites)
        self.vlans = {f"{s.name}.{h.name}": h.vlan for s in sites for h in s.hosts}
        self.link_names = {link.name for link in lan_links}
        checks = self.checks(doc["check"], refs, {s.name for s in sites})
        links = {s.name: dataclasses.asdict(_link(wan, s)) for s in sites}
        events = timeline.parse_events(
            self.checker, doc["event"], sites=[s.name for s in sites], hosts=sorted(refs),
            check_at=[c.at for c in checks], links=links)
        checks = self.timeline_checks(checks, events)
        name = lab["name"]
        if name is None:
            name = os.path.splitext(os.path.basename(self.path))[0] or "lab"
        return Scenario(
            name=name,
            path=self.path,
            description=lab["description"],
            gateway=lab["gateway"],
            keepalive_s=lab["keepalive"],
            dead_after_s=lab["dead_after"],
            lan=lan,
            wan=wan,
            sites=sites,
            checks=checks,
            insecure=lab["insecure"],
            lan_links=lan_links,
            l2bridge=extra,
            events=events,
            pcap=tuple(lab["pcap"]),
            dns=lab["dns"],
            resolve_interval_s=lab["resolve_interval"],
            up_within_s=lab["up_within"],
            daemon_defaults=lab["daemon_defaults"],
        )

    def daemon_keys(self, extra: Mapping[str, Any], key: str) -> dict[str, Any]:
        """Extra keys of the daemon's [site] table: none the lab owns, nothing nested."""
        for k, v in extra.items():
            if k in L2BRIDGE_OWNED:
                raise self.fail(f"{key}.l2bridge.{k}",
                                f'"{k}" is set by the lab itself (remove it)')
            problem = _daemon_value(v)
            if problem:
                raise self.fail(f"{key}.l2bridge.{k}", problem)
        return dict(extra)

    def lan_links(self, tables: list[dict[str, Any]], sites: set[str]) -> tuple[LanLink, ...]:
        """The [[lan_link]] tables: two different known sites, unique names and pairs."""
        links: list[LanLink] = []
        names: dict[str, int] = {}
        pairs: dict[frozenset[str], int] = {}
        for i, t in enumerate(tables):
            key = f"lan_link[{i}]"
            for end in ("a", "b"):
                if t[end] not in sites:
                    raise self.fail(f"{key}.{end}", f'no site "{t[end]}" (one of: '
                                    f'{", ".join(sorted(sites))})')
            if t["a"] == t["b"]:
                raise self.fail(f"{key}.b", f'"b" must differ from "a" ({t["a"]}): a LAN link '
                                "joins two sites' LANs")
            pair = frozenset((t["a"], t["b"]))
            if pair in pairs:
                raise self.fail(key, f"a second link between {t['a']} and {t['b']} (also "
                                f"lan_link[{pairs[pair]}])")
            pairs[pair] = i
            name = t["name"] or f"{t['a']}-{t['b']}"
            if name in names:
                raise self.fail(f"{key}.name", duplicate("LAN link name", name,
                                                         f"lan_link[{names[name]}]"))
            names[name] = i
            links.append(LanLink(name, t["a"], t["b"]))
        return tuple(links)

    def sites(self, tables: list[dict[str, Any]], lan: Lan) -> tuple[Site, ...]:
        sites: list[Site] = []
        seen: dict[str, int] = {}
        hub_at: str | None = None
        addresses: dict[str, str] = {}
        macs: dict[str, str] = {}
        v4 = ipaddress.ip_network(lan.ipv4)
        v6 = ipaddress.ip_network(lan.ipv6) if lan.ipv6 else None
        for i, t in enumerate(tables):
            key = f"site[{i}]"
            name = t["name"]
            if name in seen:
                raise self.fail(
                    f"{key}.name", duplicate("site name", name, f"site[{seen[name]}].name")
                )
            seen[name] = i
            if t["hub"]:
                if hub_at is not None:
                    raise self.fail(
                        f"{key}.hub", f"only one hub site is supported ({hub_at} is the hub)"
                    )
                hub_at = key
            extra = self.daemon_keys(t["l2bridge"] or {}, key)
            link = {k: v for k, v in (t["wan"] or {}).items() if v is not None}
            hosts = self.hosts(t["host"], key, v4, v6, addresses, macs)
            sites.append(Site(name=name, hosts=hosts, hub=t["hub"], l2bridge=extra, wan=link,
                              dial_out=t["dial_out"]))
        return tuple(sites)

    def links(self, wan: Wan, sites: tuple[Site, ...]) -> None:
        """Cross-key rules of every effective site link; errors name where the value came from.

        - jitter never exceeds the delay (a frame is never due before it arrived);
        - reordering needs a delay: a frame overtakes only frames still held back.
        """
        for i, site in enumerate(sites):
            link = _link(wan, site)

            def where(k: str, i: int = i, site: Site = site) -> str:
                return f"site[{i}].wan.{k}" if k in site.wan else f"wan.{k}"

            if link.jitter_ms > link.delay_ms:
                raise self.fail(
                    where("jitter_ms"),
                    f"jitter {link.jitter_ms:g} ms exceeds the delay {link.delay_ms:g} ms of "
                    f"site {site.name}'s link (expected jitter_ms <= delay_ms)",
                )
            if link.reorder_percent and not link.delay_ms:
                raise self.fail(
                    where("reorder_percent"),
                    f"reordering on site {site.name}'s link needs a delay to overtake "
                    "(set delay_ms > 0)",
                )

    def hosts(
        self,
        tables: list[dict[str, Any]],
        site_key: str,
        v4: ipaddress.IPv4Network | ipaddress.IPv6Network,
        v6: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
        addresses: dict[str, str],
        macs: dict[str, str],
    ) -> tuple[Host, ...]:
        hosts: list[Host] = []
        seen: dict[str, int] = {}
        for j, t in enumerate(tables):
            key = f"{site_key}.host[{j}]"
            name = t["name"]
            if name in ("gw", "sw"):
                raise self.fail(f"{key}.name", f'"{name}" is reserved for the site\'s own nodes')
            if name in seen:
                raise self.fail(
                    f"{key}.name",
                    duplicate("host name", name, f"{site_key}.host[{seen[name]}].name"),
                )
            seen[name] = j
            for fam, net in (("ipv4", v4), ("ipv6", v6)):
                if t[fam] is None:
                    continue
                if net is None:
                    raise self.fail(f"{key}.{fam}", "lan.ipv6 is off; remove the address")
                try:
                    check_host_address(t[fam], net)
                except ValueError as e:
                    raise self.fail(f"{key}.{fam}", str(e)) from None
                addr = t[fam].split("/")[0]
                canon = str(ipaddress.ip_address(addr))
                if canon in addresses:
                    raise self.fail(
                        f"{key}.{fam}", f"address {canon} clashes with {addresses[canon]}"
                    )
                addresses[canon] = key
            mac = t["mac"]
            if mac is not None:
                if mac in macs:
                    raise self.fail(f"{key}.mac", f"MAC {mac} clashes with {macs[mac]}")
                macs[mac] = key
            hosts.append(Host(name=name, ipv4=t["ipv4"], ipv6=t["ipv6"], mac=mac,
                              vlan=t["vlan"]))
        return tuple(hosts)

    def checks(self, tables: list[dict[str, Any]], refs: set[str], sites: set[str]
               ) -> tuple[Check, ...]:
        checks: list[Check] = []
        for i, raw in enumerate(tables):
            key = f"check[{i}]"
            kind = self.checker.get(raw, key, "kind", CHECK_KIND)
            t = self.checker.table(raw, key, {**_COMMON_CHECK, **CHECK_SCHEMAS[kind]})
            if t["timeout"] is not None:
                self.timeouts_given.add(key)
            for pname, param in CHECK_SCHEMAS[kind].items():
                if param is HOST_REF and t[pname] not in refs:
                    raise self.fail(
                        f"{key}.{pname}",
                        f'no host "{t[pname]}" (expected "site.host", one of: '
                        f"{', '.join(sorted(refs))})",
                    )
            if "from" in t and "to" in t and t["from"] == t["to"]:
                raise self.fail(f"{key}.to", f'"to" must differ from "from" ({t["from"]})')
            if kind == "dhcp" and t["server"] == t["client"]:
                raise self.fail(f"{key}.client", "client must differ from server")
            if kind in ("command", "vlan_tags", "iperf3"):
                self.check_extra(kind, t, key)
            if kind in L2BRIDGE_CHECKS:
                problem = site_problem(kind, t, self.peers)
                if problem is not None:
                    raise self.fail(f"{key}.{problem[0]}", problem[1])
            if kind in ("restart", "loop_blocked") and t["site"] not in sites:
                raise self.fail(
                    f"{key}.site", f'no site "{t["site"]}" (one of: {", ".join(sorted(sites))})'
                )
            at = t["at"]
            if at is not None and at < 0:
                raise self.fail(f"{key}.at", f"{format_number(at)} s is in the past: the "
                                "timeline starts at 0 s, when the lab is up (expected at >= 0)")
            if kind == "recovers" and at is not None:
                raise self.fail(f"{key}.at", "a recovers check starts with its event (remove "
                                '"at")')
            if kind in ("stream", "recovers") and at is None:
                at = 0.0  # on the timeline; a recovers check's real start is its event's
            if kind in LAYER2_KINDS:
                self.check_layer2(kind, t, key, refs, sites, i)
            params = {k: v for k, v in t.items() if k not in _COMMON_CHECK}
            name = t["name"] or _default_check_name(kind, params)
            timeout = t["timeout"] if t["timeout"] is not None else CHECK_TIMEOUT_S[kind]
            checks.append(Check(kind=kind, name=name, params=params, timeout_s=timeout, index=i,
                                at=at))
        return tuple(checks)

    def check_layer2(self, kind: str, t: dict[str, Any], key: str, refs: set[str],
                     sites: set[str], index: int) -> None:
        """Cross-field rules of the layer-2 safety check kinds."""
        def host(param: str, ref: str, where: str) -> None:
            if ref not in refs:
                raise self.fail(where, f'no host "{ref}" (expected "site.host", one of: '
                                f"{', '.join(sorted(refs))})")

        if kind == "wan_frames":
            if t["during"] is not None:
                if t["during"] >= index:
                    raise self.fail(f"{key}.during", f"expected the index of an earlier check "
                                    f"(0 to {index - 1}), found {t['during']}")
                if t["from"] is not None:
                    raise self.fail(f"{key}.from", 'give either "during" or "from", not both')
            elif t["from"] is None and t["send"] != "nothing":
                raise self.fail(key, 'give "from" (the sender), "during" (an earlier check) '
                                'or send = "nothing"')
            if t["from"] is not None:
                host("from", t["from"], f"{key}.from")
        elif kind == "loop_blocked":
            for j, peer in enumerate(t["peers"]):
                if peer not in sites or peer == t["site"]:
                    raise self.fail(f"{key}.peers[{j}]", f'no other site "{peer}" (one of: '
                                    f'{", ".join(sorted(sites - {t["site"]}))})')
        elif kind == "unplug":
            if t["link"] not in self.link_names:
                known = ", ".join(sorted(self.link_names)) or "none: add a [[lan_link]]"
                raise self.fail(f"{key}.link", f'no LAN link "{t["link"]}" (one of: {known})')
        elif kind == "storm":
            used = [t["from"], t["iperf_from"], t["iperf_to"]]
            if len(set(used)) != 3:
                raise self.fail(f"{key}.iperf_to", "the flooding host and the two iperf3 "
                                "hosts must be three different hosts")
        elif kind == "dhcp_local":
            for param in ("servers", "clients"):
                for j, ref in enumerate(t[param]):
                    host(param, ref, f"{key}.{param}[{j}]")
            if set(t["servers"]) & set(t["clients"]):
                raise self.fail(f"{key}.clients", "a host cannot be a server and a client")
        elif kind == "mac_flap" and t["from"].split(".")[0] == t["to"].split(".")[0]:
            raise self.fail(f"{key}.to", f'expected a host at another site than {t["from"]}')

    def timeline_checks(self, checks: tuple[Check, ...], events: tuple[Event, ...]
                        ) -> tuple[Check, ...]:
        """Streams get their length (default: until after the last event) and timeout;
        a recovers check names an event on the timeline and starts with it."""
        out = []
        for c in checks:
            key = f"check[{c.index}]"
            if c.kind == "stream":
                at = c.at or 0.0
                seconds = timeline.stream_seconds(at, c.params["seconds"], events)
                params = {**c.params, "seconds": seconds}
                timeout = c.timeout_s
                if key not in self.timeouts_given:
                    timeout = seconds + timeline.STREAM_TIMEOUT_SLACK_S
                c = dataclasses.replace(c, params=params, timeout_s=timeout)
            elif c.kind == "recovers":
                n = c.params["event"]
                if n >= len(events):
                    raise self.fail(f"{key}.event", f"no event[{n}] (the scenario has "
                                    f"{len(events)} events)")
                event = events[n]
                if event.at is None:
                    raise self.fail(f"{key}.event", f"event[{n}] ({event.name}) runs between "
                                    'checks; a recovers check needs an event with "at"')
                timeout = c.timeout_s
                if key not in self.timeouts_given:
                    timeout = c.params["within_s"] + timeline.RECOVERS_SLACK_S
                c = dataclasses.replace(c, at=event.at, timeout_s=timeout)
            out.append(c)
        return tuple(out)

    def check_extra(self, kind: str, t: dict[str, Any], key: str) -> None:
        """Cross-field rules of the ``command``, ``vlan_tags`` and ``iperf3`` checks."""
        if kind == "iperf3":
            if t["max_lost_percent"] is not None and not t["udp"]:
                raise self.fail(f"{key}.max_lost_percent",
                                "only for UDP tests (set udp = true or remove the key)")
            return
        if kind == "command":
            if (t["argv"] is None) == (t["shell"] is None):
                raise self.fail(key, 'give exactly one of "argv" (a list) or "shell" (a string)')
            if t["regex"] and t["expect_output"] is None:
                raise self.fail(f"{key}.regex", 'needs "expect_output" (the pattern)')
            if t["regex"]:
                try:
                    re.compile(t["expect_output"])
                except re.error as e:
                    raise self.fail(f"{key}.expect_output", f"not a valid regex: {e}") from None
            return
        a, b = self.vlans.get(t["from"]), self.vlans.get(t["to"])
        if a is None or a != b:
            raise self.fail(
                f"{key}.to", f'expected two hosts in the same VLAN, found {t["from"]} '
                f'{_describe_vlan(a)} and {t["to"]} {_describe_vlan(b)} (set [[site.host]] vlan)'
            )
        if t["from"].split(".")[0] == t["to"].split(".")[0]:
            raise self.fail(f"{key}.to", f'expected a host at another site than {t["from"]}')


def _link(wan: Wan, site: Site) -> Link:
    """Site ``site``'s link as the file gives it: the ``[wan]`` defaults, its own keys."""
    values = {k: getattr(wan, k) for k in LINK_KEYS if k != "nat"}
    values.update(site.wan)
    return Link(**values)


def peerings(sites: Sequence[Site]) -> dict[str, list[str]]:
    """Who peers with whom: a mesh, or with a hub, spokes only with the hub."""
    names = [s.name for s in sites]
    hub = next((s for s in sites if s.hub), None)
    if hub is None:
        return {n: [p for p in names if p != n] for n in names}
    return {n: ([p for p in names if p != n] if n == hub.name else [hub.name]) for n in names}


def reach_problem(wan: Wan, sites: Sequence[Site]) -> tuple[str, str] | None:
    """(key, message) for the first pair of peering sites that could never reach each
    other, or None.

    Site ``a`` dials ``b`` when ``a`` dials out and ``b`` is not behind NAT.  A pair
    in which neither dials the other is refused, except two NAT sites that share a
    third site not behind NAT (it hints each one's public address to the other and
    relays when the NATs cannot be punched).
    """
    index = {s.name: i for i, s in enumerate(sites)}
    by_name = {s.name: s for s in sites}
    natted = {s.name for s in sites if _link(wan, s).nat}
    peers = peerings(sites)
    for a in sites:
        for name in peers[a.name]:
            b = by_name[name]
            if index[b.name] < index[a.name]:
                continue  # each pair once, named at its later site
            if (a.dial_out and b.name not in natted) or (b.dial_out and a.name not in natted):
                continue
            if a.name in natted and b.name in natted:
                if any(c not in natted for c in peers[a.name] if c in peers[b.name]):
                    continue
                return (f"site[{index[b.name]}].wan.nat",
                        f'sites "{a.name}" and "{b.name}" are both behind NAT and share no '
                        "peer with a public address, so neither could reach the other (add a "
                        "site not behind NAT that peers with both, or remove one nat)")
            if not a.dial_out and not b.dial_out:
                return (f"site[{index[b.name]}].dial_out",
                        f'sites "{a.name}" and "{b.name}" both have dial_out = false, so '
                        "neither would dial the other")
            q, o = (a, b) if not a.dial_out else (b, a)
            why = (f'its peer "{o.name}" is behind NAT' if o.name in natted
                   else f'it is behind NAT, so "{o.name}" cannot dial it')
            return (f"site[{index[q.name]}].dial_out",
                    f'site "{q.name}" has dial_out = false and {why}; neither would dial the '
                    "other")
    return None


def _daemon_value(value: Any) -> str | None:
    """What is wrong with a value for the daemon's [site] table, or None.

    The daemon's keys take scalars and flat arrays of them, so nothing nested
    (a table, an array of arrays, however deep) ever reaches the config writer.
    """
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str | int | float):  # bool is an int
            holding = "an array holding " if isinstance(value, list) else ""
            return ("expected a string, a number, a boolean or an array of them, found "
                    f"{holding}{describe_value(item)}")
    return None


def _describe_vlan(vlan: int | None) -> str:
    return "untagged" if vlan is None else f"VLAN {vlan}"


def parse_check(raw: Mapping[str, Any], scenario: Scenario, path: str = "<check>") -> Check:
    """Validate one check table against ``scenario``'s hosts and sites."""
    refs = set(scenario.host_refs())
    sites = {s.name for s in scenario.sites}
    vlans = {f"{s.name}.{h.name}": h.vlan for s in scenario.sites for h in s.hosts}
    links = {link.name for link in scenario.lan_links}
    parser = _Parser(path, vlans, links)
    parser.peers = scenario.peers_of()
    return parser.checks([dict(raw)], refs, sites)[0]


def check_host_address(text: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Raise ``ValueError`` (the reason) unless ``text`` is a usable host address in ``net``."""
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f'expected an address like "{net[10]}/{net.prefixlen}", found "{text}"'
                         ) from None
    if "/" in text and iface.network.prefixlen != net.prefixlen:
        raise ValueError(f"prefix length /{iface.network.prefixlen} differs from the LAN {net}")
    if iface.ip not in net:
        raise ValueError(f"address {iface.ip} is outside the LAN {net}")
    if iface.ip == net.network_address or (
        net.version == 4 and iface.ip == net.broadcast_address
    ):
        raise ValueError(f"address {iface.ip} is the network or broadcast address of {net}")


def _default_check_name(kind: str, params: Mapping[str, Any]) -> str:
    if kind == "reachability":
        families = params["families"]
        return "reachability" + ("" if len(families) == 2 else " " + families[0])
    if kind == "command":
        words = params["argv"] or [params["shell"]]
        text = " ".join(words)
        return f"command {params['host']}: " + (text if len(text) <= 30 else text[:29] + "…")
    if kind == "mtu" and params["mode"] == "search":
        return f"mtu search {params['from']} → {params['to']}"
    if kind == "ping" and params["expect"] == "fail":
        suffix = " ipv6" if params["ipv6"] else ""
        return f"ping{suffix} {params['from']} ↛ {params['to']} (must fail)"
    if kind == "dhcp":
        return f"dhcp {params['server']} → {params['client']}"
    if kind == "broadcast_once":
        return f"broadcast_once from {params['from']}"
    if kind == "restart":
        return f"restart {params['site']}"
    if kind == "wan_frames":
        if params["during"] is not None:
            return f"wan_frames during check {params['during']}"
        return f"wan_frames {params['send']} from {params['from']}"
    if kind == "loop_blocked":
        return f"loop_blocked {params['site']}: {', '.join(params['peers']) or 'none'}"
    if kind == "unplug":
        return f"unplug {params['link']}, then {params['from']} → {params['to']}"
    if kind == "storm":
        return (f"storm from {params['from']}, iperf3 {params['iperf_from']} → "
                f"{params['iperf_to']}")
    if kind == "dhcp_local":
        return "dhcp_local" + (" ipv6" if params["ipv6"] else " ipv4")
    if kind == "recovers":
        return f"recovers after event[{params['event']}]: {params['from']} → {params['to']}"
    if kind == "stream":
        return f"stream {params['tool']} {params['from']} → {params['to']}"
    if kind == "path":
        via = f" via {params['via']}" if params["via"] else ""
        return f"path {params['site']} → {params['peer']} is {params['expect']}{via}"
    if kind == "quiet":
        return f"quiet {params['site']} during iperf3 {params['from']} → {params['to']}"
    suffix = " ipv6" if params.get("ipv6") else ""
    return f"{kind}{suffix} {params['from']} → {params['to']}"
