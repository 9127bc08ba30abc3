"""Child processes under supervision: start, wait until ready, stop, kill.

One ``Child`` per supervised process, used by the site (its follower workers)
and by the lab (gateways, delay relays, tools in namespaces).  Flow:

 1. ``start(argv, name=...)``: the child always leads its own session, so its
    process group is its own: a signal reaches it and whatever it started in
    its group, and a terminal's Ctrl-C reaches only the parent (which then
    stops it in order).
    Inherited fds (``pass_fds``), a pre-exec hook (entering a namespace),
    stdin/stdout/stderr targets (stdin defaults to /dev/null), env and cwd
    are passed through.
 2. ``wait_ready(probe, deadline=...)``: await ``probe()`` until it returns
    True.  Each miss checks whether the child exited, then sleeps ``poll_s``;
    the probe itself is cancelled at the deadline.  Failure is one line:
    ``NAME: exited before UNTIL (exit status N)DETAIL`` or ``NAME: LATEDETAIL``,
    where ``DETAIL`` is what the caller wants shown (``log_detail``: the tail
    of its log), raised as the caller's error class.
 3. ``stop(sig, grace_s)``, graceful and bounded, inside a shielded cancel
    scope (cancellation cannot leave a child behind): ``sig`` to the group
    (``None`` when the caller already asked it to exit some other way), up to
    ``grace_s`` for it to exit, SIGKILL to the group, reaped (bounded), then
    wait (bounded) until no member of the group still runs.
 4. ``kill_now()``: SIGKILL to the group at once, synchronous, for undo
    stacks; reaping is left to ``stop`` or to the parent's exit.
 5. ``group_running(pgid)``: whether any member of a group still runs
    (zombies do not count).

Invariant: the group's id is the child's pid (step 1), and the kernel keeps
that id from being reused while any member of the group lives.

A ``Child`` supervises any ``Process`` (pid, poll, wait): a ``trio.Process``
from ``start``, or a process another one started for us (the lab's gateways
come from a fork server: ``netns/realise/forkserver.py``), as long as it leads
its own session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, Generic, Protocol, TypeVar

import trio

from l2bridge.errors import L2bridgeError

READY_POLL_S = 0.05  # how often a starting child's readiness is probed
STOP_GRACE_S = 1.0  # default time to exit after each signal of ``stop``

# Where a standard stream goes: a file (or its fd), subprocess.DEVNULL/PIPE/STDOUT,
# or None (the parent's own).
Target = int | IO[Any] | None
Probe = Callable[[], Awaitable[bool]]
Detail = Callable[[], str]


class Process(Protocol):
    """What ``Child`` needs of a process: ``trio.Process`` has it."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    async def wait(self) -> int: ...


P = TypeVar("P", bound=Process)


class ChildError(L2bridgeError):
    """A child process did not become ready; the message names it and why."""


def log_tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path``, indented under an error line."""
    try:
        with open(path, errors="replace") as f:
            tail = f.read().splitlines()[-lines:]
    except OSError:
        return " (no log)"
    return "".join(f"\n  | {line}" for line in tail) if tail else " (empty)"


def log_detail(path: str, lines: int) -> Detail:
    """A ``detail`` for errors: ``; log PATH:`` and the last ``lines`` lines of it."""
    return lambda: f"; log {path}:{log_tail(path, lines)}"


def group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def start(
    argv: Sequence[str],
    *,
    name: str,
    pass_fds: Sequence[int] = (),
    preexec: Callable[[], None] | None = None,
    stdin: Target = subprocess.DEVNULL,
    stdout: Target = None,
    stderr: Target = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    error: type[L2bridgeError] = ChildError,
    detail: Detail | None = None,
) -> Child[trio.Process]:
    """Start ``argv`` as the leader of a new session (flow step 1).

    ``name`` opens every error line about it; ``error`` is the class those
    errors are raised as, and ``detail()`` ends them.
    """
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        preexec_fn=preexec,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    return Child(process, name, error=error, detail=detail)


class Child(Generic[P]):
    """One supervised child process leading its own session (see module doc)."""

    def __init__(self, process: P, name: str, *,
                 error: type[L2bridgeError] = ChildError, detail: Detail | None = None) -> None:
        self.process = process
        self.name = name
        self.error = error
        self.detail = detail

    @property
    def pid(self) -> int:
        """Its pid, which is also its process group's id."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited (negative: killed by that signal), else None."""
        return self.process.poll()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    async def wait(self) -> int:
        """Until it exits; its exit status."""
        return await self.process.wait()

    def failure(self, what: str) -> L2bridgeError:
        """``NAME: WHAT (exit status N)DETAIL`` as the child's error class (status if exited)."""
        status = self.returncode
        exited = "" if status is None else f" (exit status {status})"
        detail = self.detail() if self.detail is not None else ""
        return self.error(f"{self.name}: {what}{exited}{detail}")

    async def wait_ready(self, probe: Probe, *, deadline: float, until: str = "it was ready",
                         late: str = "not ready in time", poll_s: float = READY_POLL_S) -> None:
        """Until ``await probe()`` is True (flow step 2).

        Fails with ``failure(f"exited before {until}")`` when the child exits
        first, and with ``failure(late)`` when ``deadline`` passes first.
        """
        with trio.move_on_at(deadline):
            while not await probe():
                if not self.running:
                    raise self.failure(f"exited before {until}")
                await trio.sleep(poll_s)
            return
        if not self.running:
            raise self.failure(f"exited before {until}")
        raise self.failure(late)

    async def stop(self, sig: int | None = signal.SIGTERM,
                   grace_s: float = STOP_GRACE_S) -> None:
        """Signal, grace, SIGKILL, reap, until its group is gone; shielded, bounded (step 3).

        ``sig=None``: the caller has already asked it to exit (say, by closing
        its channel); it only gets the grace.  Each wait is at most ``grace_s``.
        """
        with trio.CancelScope(shield=True):
            if self.running and sig != signal.SIGKILL:
                if sig is not None:
                    self._signal_group(sig)
                with trio.move_on_after(grace_s):
                    await self.process.wait()
            self._signal_group(signal.SIGKILL)  # members that outlived or ignored it, too
            with trio.move_on_after(grace_s):
                await self.process.wait()
            # SIGKILL is asynchronous: wait (bounded) until no member still runs.
            with trio.move_on_after(grace_s):
                while group_running(self.pid):
                    await trio.sleep(READY_POLL_S)

    def kill_now(self) -> None:
        """SIGKILL to the whole group, now (flow step 4: an undo that cannot wait)."""
        self._signal_group(signal.SIGKILL)

    def group_running(self) -> bool:
        """Whether any member of its group still runs, itself included (not as a zombie)."""
        return group_running(self.pid)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


__all__ = ["Child", "ChildError", "Process", "group_running", "log_detail", "log_tail",
           "start"]
