"""``l2bridge lab bench``, the pure parts: statistics, ratios, rendering, options (no root)."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from l2bridge.core.caps import MAX_WORKERS
from netns.bench import runner as bench
from netns.bench import stats as bs
from netns.describe.plan import make_plan

PING_OUTPUT = """PING 10.77.2.1 (10.77.2.1) 56(84) bytes of data.
64 bytes from 10.77.2.1: icmp_seq=1 ttl=64 time=0.912 ms
64 bytes from 10.77.2.1: icmp_seq=2 ttl=64 time=0.045 ms
64 bytes from 10.77.2.1: icmp_seq=3 ttl=64 time=1.20 ms

--- 10.77.2.1 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 20ms
rtt min/avg/max/mdev = 0.045/0.719/1.200/0.490 ms
"""

UDP_DOC = {"end": {
    "sum": {"seconds": 1.000167, "bytes": 16352000, "packets": 255500, "lost_packets": 34169,
            "lost_percent": 13.373385518591},
    "sum_received": {"seconds": 2.0, "bytes": 14165184, "packets": 255500,
                     "lost_packets": 34169, "lost_percent": 13.373385518591},
}}


def sample(rnd: int, variant: str, **metrics: float | None) -> bs.Sample:
    s = bs.Sample(round=rnd, variant=variant)
    s.metrics = {k: metrics.get(k) for k in bs.METRIC_KEYS}
    return s


def result_of(rows: dict[str, list[dict[str, float | None]]], rounds: int) -> bs.BenchResult:
    samples = [sample(r, v, **rows[v][r]) for r in range(rounds) for v in rows]
    return bs.BenchResult(settings=bs.Settings(rounds=rounds), samples=samples,
                          machine={"cpus": 2, "kernel": "6.1"}, elapsed_s=12.34)


def three_rounds() -> bs.BenchResult:
    # l2bridge: 400, 500, 300 Mbit/s against vxlan 10000, 20000, 5000 in the same rounds:
    # per-round ratios 0.04, 0.025, 0.06 → median 0.04 (the ratio of medians would be 0.04
    # too, but the min and max are only right when paired per round).
    # At 1% loss l2bridge keeps 0.75, 0.9, 0.8 of its lossless goodput, VXLAN 0.6, 0.5,
    # 0.8: per-round ratios 1.25, 1.8, 1.0.
    return result_of({
        "l2bridge": [{"tcp1_mbit_s": 400, "rtt_avg_ms": 0.9, "rtt_p99_ms": 1.3,
                      "daemon_cpu_s_per_gb": 25.0, "tcp1_loss1_mbit_s": 300,
                      "tcp1_loss1_retained": 0.75},
                     {"tcp1_mbit_s": 500, "rtt_avg_ms": 0.8, "rtt_p99_ms": 1.1,
                      "daemon_cpu_s_per_gb": 20.0, "tcp1_loss1_mbit_s": 450,
                      "tcp1_loss1_retained": 0.9},
                     {"tcp1_mbit_s": 300, "rtt_avg_ms": 1.0, "rtt_p99_ms": 1.2,
                      "daemon_cpu_s_per_gb": None, "tcp1_loss1_mbit_s": 240,
                      "tcp1_loss1_retained": 0.8}],
        "insecure": [{"tcp1_mbit_s": 700}, {"tcp1_mbit_s": None}, {"tcp1_mbit_s": 800}],
        "vxlan": [{"tcp1_mbit_s": 10000, "rtt_avg_ms": 0.13, "tcp1_loss1_mbit_s": 6000,
                   "tcp1_loss1_retained": 0.6},
                  {"tcp1_mbit_s": 20000, "rtt_avg_ms": 0.14, "tcp1_loss1_mbit_s": 10000,
                   "tcp1_loss1_retained": 0.5},
                  {"tcp1_mbit_s": 5000, "rtt_avg_ms": 0.12, "tcp1_loss1_mbit_s": 4000,
                   "tcp1_loss1_retained": 0.8}],
        "direct": [{"tcp1_mbit_s": 15000, "rtt_avg_ms": 0.05, "rtt_p99_ms": 0.1},
                   {"tcp1_mbit_s": 16000, "rtt_avg_ms": 0.06, "rtt_p99_ms": 0.1},
                   {"tcp1_mbit_s": 14000, "rtt_avg_ms": 0.05, "rtt_p99_ms": 0.1}],
    }, rounds=3)


# ---------------------------------------------------------------- statistics


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(200, 0, -1)]  # order does not matter
    assert bs.percentile(values, 99) == 198.0  # 2 of 200 above it
    assert bs.percentile(values[:100], 99) == 199.0  # of 200..101: the 99th smallest
    assert bs.percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert bs.percentile([3.5], 99) == 3.5
    assert bs.percentile([1.0, 2.0], 50) == 1.0
    with pytest.raises(ValueError):
        bs.percentile([], 99)


def test_summarize_leaves_out_what_was_not_measured() -> None:
    s = bs.summarize([4.0, None, 1.0, 3.0, 2.0])
    assert s == bs.Summary(median=2.5, min=1.0, max=4.0, n=4)
    assert bs.summarize([None, None]) is None
    assert bs.summarize([]) is None
    assert bs.summarize([7.0]) == bs.Summary(7.0, 7.0, 7.0, 1)


def test_ping_times_are_read_per_echo() -> None:
    assert bs.parse_ping_times(PING_OUTPUT) == [0.912, 0.045, 1.2]
    assert bs.parse_ping_times("64 bytes from ::1: icmp_seq=1 time<0.1 ms") == [0.1]
    assert bs.parse_ping_times("3 packets transmitted, 0 received") == []


def test_udp_frames_received_and_loss() -> None:
    fps, loss = bs.udp_received(UDP_DOC)
    assert fps == pytest.approx((255500 - 34169) / 2.0)  # the receiver's duration
    assert loss == pytest.approx(13.3734, abs=1e-4)
    with pytest.raises(ValueError, match="duration"):
        bs.udp_received({"end": {"sum_received": {"packets": 10}}})


def test_cpu_per_gb() -> None:
    assert bs.per_gb(5.0, 2e9) == 2.5
    assert bs.per_gb(None, 2e9) is None  # no daemon (kernel VXLAN, direct)
    assert bs.per_gb(1.0, 0) is None  # nothing moved: no figure rather than infinity


def test_finish_sample_derives_the_metrics() -> None:
    s = bs.Sample(round=0, variant="l2bridge", raw={
        "tcp1_mbit_s": 445.0, "tcp4_mbit_s": 546.0, "udp64_fps": 49341.0,
        "udp64_loss_percent": 60.1, "rtt_ms": [0.5] * 98 + [2.0, 3.0],
        "tcp_bytes": 250_000_000, "daemon_cpu_s": 6.0, "machine_cpu_s": 7.5,
        "daemon_rss_peak_kib": 49664,
    })
    m = bs.finish_sample(s).metrics
    assert m["tcp1_mbit_s"] == 445.0 and m["udp64_loss_percent"] == 60.1
    assert m["rtt_avg_ms"] == pytest.approx((0.5 * 98 + 5.0) / 100)
    assert m["rtt_p99_ms"] == 2.0
    assert m["daemon_cpu_s_per_gb"] == pytest.approx(24.0)
    assert m["machine_cpu_s_per_gb"] == pytest.approx(30.0)
    assert m["daemon_rss_peak_mib"] == pytest.approx(48.5)
    assert set(m) == set(bs.METRIC_KEYS)
    assert m["tcp1_loss1_mbit_s"] is None and m["tcp1_loss1_retained"] is None
    empty = bs.finish_sample(bs.Sample(round=0, variant="vxlan", raw={})).metrics
    assert all(v is None for v in empty.values())


def test_goodput_kept_under_loss_is_lossy_over_lossless_of_the_same_sample() -> None:
    assert bs.retained(300.0, 400.0) == 0.75
    assert bs.retained(None, 400.0) is None  # the lossy run failed
    assert bs.retained(300.0, None) is None  # the lossless run failed
    assert bs.retained(300.0, 0.0) is None  # nothing moved: no figure rather than infinity
    m = bs.finish_sample(bs.Sample(round=0, variant="vxlan", raw={
        "tcp1_mbit_s": 12000.0, "tcp1_loss1_mbit_s": 7200.0, "tcp1_loss1_retransmits": 812,
    })).metrics
    assert m["tcp1_loss1_mbit_s"] == 7200.0
    assert m["tcp1_loss1_retained"] == pytest.approx(0.6)
    # the lossy run never counts as bytes moved for the CPU figures
    assert m["machine_cpu_s_per_gb"] is None


def test_loss_figure_is_paired_with_vxlan_per_round() -> None:
    r = three_rounds()
    kept = bs.summaries(r)["l2bridge"]["tcp1_loss1_retained"]
    assert kept is not None and (kept.median, kept.min, kept.max) == pytest.approx(
        (0.8, 0.75, 0.9))
    rel = bs.ratios(r)["l2bridge"]["tcp1_loss1_retained"]
    assert rel is not None
    assert (rel.median, rel.min, rel.max, rel.n) == pytest.approx((1.25, 1.0, 1.8, 3))
    assert bs.ratios(r)["vxlan"]["tcp1_loss1_retained"] == bs.Summary(1.0, 1.0, 1.0, 3)
    # variants without a lossy twin: no figure rather than zero
    assert bs.summaries(r)["insecure"]["tcp1_loss1_retained"] is None
    assert bs.ratios(r)["direct"]["tcp1_loss1_retained"] is None
    assert "tcp1_loss1_retained" in bs.RATIO_KEYS and bs.LOSSY_VARIANTS == ("l2bridge", "vxlan")


# ---------------------------------------------------------------- targets


def good_round(**over: float | None) -> bs.BenchResult:
    """One round in which encrypted l2bridge meets every target (some exactly)."""
    l2b: dict[str, float | None] = {
        "tcp1_mbit_s": 2000, "tcp4_mbit_s": 2500, "udp64_fps": 60_000, "rtt_avg_ms": 0.19,
        "daemon_cpu_s_per_gb": 8.0, "daemon_rss_peak_mib": 40.0, "tcp1_loss1_retained": 0.7}
    l2b.update(over)
    return result_of({"l2bridge": [l2b], "insecure": [{}],
                      "vxlan": [{"tcp1_mbit_s": 15000, "tcp1_loss1_retained": 0.7}],
                      "direct": [{"rtt_avg_ms": 0.05}]}, rounds=1)


def verdicts(r: bs.BenchResult) -> dict[str, str]:
    return {c.key: c.verdict for c in bs.targets(r)}


def test_targets_met_including_on_the_bound() -> None:
    checks = bs.targets(good_round())
    assert [c.key for c in checks] == [
        "tcp1_mbit_s", "tcp1_vxlan_ratio", "tcp4_over_tcp1", "udp64_fps", "rtt_avg_added_us",
        "daemon_cpu_s_per_gb", "daemon_rss_peak_mib", "tcp1_loss1_retained"]
    assert all(c.met is True for c in checks), checks
    by_key = {c.key: c for c in checks}
    assert by_key["tcp1_vxlan_ratio"].measured == pytest.approx(2000 / 15000)
    assert by_key["rtt_avg_added_us"].measured == pytest.approx(140.0)
    assert by_key["daemon_cpu_s_per_gb"].measured == 8.0  # exactly the bound: met
    assert by_key["tcp4_over_tcp1"].bound == 2000  # the same run's TCP 1 stream median
    assert by_key["tcp1_loss1_retained"].bound == 0.7  # kernel VXLAN's, same run


def test_targets_not_met() -> None:
    v = verdicts(good_round(tcp1_mbit_s=1399, tcp4_mbit_s=1399, udp64_fps=59_999,
                            rtt_avg_ms=0.201, daemon_cpu_s_per_gb=8.01,
                            daemon_rss_peak_mib=60.5, tcp1_loss1_retained=0.69))
    assert v == dict.fromkeys(v, bs.NOT_MET)  # TCP 4 = TCP 1 is not "higher"
    v = verdicts(good_round(tcp1_mbit_s=1400, tcp4_mbit_s=1401))
    assert v["tcp1_mbit_s"] == v["tcp4_over_tcp1"] == bs.MET
    assert v["tcp1_vxlan_ratio"] == bs.NOT_MET  # 1400 / 15000 < 0.10


def test_targets_not_measured_is_neither_met_nor_failed() -> None:
    r = good_round(tcp1_mbit_s=None, daemon_rss_peak_mib=None)
    r.samples[2].metrics["tcp1_loss1_retained"] = None  # kernel VXLAN's lossy run failed
    checks = {c.key: c for c in bs.targets(r)}
    for key in ("tcp1_mbit_s", "tcp1_vxlan_ratio", "tcp4_over_tcp1", "daemon_rss_peak_mib",
                "tcp1_loss1_retained"):
        assert checks[key].met is None and checks[key].verdict == "not measured", key
    assert checks["udp64_fps"].verdict == "met"


def test_ratios_pair_each_round_with_the_reference_of_that_round() -> None:
    r = three_rounds()
    tcp1 = bs.ratios(r)["l2bridge"]["tcp1_mbit_s"]
    assert tcp1 is not None
    assert (tcp1.median, tcp1.min, tcp1.max, tcp1.n) == pytest.approx((0.04, 0.025, 0.06, 3))
    ins = bs.ratios(r)["insecure"]["tcp1_mbit_s"]
    assert ins is not None and ins.n == 2  # round 2 failed: left out, not zero
    assert ins.median == pytest.approx((0.07 + 0.16) / 2)
    ref = bs.ratios(r)["vxlan"]["tcp1_mbit_s"]
    assert ref is not None and (ref.min, ref.max) == (1.0, 1.0)
    assert bs.ratios(r)["l2bridge"]["udp64_fps"] is None
    assert bs.headline(r, "l2bridge", "tcp1_mbit_s") == pytest.approx(0.04)


def test_added_latency_is_against_the_direct_veth_of_the_same_round() -> None:
    lat = bs.added_latency(three_rounds())
    avg = lat["l2bridge"]["rtt_avg_added_us"]
    assert avg is not None
    assert (avg.median, avg.min, avg.max) == pytest.approx((850.0, 740.0, 950.0))
    p99 = lat["l2bridge"]["rtt_p99_added_us"]
    assert p99 is not None and p99.median == pytest.approx(1100.0)
    vx = lat["vxlan"]["rtt_avg_added_us"]
    assert vx is not None and vx.median == pytest.approx(80.0)
    assert lat["vxlan"]["rtt_p99_added_us"] is None
    direct = lat["direct"]["rtt_avg_added_us"]
    assert direct is not None and direct.median == 0.0


# ---------------------------------------------------------------- rendering


def test_numbers_and_cells() -> None:
    assert [bs.fmt_number(x) for x in (16543.2, 291.4, 45.67, 4.523, 0.0371, 0.0042, 0.0)] == [
        "16543", "291", "45.7", "4.52", "0.037", "0.0042", "0.000"]
    assert bs.fmt_summary(None) == "-"
    assert bs.fmt_summary(bs.Summary(0.04, 0.025, 0.06, 3)) == "0.040 (0.025–0.060)"
    assert bs.fmt_summary(bs.Summary(445.0, 445.0, 445.0, 1)) == "445"
    assert bs.fmt_summary(bs.Summary(850.0, 740.0, 950.0, 3), signed=True) == "+850 (740–950)"


def test_table_headline_then_absolute_numbers() -> None:
    r = three_rounds()
    r.errors.append("round 2 insecure tcp1: iperf3 ...: no result within 12 s")
    text = bs.format_table(r)
    lines = text.splitlines()
    assert lines[0].startswith("l2bridge lab bench: 3 rounds, variants interleaved")
    assert lines[1] == "iperf3 5 s per run, UDP payload 64 B, 200 pings at 10 ms, WAN MTU 1600"
    header = next(line for line in lines if line.startswith(" ") and "kernel VXLAN" in line)
    assert header.split() == ["l2bridge", "l2bridge", "insecure", "kernel", "VXLAN", "direct",
                              "veth"] and header.startswith(" ")  # first column: the metric
    row = next(line for line in lines if line.startswith("TCP 1 stream / VXLAN"))
    assert "0.040 (0.025–0.060)" in row and "1.00 (1.00–1.00)" in row
    row = next(line for line in lines if line.startswith("RTT avg added (µs)"))
    assert "+850 (740–950)" in row and "+80.0 (70.0–80.0)" in row
    absolute = lines.index(next(line for line in lines if line.startswith("Absolute")))
    assert "machine-dependent: cpus 2, kernel 6.1" in lines[absolute]
    row = next(line for line in lines if line.startswith("TCP 1 stream (Mbit/s)"))
    assert row.split()[4:] == ["400", "(300–500)", "750", "(700–800)", "10000", "(5000–20000)",
                               "15000", "(14000–16000)"]
    row = next(line for line in lines if line.startswith("daemon CPU (s per GB)"))
    assert "22.5 (20.0–25.0)" in row and row.rstrip().endswith("-")
    row = next(line for line in lines if line.startswith("TCP 1 stream kept at 1% loss (lossy"))
    assert lines.index(row) < absolute  # a same-run ratio: the relative table
    assert row.split()[10:] == ["0.800", "(0.750–0.900)", "-", "0.600", "(0.500–0.800)", "-"]
    row = next(line for line in lines if line.startswith("TCP 1 stream kept at 1% loss / VXLAN"))
    assert "1.25 (1.00–1.80)" in row
    row = next(line for line in lines if line.startswith("TCP 1 stream, 1% WAN loss (Mbit/s)"))
    assert lines.index(row) > absolute and "300 (240–450)" in row
    targets = lines.index("Targets: l2bridge (encrypted), medians of this run")
    assert lines[targets + 1].split() == ["measured", "target", "verdict"]
    got = {line[:30].strip(): line[30:].split("  ") for line in lines[targets + 3:targets + 11]}
    cells = {k: [c.strip() for c in v if c.strip()] for k, v in got.items()}
    assert cells == {
        "TCP 1 stream": ["400 Mbit/s", "≥ 1400 Mbit/s", "NOT met"],
        "TCP 1 stream / VXLAN": ["0.040", "≥ 0.100", "NOT met"],
        "TCP 4 streams": ["-", "> 400 Mbit/s (TCP 1 stream)", "not measured"],
        "UDP 64 B received": ["-", "≥ 60000 frames/s", "not measured"],
        "RTT avg added over direct": ["+850 µs", "≤ 150 µs", "NOT met"],
        "daemon CPU": ["22.5 s per GB", "≤ 8.00 s per GB", "NOT met"],
        "daemon peak RSS": ["-", "≤ 60.0 MiB", "not measured"],
        "TCP 1 stream kept at 1% loss": ["0.800", "≥ 0.600 (kernel VXLAN)", "met"],
    }
    assert "1 measurement(s) failed:" in text and "round 2 insecure tcp1" in text
    assert lines[-1] == "done in 12.3 s"


def test_json_carries_everything() -> None:
    r = three_rounds()
    r.labs = ["l2b00001", "l2b00002"]
    doc = json.loads(bs.to_json(r))
    assert doc["settings"]["rounds"] == 3 and doc["settings"]["udp_payload_bytes"] == 64
    assert doc["reference"] == "vxlan" and doc["baseline"] == "direct"
    assert doc["ratios_to_reference"]["l2bridge"]["tcp1_mbit_s"] == {
        "median": 0.04, "min": 0.025, "max": 0.06, "n": 3}
    assert doc["added_latency_over_baseline"]["l2bridge"]["rtt_avg_added_us"]["median"] == 850
    assert doc["summaries"]["vxlan"]["daemon_cpu_s_per_gb"] is None
    assert doc["summaries"]["l2bridge"]["tcp1_mbit_s"]["median"] == 400
    assert len(doc["samples"]) == 12
    assert doc["samples"][0]["variant"] == "l2bridge"
    assert doc["labs"] == ["l2b00001", "l2b00002"]
    assert doc["machine"] == {"cpus": 2, "kernel": "6.1"}
    assert doc["settings"]["wan_loss_percent"] == 1.0
    assert doc["settings"]["lossy_variants"] == ["l2bridge", "vxlan"]
    assert doc["summaries"]["l2bridge"]["tcp1_loss1_retained"]["median"] == 0.8
    assert doc["ratios_to_reference"]["l2bridge"]["tcp1_loss1_retained"]["median"] == 1.25
    assert len(doc["targets"]) == 8
    assert doc["targets"][-1] == {
        "key": "tcp1_loss1_retained", "title": "TCP 1 stream kept at 1% loss",
        "measured": 0.8, "op": ">=", "target": 0.6, "unit": "", "against": "kernel VXLAN",
        "met": True}
    assert doc["targets"][0]["met"] is False and doc["targets"][2]["met"] is None


# ---------------------------------------------------------------- options and plan


def test_settings() -> None:
    assert bs.make_settings() == bs.Settings(rounds=3, seconds=5.0, pings=200, quick=False)
    quick = bs.make_settings(quick=True)
    assert (quick.rounds, quick.seconds, quick.pings, quick.quick) == (1, 2.0, 50, True)
    assert bs.make_settings(quick=True, rounds=2, seconds=1).rounds == 2
    with pytest.raises(ValueError, match=r"--rounds: expected 1\.\.20, found 0"):
        bs.make_settings(rounds=0)
    with pytest.raises(ValueError, match=r"--seconds: expected 1\.\.60, found 0\.5"):
        bs.make_settings(seconds=0.5)
    assert bs.make_settings(workers=2).workers == 2
    with pytest.raises(ValueError, match=rf"--workers: expected 1\.\.{MAX_WORKERS}, found 0"):
        bs.make_settings(workers=0)


def test_bench_scenario_gives_every_gateway_its_workers() -> None:
    sites = bench.bench_scenario(workers=2).sites
    assert [dict(site.l2bridge) for site in sites] == [{"workers": 2}, {"workers": 2}]
    assert [dict(site.l2bridge) for site in bench.bench_scenario().sites] == [{}, {}]
    both = bench.bench_scenario(workers=2, low_latency=True).sites
    assert [dict(site.l2bridge) for site in both] == [{"workers": 2, "low_latency": True}] * 2


def test_round_order_rotates() -> None:
    assert bench.round_order(0) == ["l2bridge", "insecure", "vxlan", "direct"]
    assert bench.round_order(1) == ["insecure", "vxlan", "direct", "l2bridge"]
    assert bench.round_order(4) == bench.round_order(0)


def test_lossy_scenario_loses_one_percent_each_way_on_the_path() -> None:
    scenario = bench.bench_scenario(loss_percent=bs.WAN_LOSS_PERCENT)
    assert scenario.name == "bench-lossy" and not scenario.insecure
    # only the west link: a frame between the sites crosses it once, in either direction
    assert scenario.link("west").loss_percent == 1.0
    assert scenario.link("west").loss_pattern == "random"
    assert scenario.link("east").loss_percent == 0.0
    assert scenario.link("west").mtu == scenario.link("east").mtu == 1600
    for gateway in ("l2bridge", "vxlan"):
        plan = make_plan(scenario, prefix="l2b00000", gateway=gateway)
        assert plan.nodes["east.h1"].ip == "10.77.2.1"
    assert bench.bench_scenario().link("west").loss_percent == 0.0


def test_measurements_of_a_round() -> None:
    steps = bench.measurements()
    assert [name for name, _, _ in steps] == ["ping", "tcp1", "tcp1_loss1", "tcp4", "udp64"]
    lab = bench.Lab.__new__(bench.Lab)  # never opened: choosing the steps touches no lab
    plain = bench.Variant("direct", lab, "a", "b", "10.78.0.2")
    twin = bench.Variant("vxlan 1% loss", lab, "c", "d", "10.77.2.1")
    with_twin = bench.Variant("vxlan", lab, "e", "f", "10.77.2.1", lossy=twin)
    applies = {name: pred for name, _, pred in steps}
    assert applies["tcp1_loss1"](with_twin) and not applies["tcp1_loss1"](plain)
    assert all(applies[n](plain) for n in ("ping", "tcp1", "tcp4", "udp64"))
    assert bench.all_paths([with_twin, plain]) == [with_twin, twin, plain]


def test_scenario_is_two_sites_with_one_host_and_a_vxlan_sized_wan() -> None:
    for insecure in (False, True):
        scenario = bench.bench_scenario(insecure=insecure)
        assert [s.name for s in scenario.sites] == ["west", "east"]
        assert all(len(s.hosts) == 1 for s in scenario.sites) and not scenario.checks
        assert scenario.insecure is insecure and scenario.wan.mtu == 1600
    plan = make_plan(bench.bench_scenario(), prefix="l2b00000", gateway="vxlan")
    assert plan.nodes["east.h1"].ip == "10.77.2.1"
    assert make_plan(bench.bench_scenario(), prefix="l2b00000").site("west").private_key
    assert "insecure = true" in make_plan(bench.bench_scenario(insecure=True),
                                          prefix="l2b00000").site("west").config_text


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"json": False, "plot": None, "rounds": None, "seconds": None,
                               "quick": False, "workers": 1, "low_latency": False,
                               "transports": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_command_rejects_bad_options_before_anything_runs(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    def runner(body: object) -> int:
        raise AssertionError("must not run")

    assert bench.cmd_bench(args(rounds=50), runner) == bench.EXIT_USAGE
    assert capsys.readouterr().err.strip() == "--rounds: expected 1..20, found 50"
    if not bench.plot_available():
        assert bench.cmd_bench(args(plot="/tmp/x.png"), runner) == bench.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert err == ("--plot /tmp/x.png: matplotlib is not installed; install it "
                       "(pip install matplotlib) or leave out --plot")


def test_command_hands_the_measurement_to_the_runner() -> None:
    seen: list[object] = []

    def runner(body: object) -> int:
        seen.append(body)
        return 0

    assert bench.cmd_bench(args(quick=True), runner) == 0
    assert len(seen) == 1 and callable(seen[0])


def test_plot(tmp_path: object) -> None:
    path = f"{tmp_path}/bench.png"
    if bench.plot_available():
        bench.write_plot(three_rounds(), path)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    else:
        with pytest.raises(bench.BenchError, match=r"pip install matplotlib"):
            bench.write_plot(three_rounds(), path)


def test_cli_knows_the_command() -> None:
    from netns import cli

    parsed = cli.build_parser().parse_args(["bench", "--quick", "--json", "--rounds", "2"])
    assert (parsed.command, parsed.quick, parsed.json, parsed.rounds) == ("bench", True, True, 2)


def test_transports_bench_scenarios_set_the_transport_on_every_peer() -> None:
    from netns.bench import transports

    for variant, keys in (("udp", 'transport = "udp"'), ("tcp unbounded", "tcp_send_queue = 0")):
        plan = make_plan(transports.scenario(variant, "lossy"), prefix="l2b00000")
        west = plan.site("west").config_text
        assert keys.split(",")[-1].strip() in west
        assert west.count("transport = ") == 1  # on its one [[peer]], not in [site]
    assert "rate_mbit = 50" not in make_plan(transports.scenario("tcp", "clean"),
                                             prefix="l2b00000").site("west").config_text


def test_transports_table_names_every_wan_and_variant() -> None:
    from netns.bench import transports

    result = transports.Result(transports.Settings(rounds=2, seconds=1))
    result.samples[("tcp", "clean")] = [{"tcp1_mbit_s": 10.0}, {"tcp1_mbit_s": 30.0}]
    table = transports.format_table(result)
    assert "WAN clean" in table and "WAN lossy" in table and "tcp unbounded" in table
    assert "20 (10–30)" in table


def test_transports_takes_only_its_options() -> None:
    out = io.StringIO()
    code = bench.cmd_bench(args(transports=True, workers=2), lambda body: 99, out)
    assert code == 2
