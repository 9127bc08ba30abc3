"""The numbers of ``l2bridge lab bench``: samples, summaries, ratios, table and JSON (pure).

Flow: 1. the runner (``netns/bench.py``) records one ``Sample`` per round and
variant: raw figures (Mbit/s, received frames, per-echo RTTs, CPU seconds, bytes)
2. ``finish_sample`` turns the raw figures of a sample into the reported metrics
(``METRICS``)  3. ``summarize`` gives each metric of each variant its median with
min and max over the rounds  4. ``ratios`` pairs every variant with the reference
(kernel VXLAN) *of the same round* and summarises the per-round ratios;
``added_latency`` does the same against the direct veth as differences  5.
``targets`` holds encrypted l2bridge's medians against the fast path's targets
6. ``format_table`` and ``result_doc`` render it.

Invariants: a metric a variant cannot have (the daemon CPU of kernel VXLAN, the
lossy-WAN figure of the insecure variant) or a measurement that failed is
``None``, never 0, and is left out of its summary; ratios are only formed within
one round (``tcp1_loss1_retained`` within one sample: the lossy and the lossless
run of the same variant in the same round); nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2bridge.core.caps import MAX_WORKERS
from netns.checks.report import columns

# The variants, in the order of the table.  "vxlan" is the reference of the ratios,
# "direct" the baseline of the added latency.
VARIANTS = ("l2bridge", "insecure", "vxlan", "direct")
VARIANT_TITLES = {
    "l2bridge": "l2bridge",
    "insecure": "l2bridge insecure",
    "vxlan": "kernel VXLAN",
    "direct": "direct veth",
}
REFERENCE = "vxlan"
BASELINE = "direct"

BYTES_PER_GB = 1e9
BYTES_PER_MIB = 1024 * 1024
US_PER_MS = 1000.0
P99 = 99.0

# Full and quick runs (see docs/bench.md).
DEFAULT_ROUNDS = 3
DEFAULT_SECONDS = 5.0  # each iperf3 run
DEFAULT_PINGS = 200
QUICK_SECONDS = 2.0
QUICK_PINGS = 50
PING_INTERVAL_S = 0.01
UDP_PAYLOAD_BYTES = 64
# The lossy WAN: random loss on the path between the sites, in each direction.
WAN_LOSS_PERCENT = 1.0
LOSSY_VARIANTS = ("l2bridge", "vxlan")  # measured again through a lossy twin of their lab
MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
MAX_ROUNDS = 20


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    title: str
    ratio: bool = False  # headline: ratio to the reference in the same round
    relative: bool = False  # already a same-run ratio: shown in the relative table only


METRICS = (
    Metric("tcp1_mbit_s", "TCP 1 stream (Mbit/s)", ratio=True),
    Metric("tcp4_mbit_s", "TCP 4 streams (Mbit/s)", ratio=True),
    Metric("udp64_fps", f"UDP {UDP_PAYLOAD_BYTES} B received (frames/s)", ratio=True),
    Metric("tcp1_loss1_mbit_s", f"TCP 1 stream, {WAN_LOSS_PERCENT:g}% WAN loss (Mbit/s)"),
    Metric("tcp1_loss1_retained",
           f"TCP 1 stream kept at {WAN_LOSS_PERCENT:g}% loss (lossy / lossless)",
           ratio=True, relative=True),
    Metric("udp64_loss_percent", f"UDP {UDP_PAYLOAD_BYTES} B loss (%)"),
    Metric("rtt_avg_ms", "ping RTT avg (ms)"),
    Metric("rtt_p99_ms", "ping RTT p99 (ms)"),
    Metric("daemon_cpu_s_per_gb", "daemon CPU (s per GB)"),
    Metric("machine_cpu_s_per_gb", "machine CPU (s per GB)"),
    Metric("daemon_rss_peak_mib", "daemon peak RSS (MiB)"),
)
METRIC_KEYS = tuple(m.key for m in METRICS)
RATIO_KEYS = tuple(m.key for m in METRICS if m.ratio)
LATENCY_KEYS = {"rtt_avg_ms": "rtt_avg_added_us", "rtt_p99_ms": "rtt_p99_added_us"}


@dataclass(frozen=True, slots=True)
class Settings:
    """What one bench run does; ``make_settings`` validates user input."""

    rounds: int = DEFAULT_ROUNDS
    seconds: float = DEFAULT_SECONDS
    pings: int = DEFAULT_PINGS
    quick: bool = False
    wan_mtu: int = 1600
    workers: int = 1  # worker processes of each l2bridge gateway
    low_latency: bool = False  # the gateways hold CPU wake-up latency at 0 (machine-wide)


def make_settings(*, quick: bool = False, rounds: int | None = None,
                  seconds: float | None = None, workers: int = 1,
                  low_latency: bool = False) -> Settings:
    """Settings from the command line; ``ValueError`` (one line, option named) when out of range.

    ``--quick`` means one round of short runs; an explicit ``--rounds`` or
    ``--seconds`` still wins.
    """
    chosen_rounds = rounds if rounds is not None else (1 if quick else DEFAULT_ROUNDS)
    chosen_seconds = seconds if seconds is not None else (
        QUICK_SECONDS if quick else DEFAULT_SECONDS)
    if not 1 <= chosen_rounds <= MAX_ROUNDS:
        raise ValueError(f"--rounds: expected 1..{MAX_ROUNDS}, found {chosen_rounds}")
    if not MIN_SECONDS <= chosen_seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds: expected {MIN_SECONDS:g}..{MAX_SECONDS:g}, "
                         f"found {chosen_seconds:g}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers: expected 1..{MAX_WORKERS}, found {workers}")
    return Settings(rounds=chosen_rounds, seconds=chosen_seconds,
                    pings=QUICK_PINGS if quick else DEFAULT_PINGS, quick=quick, workers=workers,
                    low_latency=low_latency)


@dataclass
class Sample:
    """One variant in one round: raw figures as measured, then the metrics derived."""

    round: int
    variant: str
    raw: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"median": _round(self.median), "min": _round(self.min),
                "max": _round(self.max), "n": self.n}


@dataclass
class BenchResult:
    settings: Settings
    samples: list[Sample]
    errors: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    labs: list[str] = field(default_factory=list)  # the lab prefixes the run created

    def sample(self, rnd: int, variant: str) -> Sample | None:
        return next((s for s in self.samples if s.round == rnd and s.variant == variant), None)

    def values(self, variant: str, key: str) -> list[float | None]:
        return [s.metrics.get(key) for s in self.samples if s.variant == variant]


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct`` % at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(values: Sequence[float | None]) -> Summary | None:
    """Median, min and max of the values measured (``None`` = not measured, left out)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Summary(statistics.median(present), min(present), max(present), len(present))


