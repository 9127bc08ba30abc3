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
 4. ``lab up`` leaves the ``unshare`` process running as the lab's holder (its
    PID 1 reaps what is orphaned in the lab and waits).  The holder never holds
    the caller's terminal or pipes: its stdin and stdout are ``/dev/null`` and
    its stderr is ``STATE/NAME.log`` from the start; the caller's ``up`` copies
    that log to its own stderr while the lab comes up, and returns (printing
    the name, exit 0) when the holder writes the lab's name on a pipe kept for
    that (``$L2BRIDGE_LAB_READY_FD``), or fails with the holder's status when
    the pipe closes first;
 5. ``lab exec`` enters the holder's user, mount and PID namespaces
    (``nsenter``: the command runs inside the lab, with the caller's stdio, and
    its exit status is the command's) and runs ``lab exec`` there;
 6. ``lab down`` kills the holder with SIGKILL and waits (bounded) until its
    PID 1 is gone: the kernel removes every process and namespace of the lab
    with it; then the pointer and the log.  A holder that was killed before
    (even by SIGKILL) left nothing but those two files, which ``down`` and
    ``clean`` remove.

A lab name that is not one of this user's pointers is refused in one line
(exit 2): another user's labs are in their own state directory, and a lab made
as root lives in ``/run/l2bridge/lab``, which the user cannot enter.

What needs root even so is refused with one line saying what and why: VLAN
hosts (their switch ports load BPF programs, which needs CAP_BPF in the initial
user namespace) and Mininet (``timing --mininet``).  As root nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import Any

from l2bridge.errors import UsageError

INSIDE_ENV = "L2BRIDGE_LAB_ROOTLESS"  # set inside the user namespace: the outer uid
PREFIX_ENV = "L2BRIDGE_LAB_PREFIX"  # the lab's name, chosen outside
READY_ENV = "L2BRIDGE_LAB_READY_FD"  # `up`: where the holder writes the name once up
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
           "--kill-child", "--mount-proc", "--propagation", "private"]
UP_READY_TIMEOUT_S = 120.0
LOG_POLL_S = 0.1  # how often `up` copies the holder's log while the lab comes up
DOWN_TIMEOUT_S = 10.0  # `down`: until the lab's processes are gone
MS_NOSUID, MS_NODEV = 2, 4
ROOT_LABS = "/run/l2bridge/lab"  # where labs made as root live

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


class RootlessError(UsageError):
    """Bad input for a rootless command: one line, exit status 2."""


def own_state_root(*, create: bool) -> str | None:
    """``state_root()`` when it is this user's private directory (made with ``create``),
    None when it does not exist; ``RootlessError`` when it is someone else's (in /tmp,
    another user could have made it first)."""
    path = state_root()
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    uid = 0 if inside() else os.getuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise RootlessError(
            f"{path}: not a private directory of this user (owner uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):o}); remove it, or set XDG_RUNTIME_DIR")
    return path


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
    own_state_root(create=True)
    doc = {"prefix": name, "pid": pid, "start_time": _start_time(pid), "scenario": scenario,
           "command": command, "created": time.time()}
    tmp = _pointer(name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, _pointer(name))


def pointers() -> list[dict[str, Any]]:
    """Every rootless lab of this user, oldest first, each with ``alive``."""
    out = []
    root = own_state_root(create=False)
    if root is None:
        return []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(root):
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(state_root(), entry)) as f:
                    doc = json.load(f)
                doc["alive"] = _live(int(doc["pid"]), doc["start_time"])
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


