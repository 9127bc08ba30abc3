"""Traffic primitives for the lab: real tools and raw frames inside a namespace.

Every primitive takes a network namespace *name* and interface names, does
one bounded job there and returns a small frozen dataclass of numbers (or the
captured frames).  The lab composes its checks from them: reachability
(``ping``), throughput (``iperf3``), DHCP across sites (``dhcp_lease``),
broadcast-once and unicast-not-leaked (``send_frames`` + ``FrameCounter``),
and packet captures (``tcpdump_count``).

Process flow (every tool):
 1. resolve the program on PATH, else ``ToolMissing`` naming the Debian package;
 2. check that the namespace exists;
 3. start it with ``netns_preexec(ns)`` (only the child changes namespace),
    stdin from /dev/null, stdout and stderr into anonymous temporary files
    (no pipe to drain, so no deadlock and no lost output), read only with
    ``pread`` so the offset the child writes at never moves under it;
 4. wait for it under a deadline (readiness of daemons is polled from
    ``/proc/PID/net/{tcp,udp}`` or from the tool's own "listening" line);
 5. finally - normal exit, timeout, error or cancellation alike - kill its
    process group and reap it inside a shielded scope (``l2bridge.io.proc``):
    no process outlives its primitive.

Raw frames: sockets are opened inside the namespace on a worker thread
(``in_netns`` switches that thread only) and then used from the trio thread;
a socket keeps the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import trio

from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from netns.checks.frames import ETH_HLEN, TPID_8021Q, insert_vlan_tag, parse_pcap
from netns.realise.nsenter import in_netns, netns_path, netns_preexec
from netns.realise.ports import port_open

# Debian package that provides each program we run.
TOOL_PACKAGES = types.MappingProxyType(
    {
        "ping": "iputils-ping",
        "iperf3": "iperf3",
        "dnsmasq": "dnsmasq-base",
        "busybox": "busybox",
        "tcpdump": "tcpdump",
    }
)

PING_GRACE_S = 5.0  # outer bound beyond ping's own -w deadline
IPERF_GRACE_S = 10.0  # default bound beyond the test duration (start, connect, results)
IPERF_CONNECT_TIMEOUT_MS = 3000
DAEMON_START_TIMEOUT_S = 5.0  # iperf3 server, dnsmasq, tcpdump: until ready
READY_POLL_S = 0.02  # how often readiness of a starting daemon is polled
STOP_GRACE_S = 2.0  # SIGINT/SIGTERM before SIGKILL, where a tool must flush
DHCP_LEASE_TIME = "1h"
DHCP_SERVER_PORT = 67
DHCP6_SERVER_PORT = 547
DNSMASQ_READY_LINE = "DHCP, IP range"  # logged once sockets and interfaces are set up

# AF_PACKET (linux/if_packet.h, linux/if_ether.h)
ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; root may exceed rmem_max
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # status, len, snaplen, mac, net, vlan_tci, vlan_tpid
PACKET_STATS = struct.Struct("=II")  # packets, drops (reset by each read)
RECV_BUFFER_BYTES = 65_536 + 64  # largest frame we read whole (GRO can merge up to 64 KiB)
SOCKET_RCVBUF_BYTES = 8 * 1024 * 1024
MAX_KEPT_FRAMES = 10_000  # FrameCounter.frames keeps at most this many
COUNTER_SETTLE_S = 0.3
OUTPUT_READ_BYTES = 65_536  # one pread of a tool's captured output


class TrafficError(L2bridgeError):
    """A traffic primitive could not do its job; ``str()`` is one line naming the cause.

    Every expected failure of a primitive (missing tool or namespace, a daemon
    that does not start, a socket error) is a ``TrafficError``.
    """


class ToolMissing(TrafficError):
    """A program the lab runs is not installed."""

    def __init__(self, program: str, debian_package: str) -> None:
        self.program = program
        self.package = debian_package
        if debian_package:
            fix = f"install the Debian package {debian_package} (apt-get install {debian_package})"
        else:
            fix = "install it or fix PATH"
        super().__init__(f"{program}: not found on PATH; {fix}")


@dataclass(frozen=True)
class CommandResult:
    """What a program run inside a namespace did; ``returncode`` is negative when killed."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    elapsed_s: float


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    ok: bool  # at least one echo sent and every one answered
    output: str
    duplicates: int = 0
    errors: int = 0  # local errors (e.g. "message too long") and ICMP errors


