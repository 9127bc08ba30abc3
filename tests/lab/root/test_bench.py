"""Regression guard: the quick bench (one round, short runs) in the normal suite (root).

It fails when the headline row (l2bridge, encrypted, the daemon's shipped defaults)
crosses one of two bounds, both against references measured in the same run, so a
slower machine does not fail it and a slower l2bridge does: single-stream TCP
throughput as a ratio to kernel VXLAN (``bs.GUARD_TCP1_VXLAN_FLOOR``) and the
average RTT added over the direct veth (``bs.GUARD_RTT_ADDED_CEILING_US``).
The bounds and how to set them live in ``netns/bench/stats.py``.  It also checks
that every figure a variant has was produced (the 1%-loss goodput of the lossy
twins included, and with real losses behind it), that the OpenVPN row is there
when OpenVPN is installed, and that the targets section covers every target.  The
targets themselves are reported, not enforced: they are the fast path's goal.
"""

from __future__ import annotations

import shutil

import pytest
import trio
from pyroute2 import netns as pr_netns

from netns.bench import runner as bench
from netns.bench import stats as bs
from netns.pytest_plugin import need_root

QUICK_BOUND_S = 300.0  # clearly broken past this; the quick run takes about 45 s


async def test_quick_bench_keeps_the_defaults_within_their_guard() -> None:
    need_root()
    for program in ("iperf3", "ping"):
        if shutil.which(program) is None:
            pytest.skip(f"the bench needs {program} (apt-get install {program})")
    with trio.fail_after(QUICK_BOUND_S):
        result = await bench.run_bench(bs.make_settings(quick=True))
    table = bs.format_table(result)
    assert not result.errors, table
    guard = bs.guard(result)
    assert [c.key for c in guard] == ["tcp1_vxlan_ratio", "rtt_avg_added_us"]
    assert [c.met for c in guard] == [True, True], table

    openvpn = shutil.which("openvpn") is not None
    variants = result.variants()
    assert variants == ["l2bridge", "insecure", *(["openvpn"] if openvpn else []), "vxlan",
                        "direct"], table
    assert len(result.skipped) == (0 if openvpn else 1), table
    summaries = bs.summaries(result)
    for variant in variants:
        for key in ("tcp1_mbit_s", "tcp4_mbit_s", "udp64_fps", "rtt_avg_ms", "rtt_p99_ms",
                    "machine_cpu_s_per_gb"):
            s = summaries[variant][key]
            assert s is not None and s.median > 0, f"{variant} {key}\n{table}"
        daemon = summaries[variant]["daemon_cpu_s_per_gb"]
        rss = summaries[variant]["daemon_rss_peak_mib"]
        if variant in bs.DAEMON_VARIANTS:
            assert daemon is not None and daemon.median > 0, table
            assert rss is not None and rss.median > 1, table
        else:  # no daemon: no figure rather than zero
            assert daemon is None and rss is None, table
    assert bs.ratios(result)["vxlan"]["tcp1_mbit_s"] == bs.Summary(1.0, 1.0, 1.0, 1)
    # a tunnel adds latency to the direct veth of the same run
    added = bs.added_latency(result)["l2bridge"]["rtt_avg_added_us"]
    assert added is not None and added.median > 0, table

    # the lossy twins: goodput under loss for l2bridge and VXLAN only, and the WAN
    # really lost packets (TCP retransmitted)
    for variant in variants:
        kept = summaries[variant]["tcp1_loss1_retained"]
        if variant in bs.LOSSY_VARIANTS:
            assert kept is not None and kept.median > 0, table
            sample = result.sample(0, variant)
            assert sample is not None and sample.raw["tcp1_loss1_retransmits"] > 0, table
        else:
            assert kept is None, table
    checks = bs.targets(result)
    measured = [c.key for c in checks if c.met is not None]
    assert measured == [c.key for c in checks if openvpn or c.key != "tcp1_openvpn_ratio"], table
    assert "Targets: l2bridge defaults (encrypted, shipped defaults)" in table

    # defaults, insecure, OpenVPN when installed, VXLAN (+ direct), two lossy twins
    assert len(result.labs) == 5 + openvpn
    left = [ns for ns in pr_netns.listnetns() if ns.startswith(tuple(result.labs))]
    assert left == []