_PING_TIME = re.compile(r"\btime[=<]([\d.]+) ?ms\b")


def parse_ping_times(output: str) -> list[float]:
    """Every echo's round-trip time in ms from iputils ping output (``time=0.045 ms``)."""
    return [float(m) for m in _PING_TIME.findall(output)]


def udp_received(doc: Mapping[str, Any]) -> tuple[float, float]:
    """(frames received per second, loss %) from an iperf3 UDP client ``--json`` document."""
    end = doc.get("end") or {}
    got = end.get("sum_received") or end.get("sum") or {}
    packets = int(got.get("packets", 0))
    lost = int(got.get("lost_packets", 0))
    seconds = float(got.get("seconds") or 0.0)
    if seconds <= 0:
        raise ValueError("iperf3 UDP result without a duration")
    loss = float(got.get("lost_percent", 100.0 * lost / packets if packets else 0.0))
    return max(0, packets - lost) / seconds, loss


def per_gb(seconds: float | None, nbytes: float | None) -> float | None:
    """CPU seconds per 10^9 bytes moved; ``None`` when either is unknown or nothing moved."""
    if seconds is None or not nbytes:
        return None
    return seconds / (nbytes / BYTES_PER_GB)


def retained(lossy: float | None, lossless: float | None) -> float | None:
    """The share of the lossless goodput kept under loss; ``None`` unless both were measured."""
    if lossy is None or not lossless:
        return None
    return lossy / lossless


