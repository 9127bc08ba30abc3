"""Tap and tun devices through /dev/net/tun.

Flow of ``open_tap``:
  1. validate the name (1..15 bytes, no "/", ":" or whitespace) before any syscall;
  2. open /dev/net/tun (non-blocking, close-on-exec);
  3. ``TUNSETIFF`` with ``IFF_TAP | IFF_NO_PI`` (or ``IFF_TUN``): this attaches to an
     existing device of that name in the calling thread's namespace, or creates a
     transient one (which needs CAP_NET_ADMIN);
  4. only then hand the fd to a ``TapDevice``.  If step 3 fails the fd is closed
     before the error is raised, so a failed open never leaks a descriptor.

A transient device lives as long as its fd.  A persistent device
(``make_persistent``, as ``tunctl``/``openvpn --mktun`` do) survives without an
fd; its owner and group may attach to it without privileges.

``TapDevice`` does no async I/O itself; ``TrioTap`` makes it awaitable for a site
(the ``Tap`` protocol, which ``l2bridge.io.fakes.FakeTap`` also implements): it
waits with ``trio.lowlevel.wait_readable(fd)``, the site drains with
``read_batch`` until it returns fewer frames than asked, and ``close`` calls
``trio.lowlevel.notify_closing(fd)`` first.

Devices are created in the network namespace of the calling thread.  Their state
is read back over rtnetlink (``IFLA_INFO_DATA`` of kind "tun"), never from
/sys/class/net, because sysfs shows the namespace it was mounted in, not the one
the thread is in.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import grp
import os
import pwd
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from l2bridge.errors import KernelError

# --- specification constants (linux/if_tun.h) -------------------------------------
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETPERSIST = 0x400454CB  # _IOW('T', 203, int)
TUNSETOWNER = 0x400454CC  # _IOW('T', 204, int)
TUNSETGROUP = 0x400454CE  # _IOW('T', 206, int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)

# TUNSETOFFLOAD flags: what the kernel may hand us (and accept from us) unfinished.
TUN_F_CSUM = 0x01  # checksum left partial (virtio_net_hdr csum_start/csum_offset)
TUN_F_TSO4 = 0x02  # TCP/IPv4 super-frames
TUN_F_TSO6 = 0x04  # TCP/IPv6 super-frames
TUN_F_TSO_ECN = 0x08  # TSO super-frames with the CWR flag set
TUN_F_USO4 = 0x20  # UDP/IPv4 super-frames (Linux 6.2+)
TUN_F_USO6 = 0x40  # UDP/IPv6 super-frames (Linux 6.2+)
ALL_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6

# struct virtio_net_hdr (little endian on every host l2bridge runs on):
# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR_LEN = 10
VNET_HDR_FORMAT = "<BBHHHH"

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

IFNAMSIZ = 16  # including the terminating NUL: names are at most 15 bytes
IFREQ_FORMAT = "16sH22x"  # struct ifreq: ifr_name[16], short ifr_flags, union padding
IFREQ_SIZE = 40

# IFLA_TUN_TYPE values reported over rtnetlink
_TUN_TYPE_TO_MODE = {IFF_TUN: "tun", IFF_TAP: "tap"}

# --- implementation constants -----------------------------------------------------
DEFAULT_DEV_PATH = "/dev/net/tun"
DEFAULT_READ_BUFSIZE = 65536
# With a vnet header a read holds one super-frame: up to 64 KiB of IP packet, its
# Ethernet header and the 10-byte virtio_net_hdr.
VNET_READ_BUFSIZE = 65536 + 256
MODES = ("tap", "tun")

assert struct.calcsize(IFREQ_FORMAT) == IFREQ_SIZE
assert struct.calcsize(VNET_HDR_FORMAT) == VNET_HDR_LEN


class TapError(KernelError):
    """A tap/tun operation failed; ``str()`` is one line naming the device, cause and fix.

    ``errno`` is the OS error number when one caused the failure, else None.
    """


def _ename(err: int) -> str:
    return errno.errorcode.get(err, f"errno {err}")


def validate_name(name: str) -> bytes:
    """Return ``name`` encoded, or raise TapError if the kernel would refuse it."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise TapError("tap name is empty: give an interface name of 1 to 15 bytes")
    if len(raw) >= IFNAMSIZ:
        raise TapError(
            f'tap name "{name}" is {len(raw)} bytes long: interface names are at most '
            f"{IFNAMSIZ - 1} bytes, choose a shorter name"
        )
    if name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        raise TapError(
            f'tap name "{name}" is not a valid interface name: avoid "/", ":", '
            'whitespace, "." and ".."'
        )
    return raw


