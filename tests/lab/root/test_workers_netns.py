"""Sites of two worker processes each (root): flows spread over workers, stay whole, and a
dead worker stops its site without leaving anything behind."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import trio
from support import lab_leftovers as leftovers
from support import two_sites

from netns.checks.traffic import iperf3, ping
from netns.describe.plan import new_prefix
from netns.describe.scenario import parse_scenario
from netns.lab import open_lab
from netns.realise.nsenter import pids_in_netns

pytestmark = pytest.mark.netns

SCENARIO = two_sites("west", "east", site="l2bridge = { workers = 2 }")


BOUND_S = 30.0  # past this a wait is clearly broken


@pytest.fixture(autouse=True)
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")


async def show_after_follower_report(lab: Any, site: str) -> dict[str, Any]:
    """``show`` of ``site`` once its follower reported frames both ways (followers report
    their counters once a second); after ``BOUND_S`` the last one, for the assertions."""
    with trio.move_on_after(BOUND_S):
        while True:
            show = await lab.show(site)
            counters = [f["local"] for f in show["workers"]["followers"]]
            if counters and all(c["frames_in"] > 0 and c["frames_out"] > 0 for c in counters):
                return dict(show)
            await trio.sleep(0.1)
    return dict(await lab.show(site))


def lab_for(text: str = SCENARIO):
    prefix = new_prefix()
    return prefix, open_lab(parse_scenario(text, "workers.toml"), prefix=prefix,
                            gateway="l2bridge")


async def test_flows_spread_over_two_workers_and_arrive_whole() -> None:
    prefix, opened = lab_for()
    async with opened as lab:
        west, east = lab.node("west.h1"), lab.node("east.h1")
        result = await ping(west.ns, east.ip, count=3, interval_s=0.1)
        assert result.received == 3
        # Frames sent before the first handshake completed are dropped (no_session);
        # none may be once traffic flows.
        before = {site: (await lab.show(site))["peers"][0]["drops"].get("no_session", 0)
                  for site in ("west", "east")}
        run = await iperf3(east.ns, east.ip, west.ns, seconds=3, parallel=8)
        assert run.mbit_s > 0
        for site in ("west", "east"):
            show = await show_after_follower_report(lab, site)
            assert show["workers"]["count"] == 2
            [follower] = show["workers"]["followers"]
            assert follower["lane"] == 1 and follower["pid"] > 0
            # Both workers read flows from their tap queue and wrote flows to it.
            assert show["local"]["frames_in"] > 0 and follower["local"]["frames_in"] > 0, show
            assert show["local"]["frames_out"] > 0 and follower["local"]["frames_out"] > 0, show
            peer = show["peers"][0]
            assert peer["state"] == "up", peer
            assert peer["drops"].get("no_session", 0) == before[site], peer
        gw_pids = pids_in_netns(lab.ns("west.gw"))
        assert len(gw_pids) == 2  # the leader and its follower
    assert leftovers(prefix) == []
    assert all(not os.path.exists(f"/proc/{pid}") for pid in gw_pids)


async def test_a_worker_that_dies_stops_its_site() -> None:
    prefix, opened = lab_for()
    async with opened as lab:
        show = await lab.show("west")
        [follower] = show["workers"]["followers"]
        gw = lab.gateways["west"]
        os.kill(follower["pid"], signal.SIGKILL)
        with trio.fail_after(BOUND_S):
            status = await gw.process.wait()  # type: ignore[attr-defined]
        assert status != 0
        with open(gw.site.log_path) as f:  # type: ignore[attr-defined]
            log = f.read()
        assert f"worker 1 (pid {follower['pid']}) exited" in log
        with trio.fail_after(BOUND_S):
            while pids_in_netns(lab.ns("west.gw")):
                await trio.sleep(0.1)
    assert leftovers(prefix) == []
