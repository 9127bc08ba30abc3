"""Site configuration: one TOML file per site -> frozen dataclasses.

Flow: 1. read the file (``load_config``) 2. decode and parse TOML
(``schema.Checker.parse``) 3. check and convert the tables against ``TOP_SCHEMA``
(``config_from_dict``, through ``l2bridge.core.schema``): unknown keys first,
then each key in the order of the file format below (types, ranges, names,
endpoints, keys, MACs) 4. the checks that relate keys to each other (tap and
bridge, fragments, dead_after > keepalive, a private key unless insecure, peer
names, endpoints and keys).

Every problem raises ``ConfigError`` whose ``str()`` is one line,
``{path}: {key}: {message}``, where ``key`` is a dotted path such as
``site.listen``, ``site.ageng`` (an unknown key) or ``peer[0].endpoint`` (peers by
0-based index), or ``-`` for the file as a whole; the message says what was
expected and what was found, worded as ``schema`` words it for the scenarios too.

File format (every key of [site] but ``name`` is optional)::

    [site]
    name = "london"                  # 1..32 of [A-Za-z0-9_.-]
    listen = "0.0.0.0:55555"         # IP literal; "[::]:55555" for IPv6 (dual-stack)
    bridge = "br0"
    tap = "l2b0"
    interfaces = ["eth1"]            # LAN NICs to enslave
    hub = false                      # relay between peers
    mtu = 1500                       # LAN MTU, 576..9000
    wan_mtu = 1500                   # underlay path MTU, 576..9000
    mss_clamp = false                # false | true | 536..9000
    offload = true                   # super-frames from the tap, UDP GSO/GRO; false: per frame
    workers = 2                      # processes, one per tap queue (default: cores / 2)
    low_latency = false              # true: CPUs poll instead of halting while the site runs
    ageing = 300                     # seconds, 0..86400 (0 = never learn)
    max_entries = 8192
    max_entries_per_peer = 1024
    keepalive = 5                    # seconds, 0.1..3600
    dead_after = 15                  # seconds, > keepalive, <= 86400
    control = "/run/l2bridge/london.sock"
    log_level = "info"
    private_key_file = "/etc/l2bridge/london.key"   # required unless insecure = true
    insecure = false                 # true: cleartext, filtered by address only (labs)
    pinned_macs = []                 # MACs that live here: no peer may claim them
    rekey_after = 120                # seconds; all session timers scale with it (tests)
    metrics = "127.0.0.1:9587"       # optional: serve Prometheus /metrics here
    loop_protect = true              # probes break loops through another layer-2 path
    loop_probe_interval = 1          # seconds, 0.1..60; a loop is released 3 intervals after
    storm_control = true             # token buckets on flooded frames, per peer and direction
    storm_broadcast = 1000           # frames/s, 1..1000000 (also storm_multicast,
    storm_burst = 2                  #   storm_unknown_unicast); bucket depth in seconds of rate
    mac_flap_detect = true           # a MAC moving > mac_flap_moves times in mac_flap_window
    mac_flap_moves = 5               #   seconds is held where it was for mac_flap_hold seconds
    dhcp_servers = ["berlin"]        # optional: the peers whose DHCP servers and IPv6 routers
                                     #   this site's hosts may use ([]: only local ones)
    arp_suppress = false             # answer ARP/NS for addresses known behind peers
    arp_max_bindings = 8192
    relay = true                     # pass sealed datagrams between two of our peers that
                                     # cannot reach each other directly
    resolve_interval = 60            # seconds: endpoints given as DNS names are resolved again
    tcp_send_queue = 65536           # bytes a TCP link queues; beyond, frames are dropped
                                     # (0: no bound, the sender waits - for comparison only)

    [[peer]]
    name = "berlin"
    endpoint = "203.0.113.7:55555"   # optional; HOST may be a DNS name
    public_key = "base64..."         # required unless insecure = true
    preshared_key_file = "/etc/l2bridge/berlin.psk"   # optional
    allowed_macs = []                # optional: only these source MACs from this peer
    max_macs = 1024                  # MACs learned behind this peer (default max_entries_per_peer)
    persistent_keepalive = 25        # seconds: the longest silence towards this peer
    storm_broadcast = 5000           # optional: this peer's own storm limits (storm_multicast,
                                     #   storm_unknown_unicast, storm_burst); the site's otherwise
    transport = "auto"               # "udp", "tcp", or "auto": UDP, TCP when UDP gets nowhere
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core import keys, schema
from l2bridge.core.budget import MtuBudget
from l2bridge.core.caps import MAX_WORKERS, default_workers
from l2bridge.core.ether import is_multicast, parse_mac
from l2bridge.core.files import FileProblem, read_regular_file
from l2bridge.core.keys import Secrets
from l2bridge.core.loop import DEFAULT_INTERVAL_S, INTERVAL_MAX_S, INTERVAL_MIN_S
from l2bridge.core.neigh import DEFAULT_MAX_BINDINGS
from l2bridge.core.schema import (
    REQUIRED,
    Checker,
    Param,
    SchemaError,
    Unexpected,
    duplicate,
    expected,
    format_number,
    missing,
    quote,
)
from l2bridge.core.storm import (
    BURST_MAX_S,
    BURST_MIN_S,
    DEFAULT_BURST_S,
    DEFAULT_RATE_PER_S,
    RATE_MAX_PER_S,
    RATE_MIN_PER_S,
    StormLimits,
)
from l2bridge.core.switch import MAC_FLAP_HOLD_S, MAC_FLAP_MOVES, MAC_FLAP_WINDOW_S
from l2bridge.core.wire import MAX_FRAGMENTS

DEFAULT_PORT = 55555
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_METRICS_PORT = 9587
DEFAULT_BRIDGE = "br0"
DEFAULT_TAP = "l2b0"
DEFAULT_MTU = 1500
DEFAULT_WAN_MTU = 1500
DEFAULT_AGEING_S = 300.0
DEFAULT_MAX_ENTRIES = 8192
DEFAULT_MAX_ENTRIES_PER_PEER = 1024
DEFAULT_KEEPALIVE_S = 5.0
DEFAULT_DEAD_AFTER_S = 15.0
DEFAULT_LOG_LEVEL = "info"
CONTROL_DIR = "/run/l2bridge"

NAME_MAX_LEN = 32
MTU_MIN, MTU_MAX = 576, 9000
MSS_MIN, MSS_MAX = 536, 9000
AGEING_MAX_S = 86400.0
ENTRIES_MIN, ENTRIES_MAX = 1, 1_000_000
KEEPALIVE_MIN_S, KEEPALIVE_MAX_S = 0.1, 3600.0
DEAD_AFTER_MAX_S = 86400.0
IFNAMSIZ = 16  # kernel limit including the NUL: names are at most 15 bytes
SUN_PATH_MAX = 107  # sockaddr_un.sun_path minus the NUL
LOG_LEVELS = ("debug", "info", "warning", "error")
CONFIG_MAX_BYTES = 1 << 20  # a site config is a few kB; refuse to read more

DEFAULT_PERSISTENT_KEEPALIVE_S = 25.0
DEFAULT_TRANSPORT = "auto"
TRANSPORTS = ("auto", "udp", "tcp")  # l2bridge.core.paths.MODES
DEFAULT_RESOLVE_INTERVAL_S = 60.0
RESOLVE_INTERVAL_MIN_S = 1.0
DEFAULT_TCP_SEND_QUEUE = 65536
TCP_SEND_QUEUE_MAX = 64 * 1024 * 1024
DEFAULT_INSECURE = False
DEFAULT_REKEY_AFTER_S = 120.0  # WireGuard's REKEY_AFTER_TIME; every session timer scales with it
REKEY_AFTER_MIN_S = 1.0

MAC_FLAP_MOVES_MAX = 1000
MAC_FLAP_TIME_MIN_S, MAC_FLAP_TIME_MAX_S = 1.0, 86400.0
STORM_KEYS = ("storm_broadcast", "storm_multicast", "storm_unknown_unicast", "storm_burst")

KEY_FILE_RULE = "a path to a key file"
MAC_RULE = 'a unicast MAC address like "02:00:00:00:00:01"'  # the lab's host MACs too

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(SchemaError):
    """A configuration problem; ``str()`` is ``{path}: {key}: {message}`` on one line."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A UDP endpoint; ``host`` is a canonical IP literal, or a DNS name for peers."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_ipv6(self) -> bool:
        """True for an IPv6 literal (a DNS name is False until it is resolved)."""
        return ":" in self.host


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A remote site: its name and, unless it dials in, where to reach it."""

    name: str
    endpoint: Endpoint | None
    public_key: bytes | None = None  # raw 32 bytes (None only with insecure = true)
    preshared_key_file: str | None = None
    allowed_macs: frozenset[bytes] | None = None  # None: any source MAC
    max_macs: int | None = None  # None: the site's max_entries_per_peer
    persistent_keepalive_s: float = DEFAULT_PERSISTENT_KEEPALIVE_S
    transport: str = DEFAULT_TRANSPORT  # "auto" | "udp" | "tcp" (l2bridge.core.paths)
    storm: StormLimits | None = None  # None: the site's limits


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Everything one site needs to run; times in seconds, sizes in bytes."""

    name: str
    listen: Endpoint
    bridge: str
    tap: str
    interfaces: tuple[str, ...]
    hub: bool
    mtu: int
    wan_mtu: int
    mss_clamp: int | None  # None = off
    offload: bool
    ageing_s: float
    max_entries: int
    max_entries_per_peer: int
    keepalive_s: float
    dead_after_s: float
    control: str
    log_level: str
    peers: tuple[PeerConfig, ...]
    path: str
    private_key_file: str | None = None
    insecure: bool = False
    pinned_macs: frozenset[bytes] = frozenset()
    rekey_after_s: float = DEFAULT_REKEY_AFTER_S
    workers: int = field(default_factory=default_workers)
    low_latency: bool = False
    metrics: Endpoint | None = None  # where /metrics is served (None: nowhere)
    # Layer-2 safety (README "Layer-2 safety"); every one can change on a reload.
    loop_protect: bool = True
    loop_probe_interval_s: float = DEFAULT_INTERVAL_S
    storm_control: bool = True
    storm: StormLimits = StormLimits()
    mac_flap_detect: bool = True
    mac_flap_moves: int = MAC_FLAP_MOVES
    mac_flap_window_s: float = MAC_FLAP_WINDOW_S
    mac_flap_hold_s: float = MAC_FLAP_HOLD_S
    dhcp_servers: tuple[str, ...] | None = None  # peer names; None: every peer
    arp_suppress: bool = False
    arp_max_bindings: int = DEFAULT_MAX_BINDINGS
    relay: bool = True
    resolve_interval_s: float = DEFAULT_RESOLVE_INTERVAL_S
    tcp_send_queue: int = DEFAULT_TCP_SEND_QUEUE
    # The parsed TOML this config came from: what the leader hands its followers
    # (they never read the file themselves), and what a reload compares.
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


