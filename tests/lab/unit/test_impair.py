"""WAN impairments and NAT without root: the keys, their errors, the plan, the relay's core."""

from __future__ import annotations

import random
import tomllib

import pytest

from netns.describe.impair import (
    AddTbf,
    NftRuleset,
    nft_replace,
    nft_ruleset,
    numgen_threshold,
    tbf_step,
)
from netns.describe.plan import IFNAME_MAX, make_plan
from netns.describe.scenario import Link, ScenarioError, parse_scenario
from netns.describe.steps import AddAddress, AddRoute, AddVeth, Sysctl
from netns.describe.underlay import site_addresses
from netns.realise.relay import DelayLine, make_lines


def sites(*tables: str) -> str:
    """Sites a, b, c ... each with one host; ``tables[i]`` is extra text for site i."""
    out = []
    for i, extra in enumerate(tables):
        out.append(f'[[site]]\nname = "{"abcdefgh"[i]}"\n{extra}\n[[site.host]]\nname = "h1"\n')
    return "\n".join(out)


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "lab.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


def plan_of(text: str, **kw: object):  # type: ignore[no-untyped-def]
    return make_plan(parse_scenario(text, "lab.toml"), prefix="l2b0c0de", **kw)


# ---------------------------------------------------------------- keys


def test_site_link_is_wan_defaults_with_the_sites_own_keys() -> None:
    scenario = parse_scenario("[wan]\nrate_mbit = 20\nloss_percent = 1\nmtu = 1400\n" + sites(
        "", 'wan = { loss_percent = 0, delay_ms = 30, jitter_ms = 5, reorder_percent = 2 }',
        "wan = { nat = true, mtu = 1300 }"))
    assert scenario.link("a") == Link(mtu=1400, rate_mbit=20.0, loss_percent=1.0)
    assert scenario.link("b") == Link(mtu=1400, rate_mbit=20.0, loss_percent=0.0, delay_ms=30.0,
                                      jitter_ms=5.0, reorder_percent=2.0)
    assert scenario.link("c") == Link(mtu=1300, rate_mbit=20.0, loss_percent=1.0, nat="cone")
    assert (scenario.link("a").needs_relay, scenario.link("b").needs_relay) == (False, True)
    assert (scenario.link("a").needs_nft, scenario.link("b").needs_nft) == (True, False)
    assert scenario.wan.seed == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[wan]\njitter_ms = 5\n" + sites("wan = { delay_ms = 2 }", "wan = { delay_ms = 9 }"),
         "lab.toml: wan.jitter_ms: jitter 5 ms exceeds the delay 2 ms of site a's link "
         "(expected jitter_ms <= delay_ms)"),
        (sites("", "wan = { jitter_ms = 5, delay_ms = 4 }"),
         "lab.toml: site[1].wan.jitter_ms: jitter 5 ms exceeds the delay 4 ms of site b's "
         "link (expected jitter_ms <= delay_ms)"),
        ("[wan]\nreorder_percent = 5\n" + sites("", ""),
         "lab.toml: wan.reorder_percent: reordering on site a's link needs a delay to "
         "overtake (set delay_ms > 0)"),
        ("[wan]\nnat = true\n" + sites("", ""),
         "lab.toml: wan.nat: NAT is per site: set it in the site's own table, [[site]] wan = "
         "{ nat = true } (remove it from [wan])"),
        (sites("wan = { nat = true }", "wan = { nat = 'symmetric' }"),
         'lab.toml: site[1].wan.nat: sites "a" and "b" are both behind NAT and share no peer '
         "with a public address, so neither could reach the other (add a site not behind NAT "
         "that peers with both, or remove one nat)"),
        (sites("hub = true\nwan = { nat = true }", "", "wan = { nat = true }"),
         'lab.toml: site[2].wan.nat: sites "a" and "c" are both behind NAT and share no peer '
         "with a public address, so neither could reach the other (add a site not behind NAT "
         "that peers with both, or remove one nat)"),
        (sites("wan = { nat = 'full-cone' }", ""),
         'lab.toml: site[0].wan.nat: expected true, false, "cone" or "symmetric", found '
         '"full-cone" (did you mean "cone"?)'),
        (sites("wan = { nat = 1 }", ""),
         'lab.toml: site[0].wan.nat: expected true, false, "cone" or "symmetric", found an '
         "integer (1)"),
        (sites("wan = { block_udp = 'yes' }", ""),
         'lab.toml: site[0].wan.block_udp: expected true or false, found a string ("yes")'),
        (sites("dial_out = false", "dial_out = false"),
         'lab.toml: site[1].dial_out: sites "a" and "b" both have dial_out = false, so neither '
         "would dial the other"),
        (sites("", "wan = { nat = true }\ndial_out = false"),
         'lab.toml: site[1].dial_out: site "b" has dial_out = false and it is behind NAT, so '
         '"a" cannot dial it; neither would dial the other'),
        (sites("wan = { los_percent = 1 }", ""),
         'lab.toml: site[0].wan.los_percent: unknown key "los_percent" (did you mean '
         '"loss_percent"?)'),
        (sites("wan = { seed = 3 }", ""),
         'lab.toml: site[0].wan.seed: unknown key "seed"; expected one of mtu, rate_mbit, '
         "loss_percent, duplicate_percent, delay_ms, jitter_ms, reorder_percent, loss_pattern, "
         "relay, nat, block_udp"),
        (sites("wan = { rate_mbit = 0 }", ""),
         "lab.toml: site[0].wan.rate_mbit: expected a number of Mbit/s from 0.01 to 10000, "
         "found 0"),
        (sites("wan = { duplicate_percent = true }", ""),
         "lab.toml: site[0].wan.duplicate_percent: expected a number from 0 to 100, found a "
         "boolean (true)"),
        (sites('wan = "slow"', ""),
         'lab.toml: site[0].wan: expected a table, found a string ("slow")'),
        ("[wan]\nseed = -1\n" + sites("", ""),
         "lab.toml: wan.seed: expected an integer from 0 to 4294967295, found -1"),
    ],
)
def test_bad_link_keys_are_one_exact_line(text: str, message: str) -> None:
    assert error_of(text) == message


