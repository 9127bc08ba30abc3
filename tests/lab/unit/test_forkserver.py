"""The gateways' fork server (``netns/realise/forkserver.py``), without namespaces.

A child of the server must look like ``python -m MODULE ARG...`` started on its
own: its exit status, its log, a session of its own, its command line, no fd of
the server's; and ``proc.Child`` must supervise it as any child (early exit with
the log's tail, SIGKILL, a bounded stop).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap

import pytest
import trio

from netns.realise import forkserver
from netns.realise.forkserver import ForkedProcess, Launcher, LauncherError

BOUND_S = 30

PROBE = """
import json, os, sys, time
with open("/proc/self/cmdline", "rb") as f:
    cmdline = [a.decode() for a in f.read().split(b"\\0") if a]
fds = sorted(os.listdir("/proc/self/fd"))
print(json.dumps({"argv": sys.argv[1:], "cmdline": cmdline, "fds": fds,
                  "session_leader": os.getsid(0) == os.getpid(), "name": __name__}), flush=True)
if sys.argv[1] == "sleep":
    time.sleep(60)
if sys.argv[1] == "raise":
    raise RuntimeError("probe failed on purpose")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def launcher(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    return Launcher(str(tmp_path / "launcher.log"), modules=["json"], env=env,
                    cwd=str(tmp_path))


async def spawn(launcher: Launcher, tmp_path, *args: str):  # type: ignore[no-untyped-def]
    log = str(tmp_path / "child.log")
    child = await launcher.spawn(["-m", "probe", *args], name="probe", netns=None,
                                 log_path=log)
    return child, log


async def test_a_child_is_python_dash_m_with_its_own_status_log_and_session(
        launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(BOUND_S):
        await launcher.start()
        try:
            child, log = await spawn(launcher, tmp_path, "3")
            assert isinstance(child.process, ForkedProcess)
            assert await child.wait() == 3
            assert child.returncode == 3 and not child.running
        finally:
            await launcher.close()
    with open(log) as f:
        seen = json.loads(f.read())
    assert seen["argv"] == ["3"] and seen["name"] == "__main__"
    assert seen["cmdline"] == [sys.executable, "-m", "probe", "3"]
    assert seen["session_leader"]
    assert seen["fds"] == ["0", "1", "2", "3"]  # stdio and the listing's own fd
    assert not launcher.child.running  # type: ignore[union-attr]


async def test_an_exception_is_a_traceback_and_status_1(launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(BOUND_S):
        await launcher.start()
        try:
            child, log = await spawn(launcher, tmp_path, "raise")
            assert await child.wait() == 1
        finally:
            await launcher.close()
    with open(log) as f:
        text = f.read()
    assert "Traceback" in text and "RuntimeError: probe failed on purpose" in text


async def test_sigkill_and_stop_work_as_on_any_child(launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(BOUND_S):
        await launcher.start()
        try:
            killed, _ = await spawn(launcher, tmp_path, "sleep")
            stopped, _ = await spawn(launcher, tmp_path, "sleep")
            assert killed.running and stopped.running
            await killed.stop(signal.SIGKILL)
            assert killed.returncode == -signal.SIGKILL and not killed.group_running()
            await stopped.stop(signal.SIGTERM)
            assert stopped.returncode == -signal.SIGTERM
        finally:
            await launcher.close()


async def test_early_exit_fails_the_ready_probe_with_the_log_tail(launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def never() -> bool:
        return False

    with trio.fail_after(BOUND_S):
        await launcher.start()
        try:
            child, log = await spawn(launcher, tmp_path, "7")
            child.detail = lambda: f"; log {log}: tail"
            with pytest.raises(LauncherError) as info:
                await child.wait_ready(never, deadline=trio.current_time() + BOUND_S)
        finally:
            await launcher.close()
    assert str(info.value) == f"probe: exited before it was ready (exit status 7); log {log}: tail"


async def test_closing_the_launcher_leaves_its_children_running(launcher, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(BOUND_S):
        await launcher.start()
        child, _ = await spawn(launcher, tmp_path, "sleep")
        await launcher.close()
        assert not launcher.child.running  # type: ignore[union-attr]
        assert os.path.exists(f"/proc/{child.pid}")
        os.kill(child.pid, signal.SIGKILL)
        assert await child.wait() == forkserver.LOST_STATUS  # nobody is left to tell


async def test_a_launcher_that_cannot_import_fails_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    launcher = Launcher(str(tmp_path / "launcher.log"), modules=["no_such_module_here"])
    with trio.fail_after(BOUND_S):
        await launcher.start()
        try:
            with pytest.raises(LauncherError) as info:
                await launcher.spawn(["-m", "json"], name="x", netns=None,
                                     log_path=str(tmp_path / "x.log"))
        finally:
            await launcher.close()
    message = str(info.value)
    assert message.startswith("gateway launcher: exited before it was ready (exit status 1); log ")
    assert "No module named 'no_such_module_here'" in message


def test_exit_status_as_python_reports_it() -> None:
    assert [forkserver._exit_status(c) for c in (None, 0, 3, 256 + 4)] == [0, 0, 3, 4]


def test_a_title_that_does_not_fit_changes_nothing() -> None:
    with open("/proc/self/cmdline", "rb") as f:
        before = f.read()
    assert not forkserver.retitle(["x" * (len(before) + 1)])
    with open("/proc/self/cmdline", "rb") as f:
        assert f.read() == before
