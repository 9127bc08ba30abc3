"""``l2bridge lab bench --transports``: the TCP transport against UDP, measured in one run.

Variants (each a two-site lab of encrypted l2bridge gateways, the shipped defaults
but the transport): ``udp`` (``transport = "udp"``), ``tcp`` (``transport =
"tcp"``, the bounded queue as shipped) and ``tcp unbounded`` (``tcp_send_queue
= 0``: kernel-sized buffers and a sender that waits, as a plain TCP tunnel does;
kept for the comparison only).  Each over three WANs: ``clean``, ``lossy`` (the
``lossy-wan`` scenario's link: 2% loss, 40 ms ± 10 ms, 5% reordering) and
``50 Mbit/s`` (an office line: tbf on the link, where a standing queue can form).

Per variant and WAN, each round: ping RTTs at rest; one iperf3 TCP stream; ping
RTTs *while* that iperf3 runs (the TCP-over-TCP meltdown figure: how much delay
the tunnel adds under load).  Rounds interleave the variants of a WAN, rotating
the order; the table gives the median (min–max) over rounds.  All labs stay up for
the whole run and are torn down on every exit path (``open_lab``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from netns.bench import stats as bs
from netns.checks.report import columns
from netns.checks.traffic import TrafficError, iperf3, ping
from netns.describe.scenario import Scenario, parse_scenario
from netns.lab import Lab, open_lab

VARIANTS = {
    "udp": 'transport = "udp"',
    "tcp": 'transport = "tcp"',
    "tcp unbounded": 'transport = "tcp", tcp_send_queue = 0',
}
WANS = {
    "clean": "",
    "lossy": "loss_percent = 2, delay_ms = 40, jitter_ms = 10, reorder_percent = 5",
    "50 Mbit/s": "rate_mbit = 50",
}
PING_INTERVAL_S = 0.02
IPERF_PORT = 5201
LOAD_PING_DELAY_S = 1.0  # the loaded ping starts once iperf3 has ramped up


@dataclass
class Settings:
    rounds: int = 3
    seconds: float = 5.0
    pings: int = 100


@dataclass
class Result:
    settings: Settings
    samples: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def scenario(variant: str, wan: str) -> Scenario:
    """Two sites, one host each; the daemons' transport per ``variant``; the WAN per ``wan``."""
    link = f"wan = {{ {WANS[wan]} }}\n" if WANS[wan] else ""
    text = (f'[lab]\nname = "transports"\nkeepalive = 1\ndead_after = 4\n'
            f'[[site]]\nname = "west"\n{link}l2bridge = {{ {VARIANTS[variant]} }}\n'
            f'[[site.host]]\nname = "h1"\n'
            f'[[site]]\nname = "east"\nl2bridge = {{ {VARIANTS[variant]} }}\n'
            f'[[site.host]]\nname = "h1"\n')
    return parse_scenario(text, f"transports-{variant}-{wan}.toml")


async def measure(lab: Lab, settings: Settings) -> dict[str, float]:
    """One round on one lab: idle RTTs, TCP goodput, RTTs under that TCP load."""
    west, east = lab.ns("west.h1"), lab.ns("east.h1")
    addr = lab.node("east.h1").ip
    out: dict[str, float] = {}
    idle = await ping(west, addr, count=settings.pings, interval_s=PING_INTERVAL_S,
                      deadline_s=settings.pings * PING_INTERVAL_S + 10)
    times = bs.parse_ping_times(idle.output)
    if times:
        out["rtt_ms"] = statistics.median(times)
        out["rtt_p99_ms"] = bs.percentile(times, bs.P99)
    loaded: list[float] = []
    goodput: list[float] = []

    async def load() -> None:
        result = await iperf3(east, addr, west, seconds=settings.seconds, port=IPERF_PORT)
        goodput.append(result.mbit_s)

    async def probe() -> None:
        await trio.sleep(LOAD_PING_DELAY_S)
        count = max(1, int((settings.seconds - LOAD_PING_DELAY_S - 0.5) / PING_INTERVAL_S))
        result = await ping(west, addr, count=count, interval_s=PING_INTERVAL_S,
                            deadline_s=settings.seconds + 10)
        loaded.extend(bs.parse_ping_times(result.output))
        out["loaded_lost_percent"] = 100.0 * (result.sent - result.received) / max(1, result.sent)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        nursery.start_soon(probe)
    if goodput:
        out["tcp1_mbit_s"] = goodput[0]
    if loaded:
        out["loaded_rtt_ms"] = statistics.median(loaded)
        out["loaded_rtt_p99_ms"] = bs.percentile(loaded, bs.P99)
    return out


async def run(settings: Settings, say: Callable[[str], None]) -> Result:
    result = Result(settings)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        labs: dict[tuple[str, str], Lab] = {}
        for wan in WANS:
            for variant in VARIANTS:
                labs[(variant, wan)] = await stack.enter_async_context(
                    open_lab(scenario(variant, wan), progress=say))
        names = list(VARIANTS)
        for rnd in range(settings.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for wan in WANS:
                for variant in order:
                    key = (variant, wan)
                    try:
                        sample = await measure(labs[key], settings)
                    except TrafficError as exc:
                        result.errors.append(f"round {rnd + 1} {variant} / {wan}: {exc}")
                        say(f"bench: round {rnd + 1} {variant} / {wan}: FAILED {exc}")
                        continue
                    result.samples.setdefault(key, []).append(sample)
                    say(f"bench: round {rnd + 1}/{settings.rounds} {variant} / {wan}: "
                        + ", ".join(f"{k} {v:.3g}" for k, v in sample.items()))
    result.elapsed_s = time.monotonic() - started
    return result


METRICS = (("tcp1_mbit_s", "TCP 1 stream Mbit/s"), ("rtt_ms", "ping RTT ms"),
           ("rtt_p99_ms", "ping p99 ms"), ("loaded_rtt_ms", "RTT under TCP load ms"),
           ("loaded_rtt_p99_ms", "p99 under TCP load ms"),
           ("loaded_lost_percent", "pings lost under load %"))


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3g}"
    return f"{med:.3g} ({min(values):.3g}–{max(values):.3g})"


def format_table(result: Result) -> str:
    """One table per WAN: the metrics down, the variants across."""
    st = result.settings
    lines = [f"l2bridge lab bench --transports: {st.rounds} round(s) of {st.seconds:g} s, "
             f"median (min–max); encrypted gateways, shipped defaults but the transport", ""]
    for wan in WANS:
        rows = [[f"WAN {wan}", *VARIANTS]]
        for key, title in METRICS:
            rows.append([title] + [summary([s[key] for s in result.samples.get((v, wan), [])
                                            if key in s]) for v in VARIANTS])
        lines += columns(rows) + [""]
    lines.append(f"({result.elapsed_s:.0f} s)")
    lines += [f"error: {e}" for e in result.errors]
    return "\n".join(lines) + "\n"


def to_doc(result: Result) -> dict[str, Any]:
    return {"settings": vars(result.settings), "errors": result.errors,
            "samples": [{"variant": v, "wan": w, "rounds": s}
                        for (v, w), s in result.samples.items()]}
