"""The compiled DATA sealer against the pure-Python one: the same bytes on the wire and the
same plaintexts back, on hypothesis-generated keys, counters, lanes and plaintexts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core import noise

pytestmark = pytest.mark.skipif(
    noise._sealer is None, reason="the compiled sealer (l2bridge/core/_sealer.c) is not built "
    "here: setup.py builds it when gcc, libcrypto's and Python's headers are installed")

KEYS = st.binary(min_size=32, max_size=32)
PLAINTEXTS = st.lists(st.binary(max_size=1600), min_size=1, max_size=12)


def keypairs(send: bytes, recv: bytes) -> tuple[noise.Keypair, noise.Keypair]:
    """The same keys twice: compiled sealers, and pure ones (sealer/opener None)."""
    compiled = noise.Keypair(send, recv, 1, 0xA1B2C3D4, True)
    pure = noise.Keypair(send, recv, 1, 0xA1B2C3D4, True)
    pure.sealer = pure.opener = None
    assert compiled.sealer is not None or not noise.COMPILED
    return compiled, pure


@given(KEYS, st.integers(0, 2**64 - 2**20), st.integers(1, 64), st.integers(0, 255), PLAINTEXTS)
def test_compiled_batch_seal_is_byte_identical(key, counter, stride, lane, plaintexts) -> None:
    compiled, pure = keypairs(key, key)
    compiled.sealer = noise._sealer.Sealer(key, True)
    sealed = noise.seal_batch(compiled, counter, stride, plaintexts, lane)
    expected = [noise.seal(pure, counter + i * stride, p, lane) for i, p in enumerate(plaintexts)]
    assert sealed == expected


@given(KEYS, st.integers(0, 2**63), st.integers(0, 255), st.binary(max_size=2000),
       st.integers(0, 10_000))
def test_compiled_open_agrees_on_good_and_bad_datagrams(key, counter, lane, plaintext,
                                                        flip) -> None:
    compiled, pure = keypairs(key, key)
    compiled.opener = noise._sealer.Sealer(key, False)
    datagram = noise.seal(pure, counter, plaintext, lane)
    assert noise.open_data(compiled, datagram) == noise.open_data(pure, datagram) == plaintext
    bad = bytearray(datagram)
    bad[flip % len(bad)] ^= 0x40
    outcomes = []
    for keypair in (compiled, pure):
        try:
            outcomes.append(noise.open_data(keypair, bytes(bad)))
        except noise.HandshakeError as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["bad_decrypt", "bad_decrypt"]


def test_open_takes_memoryviews_and_refuses_short_datagrams() -> None:
    compiled, pure = keypairs(bytes(32), bytes(32))
    datagram = noise.seal(pure, 5, b"frame", 0)
    assert noise.open_data(compiled, memoryview(datagram)) == b"frame"
    with pytest.raises(noise.HandshakeError):
        noise.open_data(compiled, datagram[:31])


def test_a_sealer_does_one_direction_only() -> None:
    with pytest.raises(TypeError):
        noise._sealer.Sealer(bytes(32), False).seal_many(4, 1, 0, 1, [b"x"])
    with pytest.raises(TypeError):
        noise._sealer.Sealer(bytes(32), True).open(bytes(40))
    with pytest.raises(ValueError, match="expected 32"):
        noise._sealer.Sealer(bytes(31), True)
