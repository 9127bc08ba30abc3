"""Apply a lab's WAN impairments: tbf through pyroute2, nftables through ``nft -f -``,
and the delay relays as processes in the WAN namespace (what is planned in impair.py).

- ``apply_tbf``: a root tbf qdisc on one interface (pyroute2 tc; no ``tc`` binary).
- ``load_nft``: ``nft -f -`` run inside the namespace (``netns_preexec``); the
  ruleset is one table named after the lab's prefix; a failure is one line with
  nft's own first error.  Removing the namespace removes the table.
- ``RelayProcess``: ``python -m netns.realise.relay`` in the WAN namespace, in its own
  session (it outlives the runner of a detached lab), output appended to
  ``RUNDIR/relay-<site>.log``.  ``start`` returns once the relay printed
  ``ready`` (both legs open), ``stop`` is SIGTERM then SIGKILL, bounded, and
  ``kill_now`` is the synchronous undo registered as soon as the process exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import trio
from pyroute2 import IPRoute

from l2bridge.errors import L2bridgeError
from netns.describe.impair import AddTbf, NftRuleset, RelayPlan
from netns.realise.nsenter import netns_preexec
from netns.realise.proclog import log_tail
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
        self.process: trio.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        with open(self.plan.log_path, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                self.plan.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=log, preexec_fn=netns_preexec(self.plan.ns), start_new_session=True,
                env=env, cwd=PROJECT_ROOT,
            )
        stdout = self.process.stdout
        assert stdout is not None
        seen = b""
        with trio.move_on_after(RELAY_READY_TIMEOUT_S):
            while b"\n" not in seen:
                chunk = await stdout.receive_some(64)
                if not chunk:
                    break
                seen += chunk
        await stdout.aclose()
        if seen.split(b"\n")[0].decode(errors="replace") != READY_LINE:
            self.kill_now()
            raise WanError(f"relay {self.plan.site}: not ready within "
                           f"{RELAY_READY_TIMEOUT_S:g} s; log {self.plan.log_path}:"
                           f"{self.log_tail()}")

    def kill_now(self) -> None:
        """SIGKILL, if still running (the undo; ``stop`` is the graceful way)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    async def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(RELAY_STOP_GRACE_S):
            await proc.wait()
            return
        proc.kill()
        with trio.move_on_after(RELAY_STOP_GRACE_S):
            await proc.wait()

    def log_tail(self) -> str:
        return log_tail(self.plan.log_path, LOG_TAIL_LINES)
