"""Apply a plan's steps with pyroute2, registering each undo as soon as its object exists.

Flow: for each step in order: 1. namespaces: record the name in the registry,
create it, push its removal on the undo stack  2. links, addresses, routes and
sysctls inside lab namespaces, through one netlink socket per namespace (opened
inside the namespace, so no per-call fork)  3. on any failure raise ``BuildError``
naming the step; the caller unwinds the stack, which removes every namespace made
so far (and with them every link inside).

Links need no undo of their own: both ends of every veth live in lab namespaces
(plan.py invariant), so removing the namespaces removes them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Callable, Iterator

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from l2bridge.errors import L2bridgeError
from netns.describe.plan import Plan
from netns.describe.steps import (
    AddAddress,
    AddBridge,
    AddNetns,
    AddRoute,
    AddTbf,
    AddVeth,
    NftRuleset,
    SetLink,
    Step,
    Sysctl,
    VlanPort,
)
from netns.realise.nsenter import create_netns, in_netns
from netns.realise.registry import kill_namespace_processes, remove_namespace
from netns.realise.undo import UndoStack
from netns.realise.vlanport import attach_access_port
from netns.realise.wanctl import WanError, apply_tbf, load_nft

IFA_F_NODAD = 0x02


class BuildError(L2bridgeError):
    """A step failed; the message names the step, the cause and (when known) the fix."""


class NetlinkPool:
    """One IPRoute per namespace, each opened inside its namespace; closed together."""

    def __init__(self) -> None:
        self._sockets: dict[str, IPRoute] = {}

    def __getitem__(self, ns: str) -> IPRoute:
        ipr = self._sockets.get(ns)
        if ipr is None:
            with in_netns(ns):
                ipr = IPRoute()
            self._sockets[ns] = ipr
        return ipr

    def index(self, ns: str, ifname: str) -> int:
        found = self[ns].link_lookup(ifname=ifname)
        if not found:
            raise BuildError(f"interface {ifname} not found in namespace {ns}")
        return int(found[0])

    def close(self) -> None:
        for ipr in self._sockets.values():
            ipr.close()
        self._sockets.clear()

    def __enter__(self) -> NetlinkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build(
    plan: Plan,
    undo: UndoStack,
    *,
    record_netns: Callable[[str], None],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Apply every step of ``plan``; ``record_netns`` is called before each namespace exists."""
    with NetlinkPool() as pool:
        for n, step in enumerate(plan.steps):
            try:
                apply_step(step, pool, undo, record_netns)
            except NetlinkError as e:
                raise BuildError(f"{step}: {os.strerror(e.code)} (errno {e.code})") from None
            except OSError as e:
                raise BuildError(f"{step}: {e.strerror or e}") from None
            if progress is not None:
                progress(n + 1, len(plan.steps))


def apply_step(
    step: Step, pool: NetlinkPool, undo: UndoStack, record_netns: Callable[[str], None]
) -> None:
    match step:
        case AddNetns(ns=ns):
            if ns in pr_netns.listnetns():
                raise BuildError(f"{step}: namespace {ns} already exists (run `l2bridge lab "
                                 "clean`, or `l2bridge lab down` for its lab)")
            record_netns(ns)
            create_netns(ns)
            undo.push(f"remove namespace {ns}", lambda: _drop_namespace(ns))
        case Sysctl(ns=ns, key=key, value=value):
            with in_netns(ns), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        case AddVeth(ns=ns, ifname=ifname, peer_ns=peer_ns, peer_ifname=peer_ifname, mtu=mtu):
            pool[ns].link(
                "add",
                ifname=ifname,
                kind="veth",
                mtu=mtu,
                peer={"ifname": peer_ifname, "net_ns_fd": peer_ns},
            )
            pool[peer_ns].link("set", index=pool.index(peer_ns, peer_ifname), mtu=mtu)
        case AddBridge(ns=ns, ifname=ifname):
            pool[ns].link("add", ifname=ifname, kind="bridge", br_stp_state=0,
                          br_forward_delay=0)
            pool[ns].link("set", index=pool.index(ns, ifname), state="up")
        case SetLink(ns=ns, ifname=ifname, master=master, mac=mac):
            attrs: dict[str, object] = {"state": "up"}
            if master is not None:
                attrs["master"] = pool.index(ns, master)
            if mac is not None:
                attrs["address"] = mac
            pool[ns].link("set", index=pool.index(ns, ifname), **attrs)
        case AddAddress(ns=ns, ifname=ifname, cidr=cidr):
            iface = ipaddress.ip_interface(cidr)
            extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
            pool[ns].addr("add", index=pool.index(ns, ifname), address=str(iface.ip),
                          prefixlen=iface.network.prefixlen, **extra)
        case AddRoute(ns=ns, dst=dst, via=via):
            pool[ns].route("add", dst=dst, gateway=via)
        case VlanPort(ns=ns, ifname=ifname, vid=vid):
            attach_access_port(pool[ns], pool.index(ns, ifname), vid, ifname)
        case AddTbf(ns=ns, ifname=ifname):
            apply_tbf(pool[ns], pool.index(ns, ifname), step)
        case NftRuleset():
            try:
                load_nft(step)
            except WanError as e:
                raise BuildError(str(e)) from None
        case _:
            raise BuildError(f"unknown step {step!r}")


def _drop_namespace(ns: str) -> None:
    kill_namespace_processes([ns])
    remove_namespace(ns)


@contextlib.contextmanager
def netlink(ns: str) -> Iterator[IPRoute]:
    """A short-lived netlink socket inside ``ns`` (opened there, no fork)."""
    with in_netns(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def is_missing(e: NetlinkError) -> bool:
    return e.code in (errno.ENODEV, errno.ENOENT)
