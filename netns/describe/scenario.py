"""Scenario files: parse and validate a lab description (pure; no root, no I/O but reading).

Flow: 1. ``tomllib`` parses the text  2. every table is checked against its schema
(unknown keys get a "did you mean" hint, types are exact: a bool is not an int)
3. names, addresses and host references are cross-checked  4. the result is a tree
of frozen dataclasses that ``plan.py`` turns into namespaces, links and steps.

Every problem is a ``ScenarioError`` whose ``str()`` is one line:
``FILE: key.path: what is wrong (what is expected)``.  Key paths use 0-based array
indexes as they appear in the file: ``site[1].host[0].ipv4``, ``check[2].to``.

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
  delay, and no two sites behind NAT that would have to peer with each other.

Keys reserved for later versions (IPv6 underlay) are part of the schema so they
validate by type, but a non-default value is rejected with a message saying it is
not implemented yet.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core.config import describe_value
from l2bridge.errors import UsageError

NAME_MAX = 12
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
MAX_SITES = 200
MAX_HOSTS_PER_SITE = 200
GATEWAY_MODES = ("l2bridge", "vxlan")
DEFAULT_LAN_IPV4 = "10.77.0.0/16"
DEFAULT_LAN_IPV6 = "fd00:77::/64"
DEFAULT_MTU = 1500
DEFAULT_KEEPALIVE_S = 1.0
DEFAULT_DEAD_AFTER_S = 3.0
MIN_MTU = 576
DEFAULT_WAN_SEED = 1
MAX_MTU = 9000


class ScenarioError(UsageError):
    """A scenario problem; ``str()`` is ``FILE: key.path: message`` on one line."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        super().__init__(f"{path}: {key}: {message}")


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
    nat: bool = False  # per site only (validation rejects it here)
    seed: int = DEFAULT_WAN_SEED  # the relay's random decisions
    ipv6: bool = False  # reserved


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
    nat: bool = False

    @property
    def needs_relay(self) -> bool:
        """Delay, jitter and reordering live in the relay; it is inserted only for them."""
        return self.relay or bool(self.delay_ms or self.jitter_ms or self.reorder_percent)

    @property
    def needs_nft(self) -> bool:
        return bool(self.loss_percent or self.duplicate_percent or self.nat)


@dataclass(frozen=True, slots=True)
class Lan:
    """Addressing shared by every LAN (all sites form one layer-2 segment)."""

    ipv4: str = DEFAULT_LAN_IPV4
    ipv6: str | None = DEFAULT_LAN_IPV6
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True, slots=True)
class Check:
    """One check: a kind, its parameters (defaults filled in) and a timeout."""

    kind: str
    name: str
    params: Mapping[str, Any]
    timeout_s: float
    index: int


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
        values = {k: getattr(self.wan, k) for k in LINK_KEYS if k != "nat"}
        values.update(self.site(name).wan)
        return Link(**values)

    def host_refs(self) -> list[str]:
        """Every host as ``"site.host"``, in file order."""
        return [f"{s.name}.{h.name}" for s in self.sites for h in s.hosts]


# ---------------------------------------------------------------- schemas

_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Param:
    """One key of a table: its type name, a default (or required) and a checker."""

    kind: str  # "str" | "int" | "float" | "bool" | "host" | "str_list" | "table"
    default: Any = _REQUIRED
    check: Callable[[Any], str | None] | None = None  # returns a problem or None


def _range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not lo <= value <= hi:
            return f"expected a number in {lo:g}..{hi:g}, found {value!r}"
        return None

    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in options:
            wanted = " or ".join(f'"{o}"' for o in options)
            return f"expected {wanted}, found {describe_value(value)}"
        return None

    return check


def _not_yet(what: str, default: Any) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value != default:
            return f"{what}: not implemented in this version of the lab (remove the key)"
        return None

    return check


_MTU = _range(MIN_MTU, MAX_MTU)
FAMILIES = ("ipv4", "ipv6")


def _families(value: Any) -> str | None:
    if not value or len(set(value)) != len(value) or not set(value) <= set(FAMILIES):
        return f'expected a non-empty list of distinct "ipv4", "ipv6", found {value!r}'
    return None