def _mode_flags(mode: str) -> int:
    if mode == "tap":
        return IFF_TAP
    if mode == "tun":
        return IFF_TUN
    raise TapError(f'unknown device mode "{mode}": use "tap" (layer 2) or "tun" (layer 3)')


def _describe(mode: str) -> str:
    return "tun device (layer 3)" if mode == "tun" else "tap device (layer 2)"


@dataclasses.dataclass(frozen=True, slots=True)
class TapInfo:
    """What rtnetlink reports about a tun/tap device in the current namespace.

    ``owner``/``group`` are None when unset (anyone with CAP_NET_ADMIN only).
    """

    name: str
    mode: str
    persistent: bool
    multi_queue: bool
    owner: int | None
    group: int | None


def _link_kind(name: str) -> tuple[str | None, dict[str, int] | None] | None:
    """(kind, tun attributes) of link ``name`` in the current namespace, None if absent."""
    with IPRoute() as ipr:
        try:
            links = ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
    linkinfo = links[0].get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return None, None
    kind = linkinfo.get_attr("IFLA_INFO_KIND")
    data = linkinfo.get_attr("IFLA_INFO_DATA")
    if kind != "tun" or data is None:
        return kind, None
    return kind, dict(data["attrs"])


def tap_info(name: str) -> TapInfo | None:
    """Describe tun/tap device ``name`` in the calling thread's namespace.

    Returns None when no link has that name; raises TapError when the link exists
    but is not a tun/tap device.
    """
    validate_name(name)
    found = _link_kind(name)
    if found is None:
        return None
    kind, attrs = found
    if attrs is None:
        raise TapError(
            f'device "{name}" exists and is not a tun/tap device (kind {kind or "unknown"}): '
            "choose another name"
        )
    return TapInfo(
        name=name,
        mode=_TUN_TYPE_TO_MODE.get(attrs.get("IFLA_TUN_TYPE", 0), "unknown"),
        persistent=bool(attrs.get("IFLA_TUN_PERSIST", 0)),
        multi_queue=bool(attrs.get("IFLA_TUN_MULTI_QUEUE", 0)),
        owner=attrs.get("IFLA_TUN_OWNER"),
        group=attrs.get("IFLA_TUN_GROUP"),
    )


