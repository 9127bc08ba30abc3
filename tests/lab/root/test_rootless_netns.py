"""Rootless labs (the suite runs as root; these tests drop to ``nobody``).

An unprivileged user needs an interpreter and code it can read: root's own Python
may live where others cannot read, and so may the clone.  The fixture builds a
second venv from Debian's /usr/bin/python3 in a world-readable temporary
directory, with the runtime dependencies and a copy of ``l2bridge/``, ``netns/``
and ``scenarios/``, and removes it at the end of the session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from support import REPO

SYSTEM_PYTHON = "/usr/bin/python3"
DEPENDENCIES = ["trio>=0.25", "pyroute2>=0.9", "cryptography>=41", "prometheus_client>=0.17"]
USER = "nobody"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "drops from root to nobody"
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        return "needs setpriv and unshare (util-linux)"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"needs {SYSTEM_PYTHON} for a venv others can read"
    mode = os.stat("/dev/net/tun").st_mode
    if not mode & stat.S_IROTH or not mode & stat.S_IWOTH:
        return "/dev/net/tun is not open to other users (tools/setup makes it 0666)"
    return None


@pytest.fixture(scope="session")
def readable() -> Iterator[str]:
    """A world-readable directory with a venv (``venv/bin/python``) and the code."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tempfile.mkdtemp(prefix="l2b-rootless-")
    try:
        os.chmod(root, 0o755)
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", f"{root}/venv"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([f"{root}/venv/bin/pip", "install", "-q", "--disable-pip-version-check",
                        *DEPENDENCIES], check=True, capture_output=True, timeout=300)
        for part in ("l2bridge", "netns", "scenarios"):
            shutil.copytree(os.path.join(REPO, part), os.path.join(root, part),
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", root], check=True)
        yield root
    except subprocess.CalledProcessError as e:
        pytest.skip(f"no venv for {USER}: {e.stderr.decode(errors='replace')[-200:]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_nobody(root: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "PYTHONPATH": root}
    gid = pwd.getpwnam(USER).pw_gid
    return subprocess.Popen(["setpriv", f"--reuid={USER}", f"--regid={gid}", "--clear-groups",
                             f"{root}/venv/bin/python", "-m", "netns", *args], env=env,
                            cwd="/tmp", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)  # type: ignore[call-overload]


def run_nobody(root: str, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    p = as_nobody(root, *args)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def nobody_processes() -> list[str]:
    out = subprocess.run(["ps", "-u", USER, "-o", "pid=,args="], capture_output=True,
                         text=True, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.mark.slow
def test_failover_passes_as_nobody_and_leaves_nothing(readable: str) -> None:
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    status, out, err = run_nobody(readable, "run", f"{readable}/scenarios/failover.toml")
    assert status == 0, out + err[-2000:]
    assert "PASS: 7/7 checks passed" in out
    assert nobody_processes() == []
    name = out.split(" — lab ", 1)[1].split(",", 1)[0]
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    # Its namespaces were never the machine's: none of its name appeared here (other
    # labs may come and go meanwhile: only this one's prefix is looked for).
    assert [ns for ns in after - before if ns.startswith(name)] == []
    status, out, _ = run_nobody(readable, "list")
    assert status == 0 and name not in out


@pytest.mark.slow
def test_sigkill_of_a_rootless_runner_leaves_nothing(readable: str) -> None:
    p = as_nobody(readable, "run", f"{readable}/scenarios/flaky-wan.toml")
    deadline = time.monotonic() + 60
    assert p.stderr is not None
    while time.monotonic() < deadline:  # until the timeline runs: gateways and relay up
        if "timeline:" in (p.stderr.readline() or "timeline:"):
            break
    assert len(nobody_processes()) >= 5  # the runner, three daemons, the relay, tools
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nobody_processes() == []  # the kernel took the namespaces and all in them
    status, out, _ = run_nobody(readable, "list")
    assert status == 0 and " dead " in out
    status, out, _ = run_nobody(readable, "clean")
    assert status == 0 and out.startswith("removed l2b")


@pytest.mark.skip(reason="rootless `lab up` does not return yet: its holder keeps the "
                         "caller's pipes open (known gap, see docs/lab.md)")
def test_up_exec_down_as_nobody(readable: str) -> None:
    status, out, err = run_nobody(readable, "up", f"{readable}/scenarios/two-offices.toml")
    assert status == 0, err[-2000:]
    name = out.strip()
    try:
        status, out, _ = run_nobody(readable, "exec", name, "london.h1", "--", "ping", "-c",
                                    "2", "-i", "0.2", "10.77.2.10")
        assert status == 0 and "2 received" in out
        status, out, _ = run_nobody(readable, "list")
        assert f"{name}  {readable}/scenarios/two-offices.toml  up  pid" in out
        assert "running" in out
    finally:
        status, _, err = run_nobody(readable, "down", name)
    assert status == 0, err
    deadline = time.monotonic() + 10
    while nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nobody_processes() == []


def test_what_needs_root_is_refused_in_one_line(readable: str) -> None:
    status, _, err = run_nobody(readable, "run", f"{readable}/scenarios/vlan-trunk.toml")
    assert (status, err) == (2, "VLAN hosts (london.v10, …) need root: their switch ports load "
                                "BPF programs, which takes CAP_BPF in the initial user "
                                "namespace; run as root\n")
    status, _, err = run_nobody(readable, "run", f"{readable}/scenarios/two-offices.toml",
                                "--pcap", "paris.h1:eth0")
    assert status == 2 and err.count("\n") == 1 and "--pcap" in err


def test_userns_forbidden_is_one_line_with_the_fix(tmp_path: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from netns import rootless

    knob = f"{tmp_path}/unprivileged_userns_clone"
    with open(knob, "w") as f:
        f.write("0\n")
    monkeypatch.setattr(rootless, "_ENABLE", {knob: ("0", "sysctl -w "
                                                           "kernel.unprivileged_userns_clone=1")})
    assert rootless.userns_problem() == (
        f"this kernel forbids unprivileged user namespaces ({knob} is 0); enable them as root "
        "(sysctl -w kernel.unprivileged_userns_clone=1) or run the lab as root")
    assert sys.executable
