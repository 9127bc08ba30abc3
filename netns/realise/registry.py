"""Lab state on disk, so a lab can be found and removed after its runner died.

Layout: ``/run/l2bridge/lab/<prefix>/state.json`` plus the run files of the lab
(site configs, logs, control sockets) in the same directory.

``state.json`` = ``{prefix, scenario, gateway, pid, start_time, namespaces, nodes,
created}``.  It is written BEFORE the first namespace is created, and rewritten
(atomically, via rename) with the namespaces about to be made before they are
(the build records every namespace of its plan at once), so at any instant every
lab namespace that exists is listed (a listed one may not exist yet).  ``pid`` 0 means detached
(``lab up`` / ``run --keep``): owned by nobody until ``lab down``.

A scratch state (``Registry.scratch``, gateway ``scratch``) records namespaces that
belong to no lab, such as a test's own topology, so they too are found after their
owner was killed.

``clean`` removes only labs whose owner is dead: its pid no longer exists, or now
belongs to a process with a different start time (field 22 of /proc/PID/stat).
Removal kills every process inside each listed namespace (SIGTERM, then SIGKILL),
removes the namespace and then the directory.  Nothing not listed is touched.

A state file is data, not authority: ``read_state`` takes only lab names (a path
component, never a path), refuses a file that names another lab or is malformed,
and ``destroy`` touches only namespaces named after the lab (``owns_namespace``),
whatever the file lists.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from pyroute2 import netns as pr_netns

from netns.describe.plan import LAB_RUN_DIR, PREFIX_SHAPE, Plan, is_prefix, new_prefix
from netns.realise.nsenter import create_netns, netns_path

STATE_FILE = "state.json"
SCRATCH_GATEWAY = "scratch"  # the gateway a scratch state names: no lab, a test's namespaces
KILL_GRACE_S = 0.5
KILL_POLL_S = 0.01


@dataclass
class LabState:
    prefix: str
    scenario: str
    gateway: str
    pid: int
    start_time: int | None
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # "london.h1" -> namespace
    created: float = 0.0

    @property
    def detached(self) -> bool:
        return self.pid == 0


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_alive(state: LabState) -> bool:
    """True when the process that owns the lab still runs (detached labs count as alive)."""
    if state.detached:
        return True
    started = process_start_time(state.pid)
    return started is not None and started == state.start_time


class Registry:
    """The state file of one lab, kept in step with what exists."""

    def __init__(self, state: LabState, root: str = LAB_RUN_DIR) -> None:
        self.state = state
        self.dir = os.path.join(root, state.prefix)

    @classmethod
    def create(cls, plan: Plan, *, detached: bool, root: str = LAB_RUN_DIR) -> Registry:
        pid = 0 if detached else os.getpid()
        state = LabState(
            prefix=plan.prefix,
            scenario=plan.scenario.path,
            gateway=plan.gateway,
            pid=pid,
            start_time=None if detached else process_start_time(pid),
            nodes={ref: node.ns for ref, node in plan.nodes.items()},
            created=time.time(),
        )
        return cls._claim(state, root)

    @classmethod
    def scratch(cls, purpose: str, root: str = LAB_RUN_DIR) -> Registry:
        """A state for namespaces that belong to no lab (a test's own topology): a fresh
        prefix owned by this process, so ``clean`` removes them once it is dead.  ``lab
        list`` shows ``purpose`` as its scenario and ``scratch`` as its gateway."""
        pid = os.getpid()
        state = LabState(prefix=new_prefix(), scenario=purpose, gateway=SCRATCH_GATEWAY,
                         pid=pid, start_time=process_start_time(pid), created=time.time())
        return cls._claim(state, root)

    @classmethod
    def _claim(cls, state: LabState, root: str) -> Registry:
        reg = cls(state, root)
        os.makedirs(root, mode=0o755, exist_ok=True)
        os.mkdir(reg.dir, 0o755)  # fails if the prefix is taken: never share a directory
        reg.write()
        return reg

    def write(self) -> None:
        tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self.state), f, indent=1)
        os.replace(tmp, os.path.join(self.dir, STATE_FILE))

    def add_namespace(self, ns: str) -> None:
        """Record ``ns`` (call BEFORE creating it)."""
        self.add_namespaces([ns])

    def add_namespaces(self, namespaces: Sequence[str]) -> None:
        """Record ``namespaces`` in one write (call BEFORE creating any of them)."""
        self.state.namespaces.extend(namespaces)
        self.write()

    def detach(self) -> None:
        """Hand the lab over to nobody: only ``lab down`` removes it now."""
        self.state.pid = 0
        self.state.start_time = None
        self.write()

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def owns_namespace(prefix: str, ns: str) -> bool:
    """Whether ``ns`` is named as one of lab ``prefix``'s namespaces: the prefix itself or
    ``prefix-`` and a plain name (never a path: ``netns_path`` takes those as they are)."""
    return is_prefix(prefix) and re.fullmatch(rf"{prefix}(-[a-z0-9_-]+)?", ns) is not None


def read_state(prefix: str, root: str = LAB_RUN_DIR) -> LabState | None:
    """Lab ``prefix``'s state, or None when it has no state file that reads as its own.

    ``prefix`` must be a lab name (``ValueError`` otherwise), so it stays one
    directory under ``root``.  A file naming another lab, or not of the
    expected shape, counts as unreadable.
    """
    if not is_prefix(prefix):
        raise ValueError(f"{prefix!r} is not a lab name (expected {PREFIX_SHAPE})")
    try:
        with open(os.path.join(root, prefix, STATE_FILE)) as f:
            state = LabState(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None
    namespaces, nodes = state.namespaces, state.nodes
    if (state.prefix != prefix or not isinstance(namespaces, list)
            or not all(isinstance(ns, str) for ns in namespaces)
            or not isinstance(nodes, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in nodes.items())):
        return None
    return state


def list_labs(root: str = LAB_RUN_DIR) -> list[LabState]:
    """Every lab with a readable state file under ``root``, oldest first."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    labs = [s for n in names if is_prefix(n) and (s := read_state(n, root)) is not None]
    return sorted(labs, key=lambda s: s.created)


def kill_namespace_processes(namespaces: list[str], grace_s: float = KILL_GRACE_S) -> int:
    """SIGTERM every process in ``namespaces``, SIGKILL what is left after ``grace_s``."""
    targets = _pids_in(namespaces)
    for pid in targets:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while targets and time.monotonic() < deadline:
        time.sleep(KILL_POLL_S)
        targets = _pids_in(namespaces)
    for pid in targets:
        _kill(pid, signal.SIGKILL)
    return len(targets)


def remove_namespace(ns: str) -> None:
    """Remove one namespace; a namespace that is already gone is not an error."""
    try:
        pr_netns.remove(ns)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def destroy(state: LabState, root: str = LAB_RUN_DIR) -> list[str]:
    """Remove the lab's processes, namespaces and directory; return problems (one line each).

    Only namespaces named as the lab's (``owns_namespace``) are touched; any other
    one the state lists is left alone and reported.
    """
    if not is_prefix(state.prefix):
        return [f"{state.prefix!r} is not a lab name; nothing removed"]
    problems = [f"namespace {ns!r}: not one of the lab's ({state.prefix}-…); left alone"
                for ns in state.namespaces if not owns_namespace(state.prefix, ns)]
    owned = [ns for ns in state.namespaces if owns_namespace(state.prefix, ns)]
    existing = [ns for ns in owned if os.path.exists(netns_path(ns))]
    kill_namespace_processes(existing)
    for ns in reversed(existing):
        try:
            remove_namespace(ns)
        except OSError as e:
            problems.append(f"namespace {ns}: {e.strerror or e}")
    shutil.rmtree(os.path.join(root, state.prefix), ignore_errors=True)
    return problems


@contextlib.contextmanager
def scratch_namespaces(purpose: str, names: Sequence[str],
                       root: str = LAB_RUN_DIR) -> Iterator[list[str]]:
    """Namespaces ``<prefix>-<name>`` for work outside any lab (a test's own topology).

    They are recorded (``Registry.scratch``) before they exist and removed, with every
    process inside, on every exit path; after a SIGKILL of their owner ``lab clean``
    removes them like a dead runner's lab.
    """
    reg = Registry.scratch(purpose, root)
    namespaces = [f"{reg.state.prefix}-{name}" for name in names]
    try:
        reg.add_namespaces(namespaces)
        for ns in namespaces:
            create_netns(ns)
        yield namespaces
    finally:
        destroy(reg.state, root)


def clean(root: str = LAB_RUN_DIR) -> list[LabState]:
    """Destroy every lab whose owner is dead; detached and running labs are left alone."""
    removed = []
    for state in list_labs(root):
        if not owner_alive(state):
            destroy(state, root)
            removed.append(state)
    return removed


def _pids_in(namespaces: list[str]) -> list[int]:
    """Every process whose network namespace is one of ``namespaces`` (one /proc scan)."""
    inodes = set()
    for ns in namespaces:
        try:
            inodes.add(os.stat(netns_path(ns)).st_ino)
        except OSError:
            continue
    if not inodes:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
