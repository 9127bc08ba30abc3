"""Apply a plan's steps with pyroute2, registering each undo as soon as its object exists.

Flow: 1. the registry records every namespace of the plan (one write, before the
first exists)  2. for each step in order: namespaces: created, their removal
pushed on the undo stack; links, addresses and routes: one rtnetlink request
each, composed with pyroute2's message classes and sent on a raw netlink socket
opened inside the step's namespace (one per namespace, no per-call fork, no
per-call event loop), its acknowledgement awaited (an error is a
``NetlinkError`` with the kernel's errno); sysctls, tbf, VLAN ports and
nftables through their own helpers  3. on any failure raise ``BuildError``
naming the step; the caller unwinds the stack, which removes every namespace made
so far (and with them every link inside).

Interface indexes are chosen, not looked up: every namespace is new (only
``lo``, index 1), so the builder gives each link it creates the next index of
its namespace from ``IFINDEX_BASE`` on (a veth's peer too, in the peer's
namespace) and names every later request by it: no lookup round trips.

Links need no undo of their own: both ends of every veth live in lab namespaces
(plan.py invariant), so removing the namespaces removes them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

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
from netns.realise.nsenter import create_netns, in_netns, netns_path
from netns.realise.registry import kill_namespace_processes, remove_namespace
from netns.realise.undo import UndoStack
from netns.realise.vlanport import attach_access_port
from netns.realise.wanctl import WanError, apply_tbf, load_nft

IFA_F_NODAD = 0x02
IFINDEX_BASE = 100  # above the devices a kernel may put in every new namespace (sit0, ...)
LOOPBACK_INDEX = 1
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acknowledgements without a copy of the request
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
ACK = struct.Struct("=IHHIIi")  # nlmsghdr, then nlmsgerr's error code
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK


class BuildError(L2bridgeError):
    """A step failed; the message names the step, the cause and (when known) the fix."""


class Rtnl:
    """A raw rtnetlink socket inside one namespace: one request at a time, acknowledged."""

    def __init__(self, ns: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, msg: nlmsg, msg_type: int, flags: int) -> None:
        """Send ``msg`` and wait for its acknowledgement; ``NetlinkError`` on refusal."""
        self.seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + ACK.size <= len(data):
                length, kind, _, seq, _, code = ACK.unpack_from(data, offset)
                offset += max(length, ACK.size)
                if kind == NLMSG_ERROR and seq == self.seq:
                    if code:
                        raise NetlinkError(-code)
                    return

    def close(self) -> None:
        self.sock.close()


class NetlinkPool:
    """Per namespace: its rtnetlink socket, an fd naming it, the indexes of the links the
    builder made (module doc), and an IPRoute for the helpers that take one; each opened
    inside its namespace when first needed, all closed together."""

    def __init__(self) -> None:
        self._rtnl: dict[str, Rtnl] = {}
        self._iproute: dict[str, IPRoute] = {}
        self._fds: dict[str, int] = {}
        self._indexes: dict[tuple[str, str], int] = {}
        self._next: dict[str, int] = {}

    def __getitem__(self, ns: str) -> IPRoute:
        ipr = self._iproute.get(ns)
        if ipr is None:
            with in_netns(ns):
                ipr = IPRoute()
            self._iproute[ns] = ipr
        return ipr

    def rtnl(self, ns: str) -> Rtnl:
        found = self._rtnl.get(ns)
        if found is None:
            found = self._rtnl[ns] = Rtnl(ns)
        return found

    def fd(self, ns: str) -> int:
        """An fd of namespace ``ns`` (for a veth peer created there)."""
        found = self._fds.get(ns)
        if found is None:
            found = self._fds[ns] = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        return found

    def new_index(self, ns: str, ifname: str) -> int:
        """The index the link ``ifname`` about to be made in ``ns`` gets."""
        index = self._next.get(ns, IFINDEX_BASE)
        self._next[ns] = index + 1
        self._indexes[ns, ifname] = index
        return index

    def index(self, ns: str, ifname: str) -> int:
        if ifname == "lo":
            return LOOPBACK_INDEX
        found = self._indexes.get((ns, ifname))
        if found is not None:
            return found
        looked_up = self[ns].link_lookup(ifname=ifname)  # not one of ours: ask
        if not looked_up:
            raise BuildError(f"interface {ifname} not found in namespace {ns}")
        return int(looked_up[0])

    def close(self) -> None:
        for rtnl in self._rtnl.values():
            rtnl.close()
        for ipr in self._iproute.values():
            ipr.close()
        for fd in self._fds.values():
            os.close(fd)
        self._rtnl.clear()
        self._iproute.clear()
        self._fds.clear()

    def __enter__(self) -> NetlinkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build(
    plan: Plan,
    undo: UndoStack,
    *,
    record_netns: Callable[[Sequence[str]], None],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Apply every step of ``plan``; ``record_netns`` gets every namespace of the plan
    before the first one exists."""
    record_netns(list(plan.namespaces))
    with NetlinkPool() as pool:
        for n, step in enumerate(plan.steps):
            try:
                apply_step(step, pool, undo)
            except NetlinkError as e:
                raise BuildError(f"{step}: {os.strerror(e.code)} (errno {e.code})") from None
            except OSError as e:
                raise BuildError(f"{step}: {e.strerror or e}") from None
            if progress is not None:
                progress(n + 1, len(plan.steps))


