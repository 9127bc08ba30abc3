"""Site gateways: a real ``l2bridge up`` process, or the kernel's own VXLAN as reference.

Both kinds offer the same small interface so checks and the ``restart`` check do
not care which one runs: ``start()``, ``wait_ready(deadline)``, ``kill()`` (hard
stop, like kill -9), ``stop()`` (graceful, bounded) and ``show()`` (the site's
status as the control socket's JSON).

l2bridge flow: 1. write the site config to ``RUNDIR/<site>.toml``  2. the lab's
fork server (``forkserver.py``: one per lab, the daemon imported once) forks
``python -m l2bridge up -c CONFIG`` inside the gateway namespace (own session, so
a terminal's Ctrl-C reaches only the runner, which then tears down in order; with
the lab's DNS, in a mount namespace of its own that shows it the lab's
``resolv.conf``), output to ``RUNDIR/<site>.log``  3. READY when the control socket answers
``{"cmd": "show"}``; an early exit fails with its status and the tail of the log
4. stop: SIGTERM, then SIGKILL after a grace; kill: SIGKILL (``l2bridge.io.proc``).

vxlan flow: 1. bridge ``br0`` (STP off, forward delay 0) in the gateway namespace
2. VXLAN devices from the plan (learning on, an all-zero fdb entry per remote for
head-end replication; local and remotes IPv6 over an IPv6 WAN) enslaved to
``br0``  3. ``eth1`` enslaved, all up.  Kill and stop delete ``br0`` and the VXLAN
devices, as a crashed daemon would leave nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any, Protocol

import trio
from pyroute2.netlink.exceptions import NetlinkError

from l2bridge.core import keys
from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from netns.describe.plan import VXLAN_PORT, SitePlan
from netns.realise.build import is_missing, netlink
from netns.realise.forkserver import ForkedProcess, Launcher
from netns.realise.nsenter import netns_path

READY_POLL_S = 0.05
CONTROL_TIMEOUT_S = 2.0
STOP_GRACE_S = 1.0
LOG_TAIL_LINES = 8
CONTROL_MAX_BYTES = 4 * 1024 * 1024
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GatewayError(L2bridgeError):
    """A gateway did not start or answer; the message names the site and shows why."""


class Gateway(Protocol):
    site: SitePlan

    async def start(self) -> None: ...
    async def wait_ready(self, deadline: float) -> None: ...
    async def kill(self) -> None: ...
    async def stop(self) -> None: ...
    async def show(self) -> dict[str, Any]: ...


def make_gateway(site: SitePlan, launcher: Launcher | None) -> Gateway:
    """The site's gateway; an l2bridge one is forked by ``launcher``."""
    if site.gateway == "vxlan":
        return VxlanGateway(site)
    if launcher is None:
        raise GatewayError(f"gateway {site.name}: l2bridge gateways need the lab's launcher")
    return L2bridgeGateway(site, launcher)


