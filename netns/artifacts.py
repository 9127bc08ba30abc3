"""What a CI run keeps: the topology picture and everything ``lab run --artifacts DIR`` gathers.

``render(plan, path)``: the plan as DOT (``describe/graph.py``) laid out and drawn
by Graphviz (``dot -Tsvg`` or ``-Tpng``, by the file's extension); a missing
``dot`` is one line saying which package brings it.

``lab run --artifacts DIR`` fills ``DIR``:

  report.txt      the table (what ``lab run`` prints)
  report.json     the same as JSON (``--json``)
  junit.xml       one test case per check (``--junit``)
  topology.svg    the picture (and topology.png)
  logs/           every gateway's and relay's log
  show/SITE.json  each gateway's ``show`` at the end of the run, and
                  show/SITE-at-check-N.json at the first failing check
  pcap/           the captures (``--pcap``), kept when the run failed or
                  ``--keep-pcap`` asks
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import trio

from l2bridge.errors import EXIT_USAGE, L2bridgeError
from netns.describe.graph import to_dot
from netns.describe.plan import Plan
from netns.lab import Lab

DOT_TIMEOUT_S = 60.0
SHOW_TIMEOUT_S = 3.0
FORMATS = ("svg", "png")


class GraphError(L2bridgeError):
    """The picture could not be drawn (one line)."""


class GraphUsageError(GraphError):
    exit_status = EXIT_USAGE


def render(plan: Plan, path: str) -> None:
    """Draw ``plan`` into ``path`` (.svg or .png) with Graphviz."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise GraphUsageError(f"{path}: expected a file name ending in .svg or .png")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphUsageError("lab graph needs Graphviz's dot, which is not on PATH; install it "
                              "(apt-get install graphviz)")
    try:
        done = subprocess.run([dot, f"-T{fmt}", "-o", path], input=to_dot(plan), text=True,
                              capture_output=True, timeout=DOT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise GraphError(f"dot: no picture within {DOT_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GraphError(f"dot exited with status {done.returncode}: {last}")


class Artifacts:
    """The artifacts directory of one run (module doc)."""

    def __init__(self, directory: str) -> None:
        self.dir = os.path.abspath(directory)
        self.failure_shown = False

    @property
    def pcap_dir(self) -> str:
        return os.path.join(self.dir, "pcap")

    def prepare(self) -> None:
        os.makedirs(self.dir, exist_ok=True)

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def picture(self, plan: Plan) -> None:
        for fmt in FORMATS:
            render(plan, os.path.join(self.dir, f"topology.{fmt}"))

    def logs(self, plan: Plan) -> None:
        """Copy the gateways' and relays' logs (before the run directory goes)."""
        target = os.path.join(self.dir, "logs")
        os.makedirs(target, exist_ok=True)
        for path in glob.glob(os.path.join(plan.rundir, "*.log")):
            shutil.copy(path, target)
        for path in glob.glob(os.path.join(plan.rundir, "*.toml")):
            shutil.copy(path, target)  # the configs as run (keys live in *.key: not copied)

    async def shows(self, lab: Lab, suffix: str = "") -> None:
        """Each gateway's ``show`` as JSON (``suffix``: ``-at-check-N``); bounded."""
        target = os.path.join(self.dir, "show")
        os.makedirs(target, exist_ok=True)
        for name, gw in lab.gateways.items():
            try:
                with trio.fail_after(SHOW_TIMEOUT_S):
                    doc = await gw.show()
            except Exception as e:  # noqa: BLE001 - a dead gateway is a fact to keep
                doc = {"error": f"{type(e).__name__}: {e}"}
            with open(os.path.join(target, f"{name}{suffix}.json"), "w") as f:
                json.dump(doc, f, indent=1)
