"""Site configuration: one TOML file per site -> frozen dataclasses.

Flow: 1. read the file (``load_config``) 2. parse TOML (``parse_config``)
3. check and convert the tables (``config_from_dict``): unknown keys first,
then each key in the order of the file format below, then the checks that
relate keys to each other.

Every problem raises ``ConfigError`` whose ``str()`` is one line,
``{path}: {key}: {message}``, where ``key`` is a dotted path such as
``site.listen`` or ``peer[0].endpoint`` (peers by 0-based index), or ``-`` for
the file as a whole; the message says what was expected and what was found.

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
    workers = 2                      # processes, one per tap queue (default: number of cores)
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

    [[peer]]
    name = "berlin"
    endpoint = "203.0.113.7:55555"   # optional; HOST may be a DNS name
    public_key = "base64..."         # required unless insecure = true
    preshared_key_file = "/etc/l2bridge/berlin.psk"   # optional
    allowed_macs = []                # optional: only these source MACs from this peer
    max_macs = 1024                  # MACs learned behind this peer (default max_entries_per_peer)
    persistent_keepalive = 25        # seconds: the longest silence towards this peer
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core.budget import MtuBudget
from l2bridge.core.caps import MAX_WORKERS, default_workers
from l2bridge.core.files import FileProblem, read_regular_file
from l2bridge.core.keys import Secrets
from l2bridge.core.wire import MAX_FRAGMENTS
from l2bridge.errors import UsageError

DEFAULT_PORT = 55555
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
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


TOP_KEYS = ("site", "peer")
SITE_KEYS = (
    "name", "listen", "bridge", "tap", "interfaces", "hub", "mtu", "wan_mtu", "mss_clamp",
    "offload", "workers", "low_latency", "ageing", "max_entries", "max_entries_per_peer",
    "keepalive", "dead_after", "control", "log_level", "private_key_file", "insecure",
    "pinned_macs", "rekey_after",
)
PEER_KEYS = (
    "name", "endpoint", "public_key", "preshared_key_file", "allowed_macs", "max_macs",
    "persistent_keepalive",
)
DEFAULT_PERSISTENT_KEEPALIVE_S = 25.0
DEFAULT_INSECURE = False
DEFAULT_REKEY_AFTER_S = 120.0  # WireGuard's REKEY_AFTER_TIME; every session timer scales with it
REKEY_AFTER_MIN_S = 1.0

_NAME_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{NAME_MAX_LEN}}}")
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_TOML_LINE_RE = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_NAME_RULE = f"1 to {NAME_MAX_LEN} characters from A-Z a-z 0-9 _ . -"
_MISSING = object()


class ConfigError(UsageError):
    """A configuration problem; ``str()`` is ``{path}: {key}: {message}`` on one line."""

    def __init__(self, path: str, key: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.key = key
        self.message = message
        self.line = line
        super().__init__(path, key, message)

    def __str__(self) -> str:
        text = f"{self.path}: {self.key}: {self.message}"
        return " ".join(text.splitlines())


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
            raise ValueError(f"expected {shape}, found {_quote(text)}")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address inside the brackets, found {_quote(host)}"
            ) from None
        host = str(address)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected {shape}, found {_quote(text)}")
        if ":" in host:
            raise ValueError(
                f"an IPv6 address needs brackets, like \"[::1]:{DEFAULT_PORT}\";"
                f" found {_quote(text)}"
            )
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if ip_only:
                raise ValueError(
                    f"host {_quote(host)} is not an IP address; expected an IP literal"
                    f' like "0.0.0.0:{DEFAULT_PORT}" or "[::]:{DEFAULT_PORT}"'
                ) from None
            if not _is_dns_name(host):
                raise ValueError(
                    f"host {_quote(host)} is neither an IPv4 address nor a DNS name"
                ) from None
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"port {_quote(port_text)} is not a number; expected 1..65535")
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
    shown = _quote(str(endpoint))
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
        return (f"{shown} is this site's own listen address ({_quote(str(listen))});"
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


# ---------------------------------------------------------------- messages


def _quote(text: str, limit: int = 40) -> str:
    """Quote a user string for a one-line message (escaped, shortened)."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return json.dumps(text)