def gateway_launcher(log_path: str) -> Launcher:
    """The lab's fork server for its l2bridge gateways (the project's code on their path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    return Launcher(log_path, env=env, cwd=PROJECT_ROOT)


async def query_control(path: str, cmd: str = "show", timeout_s: float = CONTROL_TIMEOUT_S
                        ) -> dict[str, Any]:
    """Send ``{"cmd": CMD}`` to a control socket and return the JSON object it answers."""
    with trio.fail_after(timeout_s):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(json.dumps({"cmd": cmd}).encode() + b"\n")
            chunks = []
            size = 0
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > CONTROL_MAX_BYTES:
                    raise GatewayError(f"control socket {path}: answer larger than "
                                       f"{CONTROL_MAX_BYTES} bytes")
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise GatewayError(f"control socket {path}: expected a JSON object")
    return answer


def peers_up(show: dict[str, Any]) -> tuple[int, int]:
    """(peers up, peers total) from a show answer."""
    peers = show.get("peers") or []
    return sum(1 for p in peers if p.get("state") == "up"), len(peers)


class L2bridgeGateway:
    """One ``l2bridge up`` process in the site's gateway namespace."""

    def __init__(self, site: SitePlan, launcher: Launcher) -> None:
        self.site = site
        self.launcher = launcher
        self.child: proc.Child[ForkedProcess] | None = None

    @property
    def command(self) -> list[str]:
        """What the child runs, as arguments of ``python``."""
        return ["-m", "l2bridge", "up", "-c", self.site.config_path]

    @property
    def process(self) -> ForkedProcess | None:
        """The running ``l2bridge up`` (pid, poll, wait), for whoever watches it (None
        before ``start``)."""
        return self.child.process if self.child is not None else None

    async def start(self) -> None:
        with open(self.site.config_path, "w") as f:
            f.write(self.site.config_text)
        if self.site.private_key:
            fd = os.open(self.site.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(keys.encode_key(self.site.private_key) + "\n")
        self.child = await self.launcher.spawn(
            self.command,
            name=f"gateway {self.site.name}",
            netns=self.site.gw_ns,
            resolv_conf=self.site.resolv_conf,
            log_path=self.site.log_path,
            error=GatewayError,
            detail=proc.log_detail(self.site.log_path, LOG_TAIL_LINES),
        )

    async def wait_ready(self, deadline: float) -> None:
        if self.child is None:
            raise GatewayError(f"gateway {self.site.name}: not started")
        path = self.site.control_path

        async def answers() -> bool:
            try:
                await query_control(path)
            except (OSError, trio.TooSlowError, ValueError, GatewayError):
                return False
            return True

        await self.child.wait_ready(answers, deadline=deadline, poll_s=READY_POLL_S,
                                    late=f"control socket {path} did not answer in time")

    async def kill(self) -> None:
        if self.child is not None:
            await self.child.stop(signal.SIGKILL, grace_s=STOP_GRACE_S)

    async def stop(self) -> None:
        if self.child is not None:
            if self.child.running:  # a stopped (SIGSTOP) daemon must run to stop cleanly
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child.pid, signal.SIGCONT)
            await self.child.stop(signal.SIGTERM, grace_s=STOP_GRACE_S)

    async def show(self) -> dict[str, Any]:
        return await query_control(self.site.control_path)


class VxlanGateway:
    """The kernel's VXLAN bridged to the LAN NIC: the reference gateway."""

    def __init__(self, site: SitePlan) -> None:
        self.site = site
        self.running = False

    async def start(self) -> None:
        s = self.site
        with netlink(s.gw_ns) as ipr:
            ipr.link("add", ifname=s.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0,
                     mtu=max(d.mtu for d in s.vxlan))
            br = ipr.link_lookup(ifname=s.bridge)[0]
            for dev in s.vxlan:
                local = "vxlan_local6" if ":" in dev.local else "vxlan_local"
                ipr.link("add", ifname=dev.ifname, kind="vxlan", vxlan_id=dev.vni,
                         vxlan_port=VXLAN_PORT, vxlan_learning=1, mtu=dev.mtu,
                         **{local: dev.local})
                idx = ipr.link_lookup(ifname=dev.ifname)[0]
                for remote in dev.remotes:
                    ipr.fdb("append", ifindex=idx, lladdr="00:00:00:00:00:00", dst=remote)
                ipr.link("set", index=idx, master=br, state="up")
            lan = ipr.link_lookup(ifname=s.lan_ifname)[0]
            ipr.link("set", index=lan, master=br, state="up")
            ipr.link("set", index=br, state="up")
        self.running = True

    async def wait_ready(self, deadline: float) -> None:
        return None

    async def kill(self) -> None:
        s = self.site
        if not self.running and not os.path.exists(netns_path(s.gw_ns)):
            return  # never started in a namespace that was never built: nothing to remove
        with netlink(s.gw_ns) as ipr:
            for name in [d.ifname for d in s.vxlan] + [s.bridge]:
                try:
                    found = ipr.link_lookup(ifname=name)
                    if found:
                        ipr.link("del", index=found[0])
                except NetlinkError as e:
                    if not is_missing(e):
                        raise
        self.running = False

    async def stop(self) -> None:
        await self.kill()

    async def show(self) -> dict[str, Any]:
        state = "up" if self.running else "down"
        return {
            "site": self.site.name,
            "gateway": "vxlan",
            "peers": [{"name": p.name, "state": state} for p in self.site.peers],
        }
