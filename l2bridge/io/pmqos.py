"""``low_latency = true``: keep the CPUs out of deep idle while the site runs.

A userspace forwarder pays a wake-up per packet on a quiet link; on a virtual
machine an idle vCPU halts, and waking it costs more than the forwarding.  The
kernel's CPU-latency QoS (``/dev/cpu_dma_latency``, as tuned's
latency-performance profile uses) lets a process ask for a bound on that
wake-up latency: while the file stays open with a value of 0 µs the idle loop
polls instead of halting.  The request is machine-wide and ends when the file
is closed, which ``hold`` does on every exit path.  The price is CPU time
burnt in the idle loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Iterator

from l2bridge.errors import KernelError

CPU_LATENCY_DEVICE = "/dev/cpu_dma_latency"
LOW_LATENCY_US = 0


class PmQosError(KernelError):
    """The latency request could not be made; the message names the file, errno and fix."""


@contextlib.contextmanager
def hold(limit_us: int = LOW_LATENCY_US, path: str = CPU_LATENCY_DEVICE) -> Iterator[None]:
    """Ask for at most ``limit_us`` of CPU wake-up latency until the block ends."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise PmQosError(
            f"{path}: {exc.strerror} ({name}): low_latency = true needs root and a kernel "
            "with CPU latency QoS; set low_latency = false"
        ) from None
    try:
        os.write(fd, struct.pack("=i", limit_us))
        yield
    finally:
        os.close(fd)


def current_limit_us(path: str = CPU_LATENCY_DEVICE) -> int:
    """The machine's current CPU wake-up latency limit, µs (the strictest request)."""
    with open(path, "rb") as f:
        return struct.unpack("=i", f.read(4))[0]
