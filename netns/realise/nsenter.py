"""Enter a network namespace for one thread or one child process.

Linux network namespaces are per thread: ``setns(2)`` changes only the calling
thread. ``in_netns`` switches the current thread and always switches back, so a
socket or tap opened inside the block belongs to the namespace and keeps
belonging to it afterwards.  ``netns_preexec`` does the same for a child
process between fork and exec (used to start daemons and tools in lab hosts).

Run blocking sections with ``trio.to_thread.run_sync`` so the trio thread never
changes namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A namespace could not be entered; carries the namespace name."""


def netns_path(name: str) -> str:
    return name if name.startswith("/") else os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns into network namespace {what!r}: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the current thread inside network namespace ``name``."""
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"network namespace {name!r} does not exist") from None
    try:
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        home = os.open(own, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, name)
            try:
                yield
            finally:
                _setns(home, "original")
        finally:
            os.close(home)
    finally:
        os.close(target)


def netns_preexec(name: str) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess that moves the child into namespace ``name``."""
    path = netns_path(name)

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd, name)
        finally:
            os.close(fd)

    return enter


def netns_inode(name: str) -> int:
    """The inode identifying namespace ``name`` (as in /proc/PID/ns/net)."""
    return os.stat(netns_path(name)).st_ino


def pids_in_netns(name: str) -> list[int]:
    """Every process whose network namespace is ``name``."""
    try:
        ino = netns_inode(name)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                pids.append(int(entry))
        except OSError:
            continue
    return pids