def apply_step(step: Step, pool: NetlinkPool, undo: UndoStack) -> None:
    match step:
        case AddNetns(ns=ns):
            try:
                create_netns(ns)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                raise BuildError(f"{step}: namespace {ns} already exists (run `l2bridge lab "
                                 "clean`, or `l2bridge lab down` for its lab)") from None
            undo.push(f"remove namespace {ns}", lambda: _drop_namespace(ns))
        case Sysctl(ns=ns, key=key, value=value):
            with in_netns(ns), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        case AddVeth(ns=ns, ifname=ifname, peer_ns=peer_ns, peer_ifname=peer_ifname, mtu=mtu):
            peer: list[tuple[str, Any]] = [("IFLA_IFNAME", peer_ifname), ("IFLA_MTU", mtu)]
            if peer_ns != ns:
                peer.append(("IFLA_NET_NS_FD", pool.fd(peer_ns)))
            info = [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [
                ("VETH_INFO_PEER", {"attrs": peer, "index": pool.new_index(peer_ns, peer_ifname)})
            ]})]
            _link(pool, ns, CREATE, pool.new_index(ns, ifname),
                  [("IFLA_IFNAME", ifname), ("IFLA_MTU", mtu), ("IFLA_LINKINFO", {"attrs": info})])
        case AddBridge(ns=ns, ifname=ifname):
            info = [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", {"attrs": [
                ("IFLA_BR_STP_STATE", 0), ("IFLA_BR_FORWARD_DELAY", 0)]})]
            index = pool.new_index(ns, ifname)
            _link(pool, ns, CREATE, index, [("IFLA_IFNAME", ifname), ("IFLA_LINKINFO",
                                                                      {"attrs": info})])
            _link(pool, ns, CHANGE, index, [], up=True)
        case SetLink(ns=ns, ifname=ifname, master=master, mac=mac):
            attrs: list[tuple[str, Any]] = []
            if master is not None:
                attrs.append(("IFLA_MASTER", pool.index(ns, master)))
            if mac is not None:
                attrs.append(("IFLA_ADDRESS", mac))
            _link(pool, ns, CHANGE, pool.index(ns, ifname), attrs, up=True)
        case AddAddress(ns=ns, ifname=ifname, cidr=cidr):
            iface = ipaddress.ip_interface(cidr)
            msg = ifaddrmsg()
            msg["family"] = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
            msg["prefixlen"] = iface.network.prefixlen
            msg["flags"] = IFA_F_NODAD if iface.version == 6 else 0
            msg["index"] = pool.index(ns, ifname)
            msg["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
            pool.rtnl(ns).request(msg, RTM_NEWADDR, CREATE)
        case AddRoute(ns=ns, dst=dst, via=via):
            network = ipaddress.ip_network(dst)
            msg = rtmsg()
            msg["family"] = socket.AF_INET6 if network.version == 6 else socket.AF_INET
            msg["dst_len"] = network.prefixlen
            msg["table"], msg["proto"], msg["type"] = RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST
            attrs = [("RTA_GATEWAY", via)]
            if network.prefixlen:
                attrs.append(("RTA_DST", str(network.network_address)))
            msg["attrs"] = attrs
            pool.rtnl(ns).request(msg, RTM_NEWROUTE, CREATE)
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


def _link(pool: NetlinkPool, ns: str, flags: int, index: int, attrs: list[tuple[str, Any]],
          *, up: bool = False) -> None:
    msg = ifinfmsg()
    msg["index"] = index
    if up:
        msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"] = attrs
    pool.rtnl(ns).request(msg, RTM_NEWLINK, flags)


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
