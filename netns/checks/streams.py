"""Checks that span a timeline: a continuous traffic stream, and recovery after an event.

``stream`` (tool ``ping`` or ``iperf3``) runs from its ``at`` for ``seconds``
while the timeline's events happen, and reports the outage: the longest time
without traffic, when it was (seconds on the timeline), the frames lost; it
passes within ``max_outage_s``, ``max_lost_percent`` and ``min_mbit_s``.
``recovers`` waits for its event, then probes until the first answer: the time
from the event to that answer must be at most ``within_s``.

Flow of a ping stream: 1. ``ping -D -n -i INTERVAL -c N -W 1`` (each reply
printed with its wall-clock time) inside the sender's namespace  2. the reply
times, with the stream's start and end, give the gaps  3. the longest gap less
one interval is the outage (a lossless stream has none), ``sent - received`` the
frames lost.  An iperf3 stream runs ``iperf3 -R`` from the receiver (so the
client's per-interval figures, every 0.1 s, are what arrived): the longest run of
intervals that carried nothing is the outage.

The outage arithmetic (``outage_from_replies``, ``outage_from_intervals``) is
pure and tested without root.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from netns.checks import traffic
from netns.describe.plan import Node

Outcome = tuple[bool, str, dict[str, Any]]

PING_LINGER_S = 1  # ping -W: how long it waits for the last replies
STREAM_GRACE_S = 5.0  # beyond a stream's own length: start-up, linger, results
IPERF_INTERVAL_S = 0.1
IPERF_STREAM_PORT_BASE = 5301  # streams pick a port above it: concurrent ones rarely share
IPERF_STREAM_PORTS = 500
DEFAULT_STREAM_S = 5.0  # a stream started by hand (lab.check) without seconds
SHOWN_OUTAGES = 5
_REPLY = re.compile(r"^\[(?P<t>\d+\.\d+)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+)", re.MULTILINE)


@dataclass
class Timeline:
    """The clock a timeline's checks share: t = 0 and when each event was applied."""

    t0_wall: float  # time.time() at t = 0
    t0: float  # trio.current_time() at t = 0
    fired: dict[int, trio.Event] = field(default_factory=dict)
    applied_wall: dict[int, float] = field(default_factory=dict)  # event -> time.time()

    def fire(self, index: int, wall: float) -> None:
        """Event ``index`` was applied, starting at ``wall`` (time.time())."""
        self.applied_wall[index] = wall
        self.fired.setdefault(index, trio.Event()).set()

    async def wait(self, index: int) -> float:
        """Until event ``index`` is applied; its wall-clock time."""
        await self.fired.setdefault(index, trio.Event()).wait()
        return self.applied_wall[index]

    def at(self, wall: float) -> float:
        return round(wall - self.t0_wall, 3)


class Lab(Protocol):
    timeline: Timeline | None

    def node(self, ref: str) -> Node: ...


@dataclass(frozen=True, slots=True)
class Outage:
    """The figures of one stream: the longest gap and every gap worth naming."""

    longest_s: float  # the longest time without traffic
    started: float  # when it began (wall clock)
    gaps: tuple[tuple[float, float], ...]  # (from, to) of each gap > 2 intervals, longest first


def outage_from_replies(start: float, end: float, replies: Sequence[float],
                        interval_s: float) -> Outage:
    """The longest time without a reply between ``start`` and ``end`` (wall clock).

    A gap between two replies one interval apart is no outage: each gap loses
    one interval; so a clean stream has ``longest_s`` 0 and a stream without a
    single reply has the whole length."""
    points = [start, *sorted(t for t in replies if start <= t <= end), end]
    gaps = [(b - a, a, b) for a, b in zip(points, points[1:], strict=False)]
    longest, began, _ = max(gaps)
    named = sorted((g for g in gaps if g[0] > 2 * interval_s), reverse=True)
    return Outage(longest_s=max(0.0, longest - interval_s), started=began,
                  gaps=tuple((a, b) for _, a, b in named))


