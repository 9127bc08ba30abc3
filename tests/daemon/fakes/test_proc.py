"""Supervised children (``l2bridge.io.proc``) with plain ``python -c`` children (no root).

A child tells the test it is ready by writing a file (its pid, or a grandchild's,
on the first line); probes read that file, so no test sleeps to wait for a child.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from l2bridge.errors import L2bridgeError
from l2bridge.io import proc

STEP_TIMEOUT_S = 20.0  # a wait for something that must happen: clearly broken past this
SHORT_S = 0.3  # a deadline or grace that is meant to pass

# Prelude of every child: ``ready(text)`` writes the ready file named by argv[1].
PRELUDE = """
import os, signal, subprocess, sys, time
def ready(text=""):
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(text + "\\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""


SLEEPS = "ready(); time.sleep(60)"
IGNORES_SIGTERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN); ready(); time.sleep(60)"


def python(body: str, tmp_path: Path, *args: str) -> list[str]:
    """``python -c PRELUDE+body``, its ready file ``tmp_path/ready``, then ``args``."""
    return [sys.executable, "-c", PRELUDE + body, str(tmp_path / "ready"), *args]


def written(path: Path) -> proc.Probe:
    async def probe() -> bool:
        return path.exists()
    return probe


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class SiteError(L2bridgeError):
    """Stands in for a caller's own error family (GatewayError, WanError, ...)."""


async def started(body: str, tmp_path: Path) -> proc.Child:
    """Start ``python(body)`` and wait until it wrote its ready file."""
    child = await proc.start(python(body, tmp_path), name="sleeper")
    await child.wait_ready(written(tmp_path / "ready"),
                           deadline=trio.current_time() + STEP_TIMEOUT_S)
    return child


# --- start -----------------------------------------------------------------------


