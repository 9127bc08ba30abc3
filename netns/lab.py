"""A running lab: build a plan, start its gateways, run checks, tear everything down.

Flow of ``open_lab``: 1. load and plan the scenario (pure; bad input raises
``ScenarioError`` before anything exists)  2. preflight: root, programs the checks
need  3. write the registry's state file, and start the gateways' fork server
(``realise/forkserver.py``), whose imports run beside the build  4. build
namespaces and links (each undo registered as soon as its object exists; tbf and
nftables impairments are steps too)  5. start the delay relay of each link that
has one (wanctl.py) and the lab's DNS server (``[lab] dns``: dnsmasq in the WAN
router, realise/dns.py), then one gateway per site (forked by the fork server),
and wait until each is ready and sees all its peers up (within ``[lab]
up_within``)  6. hand the ``Lab`` to the caller  7. on every exit path (success,
failure, exception, cancellation) stop the gateways, the fork server, relays and
DNS server and unwind the undo stack, shielded from cancellation; with ``keep``
and a body that completed, the lab is detached instead (the fork server exits,
its gateways run on) and lives until ``lab down``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from l2bridge.errors import EXIT_USAGE, L2bridgeError
from netns.checks import kinds as checks_mod
from netns.checks import timeline as timeline_mod
from netns.checks.report import EventResult
from netns.checks.streams import Timeline
from netns.checks.traffic import TOOL_PACKAGES
from netns.describe import pcap as pcap_spec
from netns.describe.impair import NftRuleset
from netns.describe.openvpn import OPENVPN_PACKAGE, OPENVPN_PROGRAM
from netns.describe.plan import Node, Plan, dns_records, make_plan, new_prefix
from netns.describe.scenario import (
    CHECK_TIMEOUT_S,
    Check,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_check,
)
from netns.realise.build import BuildError, build
from netns.realise.dns import DnsError, DnsServer
from netns.realise.faults import Faults
from netns.realise.forkserver import LauncherError
from netns.realise.gateways import (
    Gateway,
    GatewayError,
    gateway_launcher,
    make_gateway,
    peers_up,
)
from netns.realise.nsenter import RESOLV_CONF
from netns.realise.pcap import CaptureError, Captures
from netns.realise.registry import Registry, kill_namespace_processes
from netns.realise.undo import UndoStack
from netns.realise.wanctl import RelayProcess, WanError

READY_TIMEOUT_S = 10.0
LAUNCHER_LOG = "launcher.log"  # the gateways' fork server's output, in the run directory
PEERS_POLL_S = 0.1
STOP_TIMEOUT_S = 2.0

CHECK_PROGRAMS: dict[str, tuple[str, ...]] = {
    "ping": ("ping",),
    "reachability": ("ping",),
    "iperf3": ("iperf3",),
    "dhcp": ("dnsmasq", "busybox"),
    "broadcast_once": (),
    "unicast_isolation": ("ping",),
    "mtu": ("ping",),
    "restart": ("ping",),
    "command": (),  # its own program: see command_programs()
    "vlan_tags": ("tcpdump",),
    "wan_frames": (),
    "loop_blocked": (),
    "unplug": ("ping",),
    "storm": ("iperf3",),
    "dhcp_local": ("dnsmasq", "busybox"),
    "mac_flap": (),
    "stream": ("ping",),  # or iperf3: see command_programs()
    "recovers": ("ping",),
    "path": (),
    "quiet": ("iperf3",),
}


def command_programs(check: Check) -> tuple[str, ...]:
    """The programs a check runs: the fixed ones of its kind, plus a command's own."""
    if check.kind == "stream":
        return (check.params["tool"],)
    if check.kind != "command":
        return CHECK_PROGRAMS[check.kind]
    argv = check.params["argv"]
    return (argv[0],) if argv else ("/bin/sh",)

Progress = Callable[[str], None]


