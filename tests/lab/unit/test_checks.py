"""Checks without root: new scenario keys, their validation, and every verdict with numbers."""

from __future__ import annotations

import pytest
import trio

from netns.checks import kinds as checks
from netns.checks.traffic import CommandResult, IperfResult
from netns.describe.plan import Node
from netns.describe.scenario import ScenarioError, parse_check, parse_scenario
from netns.lab import command_programs

SITES = """
[[site]]
name = "london"
[[site.host]]
name = "h1"
[[site.host]]
name = "v10"
vlan = 10
[[site.host]]
name = "v20"
vlan = 20

[[site]]
name = "berlin"
[[site.host]]
name = "h1"
[[site.host]]
name = "v10"
vlan = 10
"""
SCENARIO = parse_scenario(SITES, "lab.toml")


def check_of(**raw: object) -> object:
    return parse_check(raw, SCENARIO, "lab.toml")


def error_of(**raw: object) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_check(raw, SCENARIO, "lab.toml")
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- scenario keys


def test_vlan_is_kept_on_hosts() -> None:
    assert [h.vlan for h in SCENARIO.site("london").hosts] == [None, 10, 20]


def test_reachability_defaults_to_both_families() -> None:
    check = check_of(kind="reachability")
    assert check.params == {"count": 1, "families": ["ipv4", "ipv6"], "sample": None}
    assert check.name == "reachability"
    assert check.timeout_s == 60.0
    assert check_of(kind="reachability", families=["ipv6"]).name == "reachability ipv6"


@pytest.mark.parametrize(("families", "found"), [
    ([], "0"), (["ipv4", "ipv4"], '["ipv4", "ipv4"]'), (["ipx"], '["ipx"]'),
])
def test_reachability_families_must_be_known_and_distinct(families: list[str],
                                                          found: str) -> None:
    assert error_of(kind="reachability", families=families) == (
        'lab.toml: check[0].families: expected a non-empty array of distinct "ipv4", "ipv6", '
        f"found {found}")


def test_ping_expect() -> None:
    check = check_of(kind="ping", **{"from": "london.v10", "to": "london.v20"}, expect="fail")
    assert check.params["expect"] == "fail"
    assert check.name == "ping london.v10 ↛ london.v20 (must fail)"
    assert error_of(kind="ping", **{"from": "london.h1", "to": "berlin.h1"}, expect="maybe") == (
        'lab.toml: check[0].expect: expected one of "pass", "fail", found "maybe"')


def test_iperf3_loss_limit_only_for_udp() -> None:
    base = {"kind": "iperf3", "from": "london.h1", "to": "berlin.h1"}
    assert check_of(**base, udp=True, max_lost_percent=1).params["max_lost_percent"] == 1.0
    assert error_of(**base, max_lost_percent=1) == (
        "lab.toml: check[0].max_lost_percent: only for UDP tests (set udp = true or remove "
        "the key)")


def test_mtu_modes() -> None:
    base = {"kind": "mtu", "from": "london.h1", "to": "berlin.h1"}
    assert check_of(**base).params["mode"] == "fixed"
    search = check_of(**base, mode="search")
    assert (search.params["mode"], search.params["size"]) == ("search", 1472)
    assert search.name == "mtu search london.h1 → berlin.h1"
    assert search.timeout_s == 20.0