# ---------------------------------------------------------------- endpoints


def parse_endpoint(text: str, *, ip_only: bool = False) -> Endpoint:
    """Parse ``"HOST:PORT"`` or ``"[V6]:PORT"``; raise ``ValueError`` with a one-line reason.

    With ``ip_only`` the host must be an IP literal; otherwise a DNS name is
    accepted too (it is resolved later, by the daemon).
    """
    shape = '"HOST:PORT" or "[IPV6]:PORT"'
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"expected {shape}, found {quote(text)}")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address inside the brackets, found {quote(host)}"
            ) from None
        host = str(address)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected {shape}, found {quote(text)}")
        if ":" in host:
            raise ValueError(
                f"an IPv6 address needs brackets, like \"[::1]:{DEFAULT_PORT}\";"
                f" found {quote(text)}"
            )
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if ip_only:
                raise ValueError(
                    f"host {quote(host)} is not an IP address; expected an IP literal"
                    f' like "0.0.0.0:{DEFAULT_PORT}" or "[::]:{DEFAULT_PORT}"'
                ) from None
            if not _is_dns_name(host):
                raise ValueError(
                    f"host {quote(host)} is neither an IPv4 address nor a DNS name"
                ) from None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"port {quote(port_text)} is not a number; expected 1..65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range; expected 1..65535")
    return Endpoint(host, port)


