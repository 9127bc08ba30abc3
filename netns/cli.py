"""``l2bridge lab``: run scenarios, keep labs up, enter them, list and clean them.

Exit status: 0 every check passed (or the command did its job); 1 a check failed
or the lab could not come up; 2 bad input, not root, or a missing program (nothing
was created); 130 / 143 interrupted by SIGINT / SIGTERM (after a full teardown).

Progress goes to stderr, results (table or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import trio

from l2bridge.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, L2bridgeError, sole_cause
from netns import rootless
from netns.artifacts import Artifacts, render
from netns.bench import runner as bench
from netns.bench import timing
from netns.checks.junit import to_junit
from netns.checks.report import CheckResult, format_table, make_report, to_json
from netns.describe import pcap as pcap_spec
from netns.describe.plan import (
    PREFIX_SHAPE,
    VXLAN_OVERHEAD_V4,
    VXLAN_OVERHEAD_V6,
    is_prefix,
    make_plan,
    new_prefix,
)
from netns.describe.scenario import GATEWAY_MODES, MAX_MTU, MIN_MTU, ScenarioError, load_scenario
from netns.lab import PreflightError, open_lab
from netns.realise.nsenter import netns_path, netns_preexec
from netns.realise.registry import (
    clean,
    destroy,
    list_labs,
    owner_alive,
    owns_namespace,
    read_state,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2bridge lab",
        description="Build multi-site layer-2 labs in network namespaces and check them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("scenario", metavar="SCENARIO", help="scenario file (.toml)")
        p.add_argument("--gateway", choices=GATEWAY_MODES,
                       help="override the scenario's gateway mode")
        p.add_argument("--wan-mtu", type=int, metavar="BYTES",
                       help=f"override wan.mtu ({MIN_MTU}..{MAX_MTU})")

    p = sub.add_parser("run", help="build, run the checks, report, tear down")
    scenario_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true",
                   help="leave the lab up afterwards (remove it with `lab down NAME`)")
    p.add_argument("--compare", choices=["vxlan"],
                   help="afterwards, rerun the iperf3 checks with kernel VXLAN gateways in the "
                        "same topology and report the throughput ratio")
    p.add_argument("--junit", metavar="FILE", help="write the report as JUnit XML (one test "
                                                   "case per check)")
    p.add_argument("--pcap", action="append", default=[], metavar="NODE:IF",
                   help='capture an interface with tcpdump, e.g. london.gw:eth1 (repeatable; '
                        '"all": every host and gateway interface); kept when the run fails')
    p.add_argument("--keep-pcap", action="store_true",
                   help="keep the captures even when every check passed")
    p.add_argument("--artifacts", metavar="DIR",
                   help="gather the report, JSON, JUnit, topology picture, logs, each "
                        "gateway's show and the captures in DIR")
    p = sub.add_parser("graph", help="draw the scenario's topology (Graphviz; no root needed)")
    scenario_args(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE.svg|FILE.png")
    p = sub.add_parser("up", help="build a lab and leave it up; prints its name")
    scenario_args(p)
    p = sub.add_parser("plan", help="print the names, addresses and steps (no root needed)")
    scenario_args(p)
    p = sub.add_parser("down", help="remove a lab (one made by `up` or `run --keep`)")
    p.add_argument("name", metavar="NAME")
    p = sub.add_parser("exec", help="run a command in a node of a lab")
    p.add_argument("name", metavar="NAME")
    p.add_argument("node", metavar="NODE", help='"site.host", "site.gw", "site.sw" or "wan"')
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    sub.add_parser("list", help="list labs on this machine")
    sub.add_parser("clean", help="remove labs whose owning process is dead")
    p = sub.add_parser("timing", help="time build, start and teardown of generated meshes "
                                      "of 2..N sites (and Mininet with --mininet)")
    timing.add_arguments(p)
    p = sub.add_parser("bench", help="benchmark l2bridge (encrypted and insecure) against "
                                     "kernel VXLAN and a direct veth, interleaved")
    bench.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    if os.geteuid() != 0 and not rootless.inside() and args.command in ROOTLESS:
        handler = functools.partial(_rootless, argv)
    try:
        try:
            return handler(args)
        except BaseExceptionGroup as group:  # a failure inside a nursery: name the cause
            cause = sole_cause(group)
            if cause is group:
                raise
            raise cause from None
    except L2bridgeError as e:  # every error a user can see: one line, its exit status
        _err(str(e))
        return e.exit_status


# ---------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _plan(args)
    print("\n".join(plan.describe()))
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    plan = _plan(args)
    render(plan, args.output)
    _err(f"lab graph: {plan.scenario.name} drawn in {args.output}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    scenario = load_scenario(args.scenario)
    plan = _plan(args, scenario)  # validate the file, overrides and names before anything exists
    pcap_spec.resolve(plan, scenario.pcap, "lab.pcap")
    pcap_spec.resolve(plan, args.pcap, "--pcap")
    _need_root()
    artifacts = Artifacts(args.artifacts) if args.artifacts else None
    if artifacts is not None:
        artifacts.prepare()
        artifacts.picture(plan)

    async def body() -> int:
        pcap_dir = artifacts.pcap_dir if artifacts is not None else None
        async with open_lab(scenario, gateway=args.gateway, wan_mtu=args.wan_mtu,
                            keep=args.keep, progress=_err, pcap=args.pcap,
                            prefix=os.environ.get(rootless.PREFIX_ENV),
                            pcap_dir=pcap_dir) as lab:
            if artifacts is not None:
                seen: list[int] = []

                async def snapshot(result: CheckResult) -> None:
                    if not seen:  # the first failure only: bounded
                        seen.append(result.index)
                        await artifacts.shows(lab, f"-at-check-{result.index}")

                lab.on_failure = snapshot
            started = time.monotonic()
            results = await lab.run_checks()
            lab.timings["checks_s"] = time.monotonic() - started
            if artifacts is not None:
                await artifacts.shows(lab)
                artifacts.logs(lab.plan)
            if args.keep:
                _kept_hint(lab.name, lab.hosts()[0].ref)
        if args.compare:
            results += await _compare(scenario, args, results)
        report = make_report(lab.name, scenario, lab.plan.gateway, len(lab.hosts()),
                             results, lab.timings, lab.event_results)
        captures = lab.captures
        if captures.captures:
            if report.ok and not args.keep_pcap:
                captures.remove()
                _err(f"lab {lab.name}: every check passed: captures removed (--keep-pcap "
                     "keeps them)")
            else:
                _err(f"lab {lab.name}: captures kept in {captures.directory}")
        text = format_table(report)
        out.write(to_json(report) if args.json else text)
        out.flush()
        if args.junit:
            _write(args.junit, to_junit(report))
        if artifacts is not None:
            artifacts.write("report.txt", text)
            artifacts.write("report.json", to_json(report))
            artifacts.write("junit.xml", to_junit(report))
            _err(f"lab {lab.name}: artifacts in {artifacts.dir}")
        return EXIT_OK if report.ok else EXIT_FAILED

    return _run_guarded(body)


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise PreflightError(f"{path}: cannot write: {e.strerror or e}") from None


async def _compare(scenario: Any, args: argparse.Namespace,
                   results: list[CheckResult]) -> list[CheckResult]:
    """Rerun the iperf3 checks with VXLAN gateways; rows carry the ratio to the first run."""
    selected = [c for c in scenario.checks if c.kind == "iperf3"]
    if not selected:
        return []
    overhead = VXLAN_OVERHEAD_V4 if scenario.ipv4_wan else VXLAN_OVERHEAD_V6
    wan_mtu = max(args.wan_mtu or scenario.wan.mtu, scenario.lan.mtu + overhead)
    first = {r.index: r for r in results}
    rows = []
    async with open_lab(scenario, gateway=args.compare, wan_mtu=wan_mtu, progress=_err) as ref:
        for r in await ref.run_checks(selected):
            mine = first[r.index].numbers.get("mbit_s")
            theirs = r.numbers.get("mbit_s")
            numbers = dict(r.numbers)
            summary = f"{r.summary} (reference, wan mtu {wan_mtu})"
            if mine is not None and theirs:
                numbers["ratio"] = round(mine / theirs, 4)
                summary += f"; first run / {args.compare} = {mine / theirs:.3f}"
            rows.append(dataclasses.replace(r, name=f"{r.name} [{args.compare}]",
                                            summary=summary, numbers=numbers))
    return rows


def cmd_up(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    _plan(args, scenario)
    _need_root()

    async def body() -> int:
        async with open_lab(scenario, gateway=args.gateway, wan_mtu=args.wan_mtu,
                            keep=True, detached=True, progress=_err,
                            prefix=os.environ.get(rootless.PREFIX_ENV)) as lab:
            print(lab.name)
            _kept_hint(lab.name, lab.hosts()[0].ref)
            return EXIT_OK

    return _run_guarded(body)


def cmd_down(args: argparse.Namespace) -> int:
    if not _lab_name_ok("down", args.name):
        return EXIT_USAGE
    _need_root()
    state = read_state(args.name)
    if state is None:
        _err(f"lab {args.name}: no such lab (see `l2bridge lab list`)")
        return EXIT_USAGE
    if not state.detached and owner_alive(state):
        _err(f"lab {args.name}: owned by running process {state.pid}, which removes it when it "
             f"ends; stop that process instead")
        return EXIT_FAILED
    problems = destroy(state)
    for problem in problems:
        _err(f"lab {args.name}: {problem}")
    _err(f"lab {args.name}: removed ({len(state.namespaces)} namespaces)")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    if not _lab_name_ok("exec", args.name):
        return EXIT_USAGE
    _need_root()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        _err("exec: give the command after --, e.g. `l2bridge lab exec NAME london.h1 -- ip a`")
        return EXIT_USAGE
    state = read_state(args.name)
    if state is None:
        _err(f"lab {args.name}: no such lab (see `l2bridge lab list`)")
        return EXIT_USAGE
    ns = state.nodes.get(args.node)
    if ns is None:
        _err(f'lab {args.name}: no node "{args.node}" (one of: {", ".join(state.nodes)})')
        return EXIT_USAGE
    if not owns_namespace(state.prefix, ns):
        _err(f'lab {args.name}: node "{args.node}" is namespace {ns!r}, which is not one of '
             f"the lab's ({state.prefix}-…); its state file is damaged, not entering it")
        return EXIT_FAILED
    if not os.path.exists(netns_path(ns)):
        _err(f"lab {args.name}: namespace {ns} is gone (the lab is being removed?)")
        return EXIT_FAILED
    enter = netns_preexec(ns)

    def preexec() -> None:
        enter()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the command
    try:
        status = subprocess.call(cmd, preexec_fn=preexec)
        return 128 - status if status < 0 else status  # killed by signal N: 128 + N
    except FileNotFoundError:
        _err(f"exec: {cmd[0]}: command not found")
        return 127
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_list(args: argparse.Namespace) -> int:
    labs = list_labs()
    if not labs:
        print("no labs")
        return EXIT_OK
    rows = [("NAME", "SCENARIO", "GATEWAY", "OWNER", "NAMESPACES", "CREATED")]
    for s in labs:
        if s.detached:
            owner = "detached"
        else:
            owner = f"pid {s.pid} " + ("running" if owner_alive(s) else "dead")
        alive = sum(1 for ns in s.namespaces if os.path.exists(netns_path(ns)))
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created))
        rows.append((s.prefix, s.scenario, s.gateway, owner, str(alive), created))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    _need_root()
    removed = clean()
    for s in removed:
        print(f"removed {s.prefix} ({s.scenario}, owner pid {s.pid} dead, "
              f"{len(s.namespaces)} namespaces)")
    if not removed:
        print("nothing to clean")
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "up": cmd_up,
    "plan": cmd_plan,
    "graph": cmd_graph,
    "down": cmd_down,
    "exec": cmd_exec,
    "list": cmd_list,
    "clean": cmd_clean,
    "timing": lambda args: timing.cmd_timing(args),
    "bench": lambda args: cmd_bench(args),
}


def cmd_bench(args: argparse.Namespace) -> int:
    _need_root()
    return bench.cmd_bench(args, _run_guarded)


# ---------------------------------------------------------------- rootless

ROOTLESS = ("run", "up", "exec", "down", "list", "clean", "timing", "bench")


def _rootless(argv: list[str], args: argparse.Namespace) -> int:
    """Without root: the command in a user namespace of its own (``netns/rootless.py``)."""
    if args.command == "list":
        labs = rootless.pointers()
        if not labs:
            print("no labs")
        for d in labs:
            state = "running" if d["alive"] else "dead"
            print(f"{d['prefix']}  {d['scenario']}  {d['command']}  pid {d['pid']} {state}  "
                  f"(rootless, in {rootless.state_root()})")
        return EXIT_OK
    if args.command == "clean":
        for d in rootless.clean():
            print(f"removed {d['prefix']} ({d['scenario']}, runner pid {d['pid']} dead; the "
                  "kernel removed its namespaces with it)")
        return EXIT_OK
    if args.command in ("down", "exec"):
        if not _lab_name_ok(args.command, args.name):
            return EXIT_USAGE
        return rootless.down(args.name) if args.command == "down" else rootless.exec_in(
            args.name, argv)
    scenario_path = "-"
    if args.command in ("run", "up"):
        scenario = load_scenario(args.scenario)
        plan = _plan(args, scenario)  # bad input: exit 2 before anything exists
        if args.command == "run":
            pcap_spec.resolve(plan, scenario.pcap, "lab.pcap")
            pcap_spec.resolve(plan, args.pcap, "--pcap")
        tagged = [n.ref for n in plan.hosts() if n.vlan is not None]
        if tagged:
            raise PreflightError(
                f"VLAN hosts ({tagged[0]}, …) need root: their switch ports load BPF "
                "programs, which takes CAP_BPF in the initial user namespace; run as root")
        scenario_path = args.scenario
    if args.command == "timing" and args.mininet:
        raise PreflightError("timing --mininet needs root: Mininet runs its own tools "
                             "(mnexec, brctl) in the caller's namespaces; run as root")
    problem = rootless.userns_problem()
    if problem:
        raise PreflightError(problem)
    name = new_prefix()
    if args.command == "up":
        return rootless.up(argv, name, scenario_path)
    return rootless.run(argv, name, scenario_path)


# ---------------------------------------------------------------- helpers


def _run_guarded(body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body`` under trio; SIGINT/SIGTERM cancel it (teardown runs) → 130/143."""
    got: list[int] = []

    async def watch(scope: trio.CancelScope, *, task_status: Any = trio.TASK_STATUS_IGNORED
                    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:  # later signals are swallowed: teardown finishes
                if not got:
                    got.append(signum)
                    _err(f"{signal.Signals(signum).name}: tearing down …")
                    scope.cancel()

    async def guarded() -> int:
        status = EXIT_FAILED
        async with trio.open_nursery() as nursery:
            work = trio.CancelScope()
            await nursery.start(watch, work)
            try:
                with work:
                    status = await body()
            finally:
                nursery.cancel_scope.cancel()
        return status

    status = trio.run(guarded)
    if got:
        return 128 + got[0]
    return status


def _plan(args: argparse.Namespace, scenario: Any = None) -> Any:
    if args.wan_mtu is not None and not MIN_MTU <= args.wan_mtu <= MAX_MTU:
        raise ScenarioError(args.scenario, "--wan-mtu",
                            f"expected {MIN_MTU}..{MAX_MTU}, found {args.wan_mtu}")
    scenario = scenario or load_scenario(args.scenario)
    return make_plan(scenario, prefix=new_prefix(), gateway=args.gateway, wan_mtu=args.wan_mtu)


def _lab_name_ok(command: str, name: str) -> bool:
    """A lab name is one path component of the run directory: anything else is refused."""
    if is_prefix(name):
        return True
    _err(f"lab {command}: {name!r} is not a lab name (expected {PREFIX_SHAPE}; "
         "see `l2bridge lab list`)")
    return False


def _need_root() -> None:
    if os.geteuid() != 0:
        raise PreflightError("this command needs root (network namespaces); run it with sudo")


def _kept_hint(name: str, host: str) -> None:
    _err(f"lab {name} is up: enter a host with `l2bridge lab exec {name} {host} -- bash`; "
         f"remove it with `l2bridge lab down {name}`")


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
