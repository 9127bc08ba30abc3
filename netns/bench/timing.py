"""How long a lab takes to come up and go away, as the number of sites grows.

``l2bridge lab timing [--sites 2,4,8,16,32] [--gateway l2bridge|vxlan] [--repeat R]
[--json] [--mininet]`` (also ``python -m netns.bench.timing``).

Flow, per site count N and gateway mode: 1. generate a full-mesh scenario of N sites
with 2 hosts each (no checks)  2. ``open_lab`` it, which times the build
(namespaces, links, addresses), the gateway start until every site sees all its
peers up, and the teardown  3. keep the median of ``--repeat`` runs  4. print a
table with the targets (up: two sites <= 2 s, twelve <= 10 s, sixteen <= 2 s,
thirty-two <= 4 s; teardown <= 1 s per 10 sites, at least 1 s) or JSON.

``--mininet`` also times Mininet (Debian package ``mininet``: Linux-bridge switches,
no controller, ``LinearTopo(N, 2)``: the same number of hosts and switches) bringing
the same hosts up and down, and reports the ratio to the lab's up time.  Mininet
works in the caller's namespace and cleans up by global sweeps, so it runs confined:
inside a namespace of its own (``P-mn``, removed afterwards) and a PID namespace
(``unshare --pid --fork --kill-child``), so its links, bridges and host shells
cannot outlive the measurement or touch anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import trio

from l2bridge.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from netns.checks.report import columns
from netns.describe.plan import LAB_RUN_DIR, VXLAN_OVERHEAD_V4, new_prefix
from netns.describe.scenario import DEFAULT_MTU, GATEWAY_MODES, Scenario, parse_scenario
from netns.lab import open_lab
from netns.realise.nsenter import create_netns, netns_preexec
from netns.realise.registry import (
    LabState,
    Registry,
    kill_namespace_processes,
    process_start_time,
    remove_namespace,
)

DEFAULT_SITES = (2, 4, 8, 16, 32)
HOSTS_PER_SITE = 2
MAX_SITES = 64
UP_TARGETS_S = {2: 2.0, 12: 10.0, 16: 2.0, 32: 4.0}  # sites -> up (build + start) at most
TEARDOWN_PER_10_SITES_S = 1.0
MININET_TIMEOUT_S = 120.0
MININET_IMPORT_TIMEOUT_S = 20.0
SYSTEM_PYTHON = "/usr/bin/python3"



@dataclass(frozen=True, slots=True)
class TimingRow:
    """One measurement: N sites with one gateway mode (medians over the repeats)."""

    sites: int
    hosts: int
    namespaces: int
    gateway: str
    build_s: float
    start_s: float
    teardown_s: float
    repeats: int

    @property
    def up_s(self) -> float:
        return self.build_s + self.start_s


@dataclass(frozen=True, slots=True)
class MininetRow:
    sites: int  # switches
    hosts: int
    build_s: float  # Mininet.build(): host shells, links, addresses
    start_s: float  # Mininet.start(): switches up
    stop_s: float
    ping_ok: bool  # first host pings the last one
    ping_after_s: float  # from the end of start() until that ping is answered

    @property
    def up_s(self) -> float:
        return self.build_s + self.start_s


# ---------------------------------------------------------------- pure


def parse_sites(text: str) -> list[int]:
    """``"2,4,8"`` → ``[2, 4, 8]``; ``ValueError`` with the reason otherwise."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f'--sites: expected numbers like "2,4,8", found "{text}"') from None
    if not values or any(not 2 <= v <= MAX_SITES for v in values):
        raise ValueError(f"--sites: every count must be in 2..{MAX_SITES}, found {text!r}")
    return values


def mesh_scenario(sites: int, hosts: int = HOSTS_PER_SITE) -> Scenario:
    """A full mesh of ``sites`` sites (``s01``…) with ``hosts`` hosts each, no checks."""
    parts = ["[lab]", f'name = "mesh-{sites}"', "keepalive = 1", "dead_after = 3", ""]
    for i in range(1, sites + 1):
        parts.append(f'[[site]]\nname = "s{i:02d}"')
        parts += [f'[[site.host]]\nname = "h{j}"' for j in range(1, hosts + 1)]
    return parse_scenario("\n".join(parts) + "\n", f"mesh-{sites}.toml")


def teardown_target_s(sites: int) -> float:
    return max(TEARDOWN_PER_10_SITES_S, TEARDOWN_PER_10_SITES_S * sites / 10)


def up_target_s(sites: int) -> float | None:
    return UP_TARGETS_S.get(sites)


def meets_targets(row: TimingRow) -> bool:
    target = up_target_s(row.sites)
    return (target is None or row.up_s <= target) and row.teardown_s <= teardown_target_s(
        row.sites)