def endpoint_problem(endpoint: Endpoint, listen: Endpoint) -> str | None:
    """Why a peer's ``endpoint`` can never be a remote site, or None.

    Broadcast, multicast and unspecified addresses are nobody's; the site's own
    listen address (or a loopback address on its port, when it listens on every
    address) is the site itself.  DNS names are judged once resolved.
    """
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    shown = quote(str(endpoint))
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return f"{shown} is the broadcast address; expected the address of one remote site"
    if address.is_multicast:
        return f"{shown} is a multicast address; expected the address of one remote site"
    if address.is_unspecified:
        return f"{shown} is the unspecified address; expected the address of one remote site"
    own = ipaddress.ip_address(listen.host)
    if endpoint.port == listen.port and (
        address == own or (own.is_unspecified and address.is_loopback)
    ):
        return (f"{shown} is this site's own listen address ({quote(str(listen))});"
                " expected another site's endpoint")
    return None


def _is_dns_name(host: str) -> bool:
    """RFC 1123 host name: dot-separated labels, last label not all digits."""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    if labels[-1].isdigit():
        return False
    return all(_DNS_LABEL_RE.fullmatch(label) for label in labels)


# ---------------------------------------------------------------- the schema


def _ifname(value: str) -> str:
    """A name the kernel takes for a network interface (``schema`` hook)."""
    size = len(value.encode("utf-8"))
    if size >= IFNAMSIZ:
        raise Unexpected(f" ({size} bytes)")
    if not value or value in (".", "..") or any(c in "/:\0" or c.isspace() for c in value):
        raise Unexpected()
    return value