class TapDevice:
    """An attached tun/tap queue: a non-blocking, close-on-exec fd plus its name.

    Frames are whole Ethernet frames in "tap" mode and bare IP packets in "tun"
    mode (no packet-information header: IFF_NO_PI is always set).

    With ``vnet_hdr`` every read and every write starts with the 10-byte
    ``struct virtio_net_hdr`` (``VNET_HDR_FORMAT``).  Until ``enable_offloads``
    succeeds the kernel only sends plain frames (header flags and gso_type 0);
    afterwards a read may be a TSO/USO super-frame of up to 64 KiB with its
    checksum left partial, and a write may be one too (the kernel segments it).
    """

    __slots__ = ("name", "mode", "fd", "vnet_hdr", "offloads")

    def __init__(self, name: str, mode: str, fd: int, vnet_hdr: bool = False) -> None:
        self.name = name
        self.mode = mode
        self.fd = fd
        self.vnet_hdr = vnet_hdr
        self.offloads = 0  # TUN_F_* flags the kernel accepted

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def enable_offloads(self, wanted: int = ALL_OFFLOADS) -> int:
        """Ask the kernel for ``wanted`` offloads; return the TUN_F_* flags it accepted.

        Flow: TUNSETOFFLOAD ``wanted`` → on EINVAL (a kernel without some flag)
        the same without USO4|USO6 → on EINVAL checksum offload only → on EINVAL
        give up and return 0: offloads stay off and the device works as before.
        Any other errno raises TapError.  Precondition: opened with ``vnet_hdr``
        (without the header the kernel could not describe a super-frame).
        """
        if not self.vnet_hdr:
            raise ValueError(
                f'{self.mode} "{self.name}" was opened without vnet_hdr: offloads need '
                "open_tap(..., vnet_hdr=True)"
            )
        if self.fd < 0:
            raise TapError(f'{self.mode} "{self.name}" is closed: reopen it', errno.EBADF)
        attempts: list[int] = []
        for flags in (wanted, wanted & ~(TUN_F_USO4 | TUN_F_USO6), wanted & TUN_F_CSUM):
            if flags not in attempts:
                attempts.append(flags)
        for flags in attempts:
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
            except OSError as exc:
                err = exc.errno or 0
                if err == errno.EINVAL:
                    continue
                raise TapError(
                    f'setting offloads of {self.mode} "{self.name}": {os.strerror(err)} '
                    f"({_ename(err)}): reopen the device, or run without offloads",
                    err,
                ) from None
            self.offloads = flags
            return flags
        self.offloads = 0
        return 0

    def read_batch(self, max_frames: int, bufsize: int = DEFAULT_READ_BUFSIZE) -> list[bytes]:
        """Read up to ``max_frames`` frames, stopping early at EAGAIN; never blocks.

        Returns [] when nothing is queued.  Each read returns exactly one frame;
        with ``vnet_hdr`` each item is the raw read, virtio_net_hdr + frame, and
        the buffer is at least ``VNET_READ_BUFSIZE`` so a super-frame fits whole.
        """
        frames: list[bytes] = []
        read = os.read
        fd = self.fd
        if self.vnet_hdr and bufsize < VNET_READ_BUFSIZE:
            bufsize = VNET_READ_BUFSIZE
        try:
            while len(frames) < max_frames:
                frames.append(read(fd, bufsize))
        except BlockingIOError:
            pass
        except OSError as exc:
            if frames:
                return frames  # deliver what was read; the error repeats on the next call
            raise self._io_error("reading from", exc) from None
        return frames

    def write(self, frame: bytes) -> None:
        """Inject one frame (tap) or IP packet (tun) into the kernel.

        With ``vnet_hdr`` the caller passes virtio_net_hdr + frame.
        """
        try:
            os.write(self.fd, frame)
        except OSError as exc:
            raise self._io_error("writing to", exc) from None

    def _io_error(self, action: str, exc: OSError) -> TapError:
        err = exc.errno or 0
        if self.fd < 0:
            return TapError(f'{self.mode} "{self.name}" is closed', err)
        if err == errno.EBADFD:
            fix = "the device was deleted or detached; reopen it"
        elif err == errno.EIO:
            fix = "the device is down; bring it up"
        elif err == errno.EINVAL:
            fix = "the frame is malformed or larger than the device accepts"
        else:
            fix = "reopen the device"
        return TapError(
            f'{action} {self.mode} "{self.name}": {os.strerror(err)} ({_ename(err)}): {fix}', err
        )

    def close(self) -> None:
        """Close the fd (a transient device disappears with it). Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> TapDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TapDevice(name={self.name!r}, mode={self.mode!r}, fd={self.fd}, "
            f"vnet_hdr={self.vnet_hdr})"
        )


def _open_dev(dev_path: str, name: str, mode: str) -> int:
    try:
        return os.open(dev_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapError(
            f"{dev_path} not found: load the tun module (modprobe tun) or run where "
            f"{dev_path} exists",
            errno.ENOENT,
        ) from None
    except PermissionError as exc:
        err = exc.errno or errno.EACCES
        raise TapError(
            f'opening {dev_path} for {mode} "{name}": permission denied ({_ename(err)}): '
            f"run as root, or give your user read/write access to {dev_path}",
            err,
        ) from None
    except OSError as exc:
        err = exc.errno or 0
        raise TapError(
            f'opening {dev_path} for {mode} "{name}": {os.strerror(err)} ({_ename(err)}): '
            "check that the tun module is loaded (modprobe tun)",
            err,
        ) from None


def _setiff_error(name: str, mode: str, multi_queue: bool, exc: OSError) -> TapError:
    """Turn a failed TUNSETIFF into one line naming the device, the cause and the fix."""
    err = exc.errno or 0
    if err in (errno.EPERM, errno.EACCES):
        return TapError(
            f'opening {mode} "{name}": permission denied ({_ename(err)}): run as root, or '
            f'create it persistent for your user with "l2bridge tap add {name} --user USER"',
            err,
        )
    if err == errno.EBUSY:
        return TapError(
            f'device "{name}" is in use by another process ({_ename(err)}): stop that '
            "process or choose another name",
            err,
        )
    if err == errno.EINVAL:
        try:
            info = tap_info(name)
        except TapError as not_tun:
            return TapError(str(not_tun), err)
        except (OSError, NetlinkError):
            info = None
        if info is not None and info.mode != mode:
            return TapError(
                f'{mode} "{name}" exists as a {_describe(info.mode)}; l2bridge needs mode '
                f'"{mode}": delete it ("l2bridge tap del {name}") or choose another name',
                err,
            )
        if info is not None and info.multi_queue != multi_queue:
            have = "multi-queue" if info.multi_queue else "single-queue"
            return TapError(
                f'{mode} "{name}" exists as a {have} device and was opened with '
                f"multi_queue={multi_queue}: open it the way it was created, or delete it "
                f'("l2bridge tap del {name}")',
                err,
            )
    return TapError(
        f'opening {mode} "{name}": {os.strerror(err)} ({_ename(err)}): check the name and '
        "that no other kind of device uses it",
        err,
    )


def _attach(
    name: str, mode: str, multi_queue: bool, dev_path: str, vnet_hdr: bool = False
) -> tuple[int, str]:
    """Open the control device and TUNSETIFF; return (fd, name the kernel chose).

    With ``vnet_hdr`` the header size is then set explicitly (TUNSETVNETHDRSZ 10),
    so a device another process configured differently cannot shift our frames.
    """
    raw = validate_name(name)
    flags = _mode_flags(mode) | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    fd = _open_dev(dev_path, name, mode)
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack(IFREQ_FORMAT, raw, flags))
    except OSError as exc:
        os.close(fd)
        raise _setiff_error(name, mode, multi_queue, exc) from None
    except BaseException:
        os.close(fd)
        raise
    actual = struct.unpack(IFREQ_FORMAT, ifr)[0].rstrip(b"\0").decode("utf-8", "surrogateescape")
    if vnet_hdr:
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        except OSError as exc:
            os.close(fd)
            err = exc.errno or 0
            raise TapError(
                f'setting the vnet header size of {mode} "{actual}": {os.strerror(err)} '
                f"({_ename(err)}): run without vnet_hdr (offloads off)",
                err,
            ) from None
        except BaseException:
            os.close(fd)
            raise
    return fd, actual


def open_tap(
    name: str,
    mode: str = "tap",
    *,
    multi_queue: bool = False,
    vnet_hdr: bool = False,
    dev_path: str = DEFAULT_DEV_PATH,
) -> TapDevice:
    """Attach to tun/tap ``name`` (creating a transient one if missing) and return it.

    Always IFF_NO_PI.  With ``multi_queue`` each call opens one more queue of the
    same device (IFF_MULTI_QUEUE).  With ``vnet_hdr`` (IFF_VNET_HDR, header size
    10) every read and write carries a virtio_net_hdr; call ``enable_offloads``
    to receive super-frames.  The device lives in the calling thread's network
    namespace.  Raises TapError; never leaks the fd on failure.
    """
    fd, actual = _attach(name, mode, multi_queue, dev_path, vnet_hdr)
    return TapDevice(actual, mode, fd, vnet_hdr)


def _resolve_id(value: str | int, kind: str) -> int:
    if isinstance(value, int):
        if value < 0:
            raise TapError(f"{kind} id {value} is negative: give a name or an id >= 0")
        return value
    if value.isdigit():
        return int(value)
    try:
        if kind == "user":
            return pwd.getpwnam(value).pw_uid
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise TapError(
            f'unknown {kind} "{value}": give an existing {kind} name or a numeric id'
        ) from None


def make_persistent(
    name: str,
    mode: str = "tap",
    *,
    user: str | int | None = None,
    group: str | int | None = None,
    multi_queue: bool = False,
    dev_path: str = DEFAULT_DEV_PATH,
) -> None:
    """Create (or update) a persistent tun/tap device owned by ``user``/``group``.

    Flow: resolve user and group (before any syscall) → TUNSETIFF → TUNSETOWNER /
    TUNSETGROUP when given → TUNSETPERSIST 1 → close.  Persistence is set last, so
    a failure part-way leaves no new device behind.  ``None`` leaves owner/group as
    they are (unset on a new device: only CAP_NET_ADMIN may attach).
    """
    validate_name(name)
    _mode_flags(mode)
    uid = None if user is None else _resolve_id(user, "user")
    gid = None if group is None else _resolve_id(group, "group")
    fd, actual = _attach(name, mode, multi_queue, dev_path)
    try:
        for request, value, what in (
            (TUNSETOWNER, uid, "owner"),
            (TUNSETGROUP, gid, "group"),
            (TUNSETPERSIST, 1, "persistence"),
        ):
            if value is None:
                continue
            try:
                fcntl.ioctl(fd, request, value)
            except OSError as exc:
                err = exc.errno or 0
                raise TapError(
                    f'setting {what} of {mode} "{actual}": {os.strerror(err)} ({_ename(err)}): '
                    "run as root (CAP_NET_ADMIN)",
                    err,
                ) from None
    finally:
        os.close(fd)


def delete_persistent(name: str, *, dev_path: str = DEFAULT_DEV_PATH) -> None:
    """Remove persistent tun/tap ``name`` from the calling thread's namespace.

    Flow: look the device up over rtnetlink (missing or not tun/tap → TapError) →
    TUNSETIFF with its own mode and queue flag → TUNSETPERSIST 0 → close, which
    destroys it.  Fails with EBUSY while another process holds it open.
    """
    validate_name(name)
    info = tap_info(name)
    if info is None:
        raise TapError(
            f'tap "{name}" does not exist in the current namespace (ENODEV): nothing to '
            "delete; check the name"
        )
    if info.mode not in MODES:
        raise TapError(f'device "{name}" has an unknown tun type: delete it with "ip link del"')
    fd, _ = _attach(name, info.mode, info.multi_queue, dev_path)
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    except OSError as exc:
        err = exc.errno or 0
        raise TapError(
            f'clearing persistence of {info.mode} "{name}": {os.strerror(err)} '
            f"({_ename(err)}): run as root (CAP_NET_ADMIN)",
            err,
        ) from None
    finally:
        os.close(fd)


class Tap(Protocol):
    """What a site needs from a tap device (a real one through ``TrioTap``, or a fake).

    With ``vnet_hdr`` every read starts with a virtio_net_hdr and every write
    must start with one.
    """

    name: str
    vnet_hdr: bool

    async def wait_readable(self) -> None: ...

    def read_batch(self, max_frames: int) -> list[bytes]: ...

    def write(self, frame: bytes) -> object: ...


class TrioTap:
    """A ``TapDevice`` made awaitable: readiness from trio, reads and writes non-blocking."""

    def __init__(self, device: TapDevice) -> None:
        self.device = device
        self.name = device.name
        self.fd = device.fd
        self.vnet_hdr = device.vnet_hdr
        self.read_batch = device.read_batch
        # Per-frame path: a bare os.write (an OSError is counted by the site).
        self.write: Callable[[bytes], object] = functools.partial(os.write, device.fd)

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.fd)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.device.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
        self.device.close()
