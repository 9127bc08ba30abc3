"""A site behind NAT for real (root): it dials out, nobody dials in, the lab passes."""

from __future__ import annotations

import os

import pytest
from support import REPO
from test_impair_netns import udp_probe  # tests/lab is on sys.path

from netns.checks import traffic

pytestmark = pytest.mark.netns

NAT = os.path.join(REPO, "scenarios", "site-behind-nat.toml")


async def test_site_behind_nat_only_dials_out_and_the_lab_passes(lab_scenario) -> None:  # type: ignore[no-untyped-def]
    lab = await lab_scenario(NAT)
    london, home = lab.plan.site("london"), lab.plan.site("home")
    assert (home.underlay, home.router) == ("100.64.3.2", "100.64.3.1")

    # outbound works: home reaches london's underlay, by ping and by UDP
    out = await traffic.ping(home.gw_ns, london.underlay, count=3, interval_s=0.05)
    assert out.ok, out.output
    assert sorted(await udp_probe(lab, "home", "london", count=50, expect=50)) == list(range(50))
    # inbound does not: the private address is not routed on the WAN, and home's NAT router
    # answers nothing new at its public address (no ping, no new UDP flow gets through)
    assert home.nat is not None
    private = await traffic.ping(london.gw_ns, home.underlay, count=1, deadline_s=1)
    assert private.received == 0, private.output
    inbound = await traffic.ping(london.gw_ns, home.nat.public, count=3, interval_s=0.05,
                                 deadline_s=1)
    assert inbound.sent >= 3 and inbound.received == 0, inbound.output
    assert await udp_probe(lab, "london", "home", count=50, settle_s=0.2,
                           to=home.nat.public) == []

    # london learned home's translated address from its authenticated handshake: the public
    # address of home's own NAT router, never home's private one
    assert home.nat is not None and home.nat.public == "198.18.3.2"
    peers = {p["name"]: p for p in (await lab.show("london"))["peers"]}
    assert peers["home"]["state"] == "up"
    assert peers["home"]["endpoint"] == f"{home.nat.public}:55555", peers["home"]
    assert peers["home"]["configured_endpoint"] is None

    results = await lab.run_checks()
    failed = [f"{r.name}: {r.summary}" for r in results if not r.ok]
    assert not failed
    assert len(results) == 7