def test_nat_spokes_behind_a_public_hub_are_fine() -> None:
    scenario = parse_scenario(sites("hub = true", "wan = { nat = true }", "wan = { nat = true }"))
    assert [scenario.link(s).nat for s in "abc"] == ["", "cone", "cone"]


def test_two_nat_sites_that_share_a_public_site_may_peer() -> None:
    scenario = parse_scenario(sites("wan = { nat = 'cone' }", "wan = { nat = 'symmetric' }", ""))
    assert [scenario.link(s).nat for s in "abc"] == ["cone", "symmetric", ""]
    plan = make_plan(scenario, prefix="l2b0c0de")
    a = tomllib.loads(plan.site("a").config_text)["peer"]
    # each NAT site lists the other without an endpoint (dial-in), and dials the public one
    assert [(p["name"], p.get("endpoint")) for p in a] == [("b", None),
                                                           ("c", "198.18.3.2:55555")]


# ---------------------------------------------------------------- plan


def test_link_without_impairments_is_one_plain_veth() -> None:
    plan = plan_of(sites("", ""))
    assert not [s for s in plan.steps if isinstance(s, AddTbf | NftRuleset)]
    assert all(s.relay is None for s in plan.sites)
    assert AddVeth("l2b0c0de-a-gw", "wan0", "l2b0c0de-wan", "a", 1500) in plan.steps


