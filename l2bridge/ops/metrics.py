"""Prometheus metrics: the site's counters in the text exposition format, served bounded.

What is exported comes from one place, the ``show`` view (``site.status()``),
so ``/metrics``, ``l2bridge show --json`` and ``show --prometheus`` agree.  A
site with workers reports each worker's counters in ``show``; here they are
summed, so every series counts the whole site.  The format is written by the
ecosystem's library (``prometheus_client``: a custom collector, its registry
and ``generate_latest``), never by hand.

Names follow the conventions: prefix ``l2bridge_``, base units, ``_total`` for
counters (which only ever go up: they live as long as the process, across
reloads), labels ``peer`` and ``reason``.

Serving (``serve``), from the daemon's own trio tasks: HTTP/1.1 ``GET
/metrics`` on ``[site].metrics``; at most ``MAX_SCRAPES`` clients at once (more
get 503 at once), ``CLIENT_TIMEOUT_S`` for a whole exchange, requests of at most
``REQUEST_MAX_BYTES``, one answer per connection.  A slow or hostile client
only ever costs its own connection; nothing it does reaches the dataplane.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from l2bridge import __version__
from l2bridge.core.config import Endpoint
from l2bridge.errors import KernelError

log = logging.getLogger("l2bridge")

MAX_SCRAPES = 4
CLIENT_TIMEOUT_S = 5.0
REQUEST_MAX_BYTES = 8192
LISTEN_BACKLOG = 16
ACCEPT_ERROR_PAUSE_S = 0.1

Status = Mapping[str, Any]

# Counters of `show` -> (metric name, help): per peer, both directions of each kind.
_DIRECTIONS = (("in", "rx", "received from"), ("out", "tx", "sent to"))
_KINDS = (("bytes", "bytes of frames"), ("frames", "frames"), ("datagrams", "datagrams"),
          ("bursts", "super-frame bursts"))
PEER_COUNTERS = {
    f"{kind}_{way}": (f"l2bridge_peer_{short}_{kind}_total", f"{text.capitalize()} {verb} the peer")
    for kind, text in _KINDS for way, short, verb in _DIRECTIONS
} | {
    "unicast_out": ("l2bridge_peer_unicast_frames_total",
                    "Frames sent to the peer because its MAC was learned there"),
    "flooded_out": ("l2bridge_peer_flooded_frames_total",
                    "Broadcast, multicast and unknown-unicast frames flooded to the peer"),
    "handshakes": ("l2bridge_peer_handshakes_total", "Completed handshakes with the peer"),
    "rekeys": ("l2bridge_peer_rekeys_total", "Handshakes that replaced a current session"),
    "times_down": ("l2bridge_peer_down_total", "Times the peer was declared down"),
    "roamed": ("l2bridge_peer_roamed_total", "Times the peer's UDP endpoint was learned or moved"),
    "path_changes": ("l2bridge_peer_path_changes_total",
                     "Times the peer's data moved between UDP, TCP and a relay"),
    "relayed_in": ("l2bridge_peer_relayed_rx_bytes_total",
                   "Bytes this site relayed from the peer to another peer"),
    "relayed_out": ("l2bridge_peer_relayed_tx_bytes_total",
                    "Bytes this site relayed from another peer to the peer"),
}
PATHS = ("udp", "tcp", "relay")
# What a follower reports per peer (`workers.py`): summed into the site's series.
WORKER_PEER_KEYS = tuple(f"{kind}_{way}" for kind, _ in _KINDS for way, _, _ in _DIRECTIONS)
LOCAL_COUNTERS = {
    f"{kind}_{way}": (f"l2bridge_tap_{short}_{kind}_total",
                      f"{kind.capitalize()} {'read from' if way == 'in' else 'written to'} "
                      "the tap (the LAN)")
    for kind in ("frames", "bytes") for way, short, _ in _DIRECTIONS
}
FDB_COUNTERS = ("learned", "moved", "expired", "flushed", "evicted", "dup_mac", "held")
CLASSES = ("broadcast", "multicast", "unknown_unicast")  # of flooded frames (core.storm)
PROBE_EVENTS = ("sent", "seen", "own_returned", "echoed", "via_peer", "malformed",
                "unverified", "unknown", "replayed", "flap_probes")
NEIGH_EVENTS = ("learned", "updated", "conflicts", "evicted", "expired")


def totals(status: Status) -> dict[str, Any]:
    """``show``'s counters summed over every worker: {"local": {...}, "peers": {name: {...}}}."""
    local = {key: int(status["local"].get(key, 0)) for key in LOCAL_COUNTERS}
    local_drops = dict(status["local"].get("drops", {}))
    peers = {p["name"]: {key: int(p.get(key) or 0) for key in PEER_COUNTERS} for p in
             status["peers"]}
    peer_drops = {p["name"]: dict(p.get("drops", {})) for p in status["peers"]}
    flooded = {p["name"]: {way: [int(p.get("flooded_by_class", {}).get(way, {}).get(c, 0))
                                 for c in CLASSES] for way in ("in", "out")}
               for p in status["peers"]}
    for follower in status.get("workers", {}).get("followers", []):
        for key, value in follower.get("local", {}).items():
            if key in local:
                local[key] += int(value)
            elif key == "drops":
                for reason, count in value.items():
                    local_drops[reason] = local_drops.get(reason, 0) + count
        for name, counters in follower.get("peers", {}).items():
            if name not in peers:
                continue
            for key in WORKER_PEER_KEYS:
                peers[name][key] += int(counters.get(key, 0))
            for way, by_class in counters.get("flooded_by_class", {}).items():
                for i, c in enumerate(CLASSES):
                    flooded[name][way][i] += int(by_class.get(c, 0))
            for reason, count in counters.get("drops", {}).items():
                peer_drops[name][reason] = peer_drops[name].get(reason, 0) + count
    return {"local": local, "local_drops": local_drops, "peers": peers,
            "peer_drops": peer_drops, "flooded": flooded}


