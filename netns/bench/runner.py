"""``l2bridge lab bench``: encrypted l2bridge, insecure l2bridge, kernel VXLAN and a direct
veth, measured in the same run, interleaved.

Topology: a generated two-site scenario (sites ``west`` and ``east``, one host
``h1`` each, WAN MTU 1600 so VXLAN carries full 1500-byte frames unfragmented),
brought up five times with ``open_lab``: l2bridge gateways (encrypted, the
default), l2bridge gateways with ``insecure = true``, kernel VXLAN gateways, and
a lossy twin of the encrypted and of the VXLAN lab whose west WAN link has
``loss_percent = 1``.  The lab applies a link's loss to both directions of that
link, and a frame between the two sites crosses the west link exactly once, so
the path loses 1% each way (loss on both links would make it about 2%).  The
"direct" reference is one more veth (``bench0``, 10.78.0.1/24 ↔ 10.78.0.2/24)
between the two host namespaces of the VXLAN lab: the same hosts, no tunnel.

Flow: 1. open the five labs (all kept up for the whole run; idle daemons only
send a keepalive a second) and add the direct veth  2. warm up: a few pings per
lab (ARP, learning, sessions) — a lab that does not answer fails the run
3. for each round, for each measurement (ping, TCP 1 stream, TCP 1 stream through
the lossy twin, TCP 4 streams, UDP 64-byte payloads), run it on every variant
that has it in turn, the order rotating by one each round, so neighbouring
numbers of different variants are seconds apart and no variant always goes first
4. after each round read the daemons' peak RSS  5. tear the labs down
(``open_lab``'s own teardown, on every exit path)  6. summarise and render
(``netns/benchstats.py``).

CPU accounting: utime+stime of every process in both gateway namespaces (the
daemons; a future multi-process daemon included) and the machine's busy time
from ``/proc/stat``, each read before and after every TCP run, divided by the
bytes iperf3 received (the lossless runs only: the lossy twin's daemons are other
processes, and its figure is goodput alone).  A measurement that fails is recorded
as an error and left out of the summaries; the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from l2bridge.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from netns.bench import stats as bs
from netns.bench import transports
from netns.checks.traffic import TrafficError, iperf3, ping
from netns.describe.scenario import Scenario, parse_scenario
from netns.lab import Lab, LabError, open_lab
from netns.realise.build import netlink
from netns.realise.nsenter import pids_in_netns

WAN_MTU = 1600
DIRECT_IFNAME = "bench0"
DIRECT_ADDRESSES = ("10.78.0.1", "10.78.0.2")
DIRECT_PREFIXLEN = 24
LAN_MTU = 1500
WARMUP_PINGS = 3
WARMUP_DEADLINE_S = 5.0
PING_GRACE_S = 5.0
IPERF_PORT = 5201
UDP_BITRATE = "0"  # unlimited: the sender offers all it can, the figure is what arrives
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PLOT_PIP = "pip install matplotlib"


Progress = Callable[[str], None]


class BenchError(LabError):
    """The bench could not run (a variant unreachable, a plot not written); one line."""


@dataclass
class Variant:
    """One way from the west host to the east host."""

    name: str
    lab: Lab
    client_ns: str
    server_ns: str
    server_addr: str
    gateway_namespaces: list[str] = field(default_factory=list)  # where daemons run
    lossy: Variant | None = None  # the same gateways over a WAN losing WAN_LOSS_PERCENT


def bench_scenario(*, insecure: bool = False, loss_percent: float = 0.0,
                   workers: int = 1, low_latency: bool = False) -> Scenario:
    """Two sites, one host each, WAN MTU 1600, no checks.

    ``loss_percent`` goes on the west site's link only: the lab drops it in both
    directions of that link, so the path between the sites loses that much each way.
    ``workers`` is each l2bridge gateway's number of worker processes;
    ``low_latency`` has them hold the CPU wake-up latency at 0 (for the whole
    machine, so every variant measured while they run gets it too).
    """
    name = "bench" + ("-insecure" if insecure else "") + ("-lossy" if loss_percent else "")
    west_wan = f"wan = {{ loss_percent = {loss_percent:g} }}\n" if loss_percent else ""
    keys = ([f"workers = {workers}"] if workers != 1 else []) + (
        ["low_latency = true"] if low_latency else [])
    daemon = f"l2bridge = {{ {', '.join(keys)} }}\n" if keys else ""
    text = "\n".join([
        "[lab]",
        f'name = "{name}"',
        f"insecure = {'true' if insecure else 'false'}",
        "[wan]",
        f"mtu = {WAN_MTU}",
        f'[[site]]\nname = "west"\n{west_wan}{daemon}[[site.host]]\nname = "h1"',
        f'[[site]]\nname = "east"\n{daemon}[[site.host]]\nname = "h1"',
    ]) + "\n"
    return parse_scenario(text, "bench.toml")


# ---------------------------------------------------------------- /proc readers


def process_cpu_s(pids: list[int]) -> float:
    """utime + stime of ``pids`` (every thread), seconds; processes gone count 0."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLOCK_TICKS_PER_S