class LabError(L2bridgeError):
    """The lab could not be built or its gateways did not come up (one line)."""


class PreflightError(LabError):
    """Not root, or a program is missing: nothing was created."""

    exit_status = EXIT_USAGE


def openvpn_problem() -> str | None:
    """Why the openvpn gateway cannot run on this machine (one line), or None."""
    if shutil.which(OPENVPN_PROGRAM) is None:
        return (f"{OPENVPN_PROGRAM} is not on PATH (install it: apt-get install "
                f"{OPENVPN_PACKAGE})")
    return None


def preflight(plan: Plan) -> None:
    """Fail before creating anything when the lab cannot run here."""
    if os.geteuid() != 0:
        raise PreflightError(
            "the lab needs root (network namespaces, veths, bridges); run it with sudo"
        )
    for check in plan.scenario.checks:
        for program in command_programs(check):
            if shutil.which(program) is None:
                package = TOOL_PACKAGES.get(program, program)
                raise PreflightError(
                    f"check[{check.index}] ({check.kind}) needs {program}, which is not on PATH;"
                    f" install it (apt-get install {package})"
                )
    if any(isinstance(step, NftRuleset) for step in plan.steps) and shutil.which("nft") is None:
        raise PreflightError("wan: loss, duplication and NAT need nft, which is not on PATH; "
                             "install it (apt-get install nftables)")
    if plan.gateway == "l2bridge" and importlib.util.find_spec("l2bridge.ops.cli") is None:
        raise PreflightError(
            "gateway l2bridge needs the l2bridge package (l2bridge.ops.cli not importable); "
            "install it or use --gateway vxlan"
        )
    if plan.gateway == "openvpn" and (why := openvpn_problem()) is not None:
        raise PreflightError(f"gateway openvpn: {why}; or use another --gateway")
    if plan.dns is not None:
        if shutil.which("dnsmasq") is None:
            raise PreflightError("lab.dns needs dnsmasq, which is not on PATH; install it "
                                 f"(apt-get install {TOOL_PACKAGES['dnsmasq']})")
        if not os.path.isfile(os.path.realpath(RESOLV_CONF)):
            raise PreflightError(f"lab.dns binds the lab's resolv.conf over {RESOLV_CONF}, "
                                 f"which does not exist here ({os.path.realpath(RESOLV_CONF)})")


