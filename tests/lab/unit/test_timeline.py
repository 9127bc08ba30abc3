"""Timelines without root: events validated at parse time (one line naming the key),
the run order, the outage arithmetic of streams, the report's events."""

from __future__ import annotations

import pytest
from support import scenario_path

from netns import cli
from netns.checks.report import CheckResult, EventResult, format_table, make_report, to_json
from netns.checks.streams import outage_from_intervals, outage_from_replies
from netns.describe.plan import make_plan
from netns.describe.scenario import ScenarioError, load_scenario, parse_scenario
from netns.describe.timeline import run_order

SITES = """
[[site]]
name = "london"
[[site.host]]
name = "h1"
[[site]]
name = "berlin"
[[site.host]]
name = "h1"
"""
PING = """
[[check]]
kind = "ping"
from = "london.h1"
to = "berlin.h1"
"""


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(SITES + text, "t.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


def event(**keys: object) -> str:
    def value(v: object) -> str:
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v).lower() if isinstance(v, bool) else str(v)

    return "[[event]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())


def test_shipped_timelines_parse_and_order() -> None:
    failover = load_scenario(scenario_path("failover"))
    assert [e.kind for e in run_order(failover.events)] == [
        "link_down", "link_up", "kill", "restart", "lan_down", "lan_up", "stop", "continue"]
    stream = failover.checks[0]
    assert stream.at == 0.0 and stream.params["seconds"] == 12.0  # last event 9 s + 3 s
    assert stream.timeout_s == 32.0
    assert failover.checks[2].at == 3.5  # a recovers check starts with its event
    flaky = load_scenario(scenario_path("flaky-wan"))
    assert flaky.link("berlin").relay  # an event delays it: the relay is there from the start
    assert not flaky.link("paris").relay


