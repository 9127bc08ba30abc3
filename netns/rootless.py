"""Rootless labs: ``l2bridge lab run/up/exec/down/list/clean`` for an unprivileged user.

Linux lets an unprivileged user create a user namespace and, inside it, network
namespaces, veths, bridges, taps, nftables tables and tbf qdiscs that it owns.
Without root, ``l2bridge lab`` runs itself inside such a namespace:

 1. outside (the user): the scenario is validated as usual (bad input: exit 2,
    nothing made); ``userns_problem`` says why user namespaces cannot be made
    here, if so; the lab's name is chosen and a pointer file
    ``STATE/NAME.json`` (``STATE`` = ``$XDG_RUNTIME_DIR/l2bridge-lab`` or
    ``/tmp/l2bridge-UID``, mode 0700) records the runner's pid;
 2. the runner becomes ``unshare --user --map-root-user --mount --net --pid --fork
    --kill-child --mount-proc``: in a new user, mount, network and PID namespace it is
    root and PID 1's parent; inside, ``main`` mounts a private tmpfs on ``/run``
    (the lab's named namespaces under ``/run/netns``, its run files under
    ``/run/l2bridge/lab``: nobody else sees them) and runs ``l2bridge lab`` as
    root would;
 3. everything the lab makes lives in those namespaces.  When the runner ends -
    normally, by a signal, even by SIGKILL (``--kill-child`` kills PID 1, and
    the kernel kills every process of a PID namespace with its PID 1) - the
    last process of the user namespace is gone, and the kernel removes its
    network namespaces, links and mounts with it.  Nothing is left to clean
    but the pointer file, which ``lab list`` shows as dead and ``lab clean``
    removes;
 4. ``lab up`` leaves the ``unshare`` process running as the lab's holder;
    ``lab exec`` enters its user and mount namespaces (``nsenter``) and runs
    ``lab exec`` there; ``lab down`` kills the holder.

What needs root even so is refused with one line saying what and why: VLAN
hosts (their switch ports load BPF programs, which needs CAP_BPF in the initial
user namespace) and Mininet (``timing --mininet``).  As root nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

INSIDE_ENV = "L2BRIDGE_LAB_ROOTLESS"  # set inside the user namespace: the outer uid
PREFIX_ENV = "L2BRIDGE_LAB_PREFIX"  # the lab's name, chosen outside
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
           "--kill-child", "--mount-proc", "--propagation", "private"]
UP_READY_TIMEOUT_S = 120.0
MS_NOSUID, MS_NODEV = 2, 4

_ENABLE = {
    "/proc/sys/kernel/unprivileged_userns_clone":
        ("0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    "/proc/sys/user/max_user_namespaces": ("0", "sysctl -w user.max_user_namespaces=15000"),
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns":
        ("1", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
}


def inside() -> bool:
    """Whether this process runs a rootless lab inside its user namespace."""
    return INSIDE_ENV in os.environ


def state_root() -> str:
    """Where the pointer files of this user's rootless labs live (outside the namespaces)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, "l2bridge-lab")
    uid = int(os.environ.get(INSIDE_ENV, os.getuid()))  # inside, the user's uid is 0
    return f"/tmp/l2bridge-{uid}"


def userns_problem() -> str | None:
    """Why this kernel will not give an unprivileged user a namespace (and the fix), or None."""
    for path, (bad, fix) in _ENABLE.items():
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value == bad:
            return (f"this kernel forbids unprivileged user namespaces ({path} is {value}); "
                    f"enable them as root ({fix}) or run the lab as root")
    if shutil.which("unshare") is None:
        return "rootless labs need unshare (util-linux), which is not on PATH"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"],
                           capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        return (f"this kernel forbids unprivileged user namespaces (unshare: {why}); enable "
                "them as root (sysctl -w kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces=15000) or run the lab as root")
    return None


def _pointer(name: str) -> str:
    return os.path.join(state_root(), f"{name}.json")


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def write_pointer(name: str, pid: int, scenario: str, command: str) -> None:
    os.makedirs(state_root(), mode=0o700, exist_ok=True)
    doc = {"prefix": name, "pid": pid, "start_time": _start_time(pid), "scenario": scenario,
           "command": command, "created": time.time()}
    tmp = _pointer(name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, _pointer(name))