LAB_SCHEMA: dict[str, Param] = {
    "name": Param("str", None),
    "description": Param("str", ""),
    "gateway": Param("str", "l2bridge", _choice(*GATEWAY_MODES)),
    "keepalive": Param("float", DEFAULT_KEEPALIVE_S, _range(0.1, 60)),
    "dead_after": Param("float", DEFAULT_DEAD_AFTER_S, _range(0.2, 600)),
    "insecure": Param("bool", False),  # true: cleartext gateways (the demonstration only)
}
LAN_SCHEMA: dict[str, Param] = {
    "ipv4": Param("str", DEFAULT_LAN_IPV4),
    "ipv6": Param("str", DEFAULT_LAN_IPV6),
    "mtu": Param("int", DEFAULT_MTU, _MTU),
}
def _per_site_nat(value: Any) -> str | None:
    if value:
        return ("NAT is per site: set it in the site's own table, "
                "[[site]] wan = { nat = true } (remove it from [wan])")
    return None


_PERCENT = _range(0, 100)
LOSS_PATTERNS = ("random", "periodic")  # periodic: every Nth packet, the same in every run
# The keys of one site link: [wan] holds their defaults, [[site]] wan = {...} overrides.
SITE_WAN_SCHEMA: dict[str, Param] = {
    "mtu": Param("int", DEFAULT_MTU, _MTU),
    "rate_mbit": Param("float", None, _range(0.01, 10_000)),
    "loss_percent": Param("float", 0.0, _PERCENT),
    "duplicate_percent": Param("float", 0.0, _PERCENT),
    "delay_ms": Param("float", 0.0, _range(0, 10_000)),
    "jitter_ms": Param("float", 0.0, _range(0, 10_000)),
    "reorder_percent": Param("float", 0.0, _PERCENT),
    "loss_pattern": Param("str", "random", _choice(*LOSS_PATTERNS)),
    "relay": Param("bool", False),
    "nat": Param("bool", False),
}
LINK_KEYS = tuple(SITE_WAN_SCHEMA)
WAN_SCHEMA: dict[str, Param] = {
    **SITE_WAN_SCHEMA,
    "nat": Param("bool", False, _per_site_nat),
    "seed": Param("int", DEFAULT_WAN_SEED, _range(0, 2**32 - 1)),
    "ipv6": Param("bool", False, _not_yet("an IPv6 underlay", False)),
}
SITE_SCHEMA: dict[str, Param] = {
    "name": Param("str"),
    "hub": Param("bool", False),
    "l2bridge": Param("table", None),
    "wan": Param("table", None),
    "host": Param("table_list", None),
}
HOST_SCHEMA: dict[str, Param] = {
    "name": Param("str"),
    "ipv4": Param("str", None),
    "ipv6": Param("str", None),
    "mac": Param("str", None),
    "vlan": Param("int", None, _range(1, 4094)),
}
TOP_SCHEMA = ("lab", "lan", "wan", "site", "check")
# Keys of the daemon's own [site] table the lab writes itself.
L2BRIDGE_OWNED = frozenset(
    {"name", "listen", "bridge", "tap", "interfaces", "hub", "control", "peer"}
)

