"""Storm control: token buckets on the flooded frames each peer is sent and sends (pure).

Only broadcast, multicast and unknown-unicast frames ever meet a bucket (the
frames a switch floods); known unicast never does.  Per peer there are six
buckets: (broadcast, multicast, unknown unicast) x (out: sent to the peer,
in: accepted from it).  A bucket holds at most ``burst`` frames and refills at
``rate`` frames per second; a frame takes one token or is dropped, counted by
the caller as ``storm_<class>_<direction>`` (e.g. ``storm_broadcast_out``).

Limits are the site's (``StormLimits``), or a peer's own where its config
sets them.  With ``lanes`` workers each worker's bucket gets 1/lanes of the
rate and burst, so the site as a whole keeps the limit.

Invariant (tested against a naive model): over any interval of ``d`` seconds a
bucket accepts at most ``burst + rate * d`` frames, and it accepts a frame
whenever that bound, counted from its last refusal-free start, allows one.
"""

from __future__ import annotations

from dataclasses import dataclass

# Classes of flooded frames, in the order of their buckets.
BROADCAST, MULTICAST, UNKNOWN = 0, 1, 2
CLASSES = ("broadcast", "multicast", "unknown_unicast")
OUT, IN = 0, 3  # bucket offsets of the two directions
DIRECTIONS = ("out", "in")
DROP_REASONS = tuple(f"storm_{cls}_{way}" for way in DIRECTIONS for cls in CLASSES)
"""Counter names, indexed like the buckets: out classes 0..2, then in classes 3..5."""

# Defaults: far above the ARP, DHCP, ND and mDNS of a few hundred hosts (a few
# hundred frames/s at most, a few thousand in a burst when they all wake up).
DEFAULT_RATE_PER_S = 1000.0
DEFAULT_BURST_S = 2.0
RATE_MIN_PER_S, RATE_MAX_PER_S = 1.0, 1_000_000.0
BURST_MIN_S, BURST_MAX_S = 0.01, 60.0
_BROADCAST_MAC = b"\xff" * 6


@dataclass(frozen=True, slots=True)
class StormLimits:
    """Frames per second of each flooded class, and the bucket depth in seconds of rate."""

    broadcast: float = DEFAULT_RATE_PER_S
    multicast: float = DEFAULT_RATE_PER_S
    unknown_unicast: float = DEFAULT_RATE_PER_S
    burst_s: float = DEFAULT_BURST_S

    def rates(self) -> tuple[float, float, float]:
        return self.broadcast, self.multicast, self.unknown_unicast

    def burst(self, cls: int) -> float:
        """Depth of a class's bucket in frames (at least one frame)."""
        return max(1.0, self.rates()[cls] * self.burst_s)


def bum_class(frame: bytes) -> int:
    """BROADCAST, MULTICAST or UNKNOWN (a flooded frame whose destination is unicast)."""
    if frame[0] & 1:
        return BROADCAST if frame[:6] == _BROADCAST_MAC else MULTICAST
    return UNKNOWN


class TokenBucket:
    """``rate`` tokens per second, at most ``depth``; a frame takes one."""

    __slots__ = ("rate", "depth", "tokens", "stamp")

    def __init__(self, rate: float, depth: float, now: float) -> None:
        self.rate = rate
        self.depth = depth
        self.tokens = depth
        self.stamp = now

    def take(self, now: float, count: int = 1) -> bool:
        """``count`` tokens if there are (refilled up to ``now``); False: drop the frame.

        A super-frame of n segments takes n tokens, or one when the bucket is full
        (a burst never exceeds the depth on its own).
        """
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.depth:
            tokens = self.depth
        self.stamp = now
        if count > 1 and count > tokens >= self.depth:
            count = 1
        if tokens < count:
            self.tokens = tokens
            return False
        self.tokens = tokens - count
        return True

    def refund(self) -> None:
        """Give back one token (the frame was not sent after all)."""
        self.tokens = min(self.depth, self.tokens + 1.0)


class StormControl:
    """Every peer's six buckets (module docstring); ports are the switch's peer ports."""

    __slots__ = ("enabled", "limits", "lanes", "_own", "_buckets")

    def __init__(self, limits: StormLimits | None = None, *, enabled: bool = True,
                 lanes: int = 1) -> None:
        self.enabled = enabled
        self.limits = limits or StormLimits()
        self.lanes = max(1, lanes)
        self._own: dict[int, StormLimits] = {}  # ports with limits of their own
        self._buckets: dict[int, list[TokenBucket]] = {}

    def configure(self, limits: StormLimits, *, enabled: bool,
                  own: dict[int, StormLimits] | None = None) -> None:
        """New settings (start or reload): every bucket starts full again."""
        self.enabled = enabled
        self.limits = limits
        self._own = dict(own or {})
        self._buckets.clear()

    def set_port(self, port: int, limits: StormLimits | None) -> None:
        """A peer's own limits (None: the site's); its buckets start full."""
        if limits is None:
            self._own.pop(port, None)
        else:
            self._own[port] = limits
        self._buckets.pop(port, None)

    def remove(self, port: int) -> None:
        self._own.pop(port, None)
        self._buckets.pop(port, None)

    def limits_of(self, port: int) -> StormLimits:
        return self._own.get(port, self.limits)

    def allow(self, port: int, index: int, now: float, count: int = 1) -> bool:
        """Whether a frame (of ``count`` segments) of bucket ``index`` (OUT/IN + class)
        may pass for ``port``."""
        if not self.enabled:
            return True
        buckets = self._buckets.get(port)
        if buckets is None:
            buckets = self._buckets[port] = self._new(self.limits_of(port), now)
        return buckets[index].take(now, count)

    def refund(self, port: int, index: int) -> None:
        """A frame ``allow`` let through was not sent after all (answered locally, guarded)."""
        buckets = self._buckets.get(port)
        if self.enabled and buckets is not None:
            buckets[index].refund()

    def _new(self, limits: StormLimits, now: float) -> list[TokenBucket]:
        share = self.lanes
        return [TokenBucket(limits.rates()[cls] / share, max(1.0, limits.burst(cls) / share), now)
                for _ in DIRECTIONS for cls in range(len(CLASSES))]
