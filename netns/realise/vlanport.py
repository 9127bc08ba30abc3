"""VLAN access ports on a plain Linux bridge, with two tiny tc BPF programs per port.

Why BPF: the lab's kernel has neither 802.1Q sub-interfaces, bridge VLAN filtering
nor the ``act_vlan`` tc action, but it has ``clsact``, ``cls_bpf`` and the BPF helpers
``skb_vlan_push`` / ``skb_vlan_pop``.  A LAN switch (``br0`` in ``P-<site>-sw``, no
VLAN filtering) becomes VLAN-aware like this:

- **access port of VLAN N** (the switch's end of a tagged host's veth):
  ingress (host → switch) pushes an 802.1Q tag with VID N; egress (switch → host)
  passes only frames tagged with VID N and pops the tag, everything else (untagged,
  other VIDs) is dropped.
- **native port** (an untagged host's port in a site that has tagged hosts):
  egress passes only untagged frames.
- **trunk** (the port ``gw`` towards the gateway's ``eth1``): no program, so every
  VLAN crosses tagged and untagged frames cross as the native VLAN.

The kernel bridge learns MACs without the VLAN (no filtering), which is harmless:
host MACs are unique in a lab, and a frame forwarded to a port of another VLAN is
dropped at that port's egress.  The kernel moves an incoming 802.1Q tag into skb
metadata before tc runs, so the programs read ``__sk_buff.vlan_present`` and
``vlan_tci`` and never parse packet data.

Pure part (no root): ``ingress_program(vid)`` / ``egress_program(vid)`` assemble
the instructions.  Kernel part: ``load_program`` (the ``bpf(2)`` syscall through
ctypes) and ``attach_access_port`` (pyroute2: ``clsact`` qdisc + two ``bpf``
filters in direct-action mode).  The filters hold the programs; removing the port
(or its namespace) frees them.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

VLAN_VID_MAX = 4094
TPID_8021Q = 0x8100

# linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
SYS_BPF_X86_64 = 321
BPF_ATTR_BYTES = 128
BPF_LOG_BYTES = 65_536
FUNC_SKB_VLAN_PUSH = 18
FUNC_SKB_VLAN_POP = 19
# struct __sk_buff field offsets
SKB_VLAN_PRESENT = 20
SKB_VLAN_TCI = 24
# linux/pkt_cls.h
TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_INGRESS_PARENT = "ffff:fff2"
TC_EGRESS_PARENT = "ffff:fff3"
PROGRAM_LICENSE = b"Dual MIT/GPL"

# Instruction classes and opcodes used here (linux/bpf_common.h, linux/bpf.h).
_MOV64_IMM = 0xB7
_MOV64_REG = 0xBF
_AND64_IMM = 0x57
_LDX_W = 0x61
_JEQ_IMM = 0x15
_JNE_IMM = 0x55
_CALL = 0x85
_EXIT = 0x95
_INSN = struct.Struct("<BBhi")


class VlanPortError(OSError):
    """A program could not be loaded or attached; the message names the port and the cause."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def _check_vid(vid: int, *, native_ok: bool) -> None:
    low = 0 if native_ok else 1
    if not low <= vid <= VLAN_VID_MAX:
        raise ValueError(f"VLAN ID {vid} out of range {low}..{VLAN_VID_MAX}")


def ingress_program(vid: int) -> bytes:
    """Host → switch on an access port: push tag ``vid``; drop when the push fails."""
    _check_vid(vid, native_ok=False)
    return b"".join([
        _insn(_MOV64_IMM, dst=2, imm=socket.htons(TPID_8021Q)),  # r2 = vlan_proto (be16)
        _insn(_MOV64_IMM, dst=3, imm=vid),                      # r3 = vlan_tci
        _insn(_CALL, imm=FUNC_SKB_VLAN_PUSH),                   # r1 is still the skb
        _insn(_JNE_IMM, dst=0, off=2, imm=0),                   # failed -> drop
        _insn(_MOV64_IMM, dst=0, imm=TC_ACT_OK),
        _insn(_EXIT),
        _insn(_MOV64_IMM, dst=0, imm=TC_ACT_SHOT),
        _insn(_EXIT),
    ])


