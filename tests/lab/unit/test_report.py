"""The report (no root): a table readable at a glance and the same facts as JSON."""

from __future__ import annotations

import json
from types import SimpleNamespace

from netns.checks.report import CheckResult, format_table, make_report, to_json

RESULTS = [
    CheckResult(0, "reachability", "reachability", True, "6/6 host pairs answer", 0.04,
                {"pairs": 6, "ok": 6, "failed": []}),
    CheckResult(1, "iperf3 a.h1 → b.h1", "iperf3", False, "0.0 Mbit/s TCP", 2.5,
                {"mbit_s": 0.0}),
]
SCENARIO = SimpleNamespace(name="two-offices", path="scenarios/two-offices.toml",
                           sites=(1, 2))


def report() -> object:
    return make_report("l2b0c0de", SCENARIO, "vxlan", 4, RESULTS,
                       {"build_s": 0.13, "checks_s": 2.54})


def test_table() -> None:
    assert format_table(report()) == (
        "two-offices — lab l2b0c0de, 2 sites, 4 hosts, gateway vxlan\n"
        "\n"
        "#  check               result  time   details\n"
        "-  ------------------  ------  -----  -------\n"
        "0  reachability        ok      0.04s  6/6 host pairs answer\n"
        "1  iperf3 a.h1 → b.h1  FAIL    2.50s  0.0 Mbit/s TCP\n"
        "\n"
        "FAIL: 1/2 checks passed (build 0.13 s, checks 2.54 s)\n"
    )


def test_json() -> None:
    doc = json.loads(to_json(report()))
    assert doc["ok"] is False and doc["passed"] == 1 and doc["total"] == 2
    assert doc["timings_s"] == {"build": 0.13, "checks": 2.54}
    assert doc["checks"][0] == {"index": 0, "name": "reachability", "kind": "reachability",
                                "ok": True, "summary": "6/6 host pairs answer",
                                "elapsed_s": 0.04, "numbers": {"pairs": 6, "ok": 6,
                                                               "failed": []}}
    assert (doc["lab"], doc["scenario"], doc["gateway"], doc["sites"], doc["hosts"]) == (
        "l2b0c0de", "two-offices", "vxlan", 2, 4)


def test_failed_check_cut_in_the_table_is_given_in_full_below() -> None:
    long = "276 host pairs × ipv4+ipv6: 550/552 pings answer; no answer: " + ", ".join(
        f"s{i:02d}.h1→s{i + 1:02d}.h1 ipv6" for i in range(2))
    results = [CheckResult(0, "reachability", "reachability", False, long, 2.7, {}),
               CheckResult(1, "broadcast", "broadcast_once", True, "x" * 120, 0.6, {})]
    text = format_table(make_report("l2b0c0de", SCENARIO, "l2bridge", 24, results, {}))
    lines = text.splitlines()
    assert lines[4].endswith("…") and len(lines[4].split("  ")[-1]) == 90
    assert lines[-5:] == ["", "failed checks in full:", f"  0 reachability: {long}", "",
                          "FAIL: 1/2 checks passed"]
    assert not any(line.startswith("  1 broadcast") for line in lines)  # passed: cut only
    assert lines[-1] == "FAIL: 1/2 checks passed"