class Lab:
    """Handle on a running lab: its nodes, its gateways, its checks."""

    def __init__(self, plan: Plan, registry: Registry, *,
                 progress: Progress | None = None) -> None:
        self.plan = plan
        self.registry = registry
        self.progress = progress or (lambda line: None)
        self.launcher = (gateway_launcher(os.path.join(plan.rundir, LAUNCHER_LOG))
                         if any(s.gateway == "l2bridge" for s in plan.sites) else None)
        self.gateways: dict[str, Gateway] = {
            s.name: make_gateway(s, self.launcher) for s in plan.sites
        }
        self.relays: dict[str, RelayProcess] = {
            s.name: RelayProcess(s.relay) for s in plan.sites if s.relay is not None
        }
        self.dns = DnsServer(plan.dns) if plan.dns is not None else None
        self.timings: dict[str, float] = {}
        # What crossed the WAN around the checks a ``wan_frames`` check counts ``during``.
        self.windows: dict[int, tuple[checks_mod.WanCount, checks_mod.WanCount]] = {}
        self.faults = Faults(plan, self.gateways, self.relays, self.dns)
        self.timeline: Timeline | None = None  # set while (and after) the timeline runs
        self.event_results: list[EventResult] = []
        # Called after a check fails (``lab run --artifacts`` snapshots the gateways then).
        self.on_failure: Callable[[checks_mod.CheckResult], Awaitable[None]] | None = None
        self.captures = Captures([], plan.rundir, plan.rundir)  # open_lab sets the real ones

    def say(self, line: str) -> None:
        """One progress line (stderr for ``lab run``)."""
        self.progress(line)

    # -- naming

    @property
    def prefix(self) -> str:
        return self.plan.prefix

    @property
    def name(self) -> str:
        return self.plan.prefix

    @property
    def scenario(self) -> Scenario:
        return self.plan.scenario

    def node(self, ref: str) -> Node:
        """A node by reference: ``"site.host"``, ``"site.gw"``, ``"site.sw"`` or ``"wan"``."""
        try:
            return self.plan.nodes[ref]
        except KeyError:
            raise LabError(
                f'lab {self.prefix}: no node "{ref}" (one of: {", ".join(self.plan.nodes)})'
            ) from None

    def ns(self, ref: str) -> str:
        return self.node(ref).ns

    def hosts(self) -> list[Node]:
        return self.plan.hosts()

    # -- gateways

    async def start_gateways(self) -> None:
        async with trio.open_nursery() as nursery:
            for gw in self.gateways.values():
                nursery.start_soon(gw.start)
        await self.wait_ready()

    async def wait_ready(self, ready_timeout_s: float = READY_TIMEOUT_S,
                         peers_timeout_s: float | None = None) -> None:
        """Every gateway answers its control socket, then sees all its peers up (within
        ``peers_timeout_s``, by default the scenario's ``[lab] up_within``)."""
        if peers_timeout_s is None:
            peers_timeout_s = self.scenario.up_within_s
        deadline = trio.current_time() + ready_timeout_s
        async with trio.open_nursery() as nursery:
            for gw in self.gateways.values():
                nursery.start_soon(gw.wait_ready, deadline)
        deadline = trio.current_time() + peers_timeout_s
        counts: dict[str, tuple[int, int]] = {}

        async def count(name: str, gw: Gateway) -> None:
            try:
                counts[name] = peers_up(await gw.show())
            except (OSError, ValueError, GatewayError, trio.TooSlowError):
                counts[name] = (0, -1)

        while True:
            async with trio.open_nursery() as nursery:  # every gateway at once
                for name, gw in self.gateways.items():
                    nursery.start_soon(count, name, gw)
            lagging = [f"{name} {max(up, 0)}/{max(total, 0)}"
                       for name, (up, total) in counts.items() if up != total]
            if not lagging:
                return
            if trio.current_time() >= deadline:
                raise GatewayError(
                    f"lab {self.prefix}: peers not all up after {peers_timeout_s:g} s "
                    f"(peers up: {', '.join(lagging)}); see the logs in {self.plan.rundir}"
                )
            await trio.sleep(PEERS_POLL_S)

    async def start_relays(self, undo: UndoStack) -> None:
        """Start the delay relay of every link that has one; each kill is an undo at once."""
        async with trio.open_nursery() as nursery:
            for relay in self.relays.values():
                undo.push(f"kill relay {relay.plan.site}", relay.kill_now)
                nursery.start_soon(relay.start)

    async def stop_relays(self) -> None:
        async with trio.open_nursery() as nursery:
            for relay in self.relays.values():
                nursery.start_soon(relay.stop)

    async def start_dns(self, undo: UndoStack) -> None:
        """Start the lab's DNS server (``[lab] dns``); its kill is an undo at once."""
        if self.dns is not None:
            undo.push("kill dnsmasq", self.dns.kill_now)
            await self.dns.start(dns_records(self.plan))

    async def stop_dns(self) -> None:
        if self.dns is not None:
            await self.dns.stop()

    async def stop_gateways(self) -> None:
        with trio.move_on_after(STOP_TIMEOUT_S * 2):
            async with trio.open_nursery() as nursery:
                for gw in self.gateways.values():
                    nursery.start_soon(gw.stop)

    async def kill_site(self, site: str) -> None:
        """Stop a site's gateway the hard way (SIGKILL for l2bridge)."""
        await self._gateway(site).kill()

    async def stop_site(self, site: str) -> None:
        await self._gateway(site).stop()

    async def start_site(self, site: str, *, wait: bool = True) -> None:
        """Start a site's gateway again; with ``wait``, until it answers."""
        gw = self._gateway(site)
        await gw.start()
        if wait:
            await gw.wait_ready(trio.current_time() + READY_TIMEOUT_S)

    async def show(self, site: str) -> dict[str, Any]:
        """The site's status (the control socket's ``show`` answer)."""
        return await self._gateway(site).show()

    def _gateway(self, site: str) -> Gateway:
        try:
            return self.gateways[site]
        except KeyError:
            raise LabError(
                f'lab {self.prefix}: no site "{site}" (one of: {", ".join(self.gateways)})'
            ) from None

    # -- checks

    async def check(self, kind: str, params: Mapping[str, Any] | None = None, *,
                    timeout_s: float | None = None, **kw: Any) -> checks_mod.CheckResult:
        """Run one check of ``kind``; ``from_=`` may stand for ``from`` in keywords."""
        raw: dict[str, Any] = {"kind": kind, **(params or {})}
        raw.update({k.rstrip("_"): v for k, v in kw.items()})
        if timeout_s is not None:
            raw["timeout"] = timeout_s
        check = parse_check(raw, self.scenario, path=f"lab {self.prefix}")
        return await checks_mod.run_check(self, check)

    async def run_checks(self, selected: list[Check] | None = None
                         ) -> list[checks_mod.CheckResult]:
        """Every check of the scenario with its events (the timeline first, then the
        checks in order: ``netns/checks/timeline.py``; the events' results go to
        ``event_results``), or only ``selected``, one after the other."""
        if selected is None:
            results, self.event_results = await timeline_mod.run_all(
                self, self.scenario.checks, self.scenario.events)
            return results
        results = []
        for check in selected if selected is not None else self.scenario.checks:
            self.progress(f"check {check.name} …")
            result = await checks_mod.run_check(self, check)
            mark = "ok" if result.ok else "FAIL"
            self.progress(f"check {check.name} … {mark} {result.summary} "
                          f"({result.elapsed_s:.2f} s)")
            results.append(result)
        return results


