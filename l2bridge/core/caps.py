"""What one site can do: decided once at start-up from the config and the kernel, passed down.

The tap may speak virtio_net_hdr (super-frames), the socket may do UDP GSO and
GRO, the site may run several workers.  The daemon probes the kernel, builds one
``Capabilities`` record, and every part of the site reads it from there (a
follower worker receives the leader's).  The rules that decide them live here
too, each once:

  * ``bursts``: super-frames cross as SEGMENT bursts only when the config asks
    for offloads and the tap speaks virtio_net_hdr;
  * ``gro_allowed``: UDP GRO only on a lone socket, never in a socket group (a
    GRO-merged buffer could carry several lanes to one worker, and each lane's
    replay window lives in exactly one worker);
  * ``MAX_WORKERS``: the one bound on workers, lanes and sockets in a group.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

LANE_VALUES = 256  # the lane is one byte of the DATA header (noise.py)
MAX_WORKERS = 64  # worker processes of one site: each seals on its own lane
assert MAX_WORKERS <= LANE_VALUES


CORES_PER_WORKER = 2


def default_workers(cores: int | None = None) -> int:
    """One worker process per two cores this process may run on (at most ``MAX_WORKERS``).

    Every frame a worker handles in Python costs about as much again in the kernel
    on another core (the tap, the UDP socket, softirq, the bridge), so a worker per
    core makes the workers and the kernel fight for the same cores: on a 2-core
    gateway two workers move 30-40 % less than one (docs/bench.md).  ``cores``:
    the count to decide for (default: the cores this process may use).
    """
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores // CORES_PER_WORKER))


def gro_allowed(*, offload: bool, sockets: int) -> bool:
    """UDP GRO is used only with offloads on and on a lone socket (module docstring)."""
    return offload and sockets == 1


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The site's capabilities as decided at start-up (all off: plain frames, one worker)."""

    vnet_hdr: bool = False  # tap reads and writes carry a virtio_net_hdr
    tap_offloads: int = 0  # TUNSETOFFLOAD flags the kernel accepted
    udp_gso: bool = False  # sends cut by the kernel (UDP_SEGMENT)
    udp_gro: bool = False  # receives merged by the kernel (UDP_GRO)
    bursts: bool = False  # super-frames cross as SEGMENT bursts
    lanes: int = 1  # worker processes sharing the site

    @classmethod
    def decide(cls, *, offload: bool, vnet_hdr: bool, tap_offloads: int = 0,
               udp_gso: bool = False, udp_gro: bool = False, lanes: int = 1) -> Capabilities:
        """The record for what the config asked and the kernel granted."""
        if not 1 <= lanes <= MAX_WORKERS:
            raise ValueError(f"lanes {lanes}: expected 1..{MAX_WORKERS}")
        return cls(vnet_hdr=vnet_hdr, tap_offloads=tap_offloads if vnet_hdr else 0,
                   udp_gso=udp_gso, udp_gro=udp_gro and gro_allowed(offload=offload, sockets=lanes),
                   bursts=offload and vnet_hdr, lanes=lanes)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Capabilities:
        return cls(**data)
