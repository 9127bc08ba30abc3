"""The lab for real (root): shipped scenarios pass, teardown leaves nothing, failures are bounded.

Each test owns the labs it makes (a fresh run prefix each) and checks afterwards that
none of its namespaces, run files or processes are left.
"""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
import trio
from support import REPO
from support import lab_leftovers as leftovers

from netns.describe.plan import new_prefix
from netns.describe.scenario import load_scenario, parse_scenario
from netns.lab import LabError, PreflightError, open_lab
from netns.realise import build as build_mod
from netns.realise.nsenter import pids_in_netns
from netns.realise.registry import process_start_time

pytestmark = pytest.mark.netns

SCEN = os.path.join(REPO, "scenarios")
HAVE_L2BRIDGE = importlib.util.find_spec("l2bridge.ops.cli") is not None
GATEWAYS = [
    "vxlan",
    pytest.param("l2bridge", marks=pytest.mark.skipif(
        not HAVE_L2BRIDGE, reason="the l2bridge daemon (l2bridge.ops.cli) is not available")),
]


@pytest.fixture(autouse=True)
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")


def options(gateway: str) -> dict[str, object]:
    """vxlan gateways need 50 bytes of WAN headroom; l2bridge runs the file's own WAN."""
    return {"gateway": gateway, "wan_mtu": 1550 if gateway == "vxlan" else None}



def mesh_text(sites: int) -> str:
    parts = []
    for i in range(sites):
        parts.append(f'[[site]]\nname = "s{i:02d}"\n[[site.host]]\nname = "h1"\n'
                     '[[site.host]]\nname = "h2"\n')
    return "\n".join(parts)


def alive(pids: dict[int, int | None]) -> list[int]:
    """The pids of ``pids`` (pid → start time) still running as the same process."""
    return [pid for pid, started in pids.items() if process_start_time(pid) == started]


@pytest.mark.slow
@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("name", ["two-offices", "three-site-mesh", "hub-and-spoke"])
async def test_shipped_scenario_passes_and_leaves_nothing(name: str, gateway: str) -> None:
    prefix = new_prefix()
    seen: dict[int, int | None] = {}
    async with open_lab(os.path.join(SCEN, f"{name}.toml"), prefix=prefix,
                        **options(gateway)) as lab:
        assert len(leftovers(prefix)) == len(lab.plan.namespaces) + 1
        results = await lab.run_checks()
        for ns in lab.plan.namespaces:
            seen.update({pid: process_start_time(pid) for pid in pids_in_netns(ns)})
        if gateway == "l2bridge":
            assert len(seen) >= len(lab.plan.sites)  # one daemon per site at least
    failed = [f"{r.name}: {r.summary}" for r in results if not r.ok]
    assert not failed
    assert [r.index for r in results] == list(range(len(lab.scenario.checks)))
    assert leftovers(prefix) == []
    assert alive(seen) == []


async def test_spoke_to_spoke_broadcast_reaches_each_site_once_through_the_hub() -> None:
    async with open_lab(os.path.join(SCEN, "hub-and-spoke.toml"), **options("vxlan")) as lab:
        result = await lab.check("broadcast_once", from_="leeds.h1", count=7)
        assert result.ok, result.summary
        assert result.numbers["received"] == {"hq.h1": 7, "leeds.h1": 0, "york.h1": 7,
                                              "bath.h1": 7}


async def test_broadcast_once_fails_when_a_site_is_down() -> None:
    """The check can fail, and names the hosts: paris's gateway is stopped."""
    async with open_lab(os.path.join(SCEN, "three-site-mesh.toml"), **options("vxlan")) as lab:
        await lab.kill_site("paris")
        result = await lab.check("broadcast_once", from_="london.h1", count=4)
        assert (await lab.show("paris"))["peers"][0]["state"] == "down"
    assert not result.ok
    assert result.numbers["received"] == {"london.h1": 0, "london.h2": 4, "berlin.h1": 4,
                                          "berlin.h2": 4, "paris.h1": 0, "paris.h2": 0}
    assert result.summary == ("3/5 hosts got exactly 4; sender got 0 back; wrong: "
                              "paris.h1=0, paris.h2=0")