def machine_busy_s() -> float:
    """Busy CPU time of the whole machine (all cores, user + system + irq + softirq), s."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


def peak_rss_kib(pids: list[int]) -> int | None:
    """The largest VmHWM among ``pids``, KiB; ``None`` when none is readable."""
    peaks = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]))
                        break
        except OSError:
            continue
    return max(peaks) if peaks else None


def daemon_pids(v: Variant) -> list[int]:
    return [pid for ns in v.gateway_namespaces for pid in pids_in_netns(ns)]


# ---------------------------------------------------------------- setup


def add_direct_link(lab: Lab) -> str:
    """A veth between the two host namespaces of ``lab``; returns the east end's address.

    Both ends are created inside lab namespaces, so removing the lab removes it."""
    west, east = lab.ns("west.h1"), lab.ns("east.h1")
    with netlink(west) as ipr:
        ipr.link("add", ifname=DIRECT_IFNAME, kind="veth", mtu=LAN_MTU,
                 peer={"ifname": DIRECT_IFNAME, "net_ns_fd": east})
    for ns, addr in zip((west, east), DIRECT_ADDRESSES, strict=True):
        with netlink(ns) as ipr:
            idx = ipr.link_lookup(ifname=DIRECT_IFNAME)[0]
            ipr.link("set", index=idx, mtu=LAN_MTU, state="up")
            ipr.addr("add", index=idx, address=addr, prefixlen=DIRECT_PREFIXLEN)
    return DIRECT_ADDRESSES[1]


def lab_variant(name: str, lab: Lab) -> Variant:
    daemons = [s.gw_ns for s in lab.plan.sites] if lab.plan.gateway == "l2bridge" else []
    return Variant(name=name, lab=lab, client_ns=lab.ns("west.h1"),
                   server_ns=lab.ns("east.h1"), server_addr=lab.node("east.h1").ip,
                   gateway_namespaces=daemons)


async def open_variants(stack: contextlib.AsyncExitStack, settings: bs.Settings,
                        progress: Progress) -> list[Variant]:
    """Bring up the five labs (torn down by ``stack``) and the direct link; in VARIANTS order,
    each of ``bs.LOSSY_VARIANTS`` with its lossy twin attached."""
    workers, low_latency = settings.workers, settings.low_latency
    plain = bench_scenario(workers=workers, low_latency=low_latency)
    insecure = bench_scenario(insecure=True, workers=workers, low_latency=low_latency)
    lossy = bench_scenario(loss_percent=bs.WAN_LOSS_PERCENT, workers=workers,
                           low_latency=low_latency)

    async def up(scenario: Scenario, gateway: str) -> Lab:
        return await stack.enter_async_context(
            open_lab(scenario, gateway=gateway, wan_mtu=settings.wan_mtu, progress=progress))

    enc = await up(plain, "l2bridge")
    ins = await up(insecure, "l2bridge")
    vx = await up(plain, "vxlan")
    direct_addr = add_direct_link(vx)
    direct = Variant(name="direct", lab=vx, client_ns=vx.ns("west.h1"),
                     server_ns=vx.ns("east.h1"), server_addr=direct_addr)
    found = {"l2bridge": lab_variant("l2bridge", enc), "insecure": lab_variant("insecure", ins),
             "vxlan": lab_variant("vxlan", vx), "direct": direct}
    for name in bs.LOSSY_VARIANTS:
        gateway = "vxlan" if name == "vxlan" else "l2bridge"
        found[name].lossy = lab_variant(f"{name} {bs.WAN_LOSS_PERCENT:g}% loss",
                                        await up(lossy, gateway))
    return [found[name] for name in bs.VARIANTS]


def all_paths(variants: list[Variant]) -> list[Variant]:
    """The variants, each followed by its lossy twin when it has one."""
    return [p for v in variants for p in (v, v.lossy) if p is not None]


async def warm_up(variants: list[Variant]) -> None:
    """Every path answers pings (ARP resolved, MACs learned, sessions up) or BenchError.

    A lossy twin is given the same few pings: losing all of them at 1% loss each way
    is a one-in-a-million event, not a property of the path."""
    for v in all_paths(variants):
        result = await ping(v.client_ns, v.server_addr, count=WARMUP_PINGS,
                            interval_s=bs.PING_INTERVAL_S, deadline_s=WARMUP_DEADLINE_S)
        if result.received == 0:
            raise BenchError(f"bench: variant {v.name}: {v.server_addr} does not answer pings "
                             f"from {v.client_ns}; see the lab logs in {v.lab.plan.rundir}")


# ---------------------------------------------------------------- measurements


async def measure_ping(v: Variant, settings: bs.Settings, raw: dict[str, Any]) -> None:
    deadline = settings.pings * bs.PING_INTERVAL_S + PING_GRACE_S
    result = await ping(v.client_ns, v.server_addr, count=settings.pings,
                        interval_s=bs.PING_INTERVAL_S, deadline_s=deadline)
    times = bs.parse_ping_times(result.output)
    if not times:
        raise TrafficError(f"ping {v.client_ns} -> {v.server_addr}: no echo answered")
    raw["rtt_ms"] = times
    raw["ping_sent"] = result.sent


async def measure_tcp(v: Variant, settings: bs.Settings, raw: dict[str, Any],
                      streams: int) -> None:
    pids = daemon_pids(v)
    daemon_before, machine_before = process_cpu_s(pids), machine_busy_s()
    result = await iperf3(v.server_ns, v.server_addr, v.client_ns, seconds=settings.seconds,
                          parallel=streams, port=IPERF_PORT)
    daemon_cpu = process_cpu_s(pids) - daemon_before
    machine_cpu = machine_busy_s() - machine_before
    received = (result.raw.get("end") or {}).get("sum_received") or {}
    raw[f"tcp{streams}_mbit_s"] = result.mbit_s
    raw[f"tcp{streams}_retransmits"] = result.retransmits
    raw["tcp_bytes"] = raw.get("tcp_bytes", 0) + int(received.get("bytes", 0))
    raw["machine_cpu_s"] = raw.get("machine_cpu_s", 0.0) + machine_cpu
    if pids:
        raw["daemon_cpu_s"] = raw.get("daemon_cpu_s", 0.0) + daemon_cpu


async def measure_tcp_lossy(v: Variant, settings: bs.Settings, raw: dict[str, Any]) -> None:
    """TCP 1 stream through ``v``'s lossy twin: goodput only (no CPU, no bytes)."""
    assert v.lossy is not None  # measurements() offers this step to lossy variants only
    lossy = v.lossy
    result = await iperf3(lossy.server_ns, lossy.server_addr, lossy.client_ns,
                          seconds=settings.seconds, parallel=1, port=IPERF_PORT)
    raw["tcp1_loss1_mbit_s"] = result.mbit_s
    raw["tcp1_loss1_retransmits"] = result.retransmits


