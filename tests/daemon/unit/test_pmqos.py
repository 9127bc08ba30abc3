"""The CPU latency request (no root: a plain file stands in for /dev/cpu_dma_latency)."""

from __future__ import annotations

import os
import struct

import pytest

from l2bridge.io import pmqos


def test_hold_writes_the_limit_and_keeps_the_file_open_until_the_end(tmp_path) -> None:
    path = tmp_path / "cpu_dma_latency"
    path.write_bytes(b"")
    fds_before = set(os.listdir("/proc/self/fd"))
    with pmqos.hold(0, str(path)):
        assert path.read_bytes() == struct.pack("=i", 0)
        assert len(set(os.listdir("/proc/self/fd")) - fds_before) == 1
    assert set(os.listdir("/proc/self/fd")) == fds_before  # closed: the request ends


def test_hold_names_the_file_the_errno_and_the_fix(tmp_path) -> None:
    missing = str(tmp_path / "absent")
    with pytest.raises(pmqos.PmQosError) as err, pmqos.hold(0, missing):
        pass
    assert str(err.value) == (
        f"{missing}: No such file or directory (ENOENT): low_latency = true needs root and a "
        "kernel with CPU latency QoS; set low_latency = false")
