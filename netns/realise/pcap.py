"""Packet captures of a run: one ``tcpdump -w`` per interface, inside the node's namespace.

Flow: 1. ``start``: per capture ``tcpdump -i IF -w DIR/NODE-IF.pcap -U -n
--immediate-mode -Z root`` in the node's namespace (own session, stderr to the
lab's run directory), its kill registered as an undo at once; it is armed when it
prints "listening on" (5 s at most, else one line with tcpdump's own words)
2. ``stop``: SIGINT, so each flushes and closes its file; SIGKILL after a grace
3. ``remove``: the run passed and nobody asked to keep them: the files go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

import trio

from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from netns.describe.pcap import Capture
from netns.realise.nsenter import netns_preexec
from netns.realise.undo import UndoStack

ARMED_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0
LOG_TAIL_LINES = 3


class CaptureError(L2bridgeError):
    """A capture did not start (one line)."""


class Captures:
    """The run's tcpdump processes and the pcap files they write into ``directory``."""

    def __init__(self, captures: Sequence[Capture], directory: str, rundir: str) -> None:
        self.captures = list(captures)
        self.directory = directory
        self.rundir = rundir
        self.children: list[proc.Child] = []

    def paths(self) -> list[str]:
        return [os.path.join(self.directory, c.file_name) for c in self.captures]

    async def start(self, undo: UndoStack) -> None:
        if not self.captures:
            return
        tcpdump = _which("tcpdump")
        os.makedirs(self.directory, exist_ok=True)
        async with trio.open_nursery() as nursery:
            for c in self.captures:
                nursery.start_soon(self._start_one, tcpdump, c, undo)

    async def _start_one(self, tcpdump: str, c: Capture, undo: UndoStack) -> None:
        path = os.path.join(self.directory, c.file_name)
        log_path = os.path.join(self.rundir, f"tcpdump-{c.file_name}.log")
        argv = [tcpdump, "-i", c.ifname, "-w", path, "-U", "-n", "--immediate-mode",
                "-Z", "root"]
        with open(log_path, "ab") as log:
            child = await proc.start(argv, name=f"tcpdump {c}", stdout=subprocess.DEVNULL,
                                     stderr=log, preexec=netns_preexec(c.ns),
                                     error=CaptureError,
                                     detail=proc.log_detail(log_path, LOG_TAIL_LINES))
        undo.push(f"kill tcpdump {c}", child.kill_now)
        self.children.append(child)

        async def armed() -> bool:
            with open(log_path, errors="replace") as f:
                return "listening on" in f.read()

        await child.wait_ready(armed, deadline=trio.current_time() + ARMED_TIMEOUT_S,
                               until="it listened", late="not listening in time")

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for child in self.children:
                    nursery.start_soon(child.stop, signal.SIGINT, STOP_GRACE_S)
        self.children.clear()

    def remove(self) -> None:
        for path in self.paths():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)  # only when empty


def _which(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise CaptureError(f"--pcap needs {program}, which is not on PATH; install it "
                           f"(apt-get install {program})")
    return found