async def test_hung_check_is_bounded_reported_and_torn_down() -> None:
    prefix = new_prefix()
    async with open_lab(os.path.join(SCEN, "two-offices.toml"), prefix=prefix,
                        **options("vxlan")) as lab:
        started = time.monotonic()
        result = await lab.check("iperf3", from_="london.h1", to="berlin.h1", seconds=60,
                                 timeout_s=1.0)
        assert time.monotonic() - started < 30.0  # cut at 1 s, far from the 60 s run
        assert not result.ok
        assert result.summary == "timed out after 1 s"
        assert pids_in_netns(lab.ns("berlin.h1")) == []
        assert pids_in_netns(lab.ns("london.h1")) == []
    assert leftovers(prefix) == []


async def test_exception_mid_build_undoes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = new_prefix()
    real = build_mod.apply_step
    applied = []

    def failing(step, pool, undo):  # type: ignore[no-untyped-def]
        if len(applied) == 40:
            raise OSError(5, "injected failure")
        applied.append(step)
        return real(step, pool, undo)

    monkeypatch.setattr(build_mod, "apply_step", failing)
    with pytest.raises(LabError) as info:
        async with open_lab(os.path.join(SCEN, "three-site-mesh.toml"), prefix=prefix,
                            **options("vxlan")):
            pytest.fail("the body must not run")
    assert str(info.value).startswith(f"lab {prefix}: ")
    assert str(info.value).endswith(": injected failure")
    assert len(applied) == 40
    assert leftovers(prefix) == []


async def test_exception_in_body_tears_down() -> None:
    prefix = new_prefix()
    with pytest.raises(ZeroDivisionError):
        async with open_lab(os.path.join(SCEN, "two-offices.toml"), prefix=prefix,
                            **options("vxlan")):
            assert leftovers(prefix)
            1 / 0  # noqa: B018
    assert leftovers(prefix) == []


async def test_cancellation_tears_down() -> None:
    prefix = new_prefix()
    with trio.move_on_after(0.5):
        async with open_lab(os.path.join(SCEN, "two-offices.toml"), prefix=prefix,
                            **options("vxlan")) as lab:
            await lab.check("iperf3", from_="london.h1", to="berlin.h1", seconds=10)
    assert leftovers(prefix) == []


async def test_missing_program_fails_before_anything_exists(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    prefix = new_prefix()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PreflightError) as info:
        async with open_lab(os.path.join(SCEN, "two-offices.toml"), prefix=prefix,
                            **options("vxlan")):
            pass
    assert str(info.value) == ("check[0] (reachability) needs ping, which is not on PATH; "
                               "install it (apt-get install iputils-ping)")
    assert leftovers(prefix) == []


async def test_two_offices_records_its_timings() -> None:
    # How fast is `lab timing`'s business (a benchmark); here: every phase is measured.
    for gateway in ["vxlan"] + (["l2bridge"] if HAVE_L2BRIDGE else []):
        async with open_lab(os.path.join(SCEN, "two-offices.toml"), **options(gateway)) as lab:
            pass
        assert set(lab.timings) == {"build_s", "start_s", "teardown_s"}, lab.timings
        assert all(value > 0 for value in lab.timings.values()), (gateway, lab.timings)


@pytest.mark.slow
@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_twelve_site_mesh_comes_up_and_leaves_nothing(gateway: str) -> None:
    scenario = parse_scenario(mesh_text(12), "mesh-12.toml")
    prefix = new_prefix()
    async with open_lab(scenario, prefix=prefix, **options(gateway)) as lab:
        result = await lab.check("broadcast_once", from_="s00.h1", count=3)
        assert result.ok, result.summary
    assert leftovers(prefix) == []


async def test_plugin_fixture_brings_a_scenario_up(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(load_scenario(os.path.join(SCEN, "two-offices.toml")),
                             **options("vxlan"))
    node = lab.node("berlin.h1")
    assert (node.ns, node.ip, node.mac) == (f"{lab.prefix}-berlin-h1", "10.77.2.10",
                                            "02:77:00:02:00:01")
    show = await lab.show("london")
    assert show["peers"] == [{"name": "berlin", "state": "up"}]
    assert (await lab.check("mtu", from_="berlin.h1", to="london.h1")).ok
    with pytest.raises(LabError, match='no site "paris"'):
        await lab.show("paris")