def families(status: Status) -> Iterator[Any]:
    """The metric families of one ``show`` view (worker-summed)."""
    summed = totals(status)
    site = status["site"]
    info = InfoMetricFamily("l2bridge_build", "l2bridge version and site",
                            labels=["version", "site"])
    info.add_metric([__version__, site], {})
    yield info
    yield GaugeMetricFamily("l2bridge_uptime_seconds", "Seconds since the site started",
                            value=float(status.get("uptime_s", 0)))
    yield GaugeMetricFamily("l2bridge_workers", "Worker processes of the site",
                            value=float(status.get("workers", {}).get("count", 1)))
    up = GaugeMetricFamily("l2bridge_peer_up", "1 when the peer is up", labels=["peer"])
    seen = GaugeMetricFamily("l2bridge_peer_last_seen_seconds",
                             "Seconds since the peer's last datagram", labels=["peer"])
    for peer in status["peers"]:
        up.add_metric([peer["name"]], 1.0 if peer["state"] == "up" else 0.0)
        if peer.get("last_seen_s") is not None:
            seen.add_metric([peer["name"]], float(peer["last_seen_s"]))
    yield up
    yield seen
    blocked = GaugeMetricFamily("l2bridge_peer_loop_blocked",
                                "1 while loop protection blocks the tunnel to the peer",
                                labels=["peer"])
    blocks = CounterMetricFamily("l2bridge_peer_loop_blocks",
                                 "Times loop protection blocked the tunnel to the peer",
                                 labels=["peer"])
    for peer in status["peers"]:
        stopped = peer.get("loop_blocked") is not None or bool(peer.get("blocks_us"))
        blocked.add_metric([peer["name"]], 1.0 if stopped else 0.0)
        blocks.add_metric([peer["name"]], float(peer.get("loop_blocks", 0)))
    yield blocked
    yield blocks
    by_class = CounterMetricFamily(
        "l2bridge_peer_flooded_by_class_frames",
        "Flooded frames sent to (tx) and accepted from (rx) the peer, by class",
        labels=["peer", "direction", "class"])
    for peer, ways in summed["flooded"].items():
        for way, short in (("in", "rx"), ("out", "tx")):
            for c, count in zip(CLASSES, ways[way], strict=True):
                by_class.add_metric([peer, short, c], float(count))
    yield by_class
    path = GaugeMetricFamily("l2bridge_peer_path",
                             "1 for the path the peer's data takes now (udp, tcp, relay)",
                             labels=["peer", "path"])
    for peer in status["peers"]:
        for kind in PATHS:
            path.add_metric([peer["name"], kind], 1.0 if peer.get("path") == kind else 0.0)
    yield path
    for key, (name, text) in PEER_COUNTERS.items():
        family = CounterMetricFamily(name.removesuffix("_total"), text, labels=["peer"])
        for peer, counters in summed["peers"].items():
            family.add_metric([peer], float(counters[key]))
        yield family
    for key, (name, text) in LOCAL_COUNTERS.items():
        yield CounterMetricFamily(name.removesuffix("_total"), text,
                                  value=float(summed["local"][key]))
    drops = CounterMetricFamily(
        "l2bridge_drops", "Frames and datagrams dropped, by peer ('local': the tap side; "
        "'': not yet tied to a peer, e.g. failed authentication) and reason",
        labels=["peer", "reason"])
    for reason, count in sorted(summed["local_drops"].items()):
        drops.add_metric(["local", reason], float(count))
    for peer, reasons in summed["peer_drops"].items():
        for reason, count in sorted(reasons.items()):
            drops.add_metric([peer, reason], float(count))
    for reason, count in sorted(status.get("auth_drops", {}).items()):
        drops.add_metric(["", reason], float(count))
    drops.add_metric(["", "unknown_source"], float(status.get("unknown_source", 0)))
    yield drops
    fdb = status.get("fdb", {})
    yield GaugeMetricFamily("l2bridge_fdb_entries", "MAC addresses in the learning table",
                            value=float(fdb.get("entries", 0)))
    learning = CounterMetricFamily("l2bridge_fdb_events", "Learning table events by kind",
                                   labels=["event"])
    for event in FDB_COUNTERS:
        learning.add_metric([event], float(fdb.get(event, 0)))
    yield learning
    yield GaugeMetricFamily("l2bridge_fdb_held_macs",
                            "MACs held where they were by duplicate-MAC detection",
                            value=float(fdb.get("held_macs", 0)))
    yield from _layer2_families(status)
    yield CounterMetricFamily("l2bridge_socket_errors", "Transient socket receive errors",
                              value=float(status.get("socket_errors", 0)))
    config = status.get("config")
    if config:
        reloads = CounterMetricFamily("l2bridge_config_reloads",
                                      "Configuration reloads by result", labels=["result"])
        reloads.add_metric(["ok"], float(config.get("reloads_ok", 0)))
        reloads.add_metric(["failed"], float(config.get("reloads_failed", 0)))
        yield reloads