def describe_value(value: Any) -> str:
    """Name the TOML type of ``value`` and show it briefly."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({_quote(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return f"a value of type {type(value).__name__}"


def _number(value: float) -> str:
    """Format a number as it would be written in TOML."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


# ---------------------------------------------------------------- reading values


class _Reader:
    """Typed access to one table, raising ``ConfigError`` with the key path."""

    def __init__(self, path: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.table = table

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), message)

    def check_keys(self, known: tuple[str, ...]) -> None:
        _check_keys(self.path, self.prefix, self.table, known)

    def raw(self, name: str, default: Any, rule: str) -> Any:
        value = self.table.get(name, default)
        if value is _MISSING:
            raise self.error(name, f"missing required key; expected {rule}")
        return value

    def string(self, name: str, default: Any, rule: str) -> str:
        value = self.raw(name, default, rule)
        if not isinstance(value, str):
            raise self.error(name, f"expected {rule}, found {describe_value(value)}")
        return value

    def name(self, name: str, default: Any = _MISSING) -> str:
        rule = f"a name of {_NAME_RULE}"
        value = self.string(name, default, rule)
        if not _NAME_RE.fullmatch(value):
            raise self.error(name, f"expected {rule}, found {_quote(value)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default, "true or false")
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, found {describe_value(value)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        rule = f"an integer from {low} to {high}"
        value = self.raw(name, default, rule)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected {rule}, found {describe_value(value)}")
        if not low <= value <= high:
            raise self.error(name, f"expected {rule}, found {value}")
        return value

    def seconds(self, name: str, default: float, low: float, high: float) -> float:
        rule = f"a number of seconds from {_number(low)} to {_number(high)}"
        value = self.raw(name, default, rule)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected {rule}, found {describe_value(value)}")
        if not low <= value <= high:  # also rejects nan
            raise self.error(name, f"expected {rule}, found {_number(value)}")
        return float(value)

    def ifname(self, name: str, default: str) -> str:
        value = self.string(name, default, "an interface name")
        problem = _ifname_problem(value)
        if problem:
            raise self.error(name, problem)
        return value


def _check_keys(path: str, prefix: str, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
    """Reject the first key not in ``known``, suggesting the closest known one."""
    for key in table:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hint = f" (did you mean {_quote(close[0])}?)"
        else:
            hint = "; expected one of " + ", ".join(known)
        raise ConfigError(path, prefix or "-", f"unknown key {_quote(key)}{hint}")


def _ifname_problem(name: str) -> str | None:
    """Why the kernel would refuse ``name`` as a network interface name, or None."""
    rule = "expected a Linux interface name of 1 to 15 bytes without / : or spaces"
    if not name:
        return f"{rule}, found an empty string"
    if len(name.encode("utf-8")) >= IFNAMSIZ:
        return f"{rule}, found {_quote(name)} ({len(name.encode('utf-8'))} bytes)"
    if name in (".", "..") or any(c in "/:\0" or c.isspace() for c in name):
        return f"{rule}, found {_quote(name)}"
    return None


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
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path,
            "-",
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at line {line}); save the file as UTF-8",
            line,
        ) from None
    return parse_config(text, path)


def parse_config(text: str, path: str = "<string>") -> SiteConfig:
    """Parse TOML ``text`` into a checked ``SiteConfig``."""
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(
            path, "-", "arrays or tables nested too deeply to read; a site config nests at most"
            " a few levels"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        match = _TOML_LINE_RE.match(detail)
        if match:
            line = int(match["line"])
            raise ConfigError(
                path,
                "-",
                f"TOML syntax error at line {line}, column {match['col']}: {match['what']}",
                line,
            ) from None
        if detail.endswith(" (at end of document)"):
            line = text.count("\n") + 1
            what = detail.removesuffix(" (at end of document)")
            raise ConfigError(
                path, "-", f"TOML syntax error at line {line} (end of file): {what}", line
            ) from None
        raise ConfigError(path, "-", f"TOML syntax error: {detail}") from None
    return config_from_dict(data, path)


def config_from_dict(data: Mapping[str, Any], path: str = "<dict>") -> SiteConfig:
    """Check an already parsed TOML document and build the ``SiteConfig``."""
    _check_keys(path, "", data, TOP_KEYS)
    site_table = data.get("site", _MISSING)
    if site_table is _MISSING:
        raise ConfigError(path, "-", 'missing [site] table; expected [site] with name = "..."')
    if not isinstance(site_table, Mapping):
        raise ConfigError(
            path, "site", f"expected a table [site], found {describe_value(site_table)}"
        )
    site = _Reader(path, "site", site_table)
    site.check_keys(SITE_KEYS)

    name = site.name("name")
    listen_text = site.string(
        "listen", DEFAULT_LISTEN, f'an address like "{DEFAULT_LISTEN}" or "[::]:{DEFAULT_PORT}"'
    )
    try:
        listen = parse_endpoint(listen_text, ip_only=True)
    except ValueError as exc:
        raise site.error("listen", str(exc)) from None
    bridge = site.ifname("bridge", DEFAULT_BRIDGE)
    tap = site.ifname("tap", DEFAULT_TAP)
    if tap == bridge:
        raise site.error(
            "tap", f"{_quote(tap)} is also the bridge name; expected a different name for the tap"
        )
    interfaces = _interfaces(site, bridge, tap)
    hub = site.boolean("hub", False)
    offload = site.boolean("offload", True)
    workers = site.integer("workers", default_workers(), 1, MAX_WORKERS)
    low_latency = site.boolean("low_latency", False)
    mtu = site.integer("mtu", DEFAULT_MTU, MTU_MIN, MTU_MAX)
    wan_mtu = site.integer("wan_mtu", DEFAULT_WAN_MTU, MTU_MIN, MTU_MAX)
    insecure = site.boolean("insecure", DEFAULT_INSECURE)
    budget = MtuBudget.of(mtu=mtu, wan_mtu=wan_mtu, ipv6_underlay=listen.is_ipv6,
                          sealed=not insecure)
    _check_fragments(site, budget)
    mss_clamp = _mss_clamp(site, budget)
    ageing_s = site.seconds("ageing", DEFAULT_AGEING_S, 0.0, AGEING_MAX_S)
    max_entries = site.integer("max_entries", DEFAULT_MAX_ENTRIES, ENTRIES_MIN, ENTRIES_MAX)
    max_entries_per_peer = site.integer(
        "max_entries_per_peer", DEFAULT_MAX_ENTRIES_PER_PEER, ENTRIES_MIN, ENTRIES_MAX
    )
    keepalive_s = site.seconds("keepalive", DEFAULT_KEEPALIVE_S, KEEPALIVE_MIN_S, KEEPALIVE_MAX_S)
    dead_after_s = site.seconds("dead_after", DEFAULT_DEAD_AFTER_S, 0.0, DEAD_AFTER_MAX_S)
    if dead_after_s <= keepalive_s:
        raise site.error(
            "dead_after",
            f"expected more than keepalive ({_number(keepalive_s)} s),"
            f" found {_number(dead_after_s)}",
        )
    control = _control(site, name)
    log_level = site.string("log_level", DEFAULT_LOG_LEVEL, "one of " + ", ".join(LOG_LEVELS))
    if log_level not in LOG_LEVELS:
        raise site.error(
            "log_level", f"expected one of {', '.join(LOG_LEVELS)}, found {_quote(log_level)}"
        )
    private_key_file = None
    if "private_key_file" in site_table:
        private_key_file = site.string("private_key_file", _MISSING, "a path to a key file")
    elif not insecure:
        raise site.error(
            "private_key_file",
            "missing; expected the path of this site's private key (make one with"
            f" 'l2bridge genkey > /etc/l2bridge/{name}.key'), or insecure = true for a"
            " cleartext lab link",
        )
    pinned_macs = frozenset(_macs(site, "pinned_macs"))
    rekey_after_s = site.seconds(
        "rekey_after", DEFAULT_REKEY_AFTER_S, REKEY_AFTER_MIN_S, DEFAULT_REKEY_AFTER_S
    )
    peers = _peers(path, data.get("peer", []), name, listen, insecure)
    return SiteConfig(
        name=name,
        listen=listen,
        bridge=bridge,
        tap=tap,
        interfaces=interfaces,
        hub=hub,
        mtu=mtu,
        wan_mtu=wan_mtu,
        mss_clamp=mss_clamp,
        offload=offload,
        workers=workers,
        low_latency=low_latency,
        ageing_s=ageing_s,
        max_entries=max_entries,
        max_entries_per_peer=max_entries_per_peer,
        keepalive_s=keepalive_s,
        dead_after_s=dead_after_s,
        control=control,
        log_level=log_level,
        peers=peers,
        path=path,
        private_key_file=private_key_file,
        insecure=insecure,
        pinned_macs=pinned_macs,
        rekey_after_s=rekey_after_s,
        document=data,
    )


def _macs(table: _Reader, name: str) -> list[bytes]:
    """An array of unicast MAC addresses written "02:00:00:00:00:01"."""
    from l2bridge.core.ether import is_multicast, parse_mac

    value = table.raw(name, [], 'an array of MAC addresses like ["02:00:00:00:00:01"]')
    if not isinstance(value, list):
        raise table.error(
            name, f'expected an array of MAC addresses, found {describe_value(value)}'
        )
    macs = []
    for index, item in enumerate(value):
        key = f"{name}[{index}]"
        if not isinstance(item, str):
            raise table.error(key, f"expected a MAC address, found {describe_value(item)}")
        try:
            mac = parse_mac(item)
        except ValueError:
            raise table.error(
                key, f'expected a MAC address like "02:00:00:00:00:01", found {_quote(item)}'
            ) from None
        if is_multicast(mac) or mac == bytes(6):
            raise table.error(key, f"expected a unicast MAC address, found {_quote(item)}")
        macs.append(mac)
    return macs


def _interfaces(site: _Reader, bridge: str, tap: str) -> tuple[str, ...]:
    """The LAN NICs: valid, distinct, and neither the bridge nor the tap."""
    value = site.raw("interfaces", [], "an array of interface names")
    if not isinstance(value, list):
        raise site.error(
            "interfaces", f'expected an array of interface names like ["eth1"], found'
            f" {describe_value(value)}"
        )
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        key = f"interfaces[{index}]"
        if not isinstance(item, str):
            raise site.error(key, f"expected an interface name, found {describe_value(item)}")
        problem = _ifname_problem(item)
        if problem:
            raise site.error(key, problem)
        if item == bridge:
            raise site.error(
                key, f"{_quote(item)} is the bridge itself; expected a LAN NIC to enslave"
            )
        if item == tap:
            raise site.error(
                key, f"{_quote(item)} is the tap, which is enslaved already; remove it from"
                " interfaces"
            )
        if item in seen:
            raise site.error(
                key, f"duplicate interface {_quote(item)} (also site.interfaces[{seen[item]}])"
            )
        seen[item] = index
    return tuple(value)


def _check_fragments(site: _Reader, budget: MtuBudget) -> None:
    """The largest LAN frame must fit in at most 16 fragments over the WAN."""
    if budget.fragments > MAX_FRAGMENTS:
        raise site.error(
            "mtu",
            f"frames of up to {budget.max_frame} bytes need {budget.fragments} fragments at"
            f" wan_mtu {budget.wan_mtu} (the limit is {MAX_FRAGMENTS}); expected mtu <="
            f" {budget.highest_mtu} or a larger wan_mtu",
        )


def _mss_clamp(site: _Reader, budget: MtuBudget) -> int | None:
    """false -> None; true -> the budget's MSS for any inner IP version; int -> itself."""
    rule = f"false, true or an integer from {MSS_MIN} to {MSS_MAX}"
    value = site.raw("mss_clamp", False, rule)
    if value is False:
        return None
    if value is True:
        return budget.mss(ipv6_inner=True)
    if not isinstance(value, int):
        raise site.error("mss_clamp", f"expected {rule}, found {describe_value(value)}")
    if not MSS_MIN <= value <= MSS_MAX:
        raise site.error("mss_clamp", f"expected {rule}, found {value}")
    return value


def _control(site: _Reader, name: str) -> str:
    """Path of the control socket: non-empty, no NUL, fits in sockaddr_un."""
    rule = "a unix socket path"
    value = site.string("control", f"{CONTROL_DIR}/{name}.sock", rule)
    size = len(value.encode("utf-8"))
    if not value or "\0" in value or size > SUN_PATH_MAX:
        raise site.error(
            "control",
            f"expected {rule} of 1 to {SUN_PATH_MAX} bytes without NUL,"
            f" found {_quote(value)} ({size} bytes)",
        )
    return value


def _peers(
    path: str, value: Any, site_name: str, listen: Endpoint, insecure: bool
) -> tuple[PeerConfig, ...]:
    """The [[peer]] array: unique names, none equal to the site's, valid endpoints."""
    if isinstance(value, Mapping):
        raise ConfigError(
            path, "peer", "expected an array of tables [[peer]], found a table [peer];"
            " write [[peer]] for each peer"
        )
    if not isinstance(value, list):
        raise ConfigError(
            path, "peer", f"expected an array of tables [[peer]], found {describe_value(value)}"
        )
    peers: list[PeerConfig] = []
    seen: dict[str, int] = {}
    keys_seen: dict[bytes, str] = {}
    for index, table in enumerate(value):
        prefix = f"peer[{index}]"
        if not isinstance(table, Mapping):
            raise ConfigError(
                path, prefix, f"expected a table [[peer]], found {describe_value(table)}"
            )
        peer = _Reader(path, prefix, table)
        peer.check_keys(PEER_KEYS)
        name = peer.name("name")
        if name == site_name:
            raise peer.error(
                "name", f"{_quote(name)} is this site's own name; expected another site's name"
            )
        if name in seen:
            raise peer.error(
                "name", f"duplicate peer name {_quote(name)} (also peer[{seen[name]}].name)"
            )
        seen[name] = index
        endpoint = None
        if "endpoint" in table:
            endpoint_text = peer.string(
                "endpoint", _MISSING, f'an endpoint like "203.0.113.7:{DEFAULT_PORT}"'
            )
            try:
                endpoint = parse_endpoint(endpoint_text)
            except ValueError as exc:
                raise peer.error("endpoint", str(exc)) from None
            problem = endpoint_problem(endpoint, listen)
            if problem:
                raise peer.error("endpoint", problem)
            if endpoint.is_ipv6 and not listen.is_ipv6:
                raise peer.error(
                    "endpoint",
                    f"IPv6 endpoint {_quote(str(endpoint))} but site.listen {_quote(str(listen))}"
                    f' is IPv4; listen on "[::]:{listen.port}" to reach IPv6 peers',
                )
        public_key = _public_key(peer, table, insecure, keys_seen)
        psk_file = None
        if "preshared_key_file" in table:
            psk_file = peer.string("preshared_key_file", _MISSING, "a path to a key file")
        allowed = frozenset(_macs(peer, "allowed_macs")) if "allowed_macs" in table else None
        max_macs = None
        if "max_macs" in table:
            max_macs = peer.integer(
                "max_macs", DEFAULT_MAX_ENTRIES_PER_PEER, ENTRIES_MIN, ENTRIES_MAX
            )
        keepalive = peer.seconds(
            "persistent_keepalive", DEFAULT_PERSISTENT_KEEPALIVE_S, KEEPALIVE_MIN_S,
            KEEPALIVE_MAX_S,
        )
        peers.append(
            PeerConfig(name, endpoint, public_key, psk_file, allowed, max_macs, keepalive)
        )
    return tuple(peers)


def _public_key(
    peer: _Reader, table: Mapping[str, Any], insecure: bool, seen: dict[bytes, str]
) -> bytes | None:
    """The peer's X25519 public key: valid base64, 32 bytes, not low-order, unique."""
    if "public_key" not in table:
        if insecure:
            return None
        raise peer.error(
            "public_key",
            "missing; expected the peer's public key (on the peer: 'l2bridge pubkey"
            " < its.key'), or insecure = true in [site] for a cleartext lab link",
        )
    from l2bridge.core import keys

    text = peer.string("public_key", _MISSING, "a base64 public key")
    try:
        raw = keys.decode_key(text, what="public key")
    except keys.KeyFormatError as exc:
        raise peer.error("public_key", str(exc)) from None
    if keys.is_low_order(raw):
        raise peer.error(
            "public_key", "a low-order point (no shared secret possible); expected a real key"
        )
    key = peer.key("public_key")
    if raw in seen:
        raise peer.error("public_key", f"the same key as {seen[raw]}; each peer has its own")
    seen[raw] = key
    return raw


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
    from l2bridge.core import keys

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