def format_timing(rows: Sequence[TimingRow], mininet: Sequence[MininetRow] = ()) -> str:
    """The table: one row per (sites, gateway), targets, and Mininet with its ratio."""
    head = ("sites", "hosts", "netns", "gateway", "build", "start", "up", "teardown", "targets")
    table = [head]
    for r in rows:
        target = up_target_s(r.sites)
        limits = f"up <= {target:g} s, " if target else ""
        limits += f"down <= {teardown_target_s(r.sites):g} s"
        table.append((str(r.sites), str(r.hosts), str(r.namespaces), r.gateway,
                      f"{r.build_s:.2f} s", f"{r.start_s:.2f} s", f"{r.up_s:.2f} s",
                      f"{r.teardown_s:.2f} s",
                      ("ok" if meets_targets(r) else "MISSED") + f" ({limits})"))
    lines = columns(table)
    if mininet:
        ours = {r.sites: r for r in rows if r.gateway == "l2bridge"} or {
            r.sites: r for r in rows}
        mtable: list[tuple[str, ...]] = [("switches", "hosts", "mininet build", "start", "up",
                                          "stop", "first ping after up",
                                          "mininet up / lab up")]
        for m in mininet:
            mine = ours.get(m.sites)
            ratio = f"{m.up_s / mine.up_s:.2f}" if mine and mine.up_s > 0 else "-"
            mtable.append((str(m.sites), str(m.hosts), f"{m.build_s:.2f} s",
                           f"{m.start_s:.2f} s", f"{m.up_s:.2f} s", f"{m.stop_s:.2f} s",
                           f"{m.ping_after_s:.2f} s" if m.ping_ok else "FAIL", ratio))
        lines += ["", "Mininet (LinuxBridge switches, no controller, linear topology, "
                      "same hosts) vs the lab (l2bridge gateways):"]
        lines += columns(mtable)
    return "\n".join(lines) + "\n"


def timing_json(rows: Sequence[TimingRow], mininet: Sequence[MininetRow] = ()) -> str:
    doc: dict[str, Any] = {
        "rows": [{**asdict(r), "up_s": round(r.up_s, 3), "targets_met": meets_targets(r)}
                 for r in rows],
        "mininet": [{**asdict(m), "up_s": round(m.up_s, 3)} for m in mininet],
    }
    return json.dumps(doc, indent=2) + "\n"




# ---------------------------------------------------------------- measuring


async def measure(sites: int, gateway: str, repeat: int = 1,
                  progress: Callable[[str], None] | None = None) -> TimingRow:
    """Bring a generated ``sites``-site mesh up and down ``repeat`` times; medians."""
    say = progress or (lambda line: None)
    scenario = mesh_scenario(sites)
    wan_mtu = DEFAULT_MTU + VXLAN_OVERHEAD_V4 if gateway == "vxlan" else None
    runs: list[dict[str, float]] = []
    namespaces = 0
    for _ in range(repeat):
        async with open_lab(scenario, gateway=gateway, wan_mtu=wan_mtu) as lab:
            namespaces = len(lab.plan.namespaces)
        runs.append(dict(lab.timings))
        say(f"timing: {sites} sites, {gateway}: up {runs[-1]['build_s'] + runs[-1]['start_s']:.2f}"
            f" s, teardown {runs[-1]['teardown_s']:.2f} s")
    return TimingRow(
        sites=sites, hosts=sites * HOSTS_PER_SITE, namespaces=namespaces, gateway=gateway,
        build_s=round(statistics.median(r["build_s"] for r in runs), 3),
        start_s=round(statistics.median(r["start_s"] for r in runs), 3),
        teardown_s=round(statistics.median(r["teardown_s"] for r in runs), 3),
        repeats=repeat,
    )


MININET_SCRIPT = """
import json, sys, time
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.nodelib import LinuxBridge
from mininet.topo import LinearTopo
setLogLevel("error")
n = int(sys.argv[1])
t0 = time.monotonic()
net = Mininet(topo=LinearTopo(k=n, n=2), switch=LinuxBridge, controller=None,
              build=False, autoSetMacs=True)
net.build()
t1 = time.monotonic()
net.start()
t2 = time.monotonic()
first, last = net.hosts[0], net.hosts[-1]
ok = False
for _ in range(20):  # bounded: at most ~10 s
    if "bytes from" in first.cmd("ping -c 1 -W 0.5", last.IP()):
        ok = True
        break
t3 = time.monotonic()
net.stop()
t4 = time.monotonic()
print(json.dumps({"build_s": t1 - t0, "start_s": t2 - t1, "ping_after_s": t3 - t2,
                  "stop_s": t4 - t3, "ping_ok": ok, "hosts": len(net.hosts)}))
"""