def _layer2_families(status: Status) -> Iterator[Any]:
    """Loop probes, the ARP/ND bindings and the DHCP guard (the leader's view)."""
    loop = status.get("loop", {})
    probes = CounterMetricFamily("l2bridge_loop_probes",
                                 "Loop probes sent, and met by kind (seen on the LAN, back from "
                                 "the LAN, through a tunnel, refused)", labels=["event"])
    for event in PROBE_EVENTS:
        probes.add_metric([event], float(loop.get("probes", {}).get(event, 0)))
    yield probes
    yield GaugeMetricFamily("l2bridge_loop_self",
                            "1 while this site's own probes come back from its LAN",
                            value=1.0 if loop.get("self_loop") else 0.0)
    neigh = status.get("neigh", {})
    yield GaugeMetricFamily("l2bridge_neigh_bindings", "IP-to-MAC bindings (ARP/ND suppression)",
                            value=float(neigh.get("bindings", 0)))
    events = CounterMetricFamily("l2bridge_neigh_events", "ARP/ND binding events by kind",
                                 labels=["event"])
    for event in NEIGH_EVENTS:
        events.add_metric([event], float(neigh.get(event, 0)))
    yield events
    answered = CounterMetricFamily("l2bridge_neigh_answered",
                                   "ARP requests and neighbour solicitations answered locally",
                                   labels=["protocol"])
    answered.add_metric(["arp"], float(neigh.get("answered_arp", 0)))
    answered.add_metric(["nd"], float(neigh.get("answered_nd", 0)))
    yield answered
    policy = status.get("policy", {})
    yield CounterMetricFamily("l2bridge_dhcp_requests_kept_local",
                              "DHCP client requests and router solicitations not sent to some "
                              "peer (dhcp_servers)", value=float(policy.get("dhcp_kept_local", 0)))
    yield CounterMetricFamily("l2bridge_bpdus", "Spanning-tree BPDUs crossed",
                              value=float(policy.get("bpdus", 0)))