def test_command_keys() -> None:
    check = check_of(kind="command", host="berlin.h1", argv=["ip", "-br", "link"])
    assert check.params == {"host": "berlin.h1", "argv": ["ip", "-br", "link"], "shell": None,
                            "expect_status": 0, "expect_output": None, "regex": False}
    assert check.name == "command berlin.h1: ip -br link"
    assert check.timeout_s == 30.0
    long = check_of(kind="command", host="berlin.h1", shell="echo " + "x" * 40)
    assert long.name == "command berlin.h1: echo " + "x" * 24 + "…"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, 'lab.toml: check[0]: give exactly one of "argv" (a list) or "shell" (a string)'),
        ({"argv": ["true"], "shell": "true"},
         'lab.toml: check[0]: give exactly one of "argv" (a list) or "shell" (a string)'),
        ({"argv": []}, "lab.toml: check[0].argv: expected a non-empty array of strings, found 0"),
        ({"argv": ["sleep", 1]},
         "lab.toml: check[0].argv[1]: expected a string, found an integer (1)"),
        ({"shell": "true", "regex": True},
         'lab.toml: check[0].regex: needs "expect_output" (the pattern)'),
        ({"shell": "true", "regex": True, "expect_output": "a("},
         "lab.toml: check[0].expect_output: not a valid regex: missing ), unterminated "
         "subpattern at position 1"),
        ({"shell": "true", "expect_status": 256},
         "lab.toml: check[0].expect_status: expected an integer from 0 to 255, found 256"),
        ({"host": "london.gw", "shell": "true"},
         'lab.toml: check[0].host: no host "london.gw" (expected "site.host", one of: '
         "berlin.h1, berlin.v10, london.h1, london.v10, london.v20)"),
    ],
)
def test_command_errors(raw: dict[str, object], expected: str) -> None:
    assert error_of(**{"kind": "command", "host": "london.h1", **raw}) == expected


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        ("london.v10", "berlin.h1", "lab.toml: check[0].to: expected two hosts in the same "
         "VLAN, found london.v10 VLAN 10 and berlin.h1 untagged (set [[site.host]] vlan)"),
        ("london.h1", "berlin.h1", "lab.toml: check[0].to: expected two hosts in the same "
         "VLAN, found london.h1 untagged and berlin.h1 untagged (set [[site.host]] vlan)"),
        ("london.v20", "berlin.v10", "lab.toml: check[0].to: expected two hosts in the same "
         "VLAN, found london.v20 VLAN 20 and berlin.v10 VLAN 10 (set [[site.host]] vlan)"),
    ],
)
def test_vlan_tags_needs_one_vlan(src: str, dst: str, expected: str) -> None:
    assert error_of(kind="vlan_tags", **{"from": src, "to": dst}) == expected


def test_vlan_tags_needs_two_sites() -> None:
    scenario = parse_scenario(SITES + '[[site.host]]\nname = "w10"\nvlan = 10\n')
    with pytest.raises(ScenarioError, match="expected a host at another site than berlin.v10"):
        parse_check({"kind": "vlan_tags", "from": "berlin.v10", "to": "berlin.w10"}, scenario)
    check = check_of(kind="vlan_tags", **{"from": "london.v10", "to": "berlin.v10"})
    assert check.params["count"] == 5 and check.timeout_s == 15.0


def test_preflight_programs_of_a_command() -> None:
    assert command_programs(check_of(kind="command", host="london.h1", argv=["tcpdump"])) == (
        "tcpdump",)
    assert command_programs(check_of(kind="command", host="london.h1", shell="x")) == (
        "/bin/sh",)
    assert command_programs(check_of(kind="vlan_tags", **{"from": "london.v10",
                                                          "to": "berlin.v10"})) == ("tcpdump",)


# ---------------------------------------------------------------- reachability


def node(ref: str, vlan: int | None = None, v6: bool = True) -> Node:
    site = ref.split(".")[0]
    return Node(ref, f"p-{ref}", site, "host", "eth0", "10.77.1.1/16",
                "fd00:77::1/64" if v6 else None, "02:00:00:00:00:01", vlan)


HOSTS = [node("a.h1", 10), node("a.h2", 20), node("b.h1", 10), node("b.h2", 20)]


def test_reachability_plan_expects_same_vlan_pairs_only() -> None:
    probes, total = checks.reachability_plan(HOSTS, ["ipv4", "ipv6"])
    assert total == 6
    assert len(probes) == 12
    must = sorted(p.label for p in probes if p.expect)
    assert must == ["a.h1→b.h1 ipv4", "a.h1→b.h1 ipv6", "a.h2→b.h2 ipv4", "a.h2→b.h2 ipv6"]


def test_reachability_plan_skips_hosts_without_the_family() -> None:
    probes, _ = checks.reachability_plan([node("a.h1"), node("b.h1", v6=False)],
                                         ["ipv4", "ipv6"])
    assert [p.label for p in probes] == ["a.h1→b.h1 ipv4"]


def test_reachability_sample_is_even_and_deterministic() -> None:
    hosts = [node(f"s{i}.h1") for i in range(24)]
    probes, total = checks.reachability_plan(hosts, ["ipv4"], sample=23)
    again, _ = checks.reachability_plan(hosts, ["ipv4"], sample=23)
    assert total == 276 and len(probes) == 23
    assert [p.label for p in probes] == [p.label for p in again]
    assert probes[0].label == "s0.h1→s1.h1 ipv4" and probes[1].label == "s0.h1→s13.h1 ipv4"


def test_reachability_verdict_passes_with_exact_matrix() -> None:
    probes, total = checks.reachability_plan(HOSTS, ["ipv4", "ipv6"])
    answered = {p.label: p.expect for p in probes}
    ok, summary, numbers = checks.reachability_verdict(probes, answered, ["ipv4", "ipv6"], total)
    assert ok
    assert summary == ("6 host pairs × ipv4+ipv6: 4/4 same-VLAN pings answer, "
                       "8/8 cross-VLAN pings silent")
    assert (numbers["ok"], numbers["expected_ok"], numbers["silent"],
            numbers["expected_silent"]) == (4, 4, 8, 8)
    assert numbers["per_family"]["ipv6"] == {"answered": 2, "expected": 2, "silent": 4,
                                             "expected_silent": 4}


