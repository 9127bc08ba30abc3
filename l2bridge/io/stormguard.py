"""Storm control's first stage, in the kernel: a tc BPF program on the tap's egress.

Why: l2bridge reads the tap one frame per system call.  A host flooding
broadcasts at 100k frames/s and more fills the tap's queue faster than any
userspace reader drains it, and the kernel then drops whatever arrives next,
unicast included: the site's own traffic to the other offices starves although
the WAN stays within the storm limits.  So before the queue, the kernel lets at
most ``limit`` group-addressed frames (broadcast and multicast) per
``WINDOW_NS`` and CPU into the tap, and drops the rest; unicast is never
touched, nor are loop probes and STP BPDUs (loop protection needs them most
during a storm).  The userspace buckets (``l2bridge.core.storm``) then do the
exact per-peer work on what is left; the kernel limit is twice the sum of the
broadcast and multicast rates, so it never cuts below them.

Program flow (per frame the bridge sends into the tap; ``program`` assembles it):
  1. fewer than 6 bytes, or a unicast destination: pass;
  2. the loop probe address or the STP bridge group address: pass;
  3. look up the per-CPU state {window start, count} (a one-entry per-CPU array);
     a window older than WINDOW_NS starts afresh;
  4. ``count`` below ``limit``: count it and pass; else drop (TC_ACT_SHOT).

Kernel edge: ``bpf(2)`` through ctypes (map and program), pyroute2 for the
``clsact`` qdisc and the ``bpf`` filter (direct action).  ``StormGuard`` owns
what it added and removes exactly that (the qdisc only if it created it).  On a
kernel or in a namespace where it cannot load, the site logs it once and runs
with the userspace stage alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import os
import struct
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from l2bridge.core.classify import LOOP_PROBE_MAC
from l2bridge.core.config import SiteConfig
from l2bridge.core.storm import StormLimits
from l2bridge.errors import KernelError

log = logging.getLogger("l2bridge")

WINDOW_NS = 100_000_000  # 100 ms
MIN_LIMIT = 16  # group frames per window and CPU, whatever the configured rates
NO_LIMIT = 2**31 - 1  # the largest immediate of a BPF compare: storm control off
FILTER_PRIO = 0xC2B2  # our filter's priority on the tap's egress
FILTER_NAME = "l2b_storm"
STP_MAC = bytes.fromhex("0180c2000000")

# linux/bpf.h, linux/pkt_cls.h, struct __sk_buff
BPF_MAP_CREATE, BPF_PROG_LOAD = 0, 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PSEUDO_MAP_FD = 1
FUNC_MAP_LOOKUP_ELEM, FUNC_KTIME_GET_NS = 1, 5
SKB_DATA, SKB_DATA_END = 76, 80
TC_ACT_OK, TC_ACT_SHOT = 0, 2
TC_EGRESS_PARENT = "ffff:fff3"
SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_ATTR_BYTES = 128
BPF_LOG_BYTES = 65_536
LICENSE = b"Dual MIT/GPL"

_INSN = struct.Struct("<BBhi")
_MOV_K, _MOV_X, _ADD_K, _SUB_X, _AND_K = 0xB7, 0xBF, 0x07, 0x1F, 0x57
_LDX_B, _LDX_H, _LDX_W, _LDX_DW, _STX_DW, _ST_W = 0x71, 0x69, 0x61, 0x79, 0x7B, 0x62
_JEQ_K, _JNE_K, _JGT_X, _JGE_K, _JLT_K = 0x15, 0x55, 0x2D, 0x35, 0xA5
_LD_IMM64, _CALL, _EXIT = 0x18, 0x85, 0x95


class StormGuardError(KernelError):
    """The kernel stage could not be set up; the message names the tap, errno and cause."""


def kernel_limit(limits: list[StormLimits], window_ns: int = WINDOW_NS) -> int:
    """Group frames per window and CPU: twice the highest broadcast + multicast rate."""
    rate = max(limit.broadcast + limit.multicast for limit in limits)
    return min(NO_LIMIT, max(MIN_LIMIT, math.ceil(2 * rate * window_ns / 1e9)))


def site_limit(config: SiteConfig) -> int:
    """The kernel limit for a site's config: its own and its peers' storm limits;
    ``NO_LIMIT`` while ``storm_control`` is off (the filter stays, passing all)."""
    if not config.storm_control:
        return NO_LIMIT
    return kernel_limit([config.storm] + [p.storm for p in config.peers if p.storm is not None])


def program(limit: int, map_fd: int, window_ns: int = WINDOW_NS) -> bytes:
    """The filter (module flow), as BPF instructions.  Jumps are resolved by label."""
    probe_lo, probe_hi = struct.unpack("<IH", LOOP_PROBE_MAC)
    stp_lo, stp_hi = struct.unpack("<IH", STP_MAC)
    code: list[tuple | str] = [
        (_MOV_X, 6, 1, 0, 0),                   # r6 = skb
        (_LDX_W, 2, 6, SKB_DATA, 0),            # r2 = data
        (_LDX_W, 3, 6, SKB_DATA_END, 0),        # r3 = data_end
        (_MOV_X, 4, 2, 0, 0),
        (_ADD_K, 4, 0, 0, 6),
        (_JGT_X, 4, 3, "pass", 0),              # fewer than 6 bytes
        (_LDX_B, 4, 2, 0, 0),
        (_AND_K, 4, 0, 0, 1),
        (_JEQ_K, 4, 0, "pass", 0),              # unicast
        (_LDX_W, 4, 2, 0, 0),
        (_JNE_K, 4, 0, "stp", probe_lo),
        (_LDX_H, 4, 2, 4, 0),
        (_JEQ_K, 4, 0, "pass", probe_hi),       # a loop probe
        "stp",
        (_LDX_W, 4, 2, 0, 0),
        (_JNE_K, 4, 0, "limit", stp_lo),
        (_LDX_H, 4, 2, 4, 0),
        (_JEQ_K, 4, 0, "pass", stp_hi),         # a BPDU
        "limit",
        (_ST_W, 10, 0, -4, 0),                  # key 0
        (_LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        (0, 0, 0, 0, 0),
        (_MOV_X, 2, 10, 0, 0),
        (_ADD_K, 2, 0, 0, -4),
        (_CALL, 0, 0, 0, FUNC_MAP_LOOKUP_ELEM),
        (_JEQ_K, 0, 0, "pass", 0),
        (_MOV_X, 7, 0, 0, 0),                   # r7 = this CPU's {start, count}
        (_CALL, 0, 0, 0, FUNC_KTIME_GET_NS),
        (_LDX_DW, 1, 7, 0, 0),
        (_MOV_X, 2, 0, 0, 0),
        (_SUB_X, 2, 1, 0, 0),
        (_JLT_K, 2, 0, "same", window_ns),      # now - start < window: same window
        (_STX_DW, 7, 0, 0, 0),                  # start = now
        (_MOV_K, 1, 0, 0, 0),
        (_STX_DW, 7, 1, 8, 0),                  # count = 0
        "same",
        (_LDX_DW, 1, 7, 8, 0),
        (_JGE_K, 1, 0, "drop", limit),
        (_ADD_K, 1, 0, 0, 1),
        (_STX_DW, 7, 1, 8, 0),
        "pass",
        (_MOV_K, 0, 0, 0, TC_ACT_OK),
        (_EXIT, 0, 0, 0, 0),
        "drop",
        (_MOV_K, 0, 0, 0, TC_ACT_SHOT),
        (_EXIT, 0, 0, 0, 0),
    ]
    labels: dict[str, int] = {}
    pc = 0
    for item in code:
        if isinstance(item, str):
            labels[item] = pc
        else:
            pc += 1
    out = []
    pc = 0
    for item in code:
        if isinstance(item, str):
            continue
        op, dst, src, off, imm = item
        if isinstance(off, str):
            off = labels[off] - pc - 1
        out.append(_INSN.pack(op, (src << 4) | dst, off, imm))
        pc += 1
    return b"".join(out)


# ---------------------------------------------------------------- bpf(2)


_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(command: int, attr: ctypes.Array) -> int:
    number = SYS_BPF.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) on {os.uname().machine} is not supported here")
    result = _libc.syscall(number, command, attr, BPF_ATTR_BYTES)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def create_map() -> int:
    """A one-entry per-CPU array of {u64 window start, u64 count}; its fd."""
    attr = ctypes.create_string_buffer(BPF_ATTR_BYTES)
    struct.pack_into("<IIIII", attr, 0, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 16, 1, 0)
    return _bpf(BPF_MAP_CREATE, attr)


def load(insns: bytes, name: str = FILTER_NAME) -> int:
    """Load a SCHED_CLS program; its fd.  ``OSError`` carries the verifier's last line."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(LICENSE)
    verifier = ctypes.create_string_buffer(BPF_LOG_BYTES)
    attr = ctypes.create_string_buffer(BPF_ATTR_BYTES)
    struct.pack_into("<IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SCHED_CLS,
                     len(insns) // _INSN.size, ctypes.addressof(code),
                     ctypes.addressof(license_), 1, BPF_LOG_BYTES,
                     ctypes.addressof(verifier), 0, 0, name.encode()[:15])
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        lines = [x for x in verifier.value.decode(errors="replace").splitlines() if x.strip()]
        detail = f" (verifier: {lines[-1]})" if lines else ""
        raise OSError(exc.errno, f"{exc.strerror}{detail}") from None