def outage_from_intervals(intervals: Sequence[Mapping[str, Any]], start: float) -> Outage:
    """The longest run of iperf3 intervals that carried no byte (``start``: its wall time)."""
    best = (0.0, start)
    run_from: float | None = None
    gaps: list[tuple[float, float, float]] = []
    for iv in [*intervals, {"start": math.inf, "end": math.inf, "bytes": 1}]:
        empty = int(iv.get("bytes", 0)) == 0
        if empty and run_from is None:
            run_from = float(iv["start"])
        elif not empty and run_from is not None:
            run_to = float(iv["start"]) if iv["start"] != math.inf else float(
                intervals[-1]["end"])
            gaps.append((run_to - run_from, start + run_from, start + run_to))
            best = max(best, (run_to - run_from, start + run_from))
            run_from = None
    named = sorted(gaps, reverse=True)
    return Outage(longest_s=best[0], started=best[1], gaps=tuple((a, b) for _, a, b in named))


def _outage_words(o: Outage, clock: Timeline | None) -> tuple[str, dict[str, Any]]:
    at = clock.at if clock is not None else (lambda wall: round(wall, 3))
    shown = [{"from_s": at(a), "to_s": at(b)} for a, b in o.gaps[:SHOWN_OUTAGES]]
    words = f"longest outage {o.longest_s:.2f} s"
    if o.longest_s > 0 and o.gaps:
        words += f" (t = {at(o.gaps[0][0]):.2f} → {at(o.gaps[0][1]):.2f} s)"
    return words, {"outage_s": round(o.longest_s, 3), "outages": shown,
                   "outage_count": len(o.gaps)}


def _limits(p: Mapping[str, Any]) -> list[str]:
    out = []
    if p.get("max_outage_s") is not None:
        out.append(f"max outage {p['max_outage_s']:g} s")
    if p.get("max_lost_percent") is not None:
        out.append(f"max lost {p['max_lost_percent']:g}%")
    if p.get("min_mbit_s") is not None:
        out.append(f"min {p['min_mbit_s']:g} Mbit/s")
    return out


# ---------------------------------------------------------------- stream


