"""Where one ping's time goes through two l2bridge gateways, hop by hop.

    l2bridge lab up scenarios/two-offices.toml      # prints the lab's name, e.g. l2b1a2b3
    python3 tools/trace_ping.py l2b1a2b3 --west london --east berlin [--count 60]

tcpdump (nanosecond timestamps) listens on every hop of a running two-site lab
while ``--count`` pings go from the west site's host h1 to the east site's h1:
the host's eth0, each gateway's tap (``l2b0``: what the daemon reads or wrote)
and each gateway's ``wan0`` (the sealed datagram).  It prints the median and
p90 of each stage in µs: the time each daemon holds a frame in each direction,
the WAN, the far LAN, and the whole round trip.  Root; the lab's namespaces only.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import time

CAPTURE_SETTLE_S = 1.5  # tcpdump needs this long to start listening
MATCH_WINDOW_S = 0.02  # a datagram belongs to a frame seen at most this much earlier
MIN_DATA_LEN = 100  # UDP payloads shorter than this are keepalives, not the ping
ICMP_RE = re.compile(r"(\d+\.\d+) .*ICMP echo (request|reply), id \d+, seq (\d+)")
UDP_RE = re.compile(r"(\d+\.\d+) IP6? \S+ > \S+: UDP, length (\d+)")
STAGES = ("west out: tap -> wan0", "WAN west -> east", "east in: wan0 -> tap",
          "east LAN + host", "east out: tap -> wan0", "WAN east -> west",
          "west in: wan0 -> tap", "round trip at the host")


def capture(ns: str, ifname: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-i", ifname, "-n", "-tt", "-l", "-U", "-p",
         "--time-stamp-precision=nano", "icmp or udp"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def echoes(lines: list[str], kind: str) -> dict[int, float]:
    found: dict[int, float] = {}
    for line in lines:
        m = ICMP_RE.match(line)
        if m and m.group(2) == kind:
            found.setdefault(int(m.group(3)), float(m.group(1)))
    return found


def datagrams(lines: list[str]) -> list[float]:
    return [float(m.group(1)) for line in lines
            if (m := UDP_RE.match(line)) and int(m.group(2)) > MIN_DATA_LEN]


def first_after(times: list[float], t: float | None) -> float | None:
    if t is None:
        return None
    later = [x for x in times if t <= x <= t + MATCH_WINDOW_S]
    return min(later) if later else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("lab", help="the lab's name (its namespace prefix)")
    p.add_argument("--west", default="london", help="the pinging site (host h1)")
    p.add_argument("--east", default="berlin", help="the answering site (host h1)")
    p.add_argument("--count", type=int, default=60, help="pings (20 per second)")
    args = p.parse_args()
    w, e = f"{args.lab}-{args.west}", f"{args.lab}-{args.east}"
    hops = {"w_h1": (f"{w}-h1", "eth0"), "w_tap": (f"{w}-gw", "l2b0"),
            "w_wan": (f"{w}-gw", "wan0"), "e_wan": (f"{e}-gw", "wan0"),
            "e_tap": (f"{e}-gw", "l2b0")}
    procs = {k: capture(ns, ifname) for k, (ns, ifname) in hops.items()}
    try:
        time.sleep(CAPTURE_SETTLE_S)
        addr = subprocess.run(["ip", "netns", "exec", f"{e}-h1", "ip", "-4", "-o", "addr",
                               "show", "eth0"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.split()[3].split("/")[0]
        subprocess.run(["ip", "netns", "exec", f"{w}-h1", "ping", "-c", str(args.count), "-i",
                        "0.05", "-q", addr], capture_output=True, timeout=args.count + 30)
        time.sleep(1.0)
    finally:
        lines = {}
        for k, proc in procs.items():
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=10)
            lines[k] = out.splitlines()
    req = {k: echoes(lines[k], "request") for k in ("w_h1", "w_tap", "e_tap")}
    rep = {k: echoes(lines[k], "reply") for k in ("w_h1", "w_tap", "e_tap")}
    w_wan, e_wan = datagrams(lines["w_wan"]), datagrams(lines["e_wan"])
    figures: dict[str, list[float]] = {s: [] for s in STAGES}
    for seq, t1 in sorted(req["w_tap"].items()):
        if seq not in req["e_tap"] or seq not in rep["e_tap"] or seq not in rep["w_tap"]:
            continue
        t2 = first_after(w_wan, t1)
        t3 = first_after(e_wan, t2)
        t4, t5 = req["e_tap"][seq], rep["e_tap"][seq]
        t6 = first_after(e_wan, t5)
        t7 = first_after(w_wan, t6)
        t8 = rep["w_tap"][seq]
        if t2 is None or t3 is None or t6 is None or t7 is None:
            continue
        rtt = rep["w_h1"].get(seq, t8) - req["w_h1"].get(seq, t1)
        for stage, v in zip(STAGES, (t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6,
                                     t8 - t7, rtt), strict=True):
            figures[stage].append(v * 1e6)
    if not figures[STAGES[0]]:
        print("no ping could be followed across every hop (is the lab up, are the names right?)")
        return 1
    for stage, values in figures.items():
        values.sort()
        print(f"{stage:24s} median {statistics.median(values):8.1f} µs   "
              f"p90 {values[int(len(values) * 0.9) - 1]:8.1f} µs   n={len(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