class StatusCollector(Collector):
    """A prometheus_client collector over a function that returns ``show``'s view."""

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        yield from families(self._status())


def exposition(status: Callable[[], Status]) -> bytes:
    """The text exposition (format 0.0.4) of ``status()``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)


# ---------------------------------------------------------------- serving


class MetricsError(KernelError):
    """The metrics address could not be bound; the message names it, the errno and the fix."""


def bind(listen: Endpoint) -> trio.socket.SocketType:
    """A listening TCP socket on ``listen`` (``MetricsError`` when the kernel refuses)."""
    family = socket.AF_INET6 if listen.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((listen.host, listen.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        name = errno.errorcode.get(exc.errno or 0, "?")
        raise MetricsError(f"metrics: cannot listen on {listen}: {exc.strerror} ({name}): "
                           "choose a free address in [site].metrics", exc.errno) from None
    return trio.socket.from_stdlib_socket(sock)


async def serve(listener: trio.socket.SocketType, status: Callable[[], Status], *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer scrapes on ``listener`` until cancelled (module docstring, "Serving")."""
    active = [0]
    with listener:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:
                    if exc.errno not in (errno.ECONNABORTED, errno.EINTR):
                        log.warning("metrics: accept failed: %s; retrying", exc.strerror)
                        await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                    continue
                if active[0] >= MAX_SCRAPES:
                    nursery.start_soon(_busy, conn)
                    continue
                active[0] += 1
                nursery.start_soon(_scrape, conn, status, active)


async def _busy(conn: trio.socket.SocketType) -> None:
    with conn, contextlib.suppress(OSError), trio.move_on_after(1.0):
        await conn.send(_response(503, b"busy: too many scrapes at once\n", "text/plain"))


async def _scrape(conn: trio.socket.SocketType, status: Callable[[], Status],
                  active: list[int]) -> None:
    try:
        with conn, trio.move_on_after(CLIENT_TIMEOUT_S):
            request = b""
            while b"\r\n\r\n" not in request and len(request) < REQUEST_MAX_BYTES:
                chunk = await conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            reply = answer(request, status)
            view = memoryview(reply)
            while view:
                view = view[await conn.send(view):]
    except OSError:
        pass  # the scraper went away: its loss
    finally:
        active[0] -= 1


def answer(request: bytes, status: Callable[[], Status]) -> bytes:
    """The whole HTTP response to one request (pure: tested without sockets)."""
    head, sep, _ = request.partition(b"\r\n\r\n")
    if not sep:
        return _response(431 if len(request) >= REQUEST_MAX_BYTES else 400,
                         b"bad request\n", "text/plain")
    line = head.split(b"\r\n", 1)[0].split()
    if len(line) != 3 or not line[2].startswith(b"HTTP/1."):
        return _response(400, b"bad request\n", "text/plain")
    method, target = line[0], line[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return _response(404, b"not found: the metrics are at /metrics\n", "text/plain")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"only GET\n", "text/plain", extra=b"Allow: GET, HEAD\r\n")
    body = exposition(status)
    response = _response(200, body, CONTENT_TYPE_PLAIN_0_0_4)
    return response[: len(response) - len(body)] if method == b"HEAD" else response


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _response(code: int, body: bytes, content_type: str, extra: bytes = b"") -> bytes:
    head = (f"HTTP/1.1 {code} {REASONS[code]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode()
    return head + extra + b"\r\n" + body