def mininet_python() -> str | None:
    """An interpreter that can import Mininet (Debian installs it for /usr/bin/python3)."""
    for python in dict.fromkeys([sys.executable, SYSTEM_PYTHON]):
        if not os.path.exists(python):
            continue
        found = subprocess.run([python, "-c", "import mininet.net"], capture_output=True,
                               timeout=MININET_IMPORT_TIMEOUT_S, check=False)
        if found.returncode == 0:
            return python
    return None


def mininet_problem() -> str | None:
    """Why Mininet cannot be measured here, or None."""
    if mininet_python() is None:
        return ("Mininet is not installed (apt-get install --no-install-recommends mininet "
                "bridge-utils)")
    for program in ("mnexec", "unshare", "brctl"):
        if shutil.which(program) is None:
            return f"Mininet needs {program}, which is not on PATH"
    return None


def measure_mininet(sites: int) -> MininetRow:
    """Time Mininet for ``sites`` switches × 2 hosts, confined (see the module doc).

    The namespace is recorded in a lab state file before it exists (owner: this
    process), so ``l2bridge lab clean`` removes it should this process be killed."""
    python = mininet_python()
    if python is None:
        raise RuntimeError(mininet_problem() or "Mininet is not importable")
    prefix = new_prefix()
    ns = f"{prefix}-mn"
    pid = os.getpid()
    registry = Registry(LabState(prefix=prefix, scenario=f"mininet linear {sites}x2",
                                 gateway="mininet", pid=pid, start_time=process_start_time(pid),
                                 nodes={"mininet": ns}, created=time.time()))
    os.makedirs(LAB_RUN_DIR, mode=0o755, exist_ok=True)
    os.mkdir(registry.dir, 0o755)
    try:
        registry.add_namespace(ns)
        create_netns(ns)
        argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                python, "-c", MININET_SCRIPT, str(sites)]
        try:
            done = subprocess.run(argv, preexec_fn=netns_preexec(ns), capture_output=True,
                                  text=True, timeout=MININET_TIMEOUT_S, start_new_session=True,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"mininet: no result within {MININET_TIMEOUT_S:g} s") from None
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"mininet: exit status {done.returncode}: {last}")
        doc = json.loads(lines[-1])
    finally:
        kill_namespace_processes([ns])
        remove_namespace(ns)
        registry.remove_dir()
    return MininetRow(sites=sites, hosts=int(doc["hosts"]), build_s=round(doc["build_s"], 3),
                      start_s=round(doc["start_s"], 3), stop_s=round(doc["stop_s"], 3),
                      ping_ok=bool(doc["ping_ok"]), ping_after_s=round(doc["ping_after_s"], 3))


# ---------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sites", default=",".join(map(str, DEFAULT_SITES)),
                   help="site counts to measure, e.g. 2,4,8,16,32 (2 hosts per site)")
    p.add_argument("--gateway", choices=GATEWAY_MODES, action="append",
                   help="gateway mode to measure (repeatable; default: both)")
    p.add_argument("--repeat", type=int, default=1, help="runs per point; medians reported")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--mininet", action="store_true",
                   help="also time Mininet bringing up the same hosts (needs the mininet "
                        "package)")


def cmd_timing(args: argparse.Namespace) -> int:
    """Measure, print the table (or JSON); 0 when every target is met, else 1."""
    try:
        counts = parse_sites(args.sites)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    if not 1 <= args.repeat <= 20:
        _err(f"--repeat: expected 1..20, found {args.repeat}")
        return EXIT_USAGE
    if os.geteuid() != 0:
        _err("timing needs root (network namespaces); run it with sudo")
        return EXIT_USAGE
    gateways = args.gateway or list(GATEWAY_MODES)

    async def run() -> list[TimingRow]:
        return [await measure(n, gw, args.repeat, _err) for n in counts for gw in gateways]

    started = time.monotonic()
    rows = trio.run(run)
    mininet: list[MininetRow] = []
    if args.mininet:
        problem = mininet_problem()
        if problem:
            _err(f"timing: mininet skipped: {problem}")
        else:
            for n in counts:
                try:
                    mininet.append(measure_mininet(n))
                    _err(f"timing: mininet {n} switches: up {mininet[-1].up_s:.2f} s")
                except (RuntimeError, OSError, ValueError) as e:
                    _err(f"timing: {e}")
                    break
    _err(f"timing: done in {time.monotonic() - started:.1f} s")
    out = timing_json(rows, mininet) if args.json else format_timing(rows, mininet)
    sys.stdout.write(out)
    return EXIT_OK if all(meets_targets(r) for r in rows) else EXIT_FAILED


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netns.bench.timing",
                                     description="Time lab build, start and teardown.")
    add_arguments(parser)
    return cmd_timing(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