async def test_a_child_leads_its_own_session_with_the_given_env_cwd_and_hook(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    body = ("print(os.getsid(0), os.getpgid(0), os.environ['L2B_TEST'], os.getcwd(),"
            " oct(os.umask(0)), flush=True); ready()")
    with trio.fail_after(STEP_TIMEOUT_S), open(out, "wb") as sink:
        child = await proc.start(python(body, tmp_path), name="sleeper", stdout=sink,
                                 env={"L2B_TEST": "yes"}, cwd=str(tmp_path),
                                 preexec=lambda: os.umask(0o027))
        assert await child.wait() == 0
    sid, pgid, env, cwd, umask = out.read_text().split()
    assert int(sid) == int(pgid) == child.pid
    assert (env, cwd, umask) == ("yes", str(tmp_path), oct(0o027))


async def test_only_the_passed_fds_are_inherited(tmp_path: Path) -> None:
    passed_r, passed_w = os.pipe()
    kept_r, kept_w = os.pipe()
    body = """
os.write(int(sys.argv[2]), b"hello")
try:
    os.write(int(sys.argv[3]), b"leak")
except OSError:
    sys.exit(0)
sys.exit(1)
"""
    try:
        with trio.fail_after(STEP_TIMEOUT_S):
            child = await proc.start(python(body, tmp_path, str(passed_w), str(kept_w)),
                                     name="writer", pass_fds=[passed_w])
            assert await child.wait() == 0
        assert os.read(passed_r, 16) == b"hello"
    finally:
        for fd in (passed_r, passed_w, kept_r, kept_w):
            os.close(fd)


# --- ready -----------------------------------------------------------------------


async def test_ready_when_the_probe_says_so(tmp_path: Path) -> None:
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await started(SLEEPS, tmp_path)
        assert child.running and child.returncode is None
        await child.stop()
    assert child.returncode == -signal.SIGTERM
    assert not child.group_running()


async def test_an_early_exit_is_named_with_its_status_and_log(tmp_path: Path) -> None:
    log_path = tmp_path / "sleeper.log"
    body = "print('no config here', file=sys.stderr); sys.exit(3)"
    with trio.fail_after(STEP_TIMEOUT_S), open(log_path, "ab") as log:
        child = await proc.start(python(body, tmp_path), name="sleeper", stderr=log,
                                 detail=proc.log_detail(str(log_path), 4))
        with pytest.raises(proc.ChildError) as caught:
            await child.wait_ready(written(tmp_path / "ready"),
                                   deadline=trio.current_time() + STEP_TIMEOUT_S)
    assert str(caught.value) == (f"sleeper: exited before it was ready (exit status 3); "
                                 f"log {log_path}:\n  | no config here")


async def test_not_ready_by_the_deadline_is_the_callers_error(tmp_path: Path) -> None:
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await proc.start(python("time.sleep(60)", tmp_path), name="sleeper",
                                 error=SiteError)
        try:
            with pytest.raises(SiteError, match=r"^sleeper: control socket did not answer$"):
                await child.wait_ready(written(tmp_path / "ready"),
                                       deadline=trio.current_time() + SHORT_S,
                                       late="control socket did not answer")
            assert child.running  # waiting does not stop it: the caller decides
        finally:
            await child.stop()
    assert child.returncode == -signal.SIGTERM


async def test_a_probe_that_blocks_is_cancelled_at_the_deadline(tmp_path: Path) -> None:
    async def never() -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.fail_after(STEP_TIMEOUT_S):
        child = await proc.start(python("time.sleep(60)", tmp_path), name="sleeper")
        try:
            with pytest.raises(proc.ChildError, match=r"^sleeper: not ready in time$"):
                await child.wait_ready(never, deadline=trio.current_time() + SHORT_S)
        finally:
            await child.stop()


# --- stop ------------------------------------------------------------------------


async def test_stop_lets_the_child_exit_by_itself(tmp_path: Path) -> None:
    body = """
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
ready()
time.sleep(60)
"""
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await started(body, tmp_path)
        await child.stop(signal.SIGTERM, grace_s=STEP_TIMEOUT_S)
    assert child.returncode == 7


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await started(IGNORES_SIGTERM, tmp_path)
        before = trio.current_time()
        await child.stop(signal.SIGTERM, grace_s=SHORT_S)
    assert trio.current_time() - before >= SHORT_S
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("leader", ["stays", "exits first"])
async def test_stop_takes_the_whole_group(tmp_path: Path, leader: str) -> None:
    # The grandchild ignores SIGTERM: only the SIGKILL to the group reaches it.
    grandchild = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                  " time.sleep(60)")
    body = f"""
p = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
ready(str(p.pid))
{"time.sleep(60)" if leader == "stays" else "os._exit(0)"}
"""
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await started(body, tmp_path)
        grandchild_pid = int((tmp_path / "ready").read_text())
        assert os.getpgid(grandchild_pid) == child.pid
        await child.stop(signal.SIGTERM, grace_s=STEP_TIMEOUT_S / 4)
    assert child.returncode is not None
    assert not child.group_running()
    assert gone(grandchild_pid)


async def test_a_cancelled_stop_still_finishes(tmp_path: Path) -> None:
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await started(IGNORES_SIGTERM, tmp_path)
        with trio.CancelScope() as scope:
            scope.cancel()  # already cancelled as the stop begins
            await child.stop(signal.SIGTERM, grace_s=SHORT_S)
    assert child.returncode == -signal.SIGKILL
    assert not child.group_running()


async def test_stop_without_a_signal_only_gives_the_grace(tmp_path: Path) -> None:
    # As the leader of the site's workers does: it closed the channel, the child may exit.
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await proc.start(python("sys.exit(4)", tmp_path), name="worker 1")
        await child.stop(None, grace_s=STEP_TIMEOUT_S)
    assert child.returncode == 4


# --- kill_now --------------------------------------------------------------------


async def test_kill_now_sends_sigkill_at_once(tmp_path: Path) -> None:
    with trio.fail_after(STEP_TIMEOUT_S):
        child = await started(IGNORES_SIGTERM, tmp_path)
        child.kill_now()
        assert await child.wait() == -signal.SIGKILL
        child.kill_now()  # gone already: nothing to do, no error
    assert not child.group_running()