def test_reachability_verdict_fails_on_a_leak_and_a_silent_pair() -> None:
    probes, total = checks.reachability_plan(HOSTS, ["ipv4"])
    answered = {p.label: p.expect for p in probes}
    answered["a.h1→b.h1 ipv4"] = False
    answered["a.h1→a.h2 ipv4"] = True
    ok, summary, numbers = checks.reachability_verdict(probes, answered, ["ipv4"], total)
    assert not ok
    assert summary == ("6 host pairs × ipv4: 1/2 same-VLAN pings answer, 3/4 cross-VLAN pings "
                       "silent; no answer: a.h1→b.h1 ipv4; answered across VLANs: "
                       "a.h1→a.h2 ipv4")
    assert numbers["failed"] == ["a.h1→b.h1 ipv4"] and numbers["leaked"] == ["a.h1→a.h2 ipv4"]


def test_reachability_verdict_without_vlans_and_sampled() -> None:
    hosts = [node(f"s{i}.h1") for i in range(10)]
    probes, total = checks.reachability_plan(hosts, ["ipv4", "ipv6"], sample=9)
    answered = {p.label: True for p in probes}
    ok, summary, _ = checks.reachability_verdict(probes, answered, ["ipv4", "ipv6"], total)
    assert ok
    assert summary == "9 host pairs × ipv4+ipv6: 18/18 pings answer (9 of 45 pairs sampled)"


# ---------------------------------------------------------------- mtu search


@pytest.mark.parametrize("threshold", [0, 1, 700, 1371, 1372, 1471, 1472])
async def test_mtu_bisect_finds_the_threshold(threshold: int) -> None:
    probed: list[int] = []

    async def fits(size: int) -> bool:
        probed.append(size)
        return size <= threshold

    assert await checks.mtu_bisect(fits, 0, 1472) == threshold
    assert len(probed) <= 2 + 11  # top, bottom, then log2(1472) bisection steps
    assert len(set(probed)) == len(probed)  # never the same size twice


async def test_mtu_bisect_top_first_and_nothing_fits() -> None:
    probed: list[int] = []

    async def fits(size: int) -> bool:
        probed.append(size)
        return size <= 5000

    assert await checks.mtu_bisect(fits, 0, 1472) == 1472
    assert probed == [1472]

    async def never(size: int) -> bool:
        return False

    assert await checks.mtu_bisect(never, 0, 1472) is None


# ---------------------------------------------------------------- command


def result(status: int, out: str = "", err: str = "", timed_out: bool = False) -> CommandResult:
    return CommandResult(returncode=status, stdout=out, stderr=err, timed_out=timed_out,
                         elapsed_s=0.25)


def test_command_verdict_status_and_output() -> None:
    ok, summary, numbers = checks.command_verdict(result(3, "hello\n"), 3, "hel+o", True, 29.5)
    assert ok
    assert summary == "exit 3 (want 3), output matches /hel+o/: yes in 0.25 s"
    assert numbers["status"] == 3 and numbers["output_matched"] is True

    ok, summary, _ = checks.command_verdict(result(0, "bye\n"), 0, "hello", False, 29.5)
    assert not ok
    assert summary == "exit 0 (want 0), output contains 'hello': no; last line: 'bye' in 0.25 s"

    ok, summary, _ = checks.command_verdict(result(1, "", "boom\n"), 0, None, False, 29.5)
    assert not ok
    assert summary == "exit 1 (want 0); last line: 'boom' in 0.25 s"


def test_command_verdict_timeout() -> None:
    ok, summary, numbers = checks.command_verdict(result(-9, timed_out=True), 0, None, False, 1.5)
    assert not ok and numbers["timed_out"]
    assert summary == "killed after 1.5 s (still running)"


# ---------------------------------------------------------------- iperf3


def iperf(mbit: float, lost: float | None, udp: bool = True) -> IperfResult:
    raw = {"end": {"sum_received": {"jitter_ms": 0.0123, "bits_per_second": mbit * 1e6}}}
    return IperfResult(mbit_s=mbit, retransmits=None if udp else 0, lost_percent=lost,
                       seconds=2.0, protocol="UDP" if udp else "TCP", raw=raw)