OFFLOAD_ENV = "L2BRIDGE_LAB_OFFLOAD"


def lab_offload_from_env() -> bool | None:
    """``$L2BRIDGE_LAB_OFFLOAD``: "off" → False, "on" → True, unset → None (daemon default)."""
    value = os.environ.get(OFFLOAD_ENV, "").strip().lower()
    if not value:
        return None
    if value in ("off", "0", "false", "no"):
        return False
    if value in ("on", "1", "true", "yes"):
        return True
    raise LabError(f"${OFFLOAD_ENV}={value!r}: expected on or off")


@asynccontextmanager
async def open_lab(
    scenario: Scenario | str,
    *,
    gateway: str | None = None,
    wan_mtu: int | None = None,
    prefix: str | None = None,
    keep: bool = False,
    detached: bool = False,
    progress: Progress | None = None,
    offload: bool | None = None,
    pcap: Sequence[str] = (),
    pcap_dir: str | None = None,
) -> AsyncIterator[Lab]:
    """Build ``scenario`` and yield its ``Lab``; tear it all down on exit (see module doc).

    ``offload`` None takes ``$L2BRIDGE_LAB_OFFLOAD`` ("off" writes ``offload =
    false`` into every daemon config: the whole test suite can run without
    offloads), else the daemon's default.

    ``detached`` records no owner (a lab for ``lab up``); ``keep`` leaves the lab
    up after a body that completed (and detaches it).

    ``pcap`` (``NODE:IF`` or ``all``, with the scenario's ``[lab] pcap``) starts one
    tcpdump per interface once the gateways are up, writing into ``pcap_dir``
    (default ``./pcap-NAME``); they stop before the teardown.  Whether the files
    stay is the caller's choice (``lab.captures.remove()``).
    """
    say = progress or (lambda line: None)
    if isinstance(scenario, str):
        scenario = load_scenario(scenario)
    if offload is None:
        offload = lab_offload_from_env()
    plan = make_plan(scenario, prefix=prefix or new_prefix(), gateway=gateway, wan_mtu=wan_mtu,
                     offload=offload)
    captures = [*pcap_spec.resolve(plan, scenario.pcap, "lab.pcap"),
                *pcap_spec.resolve(plan, pcap, "--pcap")]
    preflight(plan)
    undo = UndoStack()
    registry = Registry.create(plan, detached=detached)
    undo.push(f"remove {registry.dir}", registry.remove_dir)
    lab = Lab(plan, registry, progress=progress)
    lab.captures = Captures(list(dict.fromkeys(captures)),
                            pcap_dir or os.path.abspath(f"pcap-{plan.prefix}"), plan.rundir)
    completed = False
    try:
        started = time.monotonic()
        if lab.launcher is not None:  # its imports run while the build does
            undo.push("stop the gateway launcher", lab.launcher.kill_now)
            await lab.launcher.start()
        say(f"lab {plan.prefix}: building {len(plan.sites)} sites "
            f"({len(plan.namespaces)} namespaces) …")
        try:
            await trio.to_thread.run_sync(
                lambda: build(plan, undo, record_netns=registry.add_namespaces),
                abandon_on_cancel=False,
            )
        except (BuildError, OSError) as e:
            raise LabError(f"lab {plan.prefix}: {e}") from None
        lab.timings["build_s"] = time.monotonic() - started
        say(f"lab {plan.prefix}: built in {lab.timings['build_s']:.2f} s")
        started = time.monotonic()
        if lab.relays:
            say(f"lab {plan.prefix}: starting {len(lab.relays)} delay relays …")
            try:
                await lab.start_relays(undo)
            except WanError as e:
                raise LabError(f"lab {plan.prefix}: {e}") from None
        if lab.dns is not None:
            say(f"lab {plan.prefix}: starting dnsmasq …")
            try:
                await lab.start_dns(undo)
            except DnsError as e:
                raise LabError(f"lab {plan.prefix}: {e}") from None
        say(f"lab {plan.prefix}: starting {len(plan.sites)} {plan.gateway} gateways …")
        try:
            await lab.start_gateways()
        except (GatewayError, LauncherError) as e:
            raise LabError(str(e)) from None
        lab.timings["start_s"] = time.monotonic() - started
        say(f"lab {plan.prefix}: gateways ready, all peers up in {lab.timings['start_s']:.2f} s")
        if lab.captures.captures:
            try:
                await lab.captures.start(undo)
            except CaptureError as e:
                raise LabError(str(e)) from None
            say(f"lab {plan.prefix}: capturing {len(lab.captures.captures)} interfaces into "
                f"{lab.captures.directory}")
        yield lab
        completed = True
    finally:
        if keep and completed:
            registry.detach()
            if lab.launcher is not None:  # the gateways it forked run on without it
                with trio.CancelScope(shield=True):
                    await lab.launcher.close()
        else:
            started = time.monotonic()
            with trio.CancelScope(shield=True):
                await lab.captures.stop()
                await lab.stop_gateways()
                if lab.launcher is not None:
                    await lab.launcher.close()
                await lab.stop_relays()
                await lab.stop_dns()
                await trio.to_thread.run_sync(
                    kill_namespace_processes, list(registry.state.namespaces)
                )
                problems = undo.unwind()
            lab.timings["teardown_s"] = time.monotonic() - started
            say(f"lab {plan.prefix}: removed in {lab.timings['teardown_s']:.2f} s")
            for problem in problems:
                say(f"lab {plan.prefix}: teardown: {problem}")


__all__ = [
    "CHECK_TIMEOUT_S",
    "Lab",
    "LabError",
    "PreflightError",
    "ScenarioError",
    "open_lab",
    "preflight",
]