def finish_sample(sample: Sample) -> Sample:
    """Derive the reported metrics from ``sample.raw`` (missing raw figures give ``None``).

    Raw keys: ``tcp1_mbit_s``, ``tcp4_mbit_s``, ``udp64_fps``, ``udp64_loss_percent``,
    ``tcp1_loss1_mbit_s`` (the lossy twin's run; only ``LOSSY_VARIANTS``),
    ``rtt_ms`` (list), ``tcp_bytes``, ``daemon_cpu_s``, ``machine_cpu_s`` (both over the
    lossless TCP runs; ``daemon_cpu_s`` absent when the variant has no daemon),
    ``daemon_rss_peak_kib``.  ``tcp1_loss1_retained`` is the lossy over the lossless
    single-stream figure of this sample.
    """
    raw = sample.raw
    m: dict[str, float | None] = {k: raw.get(k) for k in
                                  ("tcp1_mbit_s", "tcp4_mbit_s", "udp64_fps",
                                   "udp64_loss_percent", "tcp1_loss1_mbit_s")}
    m["tcp1_loss1_retained"] = retained(raw.get("tcp1_loss1_mbit_s"), raw.get("tcp1_mbit_s"))
    rtts = raw.get("rtt_ms") or []
    m["rtt_avg_ms"] = statistics.fmean(rtts) if rtts else None
    m["rtt_p99_ms"] = percentile(rtts, P99) if rtts else None
    m["daemon_cpu_s_per_gb"] = per_gb(raw.get("daemon_cpu_s"), raw.get("tcp_bytes"))
    m["machine_cpu_s_per_gb"] = per_gb(raw.get("machine_cpu_s"), raw.get("tcp_bytes"))
    rss = raw.get("daemon_rss_peak_kib")
    m["daemon_rss_peak_mib"] = rss * 1024 / BYTES_PER_MIB if rss is not None else None
    sample.metrics = m
    return sample


def summaries(result: BenchResult) -> dict[str, dict[str, Summary | None]]:
    """variant → metric → summary over the rounds."""
    return {v: {k: summarize(result.values(v, k)) for k in METRIC_KEYS} for v in VARIANTS}


def ratios(result: BenchResult) -> dict[str, dict[str, Summary | None]]:
    """variant → throughput metric → summary of (variant / reference) paired per round."""
    out: dict[str, dict[str, Summary | None]] = {}
    for v in VARIANTS:
        out[v] = {}
        for key in RATIO_KEYS:
            pairs = []
            for rnd in range(result.settings.rounds):
                mine, ref = result.sample(rnd, v), result.sample(rnd, REFERENCE)
                a = mine.metrics.get(key) if mine else None
                b = ref.metrics.get(key) if ref else None
                pairs.append(a / b if a is not None and b else None)
            out[v][key] = summarize(pairs)
    return out


def added_latency(result: BenchResult) -> dict[str, dict[str, Summary | None]]:
    """variant → ``rtt_avg_added_us`` / ``rtt_p99_added_us``: RTT minus the direct veth's
    in the same round, in µs."""
    out: dict[str, dict[str, Summary | None]] = {}
    for v in VARIANTS:
        out[v] = {}
        for key, added in LATENCY_KEYS.items():
            diffs = []
            for rnd in range(result.settings.rounds):
                mine, base = result.sample(rnd, v), result.sample(rnd, BASELINE)
                a = mine.metrics.get(key) if mine else None
                b = base.metrics.get(key) if base else None
                diffs.append((a - b) * US_PER_MS if a is not None and b is not None else None)
            out[v][added] = summarize(diffs)
    return out


def headline(result: BenchResult, variant: str, key: str) -> float | None:
    """The median ratio of ``variant``'s ``key`` to the reference (the regression guard's)."""
    s = ratios(result)[variant].get(key)
    return s.median if s else None


# ---------------------------------------------------------------- targets

# The fast path's targets for encrypted l2bridge on the 2-core VM (issue 5).
TARGET_VARIANT = "l2bridge"
TARGET_TCP1_MBIT_S = 1400.0  # 3 × OpenVPN tap's 0.45 Gbit/s
TARGET_TCP1_VXLAN_RATIO = 0.10
TARGET_UDP64_FPS = 60_000.0
TARGET_RTT_ADDED_US = 150.0
TARGET_DAEMON_CPU_S_PER_GB = 8.0
TARGET_RSS_MIB = 60.0

