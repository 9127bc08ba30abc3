"""Timelines for real (root): the shipped failover and flaky-wan scenarios pass, every
event applies, the streams see the outages the events make, and nothing is left."""

from __future__ import annotations

import pytest
from support import lab_leftovers, scenario_path

from netns.describe.plan import new_prefix
from netns.lab import open_lab


@pytest.mark.slow
async def test_failover_measures_each_outage_and_recovers() -> None:
    prefix = new_prefix()
    async with open_lab(scenario_path("failover"), prefix=prefix) as lab:
        results = await lab.run_checks()
        events = lab.event_results
    assert [f"{r.name}: {r.summary}" for r in results if not r.ok] == []
    assert [e.summary for e in events if not e.ok] == []
    assert [e.index for e in events] == list(range(8))
    berlin, paris = results[0].numbers, results[1].numbers
    # The flap (1.5 s) and the kill/restart (1 s + start-up) each cost berlin pings;
    # paris loses only its LAN cut, which lies within 8..9 s of the timeline.
    assert berlin["lost"] > 0 and 1.0 <= berlin["outage_s"] <= 3.0
    assert berlin["outage_count"] >= 2
    assert 0.5 <= paris["outage_s"] <= 2.0
    assert 7.5 <= paris["outages"][0]["from_s"] <= 8.5
    assert results[3].numbers["back_in_s"] is not None
    assert lab_leftovers(prefix) == []


@pytest.mark.slow
async def test_flaky_wan_applies_every_impairment_and_the_partition() -> None:
    prefix = new_prefix()
    async with open_lab(scenario_path("flaky-wan"), prefix=prefix) as lab:
        results = await lab.run_checks()
        events = lab.event_results
    assert [f"{r.name}: {r.summary}" for r in results if not r.ok] == []
    assert [e.summary for e in events if not e.ok] == []
    by_index = {e.index: e.summary for e in events}
    assert "reloaded on SIGHUP: site: keepalive" in by_index[6]
    assert "rate 20 Mbit/s, mtu 1400" in by_index[2]
    paris = results[1].numbers
    assert 2.5 <= paris["outage_s"] <= 6.0  # the 3 s partition, then the host's reboot
    assert lab_leftovers(prefix) == []