@dataclass(frozen=True)
class IperfResult:
    mbit_s: float  # receiver side
    retransmits: int | None  # TCP only (sender side)
    lost_percent: float | None  # UDP only (receiver side)
    seconds: float
    protocol: str  # "TCP" or "UDP"
    raw: dict[str, Any]  # the client's --json document


@dataclass(frozen=True)
class DhcpResult:
    ok: bool
    address: str | None
    elapsed_s: float
    output: str


# --- processes ------------------------------------------------------------------


def find_tool(program: str) -> str:
    """Absolute path of ``program`` on PATH, or ``ToolMissing`` naming its package."""
    path = shutil.which(program)
    if path is None:
        raise ToolMissing(program, TOOL_PACKAGES.get(program, ""))
    return path


def _require_netns(ns: str) -> None:
    if not os.path.exists(netns_path(ns)):
        raise TrafficError(
            f"network namespace {ns!r} does not exist (ENOENT); create it before using it"
        )


class _Child:
    """A tool running in a namespace (``l2bridge.io.proc``), its output in temporary files."""

    def __init__(self, child: proc.Child, out: IO[bytes], err: IO[bytes]) -> None:
        self.child = child
        self._out = out
        self._err = err

    @property
    def proc(self) -> trio.Process:
        """The tool's process (``proc.returncode`` once it exited)."""
        return self.child.process

    @property
    def running(self) -> bool:
        return self.child.running

    def stdout(self) -> str:
        return _read_all(self._out)

    def stderr(self) -> str:
        return _read_all(self._err)

    async def wait(self, timeout_s: float) -> bool:
        """Wait for the tool to exit by itself; False when ``timeout_s`` passed first."""
        with trio.move_on_after(timeout_s):
            await self.child.wait()
        return not self.running

    async def stop(self, sig: int = signal.SIGKILL, grace_s: float = STOP_GRACE_S) -> None:
        """Send ``sig``, give the tool ``grace_s`` to exit, then SIGKILL; always reaps.

        Signals go to its whole process group: a helper it started (udhcpc's
        script) is stopped along with it, even when the caller is cancelled.
        """
        await self.child.stop(sig, grace_s)

    def failure(self, what: str) -> L2bridgeError:
        """A one-line ``TrafficError`` naming the tool, namespace, exit status, last stderr line."""
        return self.child.failure(what)

    async def wait_stderr(self, text: str, timeout_s: float) -> None:
        """Poll until ``text`` appears on stderr; ``TrafficError`` if it exits or times out."""

        async def printed() -> bool:
            return text in self.stderr()

        await self.child.wait_ready(printed, deadline=trio.current_time() + timeout_s,
                                    until=f"printing {text!r}", poll_s=READY_POLL_S,
                                    late=f"did not print {text!r} within {timeout_s:g} s")

    async def wait_listening(self, proto: str, port: int, timeout_s: float) -> None:
        """Poll ``/proc/PID/net/<proto>{,6}`` until the tool itself has ``port`` open."""
        pid = self.child.pid

        async def listening() -> bool:
            return port_open(pid, proto, port)

        await self.child.wait_ready(
            listening, deadline=trio.current_time() + timeout_s, poll_s=READY_POLL_S,
            until=f"listening on {proto} port {port}",
            late=f"not listening on {proto} port {port} within {timeout_s:g} s",
        )


def _last_error_line(err: IO[bytes]) -> str:
    """How a tool's failure ends: its last non-empty line on stderr."""
    lines = [line for line in _read_all(err).splitlines() if line.strip()]
    return ": " + (lines[-1].strip() if lines else "no error output")