def pointers() -> list[dict[str, Any]]:
    """Every rootless lab of this user, oldest first, each with ``alive``."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(state_root()):
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(state_root(), entry)) as f:
                    doc = json.load(f)
                doc["alive"] = _start_time(int(doc["pid"])) == doc["start_time"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            out.append(doc)
    return sorted(out, key=lambda d: d.get("created", 0))


def find(name: str) -> dict[str, Any] | None:
    return next((d for d in pointers() if d.get("prefix") == name), None)


def remove_pointer(name: str) -> None:
    for path in (_pointer(name), os.path.join(state_root(), f"{name}.log")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _inner_argv(argv: list[str]) -> list[str]:
    return [*UNSHARE, sys.executable, "-m", "netns.rootless", *argv]


def _env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    env[INSIDE_ENV] = str(os.getuid())
    env[PREFIX_ENV] = name
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run(argv: list[str], name: str, scenario: str) -> int:
    """``lab run`` (and ``timing``, ``bench``): become the runner inside (module doc, 2)."""
    write_pointer(name, os.getpid(), scenario, argv[0])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe("unshare", _inner_argv(argv), _env(name))  # same pid: the pointer stays true


def up(argv: list[str], name: str, scenario: str) -> int:
    """``lab up``: the holder runs on in the background; return once the lab is up."""
    os.makedirs(state_root(), mode=0o700, exist_ok=True)
    log_path = os.path.join(state_root(), f"{name}.log")  # the holder's output, kept apart
    with open(log_path, "ab") as log:
        holder = subprocess.Popen(_inner_argv(argv), env=_env(name), stdout=subprocess.PIPE,
                                  stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    write_pointer(name, holder.pid, scenario, "up")
    assert holder.stdout is not None
    line = holder.stdout.readline().decode().strip()  # the lab's name once it is up
    holder.stdout.close()
    with open(log_path, errors="replace") as f:
        sys.stderr.write(f.read())
    if line != name:
        holder.wait(timeout=UP_READY_TIMEOUT_S)
        remove_pointer(name)
        return holder.returncode or 1
    print(name, flush=True)
    return 0


def _inner_pid(holder: int) -> int | None:
    """The holder's child: PID 1 of the lab's PID namespace, in its user namespace."""
    try:
        with open(f"/proc/{holder}/task/{holder}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def exec_in(name: str, argv: list[str]) -> int:
    """``lab exec NAME NODE -- CMD``: run it inside the lab's user and mount namespaces."""
    doc = find(name)
    if doc is None or not doc["alive"]:
        print(f"lab {name}: no such rootless lab running (see `l2bridge lab list`)",
              file=sys.stderr)
        return 2
    pid = _inner_pid(int(doc["pid"]))
    if pid is None:
        print(f"lab {name}: its holder has no namespace process (being removed?)",
              file=sys.stderr)
        return 1
    cmd = ["nsenter", "--target", str(pid), "--user", "--mount", "--preserve-credentials",
           sys.executable, "-m", "netns.rootless", *argv]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the command
    try:
        return subprocess.call(cmd, env=_env(name))
    finally:
        signal.signal(signal.SIGINT, previous)


def down(name: str) -> int:
    doc = find(name)
    if doc is None:
        print(f"lab {name}: no such lab (see `l2bridge lab list`)", file=sys.stderr)
        return 2
    if doc["alive"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(doc["pid"]), signal.SIGKILL)  # the kernel removes the rest
    remove_pointer(name)
    print(f"lab {name}: removed (its user namespace and everything in it)", file=sys.stderr)
    return 0


def clean() -> list[dict[str, Any]]:
    dead = [d for d in pointers() if not d["alive"]]
    for d in dead:
        remove_pointer(d["prefix"])
    return dead


def _mount_private_run() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tmpfs", b"/run", b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on /run: {os.strerror(err)}")
    os.makedirs("/run/netns", exist_ok=True)
    os.makedirs("/run/l2bridge/lab", exist_ok=True)


def main(argv: list[str]) -> int:
    """Inside the namespaces (module doc, 2): a private /run, then ``l2bridge lab`` as root."""
    name = os.environ.get(PREFIX_ENV, "")
    pointers_fd = None  # the state directory, reachable after /run is covered
    with contextlib.suppress(OSError):
        pointers_fd = os.open(state_root(), os.O_RDONLY | os.O_DIRECTORY)
    if argv[:1] != ["exec"]:  # exec enters a running lab's mounts; everything else is new
        try:
            _mount_private_run()
        except OSError as e:
            print(f"rootless lab: {e.strerror or e}", file=sys.stderr)
            return 1
    from netns.cli import main as lab_main

    status = lab_main(argv)
    if argv[:1] == ["up"] and status == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:  # the holder: the lab lives as long as this process
            signal.pause()
    if argv[:1] != ["exec"] and pointers_fd is not None and name:
        with contextlib.suppress(OSError):  # the runner is done: so is its lab
            os.unlink(f"{name}.json", dir_fd=pointers_fd)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