def test_relay_splits_the_link_into_two_legs() -> None:
    plan = plan_of("[wan]\nseed = 40\n" + sites(
        "", "wan = { delay_ms = 20, jitter_ms = 5, reorder_percent = 1 }"))
    b = plan.site("b")
    assert b.relay is not None
    assert (b.relay.gw_leg, b.relay.router_leg, b.relay.seed) == ("b_g", "b_r", 42)
    wan = "l2b0c0de-wan"
    steps = list(plan.steps)
    assert AddVeth("l2b0c0de-b-gw", "wan0", wan, "b_g", 1500) in steps
    assert AddVeth(wan, "b_r", wan, "b", 1500) in steps
    assert Sysctl(wan, "net.ipv6.conf.b_g.disable_ipv6", "1") in steps
    assert AddAddress(wan, "b", "198.18.2.1/24") in steps
    (nft,) = [s for s in steps if isinstance(s, NftRuleset)]
    assert 'devices = { "b_g", "b_r" }' in nft.text and "policy drop" in nft.text
    assert b.relay.argv()[1:] == ["-m", "netns.realise.relay", "--a", "b_g", "--b", "b_r",
                                  "--delay-ms", "20", "--jitter-ms", "5",
                                  "--reorder-percent", "1", "--seed", "42",
                                  "--queue-frames", "10000", "--knobs",
                                  f"{plan.rundir}/relay-b.json"]
    assert "relay l2b0c0de-wan: b_g <-> b_r delay 20ms jitter 5ms reorder 1% seed 42" in (
        plan.describe())


def test_relay_leg_names_fit_for_the_longest_site_name() -> None:
    plan = plan_of("[wan]\nrelay = true\n" + sites("", "").replace('"b"', '"abcdefghijkl"'))
    assert plan.site("abcdefghijkl").relay is not None
    for step in plan.steps:
        for attr in ("ifname", "peer_ifname"):
            if hasattr(step, attr):
                assert len(getattr(step, attr)) <= IFNAME_MAX, step


def test_rate_is_tbf_on_both_ends_of_the_link() -> None:
    plan = plan_of(sites("wan = { rate_mbit = 20 }", ""))
    tbfs = [s for s in plan.steps if isinstance(s, AddTbf)]
    assert tbfs == [AddTbf("l2b0c0de-wan", "a", 20_000, 10_000, 50),
                    AddTbf("l2b0c0de-a-gw", "wan0", 20_000, 10_000, 50)]
    assert str(tbfs[0]) == "tbf l2b0c0de-wan:a rate 20000kbit burst 10000 latency 50ms"
    # a slow link still holds two full frames in its bucket
    assert tbf_step("ns", "x", Link(rate_mbit=0.5, mtu=1500)) == AddTbf("ns", "x", 500, 3028, 50)


def test_loss_duplication_and_blocked_udp_ruleset() -> None:
    text = nft_ruleset("l2b0c0de", [
        ("a", Link(loss_percent=2.5, duplicate_percent=0.01)),
        ("b", Link(block_udp=True)),
        ("c", Link(nat="cone", loss_percent=10)),
    ])
    assert text == """table inet l2b0c0de {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "b" meta l4proto udp drop
    oifname "b" meta l4proto udp drop
    iifname "a" numgen random mod 10000 < 250 drop
    iifname "c" numgen random mod 10000 < 1000 drop
    oifname "a" numgen random mod 10000 < 250 drop
    oifname "c" numgen random mod 10000 < 1000 drop
  }
}
table ip l2b0c0de {
  chain duplicate {
    type filter hook postrouting priority srcnat + 10; policy accept;
    iifname "a" numgen random mod 10000 < 1 dup to ip daddr device oif
    oifname "a" numgen random mod 10000 < 1 dup to ip daddr device oif
  }
}
table ip6 l2b0c0de {
  chain duplicate {
    type filter hook postrouting priority srcnat + 10; policy accept;
    iifname "a" numgen random mod 10000 < 1 dup to ip6 daddr device oif
    oifname "a" numgen random mod 10000 < 1 dup to ip6 daddr device oif
  }
}
"""
    replace = nft_replace("l2b0c0de", [("b", Link())])
    assert replace == "".join(f"table {f} l2b0c0de {{}}\ndelete table {f} l2b0c0de\n"
                              for f in ("inet", "ip", "ip6"))
    assert nft_ruleset("x", [("a", Link(nat="symmetric"))]) is None  # NAT is not the router's
    every = nft_ruleset("x", [("a", Link(loss_percent=100, duplicate_percent=100))]) or ""
    assert '    iifname "a" drop\n' in every and '    oifname "a" dup to ip6 daddr' in every
    assert nft_ruleset("x", [("a", Link()), ("b", Link(mtu=1400))]) is None
    assert [numgen_threshold(p) for p in (0.004, 0.005, 2, 33.333, 100)] == [0, 0, 200, 3333,
                                                                              10_000]


