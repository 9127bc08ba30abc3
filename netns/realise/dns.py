"""The lab's DNS server: dnsmasq in the WAN router's namespace (what ``describe/dns.py`` plans).

Flow: 1. ``start`` writes the hosts file and the gateways' ``resolv.conf``, then
runs dnsmasq in the WAN namespace (own session, output appended to
``RUNDIR/dnsmasq.log``, supervised by ``l2bridge.io.proc``)  2. ready when
dnsmasq itself holds UDP port 53 (``ports.port_open``); an early exit is one line
with its status and the log's tail  3. ``update(records)`` rewrites the hosts
file atomically and sends SIGHUP (dnsmasq re-reads it and clears its cache)
4. ``stop``: SIGTERM, then SIGKILL, bounded; ``kill_now`` is the undo registered
as soon as the process exists.  A lab without ``[lab] dns`` starts none.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence

import trio

from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from netns.describe.dns import DNS_PORT, DnsPlan, hosts_text, resolv_text
from netns.realise.nsenter import netns_preexec
from netns.realise.ports import port_open

DNS_READY_TIMEOUT_S = 5.0
DNS_STOP_GRACE_S = 1.0
LOG_TAIL_LINES = 6


class DnsError(L2bridgeError):
    """The lab's DNS server did not start (one line)."""


def write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class DnsServer:
    """The running dnsmasq of one lab (see module doc)."""

    def __init__(self, plan: DnsPlan, program: str = "dnsmasq") -> None:
        self.plan = plan
        self.program = program
        self.child: proc.Child | None = None

    async def start(self, records: Mapping[str, Sequence[str | None]]) -> None:
        write_atomically(self.plan.hosts_path, hosts_text(records))
        write_atomically(self.plan.resolv_path, resolv_text(self.plan.nameserver))
        with open(self.plan.log_path, "ab") as log:
            self.child = child = await proc.start(
                self.plan.argv(self.program), name="dnsmasq", stdout=log, stderr=log,
                preexec=netns_preexec(self.plan.ns), error=DnsError,
                detail=proc.log_detail(self.plan.log_path, LOG_TAIL_LINES),
            )

        async def listening() -> bool:
            return port_open(child.pid, "udp", DNS_PORT)

        try:
            await child.wait_ready(listening, deadline=trio.current_time() + DNS_READY_TIMEOUT_S,
                                   until=f"listening on UDP port {DNS_PORT}",
                                   late=f"not listening on UDP port {DNS_PORT} within "
                                        f"{DNS_READY_TIMEOUT_S:g} s")
        except DnsError:
            child.kill_now()
            raise

    def update(self, records: Mapping[str, Sequence[str | None]]) -> None:
        """New records: the hosts file rewritten, then SIGHUP."""
        write_atomically(self.plan.hosts_path, hosts_text(records))
        if self.child is None or not self.child.running:
            raise DnsError("dnsmasq: not running, cannot take new records")
        os.kill(self.child.pid, signal.SIGHUP)

    def kill_now(self) -> None:
        """SIGKILL to its process group (the undo; ``stop`` is the graceful way)."""
        if self.child is not None:
            self.child.kill_now()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop(signal.SIGTERM, grace_s=DNS_STOP_GRACE_S)


__all__ = ["DnsError", "DnsServer"]