async def measure_udp(v: Variant, settings: bs.Settings, raw: dict[str, Any]) -> None:
    result = await iperf3(v.server_ns, v.server_addr, v.client_ns, seconds=settings.seconds,
                          udp=True, bitrate=UDP_BITRATE, length=bs.UDP_PAYLOAD_BYTES,
                          port=IPERF_PORT)
    try:
        fps, loss = bs.udp_received(result.raw)
    except (ValueError, TypeError) as e:
        raise TrafficError(f"iperf3 UDP {v.name}: {e}") from None
    raw["udp64_fps"] = fps
    raw["udp64_loss_percent"] = loss


Measurement = Callable[[Variant, bs.Settings, dict[str, Any]], Awaitable[None]]


def _every(v: Variant) -> bool:
    return True


def _has_lossy(v: Variant) -> bool:
    return v.lossy is not None


def measurements() -> list[tuple[str, Measurement, Callable[[Variant], bool]]]:
    """(name, measure, which variants have it), in the order of a round."""
    async def tcp1(v: Variant, s: bs.Settings, raw: dict[str, Any]) -> None:
        await measure_tcp(v, s, raw, 1)

    async def tcp4(v: Variant, s: bs.Settings, raw: dict[str, Any]) -> None:
        await measure_tcp(v, s, raw, 4)

    return [("ping", measure_ping, _every), ("tcp1", tcp1, _every),
            ("tcp1_loss1", measure_tcp_lossy, _has_lossy), ("tcp4", tcp4, _every),
            ("udp64", measure_udp, _every)]


def round_order(rnd: int, names: tuple[str, ...] = bs.VARIANTS) -> list[str]:
    """The variants in round ``rnd``'s order: rotated by one each round."""
    k = rnd % len(names)
    return list(names[k:] + names[:k])