def test_nat_site_is_private_and_dials_out() -> None:
    plan = plan_of(sites("", "", "wan = { nat = true }"))
    home = plan.site("c")
    assert (home.router, home.underlay) == ("100.64.3.1", "100.64.3.2")
    assert home.addresses.public4 == "198.18.3.2"
    public = site_addresses(3, nat=False, ipv4=True, ipv6=False)
    assert (public.router, public.underlay) == ("198.18.3.1", "198.18.3.2")
    nat, wan = "l2b0c0de-c-nat", "l2b0c0de-wan"
    assert nat in plan.namespaces and plan.nodes["c.nat"].ns == nat
    for step in (AddVeth("l2b0c0de-c-gw", "wan0", nat, "lan0", 1500),
                 AddAddress(nat, "lan0", "100.64.3.1/24"),
                 AddVeth(nat, "wan0", wan, "c", 1500),
                 AddAddress(wan, "c", "198.18.3.1/24"),
                 AddAddress(nat, "wan0", "198.18.3.2/24"),
                 AddRoute(nat, "0.0.0.0/0", "198.18.3.1"),
                 AddAddress("l2b0c0de-c-gw", "wan0", "100.64.3.2/24"),
                 AddRoute("l2b0c0de-c-gw", "0.0.0.0/0", "100.64.3.1"),
                 Sysctl(nat, "net.ipv4.ip_forward", "1")):
        assert step in plan.steps, step
    (rules,) = [s for s in plan.steps if isinstance(s, NftRuleset) and s.ns == nat]
    assert "masquerade\n" in rules.text and 'iifname "wan0" ct state new drop' in rules.text
    assert "nat c: l2b0c0de-c-nat cone, lan0 100.64.3.1 (private) ↔ wan0 198.18.3.2 " \
           "(public)" in plan.describe()
    def endpoints(site: str) -> list[tuple[str, str | None]]:
        peers = tomllib.loads(plan.site(site).config_text)["peer"]
        return [(p["name"], p.get("endpoint")) for p in peers]

    assert endpoints("a") == [("b", "198.18.2.2:55555"), ("c", None)]
    assert endpoints("c") == [("a", "198.18.1.2:55555"), ("b", "198.18.2.2:55555")]
    assert "gateway a: l2bridge up -c /run/l2bridge/lab/l2b0c0de/a.toml in l2b0c0de-a-gw, " \
           "peers: b 198.18.2.2:55555, c (dials in)" in plan.describe()
    config = pytest.importorskip("l2bridge.core.config")
    for site in plan.sites:
        parsed = config.parse_config(site.config_text, site.config_path)
        assert [p.endpoint is None for p in parsed.peers] == [p.address is None
                                                              for p in site.peers]


def test_vxlan_cannot_cross_nat_or_a_small_link() -> None:
    with pytest.raises(ScenarioError) as info:
        plan_of(sites("", "wan = { nat = true }"), gateway="vxlan", wan_mtu=1550)
    assert str(info.value) == (
        "lab.toml: site[1].wan.nat: site b is behind NAT, which vxlan gateways cannot cross "
        "(kernel VXLAN needs every remote's address); use the l2bridge gateway or remove nat")
    with pytest.raises(ScenarioError) as info:
        plan_of(sites("", "wan = { mtu = 1500 }"), gateway="vxlan", wan_mtu=1550)
    assert str(info.value).startswith("lab.toml: site[1].wan.mtu: vxlan gateways need an MTU "
                                      ">= 1550 on every link")


def test_daemon_wan_mtu_is_the_smallest_on_its_paths() -> None:
    plan = plan_of(sites("", "wan = { mtu = 1400 }", "hub = true\nwan = { mtu = 9000 }"))
    # b and a are spokes of hub c: a's paths are a-c only; c's include b's 1400
    assert {s.name: s.wan_mtu for s in plan.sites} == {"a": 1500, "b": 1400, "c": 1400}
    assert tomllib.loads(plan.site("b").config_text)["site"]["wan_mtu"] == 1400
    assert AddVeth("l2b0c0de-c-gw", "wan0", "l2b0c0de-wan", "c", 9000) in plan.steps


