"""Storm control: the token bucket against a naive model, and the per-peer buckets."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.core import storm
from l2bridge.core.storm import StormControl, StormLimits, TokenBucket, bum_class


class NaiveBucket:
    """Exact arithmetic, written plainly: tokens = min(depth, tokens + elapsed * rate)."""

    def __init__(self, rate: Fraction, depth: Fraction, now: Fraction) -> None:
        self.rate, self.depth, self.tokens, self.stamp = rate, depth, depth, now

    def take(self, now: Fraction, count: int) -> bool:
        self.tokens = min(self.depth, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if count > 1 and self.depth <= self.tokens < count:
            count = 1
        if self.tokens < count:
            return False
        self.tokens -= count
        self.taken = count
        return True


@settings(max_examples=300, deadline=None)
@given(rate=st.sampled_from([1, 4, 10, 250]), depth=st.sampled_from([1, 2, 8, 100]),
       steps=st.lists(st.tuples(st.sampled_from([0, 1, 5, 20, 100, 1000]),
                                st.sampled_from([1, 1, 1, 2, 7])), max_size=200))
def test_the_bucket_decides_as_the_exact_model(rate: int, depth: int,
                                               steps: list[tuple[int, int]]) -> None:
    """Times in milliseconds (exact in binary floating point for these rates and depths)."""
    now = 0
    real = TokenBucket(float(rate), float(depth), 0.0)
    model = NaiveBucket(Fraction(rate), Fraction(depth), Fraction(0))
    taken = []
    for dt, count in steps:
        now += dt
        got = real.take(now / 1024, count)
        assert got == model.take(Fraction(now, 1024), count)
        if got:
            taken.append((now / 1024, model.taken))
    # over any interval, at most depth + rate * duration tokens are taken
    for i, (start, _) in enumerate(taken):
        total = 0
        for at, n in taken[i:]:
            total += n
            assert total <= depth + rate * (at - start) + 1e-9


def test_classes_of_flooded_frames() -> None:
    assert bum_class(b"\xff" * 6 + b"x" * 8) == storm.BROADCAST
    assert bum_class(b"\x01\x00\x5e\x00\x00\x01" + b"x" * 8) == storm.MULTICAST
    assert bum_class(b"\x33\x33\x00\x00\x00\x01" + b"x" * 8) == storm.MULTICAST
    assert bum_class(b"\x02" * 6 + b"x" * 8) == storm.UNKNOWN
    assert storm.DROP_REASONS[storm.OUT + storm.BROADCAST] == "storm_broadcast_out"
    assert storm.DROP_REASONS[storm.IN + storm.UNKNOWN] == "storm_unknown_unicast_in"


def test_per_peer_limits_directions_and_workers() -> None:
    control = StormControl(StormLimits(broadcast=10, burst_s=1.0), lanes=2)
    control.set_port(2, StormLimits(broadcast=100, burst_s=1.0))
    out_bc = storm.OUT + storm.BROADCAST
    # a worker of two gets half the rate and half the burst
    assert sum(control.allow(1, out_bc, 0.0) for _ in range(20)) == 5
    assert sum(control.allow(2, out_bc, 0.0) for _ in range(200)) == 50
    # each direction and class has its own bucket
    assert control.allow(1, storm.IN + storm.BROADCAST, 0.0)
    assert control.allow(1, storm.OUT + storm.MULTICAST, 0.0)
    assert control.allow(1, out_bc, 0.2)  # 0.2 s at 5/s: one more
    control.refund(1, out_bc)
    assert control.allow(1, out_bc, 0.2)
    control.configure(StormLimits(), enabled=False)
    assert all(control.allow(1, out_bc, 0.2) for _ in range(10_000))


def test_a_super_frame_takes_one_token_per_segment() -> None:
    bucket = TokenBucket(10.0, 20.0, 0.0)
    assert bucket.take(0.0, 15)
    assert not bucket.take(0.0, 10)
    assert bucket.take(1.0, 10)  # 5 + 10 refilled
    full = TokenBucket(10.0, 4.0, 0.0)
    assert full.take(0.0, 44)  # larger than the bucket: one token when full
    assert not full.take(0.0, 44)