@pytest.mark.parametrize(("text", "expected"), [
    (event(at=1, kind="link_down", site="paris"),
     't.toml: event[0].site: no site "paris" (one of: berlin, london)'),
    (event(at=1, kind="host_down", host="paris.h1"),
     't.toml: event[0].host: no host "paris.h1" (expected "site.host", one of: berlin.h1, '
     "london.h1)"),
    (event(at=-1, kind="kill", site="berlin"),
     "t.toml: event[0].at: -1 s is in the past: the timeline starts at 0 s, when the lab is "
     "up (expected at >= 0)"),
    (event(kind="kill", site="berlin"),
     't.toml: event[0]: give exactly one of "at" (seconds on the timeline, from when the lab '
     'is up) or "after_check" (a check index)'),
    (event(at=2, kind="link_down", site="berlin") + event(at=2, kind="link_up", site="berlin"),
     "t.toml: event[1].at: event[0] (link_down berlin) also acts on berlin's WAN link at 2 s; "
     "two events on one target at one time contradict each other (move one)"),
    (event(at=2, kind="link_up", site="berlin"),
     "t.toml: event[0]: link_up berlin at 2 s needs berlin's WAN link down, but it is up "
     "from the start"),
    (event(at=1, kind="kill", site="berlin") + event(at=2, kind="reload", site="berlin"),
     "t.toml: event[1]: reload berlin at 2 s needs berlin's gateway running, but event[0] "
     "(kill berlin, at 1 s) left it killed"),
    (event(at=1, kind="kill", site="berlin") + event(at=2, kind="kill", site="berlin"),
     "t.toml: event[1]: kill berlin at 2 s: berlin's gateway is not running (event[0] "
     "(kill berlin, at 1 s) killed it; restart it first)"),
    (event(at=1, kind="heal", sites=["london", "berlin"]),
     "t.toml: event[0]: heal london ↔ berlin at 1 s needs the path london ↔ berlin "
     "partitioned, but it is joined from the start"),
    (event(at=1, kind="partition", sites=["london", "london"]),
     't.toml: event[0].sites: expected two different site names, found ["london", "london"]'),
    (event(at=1, kind="impair", site="berlin"),
     "t.toml: event[0]: an impair event changes at least one of loss_percent, "
     "duplicate_percent, delay_ms, jitter_ms, reorder_percent, rate_mbit, mtu, block_udp"),
    (event(at=1, kind="impair", site="berlin", jitter_ms=5),
     "t.toml: event[0]: impair berlin: jitter_ms 5 at 1 s leaves berlin's WAN link with "
     "jitter 5 ms above its delay 0 ms (expected jitter_ms <= delay_ms)"),
    (event(at=1, kind="reload", site="berlin") + "l2bridge = { mtu = 1400 }\n",
     't.toml: event[0].l2bridge.mtu: the daemon cannot change "mtu" while it runs '
     "(reloadable: ageing, arp_max_bindings, arp_suppress, dead_after, dhcp_servers, "
     "keepalive, log_level, loop_probe_interval, loop_protect, mac_flap_detect, mac_flap_hold, "
     "mac_flap_moves, mac_flap_window, max_entries, max_entries_per_peer, pinned_macs, relay, "
     "resolve_interval, storm_broadcast, storm_burst, storm_control, storm_multicast, "
     "storm_unknown_unicast)"),
    (event(at=1, kind="lan_down", site="berlin", host="berlin.h1"),
     't.toml: event[0]: give exactly one of "site" (the link from its LAN switch to its '
     'gateway) or "host" (that host\'s switch port)'),
    (event(at=1, kind="explode", site="berlin"),
     't.toml: event[0].kind: expected one of "link_down", "link_up", "partition", "heal", '
     '"impair", "readdress", "kill", "stop", "continue", "restart", "reload", "host_down", '
     '"host_up", "lan_down", "lan_up", found "explode" (did you mean "reload"?)'),
    (event(at=1, kind="kill", site="berlin", sitee="x"),
     't.toml: event[0].sitee: unknown key "sitee" (did you mean "site"?)'),
    (PING + event(after_check=3, kind="kill", site="berlin"),
     "t.toml: event[0].after_check: no check[3] (the scenario has 1 checks)"),
    (PING.replace('kind = "ping"', 'kind = "ping"\nat = 1')
     + event(after_check=0, kind="kill", site="berlin"),
     't.toml: event[0].after_check: check[0] runs on the timeline (it has "at" or is a '
     'stream); give this event an "at"'),
    (PING.replace('kind = "ping"', 'kind = "ping"\nat = -2'),
     "t.toml: check[0].at: -2 s is in the past: the timeline starts at 0 s, when the lab is "
     "up (expected at >= 0)"),
    ('[[check]]\nkind = "recovers"\nevent = 0\nfrom = "london.h1"\nto = "berlin.h1"\n',
     "t.toml: check[0].event: no event[0] (the scenario has 0 events)"),
    ('[[check]]\nkind = "recovers"\nevent = 0\nfrom = "london.h1"\nto = "berlin.h1"\n'
     + PING + event(after_check=1, kind="kill", site="berlin"),
     't.toml: check[0].event: event[0] (kill berlin) runs between checks; a recovers check '
     'needs an event with "at"'),
    ('[[check]]\nkind = "stream"\nfrom = "london.h1"\nto = "paris.h1"\n',
     't.toml: check[0].to: no host "paris.h1" (expected "site.host", one of: berlin.h1, '
     "london.h1)"),
])
def test_bad_events_are_one_line_naming_the_key(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_between_checks_state_follows_the_timeline() -> None:
    """A gateway the timeline leaves killed may be restarted between checks."""
    scenario = parse_scenario(SITES + PING + event(at=1, kind="kill", site="berlin")
                              + event(after_check=0, kind="restart", site="berlin"), "t.toml")
    assert [e.when for e in run_order(scenario.events)] == ["at 1 s", "after check[0]"]


def test_vxlan_gateways_refuse_process_events() -> None:
    scenario = parse_scenario(SITES + event(at=1, kind="stop", site="berlin")
                              + event(at=2, kind="continue", site="berlin"), "t.toml")
    with pytest.raises(ScenarioError) as info:
        make_plan(scenario, prefix="l2b00000", gateway="vxlan", wan_mtu=1550)
    assert str(info.value) == ('t.toml: event[0].kind: "stop" acts on an l2bridge process, '
                               "which vxlan gateways do not have; use the l2bridge gateway or "
                               "remove the event")


def test_bad_event_exits_2_with_one_line_and_builds_nothing(
        tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    path = f"{tmp_path}/bad.toml"
    with open(path, "w") as f:
        f.write(SITES + event(at=1, kind="link_down", site="paris"))
    for command in ("run", "plan", "up"):
        assert cli.main([command, path]) == 2
        err = capsys.readouterr().err
        assert err == f'{path}: event[0].site: no site "paris" (one of: berlin, london)\n'


def test_outage_from_replies() -> None:
    clean = [100.0 + 0.1 * k + 0.001 for k in range(50)]
    o = outage_from_replies(100.0, 105.0, clean, 0.1)
    assert o.longest_s == pytest.approx(0.0, abs=1e-6) and o.gaps == ()
    cut = [t for t in clean if not 101.0 < t < 102.5]
    o = outage_from_replies(100.0, 105.0, cut, 0.1)
    assert o.longest_s == pytest.approx(1.5, abs=1e-6)
    assert o.gaps == (pytest.approx((100.901, 102.501)),)
    assert outage_from_replies(100.0, 105.0, [], 0.1).longest_s == pytest.approx(4.9)


def test_outage_from_intervals() -> None:
    ivs = [{"start": k / 10, "end": (k + 1) / 10, "bytes": 0 if 20 <= k < 35 else 1000}
           for k in range(60)]
    o = outage_from_intervals(ivs, 50.0)
    assert o.longest_s == pytest.approx(1.5)
    assert o.gaps == ((52.0, 53.5),)
    tail = [{"start": k / 10, "end": (k + 1) / 10, "bytes": 0 if k >= 50 else 1}
            for k in range(60)]
    assert outage_from_intervals(tail, 0.0).longest_s == pytest.approx(1.0)


def test_report_lists_events_and_a_failed_event_fails_the_run() -> None:
    scenario = load_scenario(scenario_path("failover"))
    results = [CheckResult(0, "stream", "stream", True, "fine", 1.0, {"outage_s": 1.2})]
    events = [EventResult(0, "link_down berlin", "link_down", 2.0, 2.01, True, "down"),
              EventResult(6, "stop berlin", "stop", None, 12.5, False, "stop berlin: gone")]
    report = make_report("l2b00000", scenario, "l2bridge", 4, results, {}, events)
    table = format_table(report)
    assert "  e0  ok  t = 2.01 s  link_down berlin: down" in table
    assert table.rstrip().endswith("FAIL: 1/1 checks passed, 1 events failed")
    assert '"events": [' in to_json(report) and not report.ok


def test_vxlan_gateways_refuse_checks_that_read_show() -> None:
    from support import scenario_path

    from netns.describe.scenario import load_scenario

    for name, kind in (("lan-loop", "loop_blocked"), ("mac-flap", "mac_flap"),
                       ("broadcast-storm", "storm")):
        with pytest.raises(ScenarioError) as info:
            make_plan(load_scenario(scenario_path(name)), prefix="l2b00000", gateway="vxlan",
                      wan_mtu=1550)
        assert f"a {kind} check reads an l2bridge daemon's show" in str(info.value)