# ---------------------------------------------------------------- the relay's core


def line(delay_ms: float = 0, jitter_ms: float = 0, reorder: float = 0, seed: int = 1,
         cap: int = 10_000) -> DelayLine:
    return DelayLine(delay_ms / 1000, jitter_ms / 1000, reorder / 100, random.Random(seed), cap)


def test_zero_knobs_pass_straight_through() -> None:
    d = line()
    assert all(d.push(b"x", now=1.0) for _ in range(5))
    assert len(d) == 0 and d.counters.frames_in == 5


def test_delay_holds_each_frame_exactly_its_delay() -> None:
    d = line(delay_ms=40)
    assert not d.push(b"1", now=10.0)
    assert not d.push(b"2", now=10.005)
    assert d.next_due() == pytest.approx(10.040)
    assert d.pop_due(10.0399) == []
    assert d.pop_due(10.040) == [b"1"]
    assert d.pop_due(10.045) == [b"2"]


def test_jitter_stays_in_its_band_and_never_reorders() -> None:
    d = line(delay_ms=40, jitter_ms=10, seed=3)
    releases = []
    for i in range(2000):
        d.push(str(i).encode(), now=i * 0.1)  # sparse: no frame waits for another
        releases.append(d.next_due() - i * 0.1)  # type: ignore[operator]
        d.pop_due(i * 0.1 + 1.0)
    assert 0.030 <= min(releases) < 0.031 and 0.049 < max(releases) <= 0.050
    dense = line(delay_ms=40, jitter_ms=10, seed=3)
    for i in range(1000):
        dense.push(i.to_bytes(2, "big"), now=i * 0.0001)
    out = dense.pop_due(10.0)
    assert [int.from_bytes(f, "big") for f in out] == list(range(1000))


def test_reordering_rate_and_seed_reproduce() -> None:
    def run(seed: int) -> list[int]:
        d = line(delay_ms=20, reorder=10, seed=seed)
        order = []
        for i in range(10_000):
            if d.push(i.to_bytes(2, "big"), now=i * 0.001):
                order.append(i)
            order += [int.from_bytes(f, "big") for f in d.pop_due(i * 0.001)]
        order += [int.from_bytes(f, "big") for f in d.pop_due(100.0)]
        assert sorted(order) == list(range(10_000))
        return order

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    overtakers = sum(1 for k, seq in enumerate(first) if seq > min(first[k + 1:] or [seq]))
    # binomial(10000, 0.1): mean 1000, sd 30; six sd either side never flakes
    assert 820 <= overtakers <= 1180


def test_queue_is_bounded_and_counts_its_drops() -> None:
    d = line(delay_ms=100, cap=3)
    results = [d.push(b"x", now=0.0) for _ in range(5)]
    assert results == [False] * 5
    assert len(d) == 3 and d.counters.queue_full == 2 and d.counters.max_queued == 3


def test_each_direction_has_its_own_generator() -> None:
    ab, ba = make_lines(10, 5, 0, seed=9, queue_frames=100)
    assert ab.rng.random() != ba.rng.random()
    ab2, _ = make_lines(10, 5, 0, seed=9, queue_frames=100)
    ab3, _ = make_lines(10, 5, 0, seed=9, queue_frames=100)
    assert ab2.rng.random() == ab3.rng.random()


def test_periodic_loss_and_duplication_hit_every_nth_packet() -> None:
    from netns.describe.impair import nft_ruleset, numgen_match
    from netns.describe.scenario import Link

    assert numgen_match(2.0, "periodic") == "numgen inc mod 50 0"
    assert numgen_match(2.0) == "numgen random mod 10000 < 200"
    text = nft_ruleset("l2bt", [("a", Link(loss_percent=10, duplicate_percent=25,
                                           loss_pattern="periodic"))])
    assert text is not None
    assert 'iifname "a" numgen inc mod 10 0 drop' in text
    assert 'oifname "a" numgen inc mod 4 0 dup to ip daddr device oif' in text
