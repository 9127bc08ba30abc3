"""Replay window: WireGuard's own test sequences, then a naive model on random inputs.

The sequences are WireGuard's counter self-test (Linux
``drivers/net/wireguard/selftest/counter.c``, also ported as wireguard-go
``replay/replay_test.go``), rewritten here from the published lists: each
step ``(n, expected)`` asks whether counter ``n`` is accepted. WireGuard
validates and marks in one call; here ``check`` must agree and change
nothing, then ``update`` must give the same answer.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from l2bridge.core.replay import REJECT_AFTER_MESSAGES, WINDOW_BITS, ReplayWindow

WINDOW = WINDOW_BITS - 64  # 8128: the guaranteed window of an 8192-bit ring
T_LIM = WINDOW + 1
REJECT = REJECT_AFTER_MESSAGES


def _run(window: ReplayWindow, steps: list[tuple[int, bool]]) -> None:
    for number, (counter, expected) in enumerate(steps, 1):
        before = window.snapshot()
        assert window.check(counter) is expected, f"step {number}: check({counter})"
        assert window.snapshot() == before, f"step {number}: check changed the window"
        assert window.update(counter) is expected, f"step {number}: update({counter})"
        if not expected:
            assert window.snapshot() == before, f"step {number}: a refusal changed the window"


def test_constants_match_wireguard() -> None:
    assert REJECT_AFTER_MESSAGES == 18446744073709543423  # 2**64 - 2**13 - 1
    window = ReplayWindow()
    assert window.bits == 8192
    assert window.window == 8128


def test_wireguard_sequence() -> None:
    steps = [
        (0, True),  # 1
        (1, True),  # 2
        (1, False),  # 3: replay
        (9, True),  # 4: jump ahead
        (8, True),  # 5: out of order, inside the window
        (7, True),  # 6
        (7, False),  # 7: replay of an out-of-order counter
        (T_LIM, True),  # 8: jump by a whole window
        (T_LIM - 1, True),  # 9
        (T_LIM - 1, False),  # 10
        (T_LIM - 2, True),  # 11
        (2, True),  # 12: exactly at the window's edge (top - 2 == 8127 <= 8128)
        (2, False),  # 13
        (T_LIM + 16, True),  # 14
        (3, False),  # 15: now just outside
        (T_LIM + 16, False),  # 16
        (T_LIM * 4, True),  # 17: far jump
        (T_LIM * 4 - (T_LIM - 1), True),  # 18: top - window: the oldest still accepted
        (10, False),  # 19: far too old
        (T_LIM * 4 - T_LIM, False),  # 20: top - window - 1: just too old
        (T_LIM * 4 - (T_LIM + 1), False),  # 21
        (T_LIM * 4 - (T_LIM - 2), True),  # 22
        (T_LIM * 4 + 1 - T_LIM, False),  # 23: replay of 22
        (0, False),  # 24
        (REJECT, False),  # 25: at the limit: never
        (REJECT - 1, True),  # 26: the last usable counter
        (REJECT, False),  # 27
        (REJECT - 1, False),  # 28
        (REJECT - 2, True),  # 29
        (REJECT + 1, False),  # 30
        (REJECT + 2, False),  # 31
        (REJECT - 2, False),  # 32
        (REJECT - 3, True),  # 33
        (0, False),  # 34
    ]
    _run(ReplayWindow(), steps)


def test_bulk_in_order_then_zero_at_the_edge() -> None:
    # Bulk 1: 1..window in order, then 0 (top - 0 == window: accepted once).
    _run(ReplayWindow(), [(i, True) for i in range(1, WINDOW + 1)] + [(0, True), (0, False)])


def test_bulk_in_order_from_two() -> None:
    # Bulk 2: 2..window+1, then 1 (at the edge) accepted, 0 (beyond) refused.
    steps = [(i, True) for i in range(2, WINDOW + 2)] + [(1, True), (0, False)]
    _run(ReplayWindow(), steps)


def test_bulk_descending_whole_window() -> None:
    # Bulk 3: window..0, every one accepted (the first sets the top).
    _run(ReplayWindow(), [(i, True) for i in range(WINDOW, -1, -1)])


def test_bulk_descending_from_window_plus_one() -> None:
    # Bulk 4: window+1..1 accepted, then 0 is one too old.
    _run(ReplayWindow(), [(i, True) for i in range(WINDOW + 1, 0, -1)] + [(0, False)])


def test_bulk_descending_then_new_top() -> None:
    # Bulk 5: window..1, then window+1 moves the top and 0 falls out.
    steps = [(i, True) for i in range(WINDOW, 0, -1)] + [(WINDOW + 1, True), (0, False)]
    _run(ReplayWindow(), steps)


def test_bulk_descending_zero_then_new_top() -> None:
    # Bulk 6: window..1, 0 (still inside), then window+1.
    steps = [(i, True) for i in range(WINDOW, 0, -1)] + [(0, True), (WINDOW + 1, True)]
    _run(ReplayWindow(), steps)


def test_negative_and_huge_counters_refused() -> None:
    window = ReplayWindow()
    assert not window.check(-1) and not window.update(-1)
    assert not window.check(2**64) and not window.update(2**64)
    assert window.highest == -1


def test_jump_beyond_the_ring_clears_everything() -> None:
    window = ReplayWindow()
    for counter in range(0, 200):
        assert window.update(counter)
    far = 10 * WINDOW_BITS + 5
    assert window.update(far)
    # Every slot the old counters used is free again for the counters now in the window.
    for counter in range(far - WINDOW, far):
        assert window.check(counter), counter
    assert not window.check(far - WINDOW - 1)


def test_small_window() -> None:
    window = ReplayWindow(128)
    assert window.window == 64
    assert window.update(100)
    assert window.update(36)  # 100 - 64
    assert not window.update(35)


def test_bad_sizes_refused() -> None:
    for bits in (0, 64, 100, 8191):
        try:
            ReplayWindow(bits)
        except ValueError as exc:
            assert str(bits) in str(exc)
        else:
            raise AssertionError(f"{bits} accepted")


class _NaiveWindow:
    """The acceptance rule written as plainly as possible: a set and a top."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.seen: set[int] = set()
        self.top = -1

    def accept(self, counter: int) -> bool:
        if not 0 <= counter < REJECT or counter in self.seen:
            return False
        if counter <= self.top and self.top - counter > self.window:
            return False
        self.seen.add(counter)
        self.top = max(self.top, counter)
        return True


@settings(max_examples=300, deadline=None)
@given(
    bits=st.sampled_from([128, 256, 1024, 8192]),
    base=st.sampled_from([0, 5000, 2**40, REJECT - 40_000]),
    moves=st.lists(st.integers(min_value=-20_000, max_value=20_000), min_size=1, max_size=300),
)
def test_matches_naive_model(bits: int, base: int, moves: list[int]) -> None:
    """Random walks around a base (near 0, mid-range and near the limit) agree with the model."""
    window = ReplayWindow(bits)
    model = _NaiveWindow(bits - 64)
    for move in moves:
        counter = base + move
        expected = model.accept(counter)
        assert window.check(counter) is expected, counter
        assert window.update(counter) is expected, counter
    assert window.highest == model.top


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * WINDOW_BITS), max_size=400))
def test_each_counter_accepted_at_most_once(counters: list[int]) -> None:
    window = ReplayWindow()
    accepted: list[int] = [c for c in counters if window.update(c)]
    assert len(accepted) == len(set(accepted))