async def run_bench(settings: bs.Settings, progress: Progress | None = None) -> bs.BenchResult:
    """Bring the variants (and their lossy twins) up, measure ``settings.rounds``
    interleaved rounds, tear down."""
    say = progress or (lambda line: None)
    started = time.monotonic()
    result = bs.BenchResult(settings=settings, samples=[], machine=machine_info())
    async with contextlib.AsyncExitStack() as stack:
        variants = await open_variants(stack, settings, say)
        by_name = {v.name: v for v in variants}
        result.labs = list(dict.fromkeys(v.lab.prefix for v in all_paths(variants)))
        await warm_up(variants)
        for rnd in range(settings.rounds):
            samples = {name: bs.Sample(round=rnd, variant=name) for name in bs.VARIANTS}
            order = round_order(rnd)
            for what, measure, applies in measurements():
                for name in order:
                    v = by_name[name]
                    if not applies(v):
                        continue
                    try:
                        await measure(v, settings, samples[name].raw)
                    except TrafficError as e:
                        result.errors.append(f"round {rnd + 1} {name} {what}: {e}")
                        say(f"bench: round {rnd + 1} {name} {what}: FAILED {e}")
                        continue
                    say(f"bench: round {rnd + 1}/{settings.rounds} {name} {what}: "
                        f"{_brief(what, samples[name].raw)}")
            for name in bs.VARIANTS:
                pids = daemon_pids(by_name[name])
                if pids:
                    samples[name].raw["daemon_rss_peak_kib"] = peak_rss_kib(pids)
                result.samples.append(bs.finish_sample(samples[name]))
    result.elapsed_s = time.monotonic() - started
    return result


def _brief(what: str, raw: dict[str, Any]) -> str:
    if what == "ping":
        times = raw["rtt_ms"]
        return f"avg {sum(times) / len(times):.3f} ms over {len(times)} echoes"
    if what == "udp64":
        return f"{raw['udp64_fps']:.0f} frames/s, loss {raw['udp64_loss_percent']:.1f} %"
    if what == "tcp1_loss1":
        kept = bs.retained(raw["tcp1_loss1_mbit_s"], raw.get("tcp1_mbit_s"))
        share = f", {kept:.0%} of lossless" if kept is not None else ""
        return f"{raw['tcp1_loss1_mbit_s']:.0f} Mbit/s at {bs.WAN_LOSS_PERCENT:g}% loss{share}"
    return f"{raw[what + '_mbit_s']:.0f} Mbit/s"


def machine_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}


# ---------------------------------------------------------------- plot