# ---------------------------------------------------------------- the tap's filter


def attach(config: SiteConfig, undo: contextlib.ExitStack) -> StormGuard | None:
    """The kernel stage on the site's tap until ``undo`` closes, or None (logged once: the
    kernel refused it, and the userspace buckets work alone)."""
    guard = StormGuard(config.tap, site_limit(config))
    try:
        undo.enter_context(guard)
    except StormGuardError as exc:
        log.warning("%s", exc)
        return None
    log.info("tap %s: kernel storm filter on (%s group frames per CPU and %d ms)", config.tap,
             "any" if guard.limit == NO_LIMIT else guard.limit, WINDOW_NS // 1_000_000)
    return guard


class StormGuard:
    """The kernel stage on ``tap``: ``with StormGuard(tap, limit):``; ``follow(config)``
    on a reload.  Removes exactly what it added."""

    def __init__(self, tap: str, limit: int) -> None:
        self.tap = tap
        self.limit = limit
        self._map_fd: int | None = None
        self._qdisc_ours = False
        self._attached = False

    def __enter__(self) -> StormGuard:
        try:
            self._map_fd = create_map()
            with IPRoute() as ipr:
                index = self._index(ipr)
                try:
                    ipr.tc("add", "clsact", index)
                    self._qdisc_ours = True
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                self._attach(ipr, index)
        except (OSError, NetlinkError) as exc:
            self.close()
            code = getattr(exc, "code", None) or exc.errno or 0
            raise StormGuardError(
                f"tap {self.tap}: cannot add the kernel storm filter: {os.strerror(code)} "
                f"({errno.errorcode.get(code, '?')}); storm control runs in l2bridge only",
                code) from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def follow(self, config: SiteConfig) -> None:
        """A reload changed the policy: the limit the new config gives (a refusal is logged,
        the old filter stays)."""
        try:
            self.set_limit(site_limit(config))
        except (OSError, NetlinkError) as exc:
            code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
            log.warning("tap %s: cannot change the kernel storm filter: %s; the old limit "
                        "stays", self.tap, os.strerror(code))

    def set_limit(self, limit: int) -> None:
        """A new limit (a reload): the filter is replaced by one with the new limit."""
        if limit == self.limit or self._map_fd is None:
            self.limit = limit
            return
        self.limit = limit
        with IPRoute() as ipr:
            index = self._index(ipr)
            self._detach(ipr, index)
            self._attach(ipr, index)

    def close(self) -> None:
        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.tap)
                if found and (self._qdisc_ours or self._attached):
                    if self._qdisc_ours:
                        ipr.tc("del", "clsact", found[0])
                    else:
                        self._detach(ipr, found[0])
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                log.warning("tap %s: removing the kernel storm filter: %s", self.tap,
                            os.strerror(exc.code))
        finally:
            self._qdisc_ours = self._attached = False
            if self._map_fd is not None:
                os.close(self._map_fd)
                self._map_fd = None

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.tap)
        if not found:
            raise OSError(errno.ENODEV, f"no tap {self.tap}")
        return int(found[0])

    def _attach(self, ipr: IPRoute, index: int) -> None:
        assert self._map_fd is not None
        fd = load(program(self.limit, self._map_fd))
        try:
            ipr.tc("add-filter", "bpf", index, ":1", fd=fd, name=FILTER_NAME,
                   parent=TC_EGRESS_PARENT, classid=1, direct_action=True, prio=FILTER_PRIO)
        finally:
            os.close(fd)
        self._attached = True

    def _detach(self, ipr: IPRoute, index: int) -> None:
        ipr.tc("del-filter", "bpf", index, ":1", parent=TC_EGRESS_PARENT, prio=FILTER_PRIO)
        self._attached = False
