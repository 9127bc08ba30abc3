"""Rootless labs (the suite runs as root; these tests drop to ``nobody``).

An unprivileged user needs an interpreter and code it can read: root's own Python
may live where others cannot read, and so may the clone.  The fixture builds a
second venv from Debian's /usr/bin/python3 in a world-readable temporary
directory, with the runtime dependencies and a copy of ``l2bridge/``, ``netns/``
and ``scenarios/``, and removes it at the end of the session.
"""

from __future__ import annotations

import json
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


def nobody_processes(root: str) -> list[str]:
    """The processes of ``nobody`` started from ``root`` (other runs on this machine may
    use ``nobody`` too); zombies, already dead, do not count."""
    out = subprocess.run(["ps", "-u", USER, "-o", "pid=,stat=,args="], capture_output=True,
                         text=True, check=False).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    return [" ".join(r) for r in rows if len(r) == 3 and root in r[2] and "Z" not in r[1]]


def wait_gone(root: str, bound_s: float = 10.0) -> list[str]:
    deadline = time.monotonic() + bound_s
    while nobody_processes(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    return nobody_processes(root)


def netns_here(name: str) -> list[str]:
    """The machine's named namespaces of lab ``name`` (a rootless lab's are never there)."""
    found = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return [ns for ns in found if ns.startswith(name)]


def state_files(name: str) -> list[str]:
    """The rootless lab's files in nobody's state directory (``/tmp/l2bridge-UID``)."""
    root = f"/tmp/l2bridge-{pwd.getpwnam(USER).pw_uid}"
    return [f for f in (os.listdir(root) if os.path.isdir(root) else []) if name in f]


@pytest.mark.slow
def test_failover_passes_as_nobody_and_leaves_nothing(readable: str) -> None:
    status, out, err = run_nobody(readable, "run", f"{readable}/scenarios/failover.toml")
    assert status == 0, out + err[-2000:]
    assert "PASS: 7/7 checks passed" in out
    assert nobody_processes(readable) == []
    name = out.split(" — lab ", 1)[1].split(",", 1)[0]
    assert netns_here(name) == []  # its namespaces were never the machine's
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
    assert len(nobody_processes(readable)) >= 5  # the runner, launcher, daemons, the relay
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert wait_gone(readable) == []  # the kernel took the namespaces and all in them
    status, out, _ = run_nobody(readable, "list")
    assert status == 0 and " dead " in out
    status, out, _ = run_nobody(readable, "clean")
    assert status == 0 and out.startswith("removed l2b")


def up_as_nobody(root: str) -> str:
    """``lab up`` as nobody: it returns, exit 0, the lab's name alone on stdout."""
    started = time.monotonic()
    status, out, err = run_nobody(root, "up", f"{root}/scenarios/two-offices.toml",
                                  timeout=120)
    assert status == 0, err[-2000:]
    name = out.strip()
    assert out == f"{name}\n" and name.startswith("l2b"), out
    assert f"lab {name}: gateways ready, all peers up" in err  # its progress, on stderr
    assert f"lab {name} is up: enter a host with `l2bridge lab exec {name}" in err
    print(f"rootless up: {time.monotonic() - started:.2f} s")
    return name


def test_up_exec_down_as_nobody(readable: str) -> None:
    name = up_as_nobody(readable)
    try:
        assert sorted(state_files(name)) == [f"{name}.json", f"{name}.log"]
        status, out, _ = run_nobody(readable, "exec", name, "london.h1", "--", "ping", "-c",
                                    "2", "-i", "0.2", "10.77.2.10")
        assert status == 0 and "2 received" in out, out
        status, out, err = run_nobody(readable, "exec", name, "berlin.h1", "--", "sh", "-c",
                                      "echo from-berlin; echo to-stderr >&2; exit 7")
        assert (status, out, err) == (7, "from-berlin\n", "to-stderr\n")
        status, out, _ = run_nobody(readable, "list")
        assert f"{name}  {readable}/scenarios/two-offices.toml  up  pid" in out
        assert "running" in out
        status, out, _ = run_nobody(readable, "clean")  # a lab that is up is not a leftover
        assert status == 0 and name not in out
        assert netns_here(name) == []
    finally:
        status, _, err = run_nobody(readable, "down", name)
    assert status == 0, err
    assert err == f"lab {name}: removed (the kernel removed its namespaces and processes " \
                  "with its user namespace)\n"
    assert nobody_processes(readable) == []  # down waited for them
    assert state_files(name) == []
    status, out, _ = run_nobody(readable, "list")
    assert name not in out


def test_a_holder_killed_by_sigkill_leaves_only_its_record(readable: str) -> None:
    for cleaner in ("down", "clean"):
        name = up_as_nobody(readable)
        with open(f"/tmp/l2bridge-{pwd.getpwnam(USER).pw_uid}/{name}.json") as f:
            holder = int(json.load(f)["pid"])
        os.kill(holder, signal.SIGKILL)
        assert wait_gone(readable) == []  # the kernel took the lab with its holder
        status, out, _ = run_nobody(readable, "list")
        assert status == 0 and f"{name} " in out and " dead " in out
        status, _, err = run_nobody(readable, "exec", name, "london.h1", "--", "true")
        assert status == 2 and err.count("\n") == 1 and "it has ended" in err
        args = ("down", name) if cleaner == "down" else ("clean",)
        status, out, err = run_nobody(readable, *args)
        assert status == 0, err
        assert name in out + err
        assert state_files(name) == []


def test_unknown_and_foreign_labs_are_one_line_exit_2(readable: str) -> None:
    for command in (("exec", "l2b00000", "london.h1", "--", "true"), ("down", "l2b00000")):
        status, out, err = run_nobody(readable, *command)
        assert (status, out) == (2, "")
        assert err == "lab l2b00000: no such lab of this user (see `l2bridge lab list`; " \
                      "other users' labs are theirs alone)\n"
    os.makedirs("/run/l2bridge/lab/l2b0000f", exist_ok=True)  # as if root made it
    try:
        status, _, err = run_nobody(readable, "down", "l2b0000f")
    finally:
        os.rmdir("/run/l2bridge/lab/l2b0000f")
    assert (status, err) == (2, "lab l2b0000f: made by root, not by this user; run "
                                "`l2bridge lab down` as root\n")


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