def _read_all(f: IO[bytes]) -> str:
    """Everything written to ``f`` so far, read without moving its file offset.

    The child writes through this same open file description: a seek (or a plain
    read) would move the offset under it, and its next write would land there
    instead of at the end, overwriting earlier output.  ``pread`` leaves it alone.
    """
    fd = f.fileno()
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, OUTPUT_READ_BYTES, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode(errors="replace")


@contextlib.asynccontextmanager
async def _spawn(ns: str, argv: Sequence[str]) -> AsyncIterator[_Child]:
    """Start ``argv`` inside ``ns``; on leaving the block it is killed and reaped."""
    _require_netns(ns)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = await proc.start(
            argv,
            name=f"{os.path.basename(argv[0])} in {ns}",
            stdout=out,
            stderr=err,
            preexec=netns_preexec(ns),
            error=TrafficError,
            detail=functools.partial(_last_error_line, err),
        )
        try:
            yield _Child(child, out, err)
        finally:
            await child.stop(signal.SIGKILL, STOP_GRACE_S)


async def _run(ns: str, argv: Sequence[str], timeout_s: float) -> CommandResult:
    started = trio.current_time()
    async with _spawn(ns, argv) as child:
        finished = await child.wait(timeout_s)
        await child.stop()
        return CommandResult(
            returncode=child.proc.returncode if child.proc.returncode is not None else -1,
            stdout=child.stdout(),
            stderr=child.stderr(),
            timed_out=not finished,
            elapsed_s=trio.current_time() - started,
        )


