"""Anti-replay window for data packet counters: RFC 6479 style, 8192 bits (as WireGuard).

The bitmap is a ring of ``bits / 64`` words of 64 bits. Counter ``n`` lives
at bit ``n % 64`` of word ``(n // 64) % words``. When a newer counter moves
the top forward, only the words it skips over are zeroed (at most the whole
ring), never shifted: O(1) per packet in the usual in-order case. One word is
always being recycled, so the window that is guaranteed is ``bits - 64``
counters (8128 for 8192 bits), exactly as WireGuard's.

Acceptance rule: ``n`` is accepted iff ``n < REJECT_AFTER_MESSAGES`` and
either ``n`` is above every counter seen so far, or ``top - n <= window`` and
``n`` has not been seen.

Inbound flow (per data packet, done by the caller):
  1. ``check(n)``: cheap rejection of replays and stale counters, no state change
  2. AEAD open: the tag must verify
  3. ``update(n)``: mark ``n`` as seen (returns False if, meanwhile, it was)

Invariant: the window only changes in ``update``, which the caller calls
only after the AEAD tag verified, so forged packets cannot move it.

Pure module: imports neither trio, socket nor pyroute2.
"""

from __future__ import annotations

# Specification constants (WireGuard).
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1  # counters at or above are never accepted
WINDOW_BITS = 8192

# Implementation constants.
_WORD_BITS = 64
_WORD_SHIFT = 6
_WORD_MASK = _WORD_BITS - 1


class ReplayWindow:
    """Sliding window of counters seen on one session's receive side."""

    __slots__ = ("bits", "window", "_words", "_ring_mask", "_top")

    def __init__(self, bits: int = WINDOW_BITS) -> None:
        if bits < 2 * _WORD_BITS or bits & (bits - 1):
            raise ValueError(f"replay window of {bits} bits: expected a power of two >= 128")
        self.bits = bits
        self.window = bits - _WORD_BITS
        count = bits >> _WORD_SHIFT
        self._words = [0] * count
        self._ring_mask = count - 1
        self._top = -1  # highest counter accepted so far; -1: none yet

    @property
    def highest(self) -> int:
        """The highest counter accepted so far, -1 if none."""
        return self._top

    def snapshot(self) -> tuple[int, tuple[int, ...]]:
        """The whole state (for tests asserting that forgeries changed nothing)."""
        return self._top, tuple(self._words)

    def check(self, counter: int) -> bool:
        """True if ``update(counter)`` would accept it now; changes nothing."""
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        top = self._top
        if counter > top:
            return True
        if top - counter > self.window:
            return False
        word = self._words[(counter >> _WORD_SHIFT) & self._ring_mask]
        return not (word >> (counter & _WORD_MASK)) & 1

    def update(self, counter: int) -> bool:
        """Mark ``counter`` as seen; False (and no change) if it is a replay, too old or too big.

        Call only after the packet's AEAD tag verified.
        """
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        words = self._words
        ring_mask = self._ring_mask
        index = counter >> _WORD_SHIFT
        top = self._top
        if counter > top:
            current = top >> _WORD_SHIFT  # -1 >> 6 == -1: nothing seen yet
            skipped = min(index - current, ring_mask + 1)
            for step in range(1, skipped + 1):
                words[(current + step) & ring_mask] = 0
            self._top = counter
        elif top - counter > self.window:
            return False
        slot = index & ring_mask
        bit = 1 << (counter & _WORD_MASK)
        word = words[slot]
        if word & bit:
            return False
        words[slot] = word | bit
        return True