def egress_program(vid: int) -> bytes:
    """Switch → host: ``vid`` > 0 passes only frames tagged ``vid`` and pops the tag;
    ``vid`` 0 (native) passes only untagged frames.  Everything else is dropped."""
    _check_vid(vid, native_ok=True)
    if vid == 0:
        return b"".join([
            _insn(_LDX_W, dst=2, src=1, off=SKB_VLAN_PRESENT),
            _insn(_JNE_IMM, dst=2, off=2, imm=0),               # tagged -> drop
            _insn(_MOV64_IMM, dst=0, imm=TC_ACT_OK),
            _insn(_EXIT),
            _insn(_MOV64_IMM, dst=0, imm=TC_ACT_SHOT),
            _insn(_EXIT),
        ])
    return b"".join([
        _insn(_MOV64_REG, dst=6, src=1),                        # r6 = skb (callee saved)
        _insn(_LDX_W, dst=2, src=6, off=SKB_VLAN_PRESENT),
        _insn(_JEQ_IMM, dst=2, off=8, imm=0),                   # untagged -> drop
        _insn(_LDX_W, dst=2, src=6, off=SKB_VLAN_TCI),
        _insn(_AND64_IMM, dst=2, imm=0x0FFF),                   # VID bits of the TCI
        _insn(_JNE_IMM, dst=2, off=5, imm=vid),                 # other VLAN -> drop
        _insn(_MOV64_REG, dst=1, src=6),
        _insn(_CALL, imm=FUNC_SKB_VLAN_POP),
        _insn(_JNE_IMM, dst=0, off=2, imm=0),                   # pop failed -> drop
        _insn(_MOV64_IMM, dst=0, imm=TC_ACT_OK),
        _insn(_EXIT),
        _insn(_MOV64_IMM, dst=0, imm=TC_ACT_SHOT),
        _insn(_EXIT),
    ])


# ---------------------------------------------------------------- kernel


_libc = ctypes.CDLL(None, use_errno=True)


def load_program(insns: bytes, name: str) -> int:
    """Load a SCHED_CLS program; return its fd (the caller closes it).

    ``VlanPortError`` carries the errno and the verifier's last log line."""
    if os.uname().machine != "x86_64":
        raise VlanPortError(0, f"bpf program {name}: only x86_64 is supported (syscall number)")
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(PROGRAM_LICENSE)
    log = ctypes.create_string_buffer(BPF_LOG_BYTES)
    attr = ctypes.create_string_buffer(BPF_ATTR_BYTES)
    struct.pack_into("<IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SCHED_CLS,
                     len(insns) // _INSN.size, ctypes.addressof(code),
                     ctypes.addressof(license_), 1, BPF_LOG_BYTES, ctypes.addressof(log),
                     0, 0, name.encode()[:15])
    fd = _libc.syscall(SYS_BPF_X86_64, BPF_PROG_LOAD, attr, BPF_ATTR_BYTES)
    if fd < 0:
        err = ctypes.get_errno()
        lines = [x for x in log.value.decode(errors="replace").splitlines() if x.strip()]
        detail = f": verifier: {lines[-1]}" if lines else ""
        raise VlanPortError(err, f"bpf program {name}: {os.strerror(err)}{detail}")
    return int(fd)


def attach_access_port(ipr: Any, index: int, vid: int, ifname: str = "") -> None:
    """Make port ``index`` an access port of VLAN ``vid`` (0: the native, untagged VLAN).

    ``ipr`` is a pyroute2 ``IPRoute`` of the port's namespace."""
    programs: Sequence[tuple[str, bytes]] = [("egress", egress_program(vid))]
    if vid:
        programs = [("ingress", ingress_program(vid)), *programs]
    ipr.tc("add", "clsact", index)
    for direction, insns in programs:
        name = f"l2b_v{vid}_{direction[:2]}"
        try:
            fd = load_program(insns, name)
        except VlanPortError as e:
            raise VlanPortError(e.errno, f"VLAN {vid} port {ifname or index}: {e.strerror}"
                                ) from None
        try:
            parent = TC_INGRESS_PARENT if direction == "ingress" else TC_EGRESS_PARENT
            ipr.tc("add-filter", "bpf", index, ":1", fd=fd, name=name, parent=parent,
                   classid=1, direct_action=True)
        finally:
            os.close(fd)