_COMMON_CHECK = {
    "kind": Param("str"),
    "name": Param("str", None),
    "timeout": Param("float", None, _range(0.1, 3600)),
}
CHECK_SCHEMAS: dict[str, dict[str, Param]] = {
    "ping": {
        "from": Param("host"),
        "to": Param("host"),
        "count": Param("int", 3, _range(1, 1000)),
        "size": Param("int", 56, _range(0, 65000)),
        "dont_fragment": Param("bool", False),
        "ipv6": Param("bool", False),
        "expect": Param("str", "pass", _choice("pass", "fail")),
        # a lossy path: pass when at least this share of the echoes sent was answered
        "min_received_percent": Param("float", None, _range(0, 100)),
    },
    "reachability": {
        "count": Param("int", 1, _range(1, 100)),
        "families": Param("str_list", list(FAMILIES), _families),
        "sample": Param("int", None, _range(1, 1_000_000)),
    },
    "iperf3": {
        "from": Param("host"),
        "to": Param("host"),
        "seconds": Param("float", 2.0, _range(0.5, 600)),
        "udp": Param("bool", False),
        "bitrate": Param("str", None),
        "parallel": Param("int", 1, _range(1, 32)),
        "min_mbit_s": Param("float", None, _range(0, 1_000_000)),
        "max_lost_percent": Param("float", None, _range(0, 100)),
    },
    "dhcp": {
        "server": Param("host"),
        "client": Param("host"),
        "range_start": Param("str", None),
        "range_end": Param("str", None),
    },
    "broadcast_once": {
        "from": Param("host"),
        "count": Param("int", 5, _range(1, 10_000)),
    },
    "unicast_isolation": {
        "from": Param("host"),
        "to": Param("host"),
        "count": Param("int", 5, _range(1, 10_000)),
    },
    "mtu": {
        "from": Param("host"),
        "to": Param("host"),
        "size": Param("int", 1472, _range(0, 65000)),
        "mode": Param("str", "fixed", _choice("fixed", "search")),
    },
    "restart": {
        "site": Param("str"),
        "from": Param("host"),
        "to": Param("host"),
        "within_s": Param("float", 5.0, _range(0.1, 600)),
    },
    "command": {
        "host": Param("host"),
        "argv": Param("str_list", None),
        "shell": Param("str", None),
        "expect_status": Param("int", 0, _range(0, 255)),
        "expect_output": Param("str", None),
        "regex": Param("bool", False),
    },
    "vlan_tags": {
        "from": Param("host"),
        "to": Param("host"),
        "count": Param("int", 5, _range(1, 10_000)),
    },
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
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(path, "-", f"not UTF-8 text (byte {e.start})") from None
    return parse_scenario(text, path)


def parse_scenario(text: str, path: str = "<string>") -> Scenario:
    """Validate scenario ``text``; ``path`` names the file in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(path, "-", f"TOML syntax error: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ScenarioError(
            path, "-",
            "nested too deeply to parse (arrays or inline tables inside each other); flatten it",
        ) from None
    return _Parser(path).scenario(doc)


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (known keys: {', '.join(sorted(known))})"


_TYPE_NAMES = {
    "str": "a string",
    "host": 'a host reference "site.host"',
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "table": "a table",
    "table_list": "an array of tables",
    "str_list": "an array of strings",
}


class _Parser:
    def __init__(self, path: str, vlans: Mapping[str, int | None] | None = None) -> None:
        self.path = path
        self.vlans: dict[str, int | None] = dict(vlans or {})  # host ref -> VLAN

    def fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(self.path, key, message)

    def table(self, value: Any, key: str, schema: Mapping[str, Param]) -> dict[str, Any]:
        """Check ``value`` against ``schema``; return it with defaults filled in."""
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, found {describe_value(value)}")
        for k in value:
            if k not in schema:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f'unknown key "{k}"' + _suggest(k, list(schema)))
        out: dict[str, Any] = {}
        for name, param in schema.items():
            where = f"{key}.{name}" if key else name
            if name not in value:
                if param.default is _REQUIRED:
                    raise self.fail(where, f"missing (expected {_TYPE_NAMES[param.kind]})")
                out[name] = param.default
                continue
            v = self.typed(value[name], where, param.kind)
            if param.check is not None:
                problem = param.check(v)
                if problem:
                    raise self.fail(where, problem)
            out[name] = v
        return out

    def typed(self, v: Any, where: str, kind: str) -> Any:
        ok: bool
        if kind in ("str", "host"):
            ok = isinstance(v, str)
        elif kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif kind == "float":
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            if ok:
                v = float(v)
        elif kind == "bool":
            ok = isinstance(v, bool)
        elif kind == "table":
            ok = isinstance(v, dict)
        elif kind == "table_list":
            ok = isinstance(v, list) and all(isinstance(x, dict) for x in v)
        else:
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        if not ok:
            raise self.fail(where, f"expected {_TYPE_NAMES[kind]}, found {describe_value(v)}")
        return v

    def name(self, value: str, where: str) -> str:
        if len(value) > NAME_MAX:
            raise self.fail(
                where,
                f'name "{value}" is {len(value)} chars; at most {NAME_MAX} so interface '
                "and namespace names stay short (shorten it)",
            )
        if not NAME_RE.match(value):
            raise self.fail(
                where,
                f'name "{value}" must start with a-z and contain only a-z, 0-9 and "-"',
            )
        return value

    # -- sections

    def scenario(self, doc: dict[str, Any]) -> Scenario:
        for k in doc:
            if k not in TOP_SCHEMA:
                raise self.fail(k, f'unknown key "{k}"' + _suggest(k, list(TOP_SCHEMA)))
        lab = self.table(doc.get("lab", {}), "lab", LAB_SCHEMA)
        if lab["dead_after"] <= lab["keepalive"]:
            raise self.fail(
                "lab.dead_after",
                f"must be greater than lab.keepalive ({lab['keepalive']:g}), "
                f"found {lab['dead_after']:g}",
            )
        lan = self.lan(doc.get("lan", {}))
        wan = Wan(**self.table(doc.get("wan", {}), "wan", WAN_SCHEMA))
        sites = self.sites(doc.get("site"), lan)
        self.links(wan, sites)
        refs = {f"{s.name}.{h.name}" for s in sites for h in s.hosts}
        self.vlans = {f"{s.name}.{h.name}": h.vlan for s in sites for h in s.hosts}
        checks = self.checks(doc.get("check", []), refs, {s.name for s in sites})
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
        )

    def lan(self, value: Any) -> Lan:
        t = self.table(value, "lan", LAN_SCHEMA)
        for key in ("ipv4", "ipv6"):
            try:
                net = ipaddress.ip_network(t[key], strict=True)
            except ValueError as e:
                raise self.fail(f"lan.{key}", f"expected a network like "
                                f"{DEFAULT_LAN_IPV4 if key == 'ipv4' else DEFAULT_LAN_IPV6}: {e}"
                                ) from None
            if net.version != (4 if key == "ipv4" else 6):
                raise self.fail(f"lan.{key}", f"expected an IPv{key[-1]} network, found {net}")
            if net.num_addresses < 4:
                raise self.fail(f"lan.{key}", f"network {net} is too small for hosts")
        return Lan(ipv4=t["ipv4"], ipv6=t["ipv6"], mtu=t["mtu"])

    def sites(self, value: Any, lan: Lan) -> tuple[Site, ...]:
        if value is None:
            raise self.fail("site", "missing (expected at least two [[site]] tables)")
        value = self.typed(value, "site", "table_list")
        if len(value) < 2:
            raise self.fail("site", f"expected at least two [[site]] tables, found {len(value)}")
        if len(value) > MAX_SITES:
            raise self.fail("site", f"at most {MAX_SITES} sites, found {len(value)}")
        sites: list[Site] = []
        seen: dict[str, int] = {}
        hub_at: str | None = None
        addresses: dict[str, str] = {}
        macs: dict[str, str] = {}
        v4 = ipaddress.ip_network(lan.ipv4)
        v6 = ipaddress.ip_network(lan.ipv6) if lan.ipv6 else None
        for i, raw in enumerate(value):
            key = f"site[{i}]"
            t = self.table(raw, key, SITE_SCHEMA)
            name = self.name(t["name"], f"{key}.name")
            if name in seen:
                raise self.fail(
                    f"{key}.name", f'duplicate site name "{name}" (also site[{seen[name]}])'
                )
            seen[name] = i
            if t["hub"]:
                if hub_at is not None:
                    raise self.fail(
                        f"{key}.hub", f"only one hub site is supported ({hub_at} is the hub)"
                    )
                hub_at = key
            extra = t["l2bridge"] or {}
            for k, v in extra.items():
                if k in L2BRIDGE_OWNED:
                    raise self.fail(
                        f"{key}.l2bridge.{k}", f'"{k}" is set by the lab itself (remove it)'
                    )
                problem = _daemon_value(v)
                if problem:
                    raise self.fail(f"{key}.l2bridge.{k}", problem)
            link: dict[str, Any] = {}
            if t["wan"] is not None:
                given = self.table(t["wan"], f"{key}.wan", SITE_WAN_SCHEMA)
                link = {k: given[k] for k in t["wan"]}
            hosts = self.hosts(t["host"] or [], key, v4, v6, addresses, macs)
            sites.append(
                Site(name=name, hosts=hosts, hub=t["hub"], l2bridge=extra, wan=link)
            )
        return tuple(sites)

    def links(self, wan: Wan, sites: tuple[Site, ...]) -> None:
        """Cross-key rules of every effective site link; errors name where the value came from.

        - jitter never exceeds the delay (a frame is never due before it arrived);
        - reordering needs a delay: a frame overtakes only frames still held back;
        - two sites that peer with each other are never both behind NAT (neither
          could open the path), so a mesh has at most one NAT site, and with a hub
          either the hub or any spokes may be behind NAT.
        """
        hub = next((s for s in sites if s.hub), None)
        natted: list[tuple[int, Site]] = []
        for i, site in enumerate(sites):
            values = {k: getattr(wan, k) for k in LINK_KEYS if k != "nat"}
            values.update(site.wan)
            link = Link(**values)

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
            if link.nat:
                natted.append((i, site))
        if len(natted) < 2 or (hub is not None and not hub.wan.get("nat")):
            return
        # A mesh: the second NAT site clashes with the first; with a NAT hub: the
        # first NAT spoke clashes with the hub.
        (_, a), (j, b) = natted[0], natted[1]
        if hub is not None:
            a = hub
            j, b = next((j, s) for j, s in natted if s is not hub)
        raise self.fail(
            f"site[{j}].wan.nat",
            f'sites "{a.name}" and "{b.name}" would both be behind NAT and peer with each '
            "other, so neither could reach the other (at most one side of each peering may "
            "be behind NAT)",
        )

    def hosts(
        self,
        value: list[dict[str, Any]],
        site_key: str,
        v4: ipaddress.IPv4Network | ipaddress.IPv6Network,
        v6: ipaddress.IPv4Network | ipaddress.IPv6Network | None,
        addresses: dict[str, str],
        macs: dict[str, str],
    ) -> tuple[Host, ...]:
        if not value:
            raise self.fail(f"{site_key}.host", "expected at least one [[site.host]] table")
        if len(value) > MAX_HOSTS_PER_SITE:
            raise self.fail(
                f"{site_key}.host", f"at most {MAX_HOSTS_PER_SITE} hosts, found {len(value)}"
            )
        hosts: list[Host] = []
        seen: dict[str, int] = {}
        for j, raw in enumerate(value):
            key = f"{site_key}.host[{j}]"
            t = self.table(raw, key, HOST_SCHEMA)
            name = self.name(t["name"], f"{key}.name")
            if name in ("gw", "sw"):
                raise self.fail(f"{key}.name", f'"{name}" is reserved for the site\'s own nodes')
            if name in seen:
                raise self.fail(
                    f"{key}.name",
                    f'duplicate host name "{name}" (also {site_key}.host[{seen[name]}])',
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
            if t["mac"] is not None:
                mac = t["mac"].lower()
                if not _is_unicast_mac(mac):
                    raise self.fail(
                        f"{key}.mac",
                        f'expected a unicast MAC like "02:00:00:00:00:01", found "{t["mac"]}"',
                    )
                if mac in macs:
                    raise self.fail(f"{key}.mac", f"MAC {mac} clashes with {macs[mac]}")
                macs[mac] = key
                t["mac"] = mac
            hosts.append(Host(name=name, ipv4=t["ipv4"], ipv6=t["ipv6"], mac=t["mac"],
                              vlan=t["vlan"]))
        return tuple(hosts)

    def checks(self, value: Any, refs: set[str], sites: set[str]) -> tuple[Check, ...]:
        value = self.typed(value, "check", "table_list")
        checks: list[Check] = []
        for i, raw in enumerate(value):
            key = f"check[{i}]"
            kind = raw.get("kind")
            if kind is None:
                known = ", ".join(CHECK_SCHEMAS)
                raise self.fail(f"{key}.kind", f"missing (expected one of: {known})")
            if not isinstance(kind, str):
                raise self.fail(f"{key}.kind", f"expected a string, found {describe_value(kind)}")
            if kind not in CHECK_SCHEMAS:
                close = difflib.get_close_matches(kind, list(CHECK_SCHEMAS), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise self.fail(
                    f"{key}.kind",
                    f'unknown check kind "{kind}"{hint}; known: {", ".join(CHECK_SCHEMAS)}',
                )
            t = self.table(raw, key, {**_COMMON_CHECK, **CHECK_SCHEMAS[kind]})
            for pname, param in CHECK_SCHEMAS[kind].items():
                if param.kind == "host" and t[pname] not in refs:
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
            if kind == "restart" and t["site"] not in sites:
                raise self.fail(
                    f"{key}.site", f'no site "{t["site"]}" (one of: {", ".join(sorted(sites))})'
                )
            params = {k: v for k, v in t.items() if k not in _COMMON_CHECK}
            name = t["name"] or _default_check_name(kind, params)
            timeout = t["timeout"] if t["timeout"] is not None else CHECK_TIMEOUT_S[kind]
            checks.append(Check(kind=kind, name=name, params=params, timeout_s=timeout, index=i))
        return tuple(checks)

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
            if t["argv"] is not None and not t["argv"]:
                raise self.fail(f"{key}.argv", "expected a non-empty array of strings")
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
    return _Parser(path, vlans).checks([dict(raw)], refs, sites)[0]


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


def _is_unicast_mac(mac: str) -> bool:
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
        return False
    first = int(mac[:2], 16)
    return not first & 1 and mac != "00:00:00:00:00:00"


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
    suffix = " ipv6" if params.get("ipv6") else ""
    return f"{kind}{suffix} {params['from']} → {params['to']}"