async def check_stream(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    seconds = p["seconds"] or DEFAULT_STREAM_S
    if p["tool"] == "iperf3":
        return await _iperf3_stream(lab, src, dst, p, seconds)
    interval = p["interval_ms"] / 1000
    count = max(1, round(seconds / interval))
    addr = dst.ip6 if p["ipv6"] else dst.ip
    argv = ["ping", "-6" if p["ipv6"] else "-4", "-D", "-n", "-i", f"{interval:g}", "-c",
            str(count), "-W", str(PING_LINGER_S), addr]
    start = time.time()
    r = await traffic.run_command(src.ns, argv, timeout_s=seconds + STREAM_GRACE_S)
    end = start + count * interval
    output = r.stdout + r.stderr
    stats = traffic.parse_ping_output(output)
    replies = [float(m["t"]) for m in _REPLY.finditer(output)]
    o = outage_from_replies(start, end, replies, interval)
    words, numbers = _outage_words(o, lab.timeline)
    lost = stats.sent - stats.received
    lost_pct = 100.0 * lost / stats.sent if stats.sent else 100.0
    ok = stats.received > 0
    if p["max_outage_s"] is not None:
        ok = ok and o.longest_s <= p["max_outage_s"]
    if p["max_lost_percent"] is not None:
        ok = ok and lost_pct <= p["max_lost_percent"]
    summary = (f"{stats.received}/{stats.sent} replies over {seconds:g} s every "
               f"{interval * 1000:g} ms, {lost} lost ({lost_pct:.1f}%), {words}")
    limits = _limits(p)
    if limits:
        summary += f" ({', '.join(limits)})"
    numbers.update(sent=stats.sent, received=stats.received, lost=lost,
                   lost_percent=round(lost_pct, 2), seconds=seconds, interval_s=interval,
                   tool="ping")
    return ok, summary, numbers


async def _iperf3_stream(lab: Lab, src: Node, dst: Node, p: Mapping[str, Any],
                         seconds: float) -> Outcome:
    """``from`` runs the server and sends (``-R``), ``to`` is the client and receives."""
    program = traffic.find_tool("iperf3")
    duration = max(1, math.ceil(seconds))
    port = IPERF_STREAM_PORT_BASE + secrets.randbelow(IPERF_STREAM_PORTS)
    server_argv = [program, "-s", "-1", "-B", src.ip, "-p", str(port)]
    client_argv = [program, "-c", src.ip, "-p", str(port), "-R", "-t", str(duration), "-i",
                   f"{IPERF_INTERVAL_S:g}", "--json", "--connect-timeout",
                   str(traffic.IPERF_CONNECT_TIMEOUT_MS)]
    if p["udp"]:
        client_argv += ["-u", "-b", p["bitrate"]]
    what = f"iperf3 stream {src.ref} → {dst.ref}"
    async with traffic._spawn(src.ns, server_argv) as server:
        await server.wait_listening("tcp", port, traffic.DAEMON_START_TIMEOUT_S)
        start = time.time()
        client = await traffic.run_command(dst.ns, client_argv,
                                           timeout_s=duration + STREAM_GRACE_S + 10)
    try:
        doc = traffic._json_object(client.stdout)
        result = traffic.parse_iperf3_json(doc, udp=p["udp"])
    except (ValueError, traffic.TrafficError) as e:
        last = (client.stderr.strip().splitlines() or [str(e)])[-1]
        raise traffic.TrafficError(f"{what}: {last}") from None
    intervals = [iv.get("sum") or {} for iv in doc.get("intervals") or []]
    o = outage_from_intervals(intervals, start)
    words, numbers = _outage_words(o, lab.timeline)
    ok = result.mbit_s > 0
    if p["max_outage_s"] is not None:
        ok = ok and o.longest_s <= p["max_outage_s"]
    if p["max_lost_percent"] is not None and result.lost_percent is not None:
        ok = ok and result.lost_percent <= p["max_lost_percent"]
    if p["min_mbit_s"] is not None:
        ok = ok and result.mbit_s >= p["min_mbit_s"]
    summary = f"{result.mbit_s:.1f} Mbit/s {result.protocol} over {duration} s, {words}"
    if result.lost_percent is not None:
        summary += f", {result.lost_percent:.2f}% lost"
    limits = _limits(p)
    if limits:
        summary += f" ({', '.join(limits)})"
    numbers.update(mbit_s=round(result.mbit_s, 2), lost_percent=result.lost_percent,
                   seconds=duration, interval_s=IPERF_INTERVAL_S, tool="iperf3",
                   protocol=result.protocol)
    return ok, summary, numbers


# ---------------------------------------------------------------- recovers


async def check_recovers(lab: Lab, p: Mapping[str, Any], timeout_s: float) -> Outcome:
    """From its event until ``from`` gets the first answer from ``to``: at most within_s."""
    src, dst = lab.node(p["from"]), lab.node(p["to"])
    clock = lab.timeline
    if clock is None:
        raise traffic.TrafficError("recovers: runs only on a timeline (lab run, run_checks())")
    fired = await clock.wait(p["event"])
    interval = p["interval_ms"] / 1000
    bound = max(1, math.ceil(p["within_s"] + 1))
    argv = ["ping", "-4", "-D", "-n", "-i", f"{interval:g}", "-c", "1", "-w", str(bound),
            dst.ip]
    r = await traffic.run_command(src.ns, argv, timeout_s=bound + STREAM_GRACE_S)
    replies = [float(m["t"]) for m in _REPLY.finditer(r.stdout)]
    numbers: dict[str, Any] = {"event": p["event"], "event_at_s": clock.at(fired),
                               "within_s": p["within_s"]}
    if not replies:
        numbers["back_in_s"] = None
        return False, (f"no answer {src.ref} → {dst.ref} within {bound} s of event[{p['event']}]"
                       f" (limit {p['within_s']:g} s)"), numbers
    back = max(0.0, min(replies) - fired)
    numbers.update(back_in_s=round(back, 3), back_at_s=clock.at(min(replies)))
    ok = back <= p["within_s"]
    return ok, (f"{src.ref} → {dst.ref} answered {back:.2f} s after event[{p['event']}] "
                f"(t = {clock.at(fired):.2f} s; limit {p['within_s']:g} s)"), numbers