def _env(name: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env[INSIDE_ENV] = str(os.getuid())
    env[PREFIX_ENV] = name
    env.update(extra)
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
    """``lab up``: the holder runs on in the background; return once the lab is up
    (module doc, 4)."""
    root = own_state_root(create=True)
    assert root is not None
    log_path = os.path.join(root, f"{name}.log")
    ready_r, ready_w = os.pipe()
    try:
        with open(log_path, "ab") as log:
            holder = subprocess.Popen(
                _inner_argv(argv), env=_env(name, **{READY_ENV: str(ready_w)}),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                pass_fds=(ready_w,), start_new_session=True)
    finally:
        os.close(ready_w)
    write_pointer(name, holder.pid, scenario, "up")
    with os.fdopen(ready_r, "rb", buffering=0) as ready:
        try:
            line = _follow(ready, log_path, holder)
        except _Interrupted as stop:
            _kill_holder(holder.pid, _inner_pid(holder.pid))
            holder.wait()
            remove_pointer(name)
            return 128 + stop.signum
    if line != name:
        holder.kill()  # it is already gone, or hung: the kernel removes the rest
        status = holder.wait()
        remove_pointer(name)
        return status if 0 < status < 128 else 1
    print(name, flush=True)
    return 0


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _follow(ready: Any, log_path: str, holder: subprocess.Popen[bytes]) -> str:
    """Copy the holder's log to stderr until it writes the lab's name on ``ready``
    (returned) or closes it (""), or ``UP_READY_TIMEOUT_S`` pass ("")."""

    def interrupted(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = time.monotonic() + UP_READY_TIMEOUT_S
    got = b""
    try:
        with open(log_path, "rb") as log:  # a new lab's name: the log is this run's alone
            while time.monotonic() < deadline:
                readable, _, _ = select.select([ready], [], [], LOG_POLL_S)
                _copy(log)
                if readable:
                    chunk = ready.read(256)
                    got += chunk
                    if not chunk or b"\n" in got:
                        break
            _copy(log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if holder.poll() is None and b"\n" not in got:
        print(f"lab up: the lab was not up within {UP_READY_TIMEOUT_S:g} s; stopping it",
              file=sys.stderr)
    return got.split(b"\n", 1)[0].decode(errors="replace").strip()


def _copy(log: Any) -> None:
    data = log.read()
    if data:
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()


def _inner_pid(holder: int) -> int | None:
    """The holder's child: PID 1 of the lab's PID namespace, in its user namespace."""
    try:
        with open(f"/proc/{holder}/task/{holder}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _unknown(command: str, name: str) -> RootlessError:
    """Why ``name`` is none of this user's rootless labs."""
    if os.path.exists(os.path.join(ROOT_LABS, name)):
        return RootlessError(f"lab {name}: made by root, not by this user; run `l2bridge lab "
                             f"{command}` as root")
    return RootlessError(f"lab {name}: no such lab of this user (see `l2bridge lab list`; "
                         "other users' labs are theirs alone)")


def _running(command: str, name: str) -> dict[str, Any]:
    """This user's rootless lab ``name``, whose holder runs; ``RootlessError`` otherwise."""
    doc = find(name)
    if doc is None:
        raise _unknown(command, name)
    if not doc["alive"]:
        raise RootlessError(f"lab {name}: it has ended (its holder, pid {doc['pid']}, is "
                            f"gone); `l2bridge lab down {name}` removes what is left of it")
    return doc


def exec_in(name: str, argv: list[str]) -> int:
    """``lab exec NAME NODE -- CMD``: run it inside the lab's user, mount and PID
    namespaces (module doc, 5), with the caller's stdio; its exit status."""
    doc = _running("exec", name)
    pid = _inner_pid(int(doc["pid"]))
    if pid is None:
        raise RootlessError(f"lab {name}: its holder has no namespace process (being "
                            "removed?)")
    cmd = ["nsenter", "--target", str(pid), "--user", "--mount", "--pid",
           "--preserve-credentials", sys.executable, "-m", "netns.rootless", *argv]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the command
    try:
        status = subprocess.call(cmd, env=_env(name))
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - status if status < 0 else status


def down(name: str) -> int:
    """``lab down NAME`` (module doc, 6)."""
    doc = find(name)
    if doc is None:
        raise _unknown("down", name)
    if doc["alive"]:
        holder = int(doc["pid"])
        _kill_holder(holder, _inner_pid(holder))
    remove_pointer(name)
    state = "removed" if doc["alive"] else "had ended; its record is removed"
    print(f"lab {name}: {state} (the kernel removed its namespaces and processes with its "
          "user namespace)", file=sys.stderr)
    return 0


def _kill_holder(holder: int, inner: int | None) -> None:
    """SIGKILL the holder; wait (bounded) until it and the lab's PID 1 are gone or
    zombies (PID 1's exit ends every process of the lab first)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder, signal.SIGKILL)
    pids = [p for p in (holder, inner) if p is not None]
    started = {p: _start_time(p) for p in pids}
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while time.monotonic() < deadline:
        if not any(_live(p, started[p]) for p in pids):
            return
        time.sleep(0.02)


def _live(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time``, and not a
    zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == start_time


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
    ready = _ready_fd()
    pointers_fd = None  # the state directory, reachable after /run is covered
    with contextlib.suppress(OSError):
        pointers_fd = os.open(state_root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if argv[:1] != ["exec"]:  # exec enters a running lab's mounts; everything else is new
        try:
            _mount_private_run()
        except OSError as e:
            print(f"rootless lab: {e.strerror or e}", file=sys.stderr)
            return 1
    from netns.cli import main as lab_main

    status = lab_main(argv)
    if argv[:1] == ["up"] and status == 0 and ready is not None:
        os.write(ready, f"{name}\n".encode())
        os.close(ready)
        _hold()  # never returns: the lab lives as long as this process
    if argv[:1] != ["exec"] and pointers_fd is not None and name:
        with contextlib.suppress(OSError):  # the runner is done: so is its lab
            os.unlink(f"{name}.json", dir_fd=pointers_fd)
    return status


def _ready_fd() -> int | None:
    value = os.environ.pop(READY_ENV, "")
    if not value.isdigit():
        return None
    fd = int(value)
    os.set_inheritable(fd, False)  # nothing the lab starts holds it
    return fd


def _hold() -> None:
    """The holder of a lab that is up: PID 1 of its PID namespace, so it reaps what is
    orphaned there (gateways whose fork server ended, tools of `exec`) and waits."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        signal.sigwaitinfo({signal.SIGCHLD})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
