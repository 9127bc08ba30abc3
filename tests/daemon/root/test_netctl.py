"""l2bridge.io.netctl.BridgePlumbing on real bridges, veths and taps in scratch namespaces.

State is inspected with IPRoute(netns=...): IFLA_MASTER, IFLA_MTU, the IFF_UP flag.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from l2bridge.io.netctl import BridgePlumbing, NetctlError
from l2bridge.io.tap import TapDevice, open_tap
from netns.realise.nsenter import in_netns

IFF_UP = 0x1
ETH_P_TEST = 0x88B5
STEP_TIMEOUT_S = 20.0  # a wait for something that must happen: clearly broken past this


# --- helpers ---------------------------------------------------------------------------


def link(ns: str, name: str) -> Any | None:
    with IPRoute(netns=ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        return ipr.link("get", index=found[0])[0] if found else None


def state(ns: str, name: str) -> tuple[str | None, int, bool]:
    """(master name or None, MTU, up) of ``name``."""
    msg = link(ns, name)
    assert msg is not None, f"{name} missing"
    master = msg.get_attr("IFLA_MASTER")
    master_name = None
    if master:
        with IPRoute(netns=ns) as ipr:
            master_name = ipr.link("get", index=master)[0].get_attr("IFLA_IFNAME")
    return master_name, msg.get_attr("IFLA_MTU"), bool(msg["flags"] & IFF_UP)


def bridge_data(ns: str, name: str) -> dict[str, Any]:
    msg = link(ns, name)
    assert msg is not None
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "bridge"
    return dict(info.get_attr("IFLA_INFO_DATA")["attrs"])


def add_veth(ns: str, name: str, peer: str, *, mtu: int = 1500, up: bool = False) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=peer)
        for ifname in (name, peer):
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, mtu=mtu)
        if up:
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def add_bridge(ns: str, name: str, *ports: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        index = ipr.link_lookup(ifname=name)[0]
        for port in ports:
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=index)


@pytest.fixture
def tap(scratch_ns: str) -> Iterator[TapDevice]:
    """A transient tap "l2b0" (MTU 1500, down) in the scratch namespace."""
    with in_netns(scratch_ns):
        device = open_tap("l2b0")
    with device:
        yield device


# --- tests -----------------------------------------------------------------------------


def test_creates_missing_bridge_and_removes_it(scratch_ns: str, tap: TapDevice) -> None:
    plumbing = BridgePlumbing(bridge="br0", tap="l2b0", mtu=1400, netns=scratch_ns)
    with plumbing as plumb:
        assert plumb is plumbing and plumb.created
        assert state(scratch_ns, "l2b0") == ("br0", 1400, True)
        assert state(scratch_ns, "br0")[2] is True
        data = bridge_data(scratch_ns, "br0")
        assert data["IFLA_BR_STP_STATE"] == 0 and data["IFLA_BR_FORWARD_DELAY"] == 0
    assert link(scratch_ns, "br0") is None
    assert state(scratch_ns, "l2b0") == (None, 1500, False)


def test_current_namespace_when_netns_is_none(scratch_ns: str, tap: TapDevice) -> None:
    with in_netns(scratch_ns):
        plumb = BridgePlumbing(bridge="br0", tap="l2b0")
        plumb.setup()
    try:
        assert state(scratch_ns, "l2b0") == ("br0", 1500, True)
    finally:
        with in_netns(scratch_ns):
            plumb.teardown()
            plumb.teardown()  # idempotent
    assert link(scratch_ns, "br0") is None


def test_existing_bridge_kept_with_its_other_ports(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "v0a", "v0b", up=True)
    add_bridge(scratch_ns, "br0", "v0a")  # left down: must be down again afterwards
    with BridgePlumbing(bridge="br0", tap="l2b0", netns=scratch_ns) as plumb:
        assert not plumb.created
        assert state(scratch_ns, "l2b0") == ("br0", 1500, True)
        assert state(scratch_ns, "br0")[2] is True
    assert state(scratch_ns, "br0") == (None, 1500, False)
    assert state(scratch_ns, "v0a") == ("br0", 1500, True)
    assert state(scratch_ns, "l2b0") == (None, 1500, False)


def test_interface_already_in_our_bridge_is_left_there(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "v0a", "v0b")
    add_bridge(scratch_ns, "br0", "v0a")
    with BridgePlumbing(bridge="br0", tap="l2b0", interfaces=["v0a"], netns=scratch_ns):
        assert state(scratch_ns, "v0a") == ("br0", 1500, True)
    assert state(scratch_ns, "v0a") == ("br0", 1500, False)


def test_interfaces_enslaved_and_restored(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "v1a", "v1b", mtu=1400)  # lower, down
    add_veth(scratch_ns, "v2a", "v2b", mtu=9000, up=True)  # higher, up
    with BridgePlumbing(
        bridge="br0", tap="l2b0", interfaces=("v1a", "v2a"), mtu=1500, netns=scratch_ns
    ):
        assert state(scratch_ns, "v1a") == ("br0", 1500, True)  # raised
        assert state(scratch_ns, "v2a") == ("br0", 9000, True)  # left alone
        assert state(scratch_ns, "br0") == (None, 1500, True)
    assert state(scratch_ns, "v1a") == (None, 1400, False)
    assert state(scratch_ns, "v2a") == (None, 9000, True)
    assert link(scratch_ns, "br0") is None


def test_created_bridge_forwards_at_once(scratch_ns: str, tap: TapDevice) -> None:
    """A frame entering a LAN port is read from the tap with no forward-delay wait."""
    add_veth(scratch_ns, "v1a", "v1b")
    with IPRoute(netns=scratch_ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="v1b")[0], state="up")
    frame = b"\xff" * 6 + bytes.fromhex("020000000042") + struct.pack("!H", ETH_P_TEST)
    frame += b"across the bridge " + bytes(range(50))
    with BridgePlumbing(bridge="br0", tap="l2b0", interfaces=["v1a"], netns=scratch_ns):
        with in_netns(scratch_ns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
        with sock:
            sock.bind(("v1b", ETH_P_TEST))
            sock.send(frame)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        received: list[bytes] = []
        while frame not in received and len(received) < 32:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([tap.fd], [], [], remaining)[0]:
                break
            received += tap.read_batch(32)
        assert frame in received


def test_missing_interface_is_named(scratch_ns: str, tap: TapDevice) -> None:
    plumb = BridgePlumbing(bridge="br0", tap="l2b0", interfaces=["nosuch0"], netns=scratch_ns)
    with pytest.raises(NetctlError) as caught:
        plumb.setup()
    assert str(caught.value).startswith(
        f'interface "nosuch0" not found in namespace "{scratch_ns}" (ENODEV): '
    )
    assert link(scratch_ns, "br0") is None


def test_missing_tap_is_named(scratch_ns: str) -> None:
    with in_netns(scratch_ns), pytest.raises(NetctlError) as caught:
        BridgePlumbing(bridge="br0", tap="l2b9").setup()
    assert str(caught.value).startswith('tap "l2b9" not found in the current namespace (ENODEV)')
    assert link(scratch_ns, "br0") is None


def test_half_way_failure_undoes_completed_steps(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "v1a", "v1b", mtu=1400)
    plumb = BridgePlumbing(
        bridge="br0", tap="l2b0", interfaces=["v1a", "nosuch0"], mtu=1500, netns=scratch_ns
    )
    with pytest.raises(NetctlError, match='interface "nosuch0" not found'):
        plumb.setup()
    assert state(scratch_ns, "v1a") == (None, 1400, False)
    assert state(scratch_ns, "l2b0") == (None, 1500, False)
    assert link(scratch_ns, "br0") is None
    plumb.teardown()  # nothing left to undo


def test_interface_enslaved_elsewhere_is_refused(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "v1a", "v1b")
    add_bridge(scratch_ns, "br9", "v1a")
    plumb = BridgePlumbing(bridge="br0", tap="l2b0", interfaces=["v1a"], netns=scratch_ns)
    with pytest.raises(NetctlError) as caught:
        plumb.setup()
    assert str(caught.value) == (
        f'interface "v1a" in namespace "{scratch_ns}" is already enslaved to "br9" (EBUSY): '
        'release it ("ip link set v1a nomaster") or use "br9" as the bridge'
    )
    assert state(scratch_ns, "v1a")[0] == "br9"
    assert link(scratch_ns, "br0") is None
    assert state(scratch_ns, "l2b0") == (None, 1500, False)


def test_non_bridge_name_clash_is_refused(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "br0", "br0peer")
    with pytest.raises(NetctlError) as caught:
        BridgePlumbing(bridge="br0", tap="l2b0", netns=scratch_ns).setup()
    assert str(caught.value).startswith(
        f'"br0" in namespace "{scratch_ns}" exists but is a veth link, not a bridge'
    )
    assert link(scratch_ns, "br0") is not None
    assert state(scratch_ns, "l2b0") == (None, 1500, False)


def test_teardown_survives_a_vanished_tap(scratch_ns: str) -> None:
    with in_netns(scratch_ns):
        transient = open_tap("l2b0")
    with BridgePlumbing(bridge="br0", tap="l2b0", mtu=1400, netns=scratch_ns):
        transient.close()  # the transient tap disappears with its fd
        assert link(scratch_ns, "l2b0") is None
    assert link(scratch_ns, "br0") is None


def test_unsupported_mtu_is_named_and_rolled_back(scratch_ns: str, tap: TapDevice) -> None:
    add_veth(scratch_ns, "v1a", "v1b", mtu=1400)
    with pytest.raises(NetctlError) as caught:
        BridgePlumbing(
            bridge="br0", tap="l2b0", interfaces=["v1a"], mtu=65535, netns=scratch_ns
        ).setup()
    message = str(caught.value)
    assert message.startswith('setting MTU 65535 on tap "l2b0" in namespace')
    assert "(EINVAL)" in message
    assert link(scratch_ns, "br0") is None


def test_missing_namespace_is_named_and_not_created() -> None:
    name = "l2bt-missing-" + os.urandom(4).hex()
    with pytest.raises(NetctlError, match=f'network namespace "{name}" does not exist'):
        BridgePlumbing(bridge="br0", tap="l2b0", netns=name).setup()
    assert not os.path.exists(f"/run/netns/{name}")


def test_bad_mtu_is_refused_before_netlink() -> None:
    with pytest.raises(NetctlError, match="mtu 40 is out of range"):
        BridgePlumbing(bridge="br0", tap="l2b0", mtu=40, netns="l2bt-unused").setup()