def _unicast_mac(value: str) -> bytes:
    """A unicast MAC address, as 6 bytes (``schema`` hook)."""
    try:
        mac = parse_mac(value)
    except ValueError:
        raise Unexpected() from None
    if is_multicast(mac) or mac == bytes(6):
        raise Unexpected()
    return mac


def _control(value: str) -> str:
    """A path that fits in ``sockaddr_un`` (``schema`` hook)."""
    size = len(value.encode("utf-8"))
    if not value or "\0" in value or size > SUN_PATH_MAX:
        raise Unexpected(f" ({size} bytes)")
    return value


def _public_key(value: str) -> bytes:
    """An X25519 public key: base64 of 32 bytes, not a low-order point (``schema`` hook)."""
    raw = keys.decode_key(value, what="public key")  # KeyFormatError is a ValueError
    if keys.is_low_order(raw):
        raise ValueError("a low-order point (no shared secret possible); expected a real key")
    return raw


def _ifname_param(default: Any = REQUIRED) -> Param:
    return schema.string(
        f"a Linux interface name of 1 to {IFNAMSIZ - 1} bytes without / : or spaces", default,
        check=_ifname,
    )


def _seconds(low: float, high: float, default: float | None) -> Param:
    return schema.number(low, high, default, unit="seconds")


def _macs(default: Any) -> Param:
    return schema.array(MAC, 'MAC addresses like ["02:00:00:00:00:01"]', default)


def _rate(default: Any) -> Param:
    return schema.number(RATE_MIN_PER_S, RATE_MAX_PER_S, default, unit="frames per second")


def _storm_keys(default: bool) -> dict[str, Param]:
    """The storm limits: the site's defaults, or absent (None) for a peer of its own."""
    return {
        "storm_broadcast": _rate(DEFAULT_RATE_PER_S if default else None),
        "storm_multicast": _rate(DEFAULT_RATE_PER_S if default else None),
        "storm_unknown_unicast": _rate(DEFAULT_RATE_PER_S if default else None),
        "storm_burst": _seconds(BURST_MIN_S, BURST_MAX_S, DEFAULT_BURST_S if default else None),
    }


