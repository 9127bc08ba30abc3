"""Apply a lab's WAN impairments: tbf through pyroute2, nftables through ``nft -f -``,
and the delay relays as processes in the WAN namespace (what is planned in impair.py).

- ``apply_tbf``: a root tbf qdisc on one interface (pyroute2 tc; no ``tc`` binary).
- ``load_nft``: ``nft -f -`` run inside the namespace (``netns_preexec``); the
  ruleset is one table named after the lab's prefix; a failure is one line with
  nft's own first error.  Removing the namespace removes the table.
- ``RelayProcess``: ``python -m netns.realise.relay`` in the WAN namespace, in its own
  session (it outlives the runner of a detached lab), output appended to
  ``RUNDIR/relay-<site>.log``.  ``start`` returns once the relay printed
  ``ready`` (both legs open; an early exit is named with its status and the
  log's tail), ``stop`` is SIGTERM then SIGKILL, bounded, and ``kill_now`` is
  the synchronous undo registered as soon as the process exists
  (``l2bridge.io.proc`` supervises it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import trio
from pyroute2 import IPRoute

from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from netns.describe.impair import AddTbf, NftRuleset, RelayPlan
from netns.realise.nsenter import netns_preexec
from netns.realise.relay import READY_LINE

NFT_TIMEOUT_S = 10.0
RELAY_READY_TIMEOUT_S = 5.0
RELAY_STOP_GRACE_S = 1.0
LOG_TAIL_LINES = 6
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WanError(L2bridgeError):
    """An impairment could not be applied or a relay did not start (one line)."""


def apply_tbf(ipr: IPRoute, index: int, step: AddTbf) -> None:
    ipr.tc("add", "tbf", index=index, handle="1:", rate=f"{step.rate_kbit}kbit",
           burst=step.burst_bytes, latency=f"{step.latency_ms}ms")


def load_nft(step: NftRuleset) -> None:
    """Load ``step.text`` with ``nft -f -`` inside ``step.ns``."""
    nft = shutil.which("nft")
    if nft is None:
        raise WanError(f"{step}: nft is not on PATH; install it (apt-get install nftables)")
    try:
        run = subprocess.run([nft, "-f", "-"], input=step.text, capture_output=True, text=True,
                             preexec_fn=netns_preexec(step.ns), timeout=NFT_TIMEOUT_S,
                             check=False)
    except subprocess.TimeoutExpired:
        raise WanError(f"{step}: nft did not finish within {NFT_TIMEOUT_S:g} s") from None
    if run.returncode != 0:
        first = next((line for line in run.stderr.splitlines() if "Error" in line),
                     run.stderr.strip().splitlines()[0] if run.stderr.strip() else "no output")
        raise WanError(f"{step}: nft exited with status {run.returncode}: {first.strip()}")


class RelayProcess:
    """One running relay (see module doc)."""

    def __init__(self, plan: RelayPlan) -> None:
        self.plan = plan
        self.child: proc.Child | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        with open(self.plan.log_path, "ab") as log:
            self.child = child = await proc.start(
                self.plan.argv(), name=f"relay {self.plan.site}", stdout=subprocess.PIPE,
                stderr=log, preexec=netns_preexec(self.plan.ns), env=env, cwd=PROJECT_ROOT,
                error=WanError, detail=proc.log_detail(self.plan.log_path, LOG_TAIL_LINES),
            )
        stdout = child.process.stdout
        assert stdout is not None
        seen = bytearray()

        async def printed_ready() -> bool:
            seen.extend(await stdout.receive_some(64))  # b"" once it closed stdout or exited
            first, newline, _ = seen.partition(b"\n")
            return bool(newline) and first.decode(errors="replace") == READY_LINE

        try:
            await child.wait_ready(printed_ready,
                                   deadline=trio.current_time() + RELAY_READY_TIMEOUT_S,
                                   late=f"not ready within {RELAY_READY_TIMEOUT_S:g} s")
        except WanError:
            child.kill_now()
            raise
        finally:
            await stdout.aclose()

    def kill_now(self) -> None:
        """SIGKILL to its process group (the undo; ``stop`` is the graceful way)."""
        if self.child is not None:
            self.child.kill_now()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop(signal.SIGTERM, grace_s=RELAY_STOP_GRACE_S)