async def run_command(ns: str, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
    """Run ``argv`` inside ``ns`` for at most ``timeout_s``; killed (and reported) past it."""
    if not argv:
        raise ValueError("run_command: empty argv")
    program = find_tool(argv[0])
    return await _run(ns, [program, *argv[1:]], timeout_s)


# --- ping -----------------------------------------------------------------------

_PING_SUMMARY = re.compile(
    r"(?P<sent>\d+) packets transmitted, (?P<received>\d+) (?:packets )?received"
    r"(?:, \+(?P<duplicates>\d+) duplicates)?(?:, \+(?P<errors>\d+) errors)?"
)
_PING_RTT = re.compile(r"min/avg/max(?:/mdev)? = (?P<min>[\d.]+)/(?P<avg>[\d.]+)/(?P<max>[\d.]+)")


def parse_ping_output(output: str) -> PingResult:
    """Read the statistics block of iputils (or busybox) ping; no summary means nothing sent."""
    summary = _PING_SUMMARY.search(output)
    sent = int(summary["sent"]) if summary else 0
    received = int(summary["received"]) if summary else 0
    rtt = _PING_RTT.search(output)
    return PingResult(
        sent=sent,
        received=received,
        rtt_min_ms=float(rtt["min"]) if rtt else None,
        rtt_avg_ms=float(rtt["avg"]) if rtt else None,
        rtt_max_ms=float(rtt["max"]) if rtt else None,
        ok=sent > 0 and received == sent,
        output=output,
        duplicates=int(summary["duplicates"] or 0) if summary else 0,
        errors=int(summary["errors"] or 0) if summary else 0,
    )


async def ping(
    ns: str,
    dst: str,
    *,
    count: int = 3,
    interval_s: float = 0.2,
    size: int = 56,
    dont_fragment: bool = False,
    deadline_s: float = 10.0,
    ipv6: bool | None = None,
) -> PingResult:
    """Ping ``dst`` from ``ns`` with iputils ping and read its statistics.

    ping itself stops after ``count`` replies or ``deadline_s`` (rounded up to
    whole seconds, as ``-w`` wants), whichever comes first; while replies are
    missing it keeps sending, so ``sent`` may exceed ``count`` on loss.
    ``dont_fragment`` sets ``-M do``: a packet larger than the path MTU fails
    locally ("message too long") and counts in ``errors``.  ``ipv6=None``
    picks the family from ``dst``.
    """
    program = find_tool("ping")
    if ipv6 is None:
        ipv6 = ":" in dst
    deadline = max(1, math.ceil(deadline_s))
    argv = [program, "-6" if ipv6 else "-4", "-n", "-c", str(count), "-i", f"{interval_s:g}"]
    argv += ["-s", str(size), "-w", str(deadline)]
    if dont_fragment:
        argv += ["-M", "do"]
    argv.append(dst)
    run = await _run(ns, argv, deadline + PING_GRACE_S)
    output = run.stdout + run.stderr
    if run.timed_out:
        output += f"\nping in {ns}: killed after {deadline + PING_GRACE_S:g} s\n"
    return parse_ping_output(output)


# --- iperf3 ---------------------------------------------------------------------


def parse_iperf3_json(doc: dict[str, Any], *, udp: bool) -> IperfResult:
    """Receiver-side numbers from an iperf3 client ``--json`` document.

    TCP: ``end.sum_received`` rate, ``end.sum_sent.retransmits``.
    UDP: ``end.sum_received`` (the server's report, iperf3 >= 3.10) rate and
    ``lost_percent``, falling back to ``end.sum`` on older iperf3.
    """
    if doc.get("error"):
        raise TrafficError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    received = end.get("sum_received") or (end.get("sum") if udp else None)
    if not received:
        raise TrafficError("iperf3: the --json result has no receiver summary")
    sent = end.get("sum_sent") or {}
    retransmits = sent.get("retransmits")
    lost = received.get("lost_percent")
    return IperfResult(
        mbit_s=float(received["bits_per_second"]) / 1e6,
        retransmits=None if udp or retransmits is None else int(retransmits),
        lost_percent=float(lost) if udp and lost is not None else None,
        seconds=float(received.get("seconds", 0.0)),
        protocol="UDP" if udp else "TCP",
        raw=doc,
    )


async def iperf3(
    server_ns: str,
    server_addr: str,
    client_ns: str,
    *,
    seconds: float = 3.0,
    udp: bool = False,
    bitrate: str | None = None,
    parallel: int = 1,
    length: int | None = None,
    port: int = 5201,
    timeout_s: float | None = None,
) -> IperfResult:
    """Measure throughput from ``client_ns`` to an iperf3 server at ``server_addr``.

    Flow: 1. start ``iperf3 -s -1 -B server_addr`` in ``server_ns``
    2. wait until its namespace listens on TCP ``port``
    3. run the client with ``--json`` (``seconds`` rounded up to whole seconds)
    4. parse receiver-side throughput 5. kill the server, always.
    The whole exchange is bounded by ``timeout_s`` (default: duration + 10 s);
    past it, or when the client fails, ``TrafficError`` says why.
    """
    program = find_tool("iperf3")
    duration = max(1, math.ceil(seconds))
    limit = timeout_s if timeout_s is not None else duration + IPERF_GRACE_S
    server_argv = [program, "-s", "-1", "-B", server_addr, "-p", str(port)]
    client_argv = [program, "-c", server_addr, "-p", str(port), "-t", str(duration), "--json"]
    client_argv += ["-P", str(parallel), "--connect-timeout", str(IPERF_CONNECT_TIMEOUT_MS)]
    if udp:
        client_argv.append("-u")
    if bitrate is not None:
        client_argv += ["-b", bitrate]
    if length is not None:
        client_argv += ["-l", str(length)]
    what = f"iperf3 {client_ns} -> {server_addr}:{port}"
    started = trio.current_time()
    async with _spawn(server_ns, server_argv) as server:
        with trio.move_on_after(limit):
            await server.wait_listening("tcp", port, DAEMON_START_TIMEOUT_S)
        remaining = started + limit - trio.current_time()
        if remaining <= 0:
            raise TrafficError(f"{what}: server not ready within the {limit:g} s bound")
        client = await _run(client_ns, client_argv, remaining)
    if client.timed_out:
        raise TrafficError(
            f"{what}: no result within {limit:g} s; raise timeout_s or lower seconds"
        )
    try:
        doc = _json_object(client.stdout)
    except ValueError:
        last = (client.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrafficError(
            f"{what}: client exited with status {client.returncode}: {last}"
        ) from None
    try:
        return parse_iperf3_json(doc, udp=udp)
    except TrafficError as e:
        raise TrafficError(f"{what}: {e}") from None


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object from ``text``; ``ValueError`` for anything else."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return doc


# --- DHCP -----------------------------------------------------------------------

LEASE_TAG = "l2b-lease"
# udhcpc runs this on each event; "bound" carries the leased address in $ip.
# It only reports the lease: the client interface is left unconfigured.
UDHCPC_SCRIPT = f"""#!/bin/sh
case "$1" in
  bound|renew) echo "{LEASE_TAG} $1 $ip" ;;
esac
exit 0
"""
_LEASE_LINE = re.compile(rf"^{LEASE_TAG} (?:bound|renew) (\S+)$", re.MULTILINE)


async def dhcp_lease(
    server_ns: str,
    server_if: str,
    *,
    range_start: str,
    range_end: str,
    netmask: str,
    client_ns: str,
    client_if: str,
    timeout_s: float = 15.0,
) -> DhcpResult:
    """Lease an address across the lab: dnsmasq serves, busybox udhcpc asks.

    Flow: 1. start dnsmasq in ``server_ns`` (foreground, DHCP only, bound to
    ``server_if``, no ping check before offers, lease file in a temporary
    directory) 2. wait until it holds UDP port 67 and has logged its range 3. run
    ``busybox udhcpc -n -q -f`` on ``client_if`` with a script that prints the
    lease 4. kill dnsmasq.  ``server_if`` needs an address in the range's
    subnet.  A client without a lease within ``timeout_s`` gives ``ok=False``;
    a server that cannot start raises ``TrafficError``.
    """
    dnsmasq = find_tool("dnsmasq")
    busybox = find_tool("busybox")
    _require_netns(client_ns)
    tries = max(1, math.floor(timeout_s) - 1)  # one DISCOVER per second (-T 1)
    with tempfile.TemporaryDirectory(prefix="l2b-dhcp-") as tmp:
        script = os.path.join(tmp, "udhcpc.sh")
        with open(script, "w") as f:
            f.write(UDHCPC_SCRIPT)
        os.chmod(script, 0o700)
        server_argv = [
            dnsmasq,
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--port=0",
            f"--interface={server_if}",
            "--bind-interfaces",
            f"--dhcp-range={range_start},{range_end},{netmask},{DHCP_LEASE_TIME}",
            f"--dhcp-leasefile={os.path.join(tmp, 'leases')}",
            "--pid-file=",
            "--dhcp-authoritative",
            "--no-ping",
            "--user=",  # keep its uid and groups: a rootless lab maps no other user
            "--group=",  # (and may not call setgroups)
        ]
        client_argv = [busybox, "udhcpc", "-i", client_if, "-n", "-q", "-f"]
        client_argv += ["-t", str(tries), "-T", "1", "-s", script]
        async with _spawn(server_ns, server_argv) as server:
            # Port 67 is bound before the interface checks; the range line comes after.
            await server.wait_listening("udp", DHCP_SERVER_PORT, DAEMON_START_TIMEOUT_S)
            await server.wait_stderr(DNSMASQ_READY_LINE, DAEMON_START_TIMEOUT_S)
            client = await _run(client_ns, client_argv, timeout_s)
            if not server.running:
                raise server.failure("exited while the client asked for a lease")
            await server.stop(signal.SIGTERM)
            server_log = server.stderr()
    match = _LEASE_LINE.search(client.stdout)
    output = client.stdout + client.stderr
    if client.timed_out:
        output += f"udhcpc in {client_ns}: killed after {timeout_s:g} s\n"
    output += f"--- dnsmasq in {server_ns} ---\n{server_log}"
    return DhcpResult(
        ok=match is not None,
        address=match[1] if match else None,
        elapsed_s=client.elapsed_s,
        output=output,
    )


@contextlib.asynccontextmanager
async def dnsmasq(ns: str, ifname: str, *, range_v4: tuple[str, str] | None = None,
                  netmask: str = "255.255.0.0", range_v6: tuple[str, str] | None = None
                  ) -> AsyncIterator[Callable[[], str]]:
    """A DHCP server (and, with ``range_v6``, a DHCPv6 server and IPv6 router sending
    RAs) on ``ifname`` in ``ns`` while the block runs; ready when the block starts.
    The block gets a function returning the server's log so far (what it heard).

    The interface needs an address in each range's subnet.  Stopped (SIGTERM, then
    SIGKILL) on leaving the block, whatever happens.
    """
    program = find_tool("dnsmasq")
    with tempfile.TemporaryDirectory(prefix="l2b-dnsmasq-") as tmp:
        argv = [program, "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
                "--port=0", f"--interface={ifname}", "--bind-interfaces",
                f"--dhcp-leasefile={os.path.join(tmp, 'leases')}", "--pid-file=",
                "--dhcp-authoritative", "--no-ping"]
        ready = []
        if range_v4 is not None:
            argv.append(f"--dhcp-range={range_v4[0]},{range_v4[1]},{netmask},{DHCP_LEASE_TIME}")
            ready.append(("udp", DHCP_SERVER_PORT, DNSMASQ_READY_LINE))
        if range_v6 is not None:
            argv += [f"--dhcp-range={range_v6[0]},{range_v6[1]},64,{DHCP_LEASE_TIME}",
                     "--enable-ra", "--ra-param=*,2,600"]
            ready.append(("udp", DHCP6_SERVER_PORT, "DHCPv6, IP range"))
        async with _spawn(ns, argv) as server:
            for proto, port, line in ready:
                await server.wait_listening(proto, port, DAEMON_START_TIMEOUT_S)
                await server.wait_stderr(line, DAEMON_START_TIMEOUT_S)
            try:
                yield server.stderr
            finally:
                with trio.CancelScope(shield=True):
                    await server.stop(signal.SIGTERM)


async def udhcpc(ns: str, ifname: str, *, timeout_s: float) -> DhcpResult:
    """Ask for a DHCPv4 lease with busybox udhcpc (the interface is left unconfigured)."""
    busybox = find_tool("busybox")
    tries = max(1, math.floor(timeout_s) - 1)
    with tempfile.TemporaryDirectory(prefix="l2b-udhcpc-") as tmp:
        script = os.path.join(tmp, "udhcpc.sh")
        with open(script, "w") as f:
            f.write(UDHCPC_SCRIPT)
        os.chmod(script, 0o700)
        argv = [busybox, "udhcpc", "-i", ifname, "-n", "-q", "-f", "-t", str(tries), "-T", "1",
                "-s", script]
        client = await _run(ns, argv, timeout_s)
    match = _LEASE_LINE.search(client.stdout)
    return DhcpResult(ok=match is not None, address=match[1] if match else None,
                      elapsed_s=client.elapsed_s, output=client.stdout + client.stderr)


async def run_module(ns: str, module: str, args: Sequence[str], *, timeout_s: float
                     ) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` (a lab helper, e.g. ``netns.checks.flood``) in ``ns``
    and return the JSON object it prints last; ``TrafficError`` if it prints none."""
    r = await _run(ns, [sys.executable, "-m", module, *args], timeout_s)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.timed_out or not lines:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrafficError(f"{module} in {ns}: "
                           + (f"killed after {timeout_s:g} s" if r.timed_out else last))
    try:
        return _json_object(lines[-1])
    except ValueError:
        raise TrafficError(f"{module} in {ns}: unreadable output {lines[-1][:80]!r}") from None


# --- capture --------------------------------------------------------------------


async def tcpdump_count(
    ns: str,
    ifname: str,
    bpf: str,
    *,
    duration_s: float,
    action: Callable[[], Awaitable[None]] | None = None,
) -> list[bytes]:
    """Capture on ``ifname`` in ``ns`` while ``action`` runs; return the frames.

    Flow: 1. ``tcpdump -i IF -w FILE -U -n --immediate-mode -Z root BPF``
    2. wait for its "listening on" line (the capture is armed) 3. await
    ``action`` 4. keep capturing until ``duration_s`` after arming (or until
    ``action`` returns, if later) 5. SIGINT, so tcpdump flushes and exits
    6. parse the pcap file.  ``bpf=""`` captures everything.  A bad filter
    or interface raises ``TrafficError`` with tcpdump's own message.
    """
    program = find_tool("tcpdump")
    with tempfile.TemporaryDirectory(prefix="l2b-pcap-") as tmp:
        path = os.path.join(tmp, "capture.pcap")
        argv = [program, "-i", ifname, "-w", path, "-U", "-n", "--immediate-mode", "-Z", "root"]
        if bpf:
            argv.append(bpf)
        async with _spawn(ns, argv) as capture:
            await capture.wait_stderr("listening on", DAEMON_START_TIMEOUT_S)
            armed = trio.current_time()
            if action is not None:
                await action()
            await trio.sleep_until(armed + duration_s)
            await capture.stop(signal.SIGINT)
        with open(path, "rb") as f:
            data = f.read()
    try:
        return parse_pcap(data)
    except ValueError as e:
        raise TrafficError(f"tcpdump in {ns} on {ifname}: unreadable capture: {e}") from None


# --- raw frames -----------------------------------------------------------------


def _socket_error(ns: str, ifname: str, what: str, e: OSError) -> TrafficError:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    hint = {
        errno.ENODEV: "check the interface name",
        errno.ENXIO: "check the interface name",
        errno.ENETDOWN: "bring the interface up",
        errno.EMSGSIZE: "the frame is larger than the interface MTU allows",
        errno.EPERM: "raw sockets need root or CAP_NET_RAW",
    }.get(e.errno or 0, "see the error")
    return TrafficError(f"{what} on {ifname!r} in {ns}: {e.strerror} ({name}); {hint}")


def _open_packet_socket(ns: str, ifname: str, proto: int) -> socket.socket:
    """An AF_PACKET raw socket created inside ``ns`` and bound to ``ifname``.

    ``proto=0`` receives nothing (send only).  For ``ETH_P_ALL`` the socket is
    created with protocol 0 and only bind() turns reception on, so no frame of
    another interface is ever queued.  Runs on a worker thread.
    """
    _require_netns(ns)
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if proto:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_RCVBUF_BYTES)
                except PermissionError:  # a rootless lab: only up to net.core.rmem_max
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.bind((ifname, proto))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise _socket_error(ns, ifname, "raw socket", e) from None
    return sock


async def send_frames(
    ns: str, ifname: str, frames: Sequence[bytes], *, interval_s: float = 0.0
) -> None:
    """Send each frame as is on ``ifname`` in ``ns`` (AF_PACKET raw, bound to the interface).

    Frames go out exactly as given (build them with ``frames.make_frame``).
    ``interval_s`` paces them; a back-to-back burst longer than the receiver's
    backlog (net.core.netdev_max_backlog) can be dropped by the kernel.
    """
    raw = await trio.to_thread.run_sync(_open_packet_socket, ns, ifname, 0)
    with trio.socket.from_stdlib_socket(raw) as sock:
        for i, frame in enumerate(frames):
            if i and interval_s > 0:
                await trio.sleep(interval_s)
            try:
                await sock.send(frame)
            except OSError as e:
                raise _socket_error(ns, ifname, f"sending frame {i}", e) from None


class FrameCounter:
    """Count frames carrying ``marker`` seen on ``ifname`` in ``ns``, split by direction.

    ``async with FrameCounter(ns, ifname, marker) as counter:`` - the capture
    socket is bound before ``__aenter__`` returns, so every frame sent inside
    the block is seen.  A reader task drains the socket (one checkpoint per
    batch); ``__aexit__`` waits ``settle_s`` for frames still in flight, stops
    the reader, drains what is queued and closes the socket.

    - ``incoming``: frames received by the interface (any pkttype but outgoing)
    - ``outgoing``: frames sent through it (PACKET_OUTGOING)
    - ``frames``: the incoming ones, bytes as on the wire (an 802.1Q tag the
      kernel moved into metadata is put back), at most ``max_frames``
    - ``dropped``: frames the kernel dropped because the socket buffer was
      full; counts are exact only while this is 0
    """

    def __init__(
        self,
        ns: str,
        ifname: str,
        marker: bytes,
        *,
        settle_s: float = COUNTER_SETTLE_S,
        max_frames: int = MAX_KEPT_FRAMES,
    ) -> None:
        if not marker:
            raise ValueError("FrameCounter: marker must not be empty")
        self.ns = ns
        self.ifname = ifname
        self.marker = marker
        self.settle_s = settle_s
        self.max_frames = max_frames
        self.incoming = 0
        self.outgoing = 0
        self.dropped = 0
        self.frames: list[bytes] = []
        self._sock: socket.socket | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: trio.CancelScope | None = None

    async def __aenter__(self) -> FrameCounter:
        if self._sock is not None:
            raise RuntimeError("FrameCounter is not reentrant")
        self._sock = await trio.to_thread.run_sync(
            _open_packet_socket, self.ns, self.ifname, ETH_P_ALL
        )
        stack = contextlib.AsyncExitStack()
        try:
            nursery = await stack.enter_async_context(trio.open_nursery())
            self._reader = nursery.cancel_scope
            nursery.start_soon(self._read)
        except BaseException:
            self._close()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> bool:
        assert self._stack is not None and self._reader is not None
        try:
            if exc is None:
                await trio.sleep(self.settle_s)
        finally:
            self._reader.cancel()
            try:
                # Exit the nursery cleanly even when the block raised: the reader
                # never fails, and the block's own exception propagates unwrapped.
                await self._stack.__aexit__(None, None, None)
            finally:
                self._drain()
                self._close()
        return False

    async def _read(self) -> None:
        assert self._sock is not None
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            self._drain()

    def _drain(self) -> None:
        """Count every queued frame (synchronous, so no await splits a batch)."""
        sock = self._sock
        assert sock is not None
        marker = self.marker
        ancbufsize = socket.CMSG_SPACE(AUXDATA.size)
        while True:
            try:
                data, ancdata, _flags, addr = sock.recvmsg(RECV_BUFFER_BYTES, ancbufsize)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # interface gone or down: what was counted stands
            if data.find(marker, ETH_HLEN) < 0:
                continue
            if addr[2] == PACKET_OUTGOING:
                self.outgoing += 1
                continue
            self.incoming += 1
            if len(self.frames) < self.max_frames:
                self.frames.append(_with_vlan_tag(data, ancdata))

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            packets_drops = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, PACKET_STATS.size)
            self.dropped += PACKET_STATS.unpack(packets_drops)[1]
        except OSError:
            pass
        trio.lowlevel.notify_closing(sock)
        sock.close()


def _with_vlan_tag(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> bytes:
    """Put back the 802.1Q tag the kernel reports in PACKET_AUXDATA, if any."""
    for level, kind, value in ancdata:
        if level != SOL_PACKET or kind != PACKET_AUXDATA or len(value) < AUXDATA.size:
            continue
        status, _len, _snaplen, _mac, _net, tci, tpid = AUXDATA.unpack_from(value)
        if status & TP_STATUS_VLAN_VALID:
            if not status & TP_STATUS_VLAN_TPID_VALID:
                tpid = TPID_8021Q
            return insert_vlan_tag(data, tci, tpid)
    return data