NAME = schema.name(_NAME_RE, NAME_MAX_LEN, "A-Z a-z 0-9 _ . -")
MAC = schema.string(MAC_RULE, check=_unicast_mac)
SITE_SCHEMA: dict[str, Param] = {
    "name": NAME,
    "listen": schema.string(
        f'an address like "{DEFAULT_LISTEN}" or "[::]:{DEFAULT_PORT}"', DEFAULT_LISTEN,
        check=lambda text: parse_endpoint(text, ip_only=True),
    ),
    "bridge": _ifname_param(DEFAULT_BRIDGE),
    "tap": _ifname_param(DEFAULT_TAP),
    "interfaces": schema.array(_ifname_param(), 'interface names like ["eth1"]', []),
    "hub": schema.boolean(False),
    "mtu": schema.integer(MTU_MIN, MTU_MAX, DEFAULT_MTU),
    "wan_mtu": schema.integer(MTU_MIN, MTU_MAX, DEFAULT_WAN_MTU),
    "mss_clamp": schema.either(
        f"false, true or an integer from {MSS_MIN} to {MSS_MAX}",
        schema.boolean(), schema.integer(MSS_MIN, MSS_MAX), default=False,
    ),
    "offload": schema.boolean(True),
    "workers": schema.integer(1, MAX_WORKERS, None),  # absent: default_workers()
    "low_latency": schema.boolean(False),
    "ageing": _seconds(0.0, AGEING_MAX_S, DEFAULT_AGEING_S),
    "max_entries": schema.integer(ENTRIES_MIN, ENTRIES_MAX, DEFAULT_MAX_ENTRIES),
    "max_entries_per_peer": schema.integer(ENTRIES_MIN, ENTRIES_MAX,
                                           DEFAULT_MAX_ENTRIES_PER_PEER),
    "keepalive": _seconds(KEEPALIVE_MIN_S, KEEPALIVE_MAX_S, DEFAULT_KEEPALIVE_S),
    "dead_after": _seconds(0.0, DEAD_AFTER_MAX_S, DEFAULT_DEAD_AFTER_S),
    "control": schema.string(  # absent: CONTROL_DIR/<name>.sock
        f"a unix socket path of 1 to {SUN_PATH_MAX} bytes without NUL", None, check=_control
    ),
    "log_level": schema.choice(LOG_LEVELS, DEFAULT_LOG_LEVEL),
    "private_key_file": schema.string(KEY_FILE_RULE, None),  # required unless insecure
    "insecure": schema.boolean(DEFAULT_INSECURE),
    "pinned_macs": _macs([]),
    "rekey_after": _seconds(REKEY_AFTER_MIN_S, DEFAULT_REKEY_AFTER_S, DEFAULT_REKEY_AFTER_S),
    "metrics": schema.string(  # absent: no metrics server
        f'an address like "127.0.0.1:{DEFAULT_METRICS_PORT}" or "[::1]:{DEFAULT_METRICS_PORT}"',
        None, check=lambda text: parse_endpoint(text, ip_only=True),
    ),
    "loop_protect": schema.boolean(True),
    "loop_probe_interval": _seconds(INTERVAL_MIN_S, INTERVAL_MAX_S, DEFAULT_INTERVAL_S),
    "storm_control": schema.boolean(True),
    **_storm_keys(True),
    "mac_flap_detect": schema.boolean(True),
    "mac_flap_moves": schema.integer(1, MAC_FLAP_MOVES_MAX, MAC_FLAP_MOVES),
    "mac_flap_window": _seconds(MAC_FLAP_TIME_MIN_S, MAC_FLAP_TIME_MAX_S, MAC_FLAP_WINDOW_S),
    "mac_flap_hold": _seconds(MAC_FLAP_TIME_MIN_S, MAC_FLAP_TIME_MAX_S, MAC_FLAP_HOLD_S),
    "dhcp_servers": schema.array(NAME, 'peer names like ["berlin"] ([]: none)', None),
    "arp_suppress": schema.boolean(False),
    "arp_max_bindings": schema.integer(ENTRIES_MIN, ENTRIES_MAX, DEFAULT_MAX_BINDINGS),
    "relay": schema.boolean(True),
    "resolve_interval": _seconds(RESOLVE_INTERVAL_MIN_S, DEAD_AFTER_MAX_S,
                                 DEFAULT_RESOLVE_INTERVAL_S),
    "tcp_send_queue": schema.integer(0, TCP_SEND_QUEUE_MAX, DEFAULT_TCP_SEND_QUEUE),
}
PEER_SCHEMA: dict[str, Param] = {
    "name": NAME,
    "endpoint": schema.string(
        f'an endpoint like "203.0.113.7:{DEFAULT_PORT}"', None, check=parse_endpoint
    ),
    "public_key": schema.string("a base64 public key", None, check=_public_key),
    "preshared_key_file": schema.string(KEY_FILE_RULE, None),
    "allowed_macs": _macs(None),  # absent: any source MAC
    "max_macs": schema.integer(ENTRIES_MIN, ENTRIES_MAX, None),
    "persistent_keepalive": _seconds(KEEPALIVE_MIN_S, KEEPALIVE_MAX_S,
                                     DEFAULT_PERSISTENT_KEEPALIVE_S),
    "transport": schema.choice(TRANSPORTS, DEFAULT_TRANSPORT),
    **_storm_keys(False),
}
TOP_SCHEMA: dict[str, Param] = {
    "site": schema.table(SITE_SCHEMA, rule='a table [site] with name = "..."'),
    "peer": schema.tables(PEER_SCHEMA, "peer", []),
}
TOP_KEYS = tuple(TOP_SCHEMA)
SITE_KEYS = tuple(SITE_SCHEMA)
PEER_KEYS = tuple(PEER_SCHEMA)