def test_iperf3_udp_verdict() -> None:
    ok, summary, numbers = checks.iperf3_verdict(iperf(49.9, 0.5), None, 1.0)
    assert ok
    assert summary == "49.9 Mbit/s UDP, 0.50% lost, jitter 0.012 ms (max 1% lost)"
    assert numbers == {"mbit_s": 49.9, "retransmits": None, "lost_percent": 0.5,
                       "jitter_ms": 0.0123, "seconds": 2.0, "protocol": "UDP"}
    ok, summary, _ = checks.iperf3_verdict(iperf(49.9, 2.5), 60.0, 1.0)
    assert not ok
    assert summary == ("49.9 Mbit/s UDP, 2.50% lost, jitter 0.012 ms "
                       "(min 60 Mbit/s, max 1% lost)")


def test_iperf3_tcp_verdict_has_no_jitter() -> None:
    ok, summary, numbers = checks.iperf3_verdict(iperf(900.0, None, udp=False), 100.0, None)
    assert ok and numbers["jitter_ms"] is None
    assert summary == "900.0 Mbit/s TCP, 0 retransmits (min 100 Mbit/s)"


# ---------------------------------------------------------------- broadcast and tags


def test_broadcast_verdict_respects_vlans() -> None:
    src = HOSTS[0]
    counts = {"a.h1": 0, "a.h2": 0, "b.h1": 5, "b.h2": 0}
    ok, summary, numbers = checks.broadcast_verdict(src, HOSTS, counts, 5)
    assert ok
    assert summary == ("1/1 hosts got exactly 5; sender got 0 back; "
                       "2/2 hosts of other VLANs got 0")
    assert numbers["expected"] == {"a.h1": 0, "a.h2": 0, "b.h1": 5, "b.h2": 0}
    ok, summary, _ = checks.broadcast_verdict(src, HOSTS, {**counts, "b.h2": 5}, 5)
    assert not ok
    assert summary.endswith("1/2 hosts of other VLANs got 0; wrong: b.h2=5")


def test_broadcast_verdict_without_vlans_keeps_its_wording() -> None:
    hosts = [node("a.h1"), node("b.h1"), node("c.h1")]
    ok, summary, _ = checks.broadcast_verdict(hosts[0], hosts, {"a.h1": 0, "b.h1": 4,
                                                                "c.h1": 0}, 4)
    assert not ok
    assert summary == "1/2 hosts got exactly 4; sender got 0 back; wrong: c.h1=0"


def tagged(vid: int | None, marker: bytes) -> bytes:
    from netns.checks.frames import (
        BROADCAST_MAC,
        ETHERTYPE_EXPERIMENTAL,
        make_frame,
        marker_payload,
    )
    return make_frame(BROADCAST_MAC, b"\x02" + bytes(5), ETHERTYPE_EXPERIMENTAL,
                      marker_payload(marker, 0), vlan=vid)


def test_vlan_ids_reads_outer_tags_of_marked_frames_only() -> None:
    frames = [tagged(10, b"MARK"), tagged(None, b"MARK"), tagged(20, b"OTHER"),
              tagged(4094, b"MARK")]
    assert checks.vlan_ids(frames, b"MARK") == [10, None, 4094]


def test_vlan_tags_verdict() -> None:
    src, dst = HOSTS[0], HOSTS[2]
    counts = {"a.h1": 0, "a.h2": 0, "b.h1": 3, "b.h2": 0}
    seen = {"a": [10, 10, 10], "b": [10, 10, 10]}
    ok, summary, numbers = checks.vlan_tags_verdict(src, dst, HOSTS, counts, seen, 3, 3)
    assert ok
    assert summary == ("gateways' eth1 VID 10: a 3/3, b 3/3; b.h1 got 3/3 untagged; "
                       "other VLANs got 0")
    assert numbers["gateway_vids"] == seen
    ok, summary, _ = checks.vlan_tags_verdict(src, dst, HOSTS, counts,
                                              {"a": [10, 10, 10], "b": [None, 10]}, 3, 2)
    assert not ok
    assert summary == ("gateways' eth1 VID 10: a 3/3, b 1/3 (seen: 2 frames, VIDs "
                       "10,untagged); b.h1 got 3/3 (1 still tagged); other VLANs got 0")


def test_runners_cover_every_check_kind() -> None:
    from netns.describe.scenario import CHECK_SCHEMAS, CHECK_TIMEOUT_S
    assert set(checks.RUNNERS) == set(CHECK_SCHEMAS) == set(CHECK_TIMEOUT_S)


async def test_marker_is_unique() -> None:
    class FakeLab:
        prefix = "l2b00000"

    first = checks.new_marker(FakeLab())  # type: ignore[arg-type]
    await trio.lowlevel.checkpoint()
    assert first != checks.new_marker(FakeLab())  # type: ignore[arg-type]
