"""Enter a network namespace for one thread or one child process.

Linux network namespaces are per thread: ``setns(2)`` changes only the calling
thread. ``in_netns`` switches the current thread and always switches back, so a
socket or tap opened inside the block belongs to the namespace and keeps
belonging to it afterwards.  ``netns_preexec`` does the same for a child
process between fork and exec (used to start daemons and tools in lab hosts);
with ``resolv_conf`` it also gives the child a mount namespace of its own in
which that file is bind-mounted over ``/etc/resolv.conf`` (what ``ip netns
exec`` does with ``/etc/netns/NAME/resolv.conf``): 1. ``unshare(CLONE_NEWNS)``
2. ``/`` made private, recursively, so nothing mounted here reaches the host
3. the bind mount.  The resolver of that child (and of what it starts) then asks
only the lab's DNS server; the host's file is untouched.

``create_netns`` makes a named namespace the way ``ip netns add`` does, without
forking: a short-lived thread unshares its own network namespace and bind-mounts
it on ``/run/netns/NAME``.  (A forked helper, as pyroute2's ``netns.create``
uses, is abandoned after a fixed 2 s on a loaded machine and leaves no
namespace behind it.)

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
CLONE_NEWNS = 0x00020000
MS_PRIVATE = 1 << 18
RESOLV_CONF = "/etc/resolv.conf"
NETNS_RUN_DIR = "/run/netns"
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20

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


def create_netns(name: str) -> None:
    """Create the named network namespace ``name`` (``ip netns add``); raises NetnsError."""
    path = netns_path(name)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    _share_run_dir(directory)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise NetnsError(errno.EEXIST, f"network namespace {name!r} already exists") from None
    failure: list[NetnsError] = []
    worker = threading.Thread(target=_bind_new_netns, args=(path, name, failure),
                              name=f"netns {name}")
    worker.start()
    worker.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failure[0]


def _share_run_dir(directory: str) -> None:
    """Make ``directory`` a shared mount (bind it on itself first if it is none), so a
    namespace mounted there is seen by every mount namespace, as iproute2 does."""
    raw = directory.encode()
    if _libc.mount(b"none", raw, None, MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(raw, raw, b"none", MS_BIND | MS_REC, None) != 0 or \
            _libc.mount(b"none", raw, None, MS_SHARED | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"cannot share {directory} for named namespaces: "
                              f"{os.strerror(err)}")


def _bind_new_netns(path: str, name: str, failure: list[NetnsError]) -> None:
    """(In a thread of its own.) Unshare this thread's network namespace, bind-mount it
    on ``path``, and go back; the thread then ends."""
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                   os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            failure.append(NetnsError(err, f"cannot create network namespace {name!r}: "
                                           f"unshare: {os.strerror(err)}"))
            return
        try:
            own = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if _libc.mount(own, path.encode(), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                failure.append(NetnsError(err, f"cannot create network namespace {name!r}: "
                                               f"mount on {path}: {os.strerror(err)}"))
        finally:
            _setns(home, "original")
    finally:
        os.close(home)


def netns_preexec(name: str, resolv_conf: str | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess that moves the child into namespace ``name``
    (and, with ``resolv_conf``, shows it that file as ``/etc/resolv.conf``: module doc)."""
    path = netns_path(name)
    target = os.path.realpath(RESOLV_CONF).encode()  # a symlink's target, as mount does
    source = resolv_conf.encode() if resolv_conf is not None else None

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd, name)
        finally:
            os.close(fd)
        if source is not None:
            private_file(source, target)

    return enter


def private_file(source: bytes, target: bytes) -> None:
    """(In a child, before exec.) A mount namespace of its own with ``source`` bound over
    ``target``; raises ``OSError`` naming the step that failed."""
    for what, ok in (
        ("unshare(CLONE_NEWNS)", lambda: _libc.unshare(CLONE_NEWNS) == 0),
        ("make / private", lambda: _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE,
                                               None) == 0),
        (f"bind {source.decode()} on {target.decode()}",
         lambda: _libc.mount(source, target, b"none", MS_BIND, None) == 0),
    ):
        if not ok():
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")


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