# ---------------------------------------------------------------- the file


def load_config(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and check the site configuration at ``path`` (never blocks on a FIFO)."""
    path = os.fspath(path)
    try:
        raw, _ = read_regular_file(path, CONFIG_MAX_BYTES)
    except FileProblem as exc:
        raise ConfigError(
            path, "-", f"cannot read the config file ({exc}); expected a readable TOML file"
        ) from None
    return config_from_dict(Checker(ConfigError, path).parse(raw), path)


def parse_config(text: str, path: str = "<string>") -> SiteConfig:
    """Parse TOML ``text`` into a checked ``SiteConfig``."""
    return config_from_dict(Checker(ConfigError, path).parse(text), path)


def config_from_dict(data: Mapping[str, Any], path: str = "<dict>") -> SiteConfig:
    """Check an already parsed TOML document and build the ``SiteConfig``."""
    checker = Checker(ConfigError, path)
    doc = checker.table(data, "", TOP_SCHEMA)
    site = doc["site"]
    name: str = site["name"]
    listen: Endpoint = site["listen"]
    if site["tap"] == site["bridge"]:
        raise checker.fail(
            "site.tap",
            f"{quote(site['tap'])} is also the bridge name; expected a different name for the tap",
        )
    _check_interfaces(checker, site["interfaces"], site["bridge"], site["tap"])
    insecure: bool = site["insecure"]
    budget = MtuBudget.of(mtu=site["mtu"], wan_mtu=site["wan_mtu"],
                          ipv6_underlay=listen.is_ipv6, sealed=not insecure)
    _check_fragments(checker, budget)
    mss_clamp = site["mss_clamp"]
    if isinstance(mss_clamp, bool):  # false: off; true: what fits any inner IP version
        mss_clamp = budget.mss(ipv6_inner=True) if mss_clamp else None
    keepalive_s, dead_after_s = site["keepalive"], site["dead_after"]
    if dead_after_s <= keepalive_s:
        raise checker.fail(
            "site.dead_after", expected(
                f"more than keepalive ({format_number(keepalive_s)} s)",
                format_number(dead_after_s),
            ),
        )
    if site["private_key_file"] is None and not insecure:
        raise checker.fail(
            "site.private_key_file", missing(
                "the path of this site's private key (make one with"
                f" 'l2bridge genkey > /etc/l2bridge/{name}.key'), or insecure = true for a"
                " cleartext lab link"
            ),
        )
    storm = StormLimits(site["storm_broadcast"], site["storm_multicast"],
                        site["storm_unknown_unicast"], site["storm_burst"])
    peers = _peers(checker, doc["peer"], name, listen, insecure, storm)
    dhcp_servers = _dhcp_servers(checker, site["dhcp_servers"], peers)
    workers = site["workers"]
    return SiteConfig(
        name=name,
        listen=listen,
        bridge=site["bridge"],
        tap=site["tap"],
        interfaces=tuple(site["interfaces"]),
        hub=site["hub"],
        mtu=site["mtu"],
        wan_mtu=site["wan_mtu"],
        mss_clamp=mss_clamp,
        offload=site["offload"],
        workers=default_workers() if workers is None else workers,
        low_latency=site["low_latency"],
        ageing_s=site["ageing"],
        max_entries=site["max_entries"],
        max_entries_per_peer=site["max_entries_per_peer"],
        keepalive_s=keepalive_s,
        dead_after_s=dead_after_s,
        control=site["control"] or f"{CONTROL_DIR}/{name}.sock",
        log_level=site["log_level"],
        peers=peers,
        path=path,
        private_key_file=site["private_key_file"],
        insecure=insecure,
        pinned_macs=frozenset(site["pinned_macs"]),
        rekey_after_s=site["rekey_after"],
        metrics=site["metrics"],
        loop_protect=site["loop_protect"],
        loop_probe_interval_s=site["loop_probe_interval"],
        storm_control=site["storm_control"],
        storm=storm,
        mac_flap_detect=site["mac_flap_detect"],
        mac_flap_moves=site["mac_flap_moves"],
        mac_flap_window_s=site["mac_flap_window"],
        mac_flap_hold_s=site["mac_flap_hold"],
        dhcp_servers=dhcp_servers,
        arp_suppress=site["arp_suppress"],
        arp_max_bindings=site["arp_max_bindings"],
        relay=site["relay"],
        resolve_interval_s=site["resolve_interval"],
        tcp_send_queue=site["tcp_send_queue"],
        document=data,
    )


def _dhcp_servers(checker: Checker, names: list[str] | None,
                  peers: tuple[PeerConfig, ...]) -> tuple[str, ...] | None:
    """``dhcp_servers``: distinct names of configured peers (None: every peer)."""
    if names is None:
        return None
    known = [p.name for p in peers]
    seen: dict[str, int] = {}
    for index, item in enumerate(names):
        key = f"site.dhcp_servers[{index}]"
        if item not in known:
            listed = ", ".join(known) if known else "none configured"
            raise checker.fail(key, f"no peer {quote(item)} (expected a [[peer]] name: {listed})")
        if item in seen:
            raise checker.fail(key, duplicate("peer", item, f"site.dhcp_servers[{seen[item]}]"))
        seen[item] = index
    return tuple(names)


def _check_interfaces(checker: Checker, interfaces: list[str], bridge: str, tap: str) -> None:
    """The LAN NICs: distinct, and neither the bridge nor the tap."""
    seen: dict[str, int] = {}
    for index, item in enumerate(interfaces):
        key = f"site.interfaces[{index}]"
        if item == bridge:
            raise checker.fail(
                key, f"{quote(item)} is the bridge itself; expected a LAN NIC to enslave"
            )
        if item == tap:
            raise checker.fail(
                key, f"{quote(item)} is the tap, which is enslaved already; remove it from"
                " interfaces"
            )
        if item in seen:
            raise checker.fail(
                key, duplicate("interface", item, f"site.interfaces[{seen[item]}]")
            )
        seen[item] = index


def _check_fragments(checker: Checker, budget: MtuBudget) -> None:
    """The largest LAN frame must fit in at most 16 fragments over the WAN."""
    if budget.fragments > MAX_FRAGMENTS:
        raise checker.fail(
            "site.mtu",
            f"frames of up to {budget.max_frame} bytes need {budget.fragments} fragments at"
            f" wan_mtu {budget.wan_mtu} (the limit is {MAX_FRAGMENTS}); expected mtu <="
            f" {budget.highest_mtu} or a larger wan_mtu",
        )


def _peers(
    checker: Checker, tables: list[dict[str, Any]], site_name: str, listen: Endpoint,
    insecure: bool, storm: StormLimits,
) -> tuple[PeerConfig, ...]:
    """The [[peer]] tables: unique names and keys, none the site's own, usable endpoints."""
    peers: list[PeerConfig] = []
    seen: dict[str, int] = {}
    keys_seen: dict[bytes, str] = {}
    for index, peer in enumerate(tables):
        prefix = f"peer[{index}]"
        name = peer["name"]
        if name == site_name:
            raise checker.fail(
                f"{prefix}.name",
                f"{quote(name)} is this site's own name; expected another site's name",
            )
        if name in seen:
            raise checker.fail(
                f"{prefix}.name", duplicate("peer name", name, f"peer[{seen[name]}].name")
            )
        seen[name] = index
        endpoint: Endpoint | None = peer["endpoint"]
        if endpoint is not None:
            problem = endpoint_problem(endpoint, listen)
            if problem:
                raise checker.fail(f"{prefix}.endpoint", problem)
            if endpoint.is_ipv6 and not listen.is_ipv6:
                raise checker.fail(
                    f"{prefix}.endpoint",
                    f"IPv6 endpoint {quote(str(endpoint))} but site.listen {quote(str(listen))}"
                    f' is IPv4; listen on "[::]:{listen.port}" to reach IPv6 peers',
                )
        public_key: bytes | None = peer["public_key"]
        key = f"{prefix}.public_key"
        if public_key is None and not insecure:
            raise checker.fail(
                key, missing(
                    "the peer's public key (on the peer: 'l2bridge pubkey < its.key'), or"
                    " insecure = true in [site] for a cleartext lab link"
                ),
            )
        if public_key is not None:
            if public_key in keys_seen:
                raise checker.fail(
                    key, f"the same key as {keys_seen[public_key]}; each peer has its own"
                )
            keys_seen[public_key] = key
        allowed = peer["allowed_macs"]
        own = None
        if any(peer[k] is not None for k in STORM_KEYS):  # the site's limits, where unset
            own = StormLimits(*(storm_value if peer[k] is None else peer[k] for k, storm_value
                                in zip(STORM_KEYS, (storm.broadcast, storm.multicast,
                                                    storm.unknown_unicast, storm.burst_s),
                                       strict=True)))
        transport = peer["transport"]
        if insecure and transport == "tcp":
            raise checker.fail(
                f"{prefix}.transport",
                '"tcp" needs keys: a cleartext site knows a peer only by its UDP address;'
                ' remove insecure = true or use transport = "udp"',
            )
        peers.append(PeerConfig(
            name, endpoint, public_key, peer["preshared_key_file"],
            None if allowed is None else frozenset(allowed), peer["max_macs"],
            peer["persistent_keepalive"], transport, own,
        ))
    return tuple(peers)


# ---------------------------------------------------------------- secrets


def load_secrets(config: SiteConfig) -> Secrets:
    """The site's private key and its peers' pre-shared keys, read and checked.

    Every key file is read as ``keys`` reads it (a regular file, mode 0600, one
    base64 key; never waited on); a peer carrying this site's own public key is
    refused.  Errors are ``KeyFormatError`` naming the config file.  Cleartext
    sites (``insecure = true``) have none.
    """
    if config.insecure:
        return Secrets(None, {})

    try:
        private = keys.read_private_key_file(config.private_key_file)  # type: ignore[arg-type]
        psks = {
            p.name: keys.read_psk_file(p.preshared_key_file)
            for p in config.peers
            if p.preshared_key_file is not None
        }
    except keys.KeyFormatError as exc:
        raise keys.KeyFormatError(f"{config.path}: {exc}") from None
    public = keys.public_key(private)
    for peer in config.peers:
        if peer.public_key == public:
            raise keys.KeyFormatError(
                f"{config.path}: peer {peer.name}: public_key is this site's own key;"
                " expected the peer's key (l2bridge pubkey < the peer's key file)"
            )
    return Secrets(private, psks)