def write_plot(result: bs.BenchResult, path: str) -> None:
    """A bar chart: throughput ratios to kernel VXLAN (log scale; the lossy-WAN bar is
    the share kept under loss over VXLAN's) and the RTTs.

    matplotlib is optional: without it, ``BenchError`` says how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError(f"--plot {path}: matplotlib is not installed; install it "
                         f"({PLOT_PIP}) or leave out --plot") from None
    rat = bs.ratios(result)
    summ = bs.summaries(result)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(bs.VARIANTS)
    for i, v in enumerate(bs.VARIANTS):
        xs, ys, lo, hi = [], [], [], []
        for j, key in enumerate(bs.RATIO_KEYS):
            s = rat[v][key]
            if s is None:
                continue
            xs.append(j + (i - (len(bs.VARIANTS) - 1) / 2) * width)
            ys.append(s.median)
            lo.append(s.median - s.min)
            hi.append(s.max - s.median)
        left.bar(xs, ys, width, yerr=[lo, hi], label=bs.VARIANT_TITLES[v], capsize=2)
    left.set_yscale("log")
    labels = {"tcp1_mbit_s": "TCP 1 stream", "tcp4_mbit_s": "TCP 4 streams",
              "udp64_fps": f"UDP {bs.UDP_PAYLOAD_BYTES} B frames/s",
              "tcp1_loss1_retained": f"TCP 1 stream kept\nat {bs.WAN_LOSS_PERCENT:g}% loss"}
    left.set_xticks(range(len(bs.RATIO_KEYS)), [labels[key] for key in bs.RATIO_KEYS])
    left.set_ylabel("ratio to kernel VXLAN (same run)")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.legend(fontsize="small")
    for k, key in enumerate(("rtt_avg_ms", "rtt_p99_ms")):
        xs, ys, lo, hi = [], [], [], []
        for i, v in enumerate(bs.VARIANTS):
            s = summ[v][key]
            if s is None:
                continue
            xs.append(i + (k - 0.5) * 0.4)
            ys.append(s.median * bs.US_PER_MS)
            lo.append((s.median - s.min) * bs.US_PER_MS)
            hi.append((s.max - s.median) * bs.US_PER_MS)
        right.bar(xs, ys, 0.4, yerr=[lo, hi], capsize=2, label="avg" if k == 0 else "p99")
    right.set_xticks(range(len(bs.VARIANTS)), [bs.VARIANT_TITLES[v] for v in bs.VARIANTS])
    right.set_ylabel("ping RTT (µs)")
    right.legend(fontsize="small")
    st = result.settings
    fig.suptitle(f"l2bridge lab bench: {st.rounds} rounds, median and min–max "
                 f"(absolute numbers are machine-dependent)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise BenchError(f"--plot {path}: {e.strerror or e}; choose a writable path") from None
    finally:
        plt.close(fig)


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help=f"also write a bar chart (needs matplotlib: {PLOT_PIP})")
    p.add_argument("--rounds", type=int,
                   help=f"interleaved rounds (default {bs.DEFAULT_ROUNDS}; --quick: 1)")
    p.add_argument("--seconds", type=float,
                   help=f"duration of each iperf3 run (default {bs.DEFAULT_SECONDS:g}; "
                        f"--quick: {bs.QUICK_SECONDS:g})")
    p.add_argument("--quick", action="store_true",
                   help=f"one round of short runs ({bs.QUICK_SECONDS:g} s, {bs.QUICK_PINGS} "
                        f"pings, the {bs.WAN_LOSS_PERCENT:g}%% loss runs included): about 35 s")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of each l2bridge gateway (default 1: the two "
                        "gateways, the hosts and iperf3 share this machine's cores)")
    p.add_argument("--low-latency", action="store_true",
                   help="run the l2bridge gateways with low_latency = true: idle CPUs poll "
                        "instead of halting, machine-wide, for every variant alike")
    p.add_argument("--transports", action="store_true",
                   help="instead: the TCP transport against UDP (bounded and unbounded "
                        "queue) on a clean, a lossy and a 50 Mbit/s WAN, with RTTs under load")


def cmd_bench(args: argparse.Namespace,
              runner: Callable[[Callable[[], Awaitable[int]]], int],
              out: TextIO | None = None) -> int:
    """Validate, measure under ``runner`` (the CLI's signal-guarded trio.run), print."""
    stream = out or sys.stdout
    if args.transports:
        return _cmd_transports(args, runner, stream)
    try:
        settings = bs.make_settings(quick=args.quick, rounds=args.rounds, seconds=args.seconds,
                                    workers=args.workers, low_latency=args.low_latency)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    if args.plot and not plot_available():
        _err(f"--plot {args.plot}: matplotlib is not installed; install it ({PLOT_PIP}) "
             "or leave out --plot")
        return EXIT_USAGE

    async def body() -> int:
        result = await run_bench(settings, _err)
        stream.write(bs.to_json(result) if args.json else bs.format_table(result))
        stream.flush()
        if args.plot:
            try:
                write_plot(result, args.plot)
            except BenchError as e:
                _err(str(e))
                return EXIT_FAILED
            _err(f"bench: plot written to {args.plot}")
        return EXIT_FAILED if result.errors else EXIT_OK

    return runner(body)  # LabError (BenchError too) reaches the CLI: one line, exit 1


def _cmd_transports(args: argparse.Namespace,
                    runner: Callable[[Callable[[], Awaitable[int]]], int], stream: TextIO) -> int:
    """``--transports``: the TCP transport against UDP (``netns.bench.transports``)."""
    if args.plot or args.workers != 1 or args.low_latency:
        _err("--transports takes --rounds, --seconds, --quick and --json only")
        return EXIT_USAGE
    settings = transports.Settings()
    if args.quick:
        settings = transports.Settings(rounds=1, seconds=bs.QUICK_SECONDS, pings=bs.QUICK_PINGS)
    if args.rounds is not None:
        if args.rounds < 1:
            _err(f"--rounds {args.rounds}: expected at least 1")
            return EXIT_USAGE
        settings.rounds = args.rounds
    if args.seconds is not None:
        if not 1 <= args.seconds <= 600:
            _err(f"--seconds {args.seconds:g}: expected 1 to 600")
            return EXIT_USAGE
        settings.seconds = args.seconds

    async def body() -> int:
        result = await transports.run(settings, _err)
        stream.write(json.dumps(transports.to_doc(result), indent=2) + "\n" if args.json
                     else transports.format_table(result))
        stream.flush()
        return EXIT_FAILED if result.errors else EXIT_OK

    return runner(body)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
