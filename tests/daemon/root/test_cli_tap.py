"""``l2bridge tap add|del`` as a user runs it: a real process inside a scratch namespace."""

from __future__ import annotations

import subprocess
import sys

from pyroute2 import IPRoute

from l2bridge.io.tap import tap_info
from netns.realise.nsenter import in_netns, netns_preexec


def l2bridge(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l2bridge", *args],
        preexec_fn=netns_preexec(ns),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_tap_add_then_del_round_trip(scratch_ns):
    added = l2bridge(scratch_ns, "tap", "add", "l2bp0", "--user", "nobody", "--group", "nogroup")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "persistent tap device l2bp0 created owned by nobody:nogroup"
    with in_netns(scratch_ns):
        info = tap_info("l2bp0")
    assert info is not None and info.mode == "tap" and info.persistent
    assert info.owner == 65534
    deleted = l2bridge(scratch_ns, "tap", "del", "l2bp0")
    assert deleted.returncode == 0, deleted.stderr
    with IPRoute(netns=scratch_ns) as ipr:
        assert ipr.link_lookup(ifname="l2bp0") == []


def test_tap_errors_are_one_line_with_exit_1(scratch_ns):
    missing = l2bridge(scratch_ns, "tap", "del", "nosuch0")
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "nosuch0" in missing.stderr
    too_long = l2bridge(scratch_ns, "tap", "add", "a-name-longer-than-15")
    assert too_long.returncode == 1
    assert "15" in too_long.stderr and "Traceback" not in too_long.stderr
    tun = l2bridge(scratch_ns, "tap", "add", "l2bt0", "--mode", "tun")
    assert tun.returncode == 0, tun.stderr
    assert tun.stdout.strip() == "persistent tun device l2bt0 created"
