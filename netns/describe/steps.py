"""The steps a plan is made of (pure data): each one thing ``realise/build.py`` does.

Every step names the namespace it acts in; ``str(step)`` is the line ``lab plan``
prints for it.  WAN impairment steps (tbf, nftables) are defined beside their
planning in ``impair.py`` and are steps too.
"""

from __future__ import annotations

from dataclasses import dataclass

from netns.describe.impair import AddTbf, NftRuleset


@dataclass(frozen=True, slots=True)
class AddNetns:
    ns: str

    def __str__(self) -> str:
        return f"netns add {self.ns}"


@dataclass(frozen=True, slots=True)
class Sysctl:
    ns: str
    key: str  # dotted, e.g. net.ipv4.ip_forward
    value: str

    def __str__(self) -> str:
        return f"sysctl {self.ns} {self.key}={self.value}"


@dataclass(frozen=True, slots=True)
class AddVeth:
    ns: str
    ifname: str
    peer_ns: str
    peer_ifname: str
    mtu: int

    def __str__(self) -> str:
        return (
            f"veth {self.ns}:{self.ifname} <-> {self.peer_ns}:{self.peer_ifname} mtu {self.mtu}"
        )


@dataclass(frozen=True, slots=True)
class AddBridge:
    ns: str
    ifname: str

    def __str__(self) -> str:
        return f"bridge {self.ns}:{self.ifname} stp off forward_delay 0"


@dataclass(frozen=True, slots=True)
class SetLink:
    ns: str
    ifname: str
    master: str | None = None
    mac: str | None = None

    def __str__(self) -> str:
        extra = f" master {self.master}" if self.master else ""
        extra += f" mac {self.mac}" if self.mac else ""
        return f"link {self.ns}:{self.ifname}{extra} up"


@dataclass(frozen=True, slots=True)
class AddAddress:
    ns: str
    ifname: str
    cidr: str

    def __str__(self) -> str:
        return f"addr {self.ns}:{self.ifname} {self.cidr}"


@dataclass(frozen=True, slots=True)
class AddRoute:
    ns: str
    dst: str
    via: str

    def __str__(self) -> str:
        return f"route {self.ns} {self.dst} via {self.via}"


@dataclass(frozen=True, slots=True)
class VlanPort:
    """A LAN switch port as an access port of VLAN ``vid`` (0: native, untagged only)."""

    ns: str
    ifname: str
    vid: int

    def __str__(self) -> str:
        if self.vid:
            return (f"vlan {self.ns}:{self.ifname} access vid {self.vid} "
                    "(tc bpf: push tag in, pass only vid and pop tag out)")
        return f"vlan {self.ns}:{self.ifname} native (tc bpf: pass only untagged out)"


Step = (AddNetns | Sysctl | AddVeth | AddBridge | SetLink | AddAddress | AddRoute | VlanPort
        | AddTbf | NftRuleset)