OPS = {">=": "≥", "<=": "≤", ">": ">"}
MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One target: the measured median, the bound, and whether it holds.

    ``bound`` is a fixed number or, when ``against`` names it, a median of the same
    run (TCP 4 streams against TCP 1 stream, the loss figure against kernel VXLAN's).
    """

    key: str
    title: str
    measured: float | None
    op: str  # ">=", "<=" or ">"
    bound: float | None
    unit: str = ""
    against: str | None = None
    signed: bool = False  # the measured figure is a difference (shown with its sign)

    @property
    def met(self) -> bool | None:
        """True / False; ``None`` when the figure or its bound was not measured."""
        if self.measured is None or self.bound is None:
            return None
        if self.op == ">=":
            return self.measured >= self.bound
        if self.op == "<=":
            return self.measured <= self.bound
        return self.measured > self.bound

    @property
    def verdict(self) -> str:
        return {True: MET, False: NOT_MET, None: NOT_MEASURED}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "measured": _round(self.measured),
                "op": self.op, "target": _round(self.bound), "unit": self.unit,
                "against": self.against, "met": self.met}


def targets(result: BenchResult) -> list[TargetCheck]:
    """Encrypted l2bridge's medians of this run against each target, in the issue's order."""
    v = TARGET_VARIANT
    summ, rat, lat = summaries(result), ratios(result), added_latency(result)

    def med(s: Summary | None) -> float | None:
        return s.median if s else None

    loss = f"TCP 1 stream kept at {WAN_LOSS_PERCENT:g}% loss"
    return [
        TargetCheck("tcp1_mbit_s", "TCP 1 stream", med(summ[v]["tcp1_mbit_s"]), ">=",
                    TARGET_TCP1_MBIT_S, "Mbit/s"),
        TargetCheck("tcp1_vxlan_ratio", "TCP 1 stream / VXLAN", med(rat[v]["tcp1_mbit_s"]),
                    ">=", TARGET_TCP1_VXLAN_RATIO),
        TargetCheck("tcp4_over_tcp1", "TCP 4 streams", med(summ[v]["tcp4_mbit_s"]), ">",
                    med(summ[v]["tcp1_mbit_s"]), "Mbit/s", against="TCP 1 stream"),
        TargetCheck("udp64_fps", f"UDP {UDP_PAYLOAD_BYTES} B received",
                    med(summ[v]["udp64_fps"]), ">=", TARGET_UDP64_FPS, "frames/s"),
        TargetCheck("rtt_avg_added_us", "RTT avg added over direct",
                    med(lat[v]["rtt_avg_added_us"]), "<=", TARGET_RTT_ADDED_US, "µs",
                    signed=True),
        TargetCheck("daemon_cpu_s_per_gb", "daemon CPU", med(summ[v]["daemon_cpu_s_per_gb"]),
                    "<=", TARGET_DAEMON_CPU_S_PER_GB, "s per GB"),
        TargetCheck("daemon_rss_peak_mib", "daemon peak RSS",
                    med(summ[v]["daemon_rss_peak_mib"]), "<=", TARGET_RSS_MIB, "MiB"),
        TargetCheck("tcp1_loss1_retained", loss, med(summ[v]["tcp1_loss1_retained"]), ">=",
                    med(summ[REFERENCE]["tcp1_loss1_retained"]),
                    against=VARIANT_TITLES[REFERENCE]),
    ]


# ---------------------------------------------------------------- rendering


def fmt_number(x: float) -> str:
    """About three significant digits, no exponent: 16500, 291, 4.52, 0.021."""
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01 or a == 0:
        return f"{x:.3f}"
    return f"{x:.2g}"


def fmt_summary(s: Summary | None, *, signed: bool = False) -> str:
    """``median (min–max)``; only the median for one value; ``-`` for none."""
    if s is None:
        return "-"
    text = fmt_number(s.median)
    if signed and s.median >= 0:
        text = "+" + text
    if s.n > 1:
        text += f" ({fmt_number(s.min)}–{fmt_number(s.max)})"
    return text


def format_targets(checks: Sequence[TargetCheck]) -> list[str]:
    """The targets as table lines: figure, measured, target, verdict."""
    def cell(x: float | None, unit: str, *, signed: bool = False) -> str:
        if x is None:
            return "-"
        text = ("+" if signed and x >= 0 else "") + fmt_number(x)
        return f"{text} {unit}" if unit else text

    rows: list[tuple[str, ...]] = [("", "measured", "target", "verdict")]
    for c in checks:
        bound = f"{OPS[c.op]} {cell(c.bound, c.unit)}"
        if c.against:
            bound += f" ({c.against})"
        rows.append((c.title, cell(c.measured, c.unit, signed=c.signed), bound, c.verdict))
    return columns(rows)


def format_table(result: BenchResult) -> str:
    """The headline table (ratios and added latency), the absolute table, the targets,
    then the errors."""
    st = result.settings
    lines = [
        f"l2bridge lab bench: {st.rounds} round{'s' if st.rounds != 1 else ''}"
        f"{' (quick)' if st.quick else ''}, variants interleaved; median (min–max) over rounds",
        f"iperf3 {st.seconds:g} s per run, UDP payload {UDP_PAYLOAD_BYTES} B, {st.pings} pings "
        f"at {PING_INTERVAL_S * 1000:g} ms, WAN MTU {st.wan_mtu}",
        "",
        "Same run, relative: throughput as a ratio to kernel VXLAN, latency added over the "
        "direct veth",
    ]
    head = ("", *(VARIANT_TITLES[v] for v in VARIANTS))
    rat = ratios(result)
    lat = added_latency(result)
    summ = summaries(result)
    rows: list[tuple[str, ...]] = [head]
    for m in METRICS:
        if m.relative:
            rows.append((m.title, *(fmt_summary(summ[v][m.key]) for v in VARIANTS)))
        if m.ratio:
            title = m.title.split(" (")[0] + " / VXLAN"
            rows.append((title, *(fmt_summary(rat[v][m.key]) for v in VARIANTS)))
    rows.append(("RTT avg added (µs)",
                 *(fmt_summary(lat[v]["rtt_avg_added_us"], signed=True) for v in VARIANTS)))
    rows.append(("RTT p99 added (µs)",
                 *(fmt_summary(lat[v]["rtt_p99_added_us"], signed=True) for v in VARIANTS)))
    lines += columns(rows)
    machine = result.machine
    where = ", ".join(f"{k} {v}" for k, v in machine.items() if k in ("cpus", "kernel"))
    lines += ["", f"Absolute (machine-dependent{': ' + where if where else ''})"]
    rows = [head]
    for m in METRICS:
        if not m.relative:
            rows.append((m.title, *(fmt_summary(summ[v][m.key]) for v in VARIANTS)))
    lines += columns(rows)
    lines += ["", "Daemon figures are the l2bridge processes in both gateway namespaces "
                  "(CPU over the lossless TCP runs); machine CPU counts every process and "
                  "the kernel.",
              f"{WAN_LOSS_PERCENT:g}% WAN loss: a twin of the lab dropping "
              f"{WAN_LOSS_PERCENT:g}% of the packets at random in each direction between "
              "the sites, same round."]
    lines += ["", f"Targets: {VARIANT_TITLES[TARGET_VARIANT]} (encrypted), medians of this "
                  "run"]
    lines += format_targets(targets(result))
    if result.errors:
        lines += ["", f"{len(result.errors)} measurement(s) failed:"]
        lines += [f"  {e}" for e in result.errors]
    lines.append(f"done in {result.elapsed_s:.1f} s")
    return "\n".join(lines) + "\n"


def result_doc(result: BenchResult) -> dict[str, Any]:
    """Everything as plain JSON types: settings, summaries, ratios, latency, targets,
    samples."""
    def block(d: dict[str, dict[str, Summary | None]]) -> dict[str, Any]:
        return {v: {k: (s.as_dict() if s else None) for k, s in per.items()}
                for v, per in d.items()}

    st = result.settings
    return {
        "settings": {"rounds": st.rounds, "seconds": st.seconds, "pings": st.pings,
                     "ping_interval_s": PING_INTERVAL_S, "quick": st.quick,
                     "wan_mtu": st.wan_mtu, "udp_payload_bytes": UDP_PAYLOAD_BYTES,
                     "workers": st.workers, "low_latency": st.low_latency,
                     "wan_loss_percent": WAN_LOSS_PERCENT,
                     "lossy_variants": list(LOSSY_VARIANTS)},
        "variants": {v: VARIANT_TITLES[v] for v in VARIANTS},
        "reference": REFERENCE,
        "baseline": BASELINE,
        "machine": result.machine,
        "ratios_to_reference": block(ratios(result)),
        "added_latency_over_baseline": block(added_latency(result)),
        "summaries": block(summaries(result)),
        "targets": [c.as_dict() for c in targets(result)],
        "samples": [{"round": s.round, "variant": s.variant,
                     "metrics": {k: _round(v) for k, v in s.metrics.items()},
                     "raw": _round_tree(s.raw)} for s in result.samples],
        "errors": list(result.errors),
        "labs": list(result.labs),
        "elapsed_s": round(result.elapsed_s, 3),
    }


def to_json(result: BenchResult) -> str:
    return json.dumps(result_doc(result), indent=2, ensure_ascii=False) + "\n"


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def _round_tree(value: Any) -> Any:
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, list):
        return [_round_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _round_tree(v) for k, v in value.items()}
    return value
