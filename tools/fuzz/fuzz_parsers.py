"""Coverage-guided fuzzing (atheris / libFuzzer) of every parser that sees untrusted bytes.

Not run in CI (hypothesis covers the same contracts there). Run once by hand::

    pip install atheris
    python3 tools/fuzz/fuzz_parsers.py --seeds /tmp/l2b-fuzz-seeds   # write a seed corpus
    python3 tools/fuzz/fuzz_parsers.py -runs=1000000 /tmp/l2b-fuzz-seeds

The first input byte picks the target, the rest is its input:

    0 consume_initiation           raw bytes
    1 consume_initiation           resized to 148 bytes, mac1 recomputed (reaches the DH/AEAD)
    2 InitiatorState.consume_response  raw bytes
    3 InitiatorState.consume_response  resized to 92 bytes, index and mac1 fixed up
    4 parse_data_header + open_data    raw bytes
    5 open_data                    with a valid type/receiver header (reaches the AEAD)
    6 keys.decode_key              bytes decoded as UTF-8 (replacement on errors)
    7 wire.decode                  raw bytes
    8 config.parse_config          bytes decoded as UTF-8 (replacement on errors)
    9 ReplayWindow.check/update    a sequence of u64 counters

Each target may raise only its documented error (``HandshakeError``,
``KeyFormatError``, ``WireError``, ``ConfigError``); anything else propagates
and libFuzzer stops with the input that caused it. A run that ends with
"Done N runs" therefore had 0 uncaught exceptions in N inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import sys

import atheris

with atheris.instrument_imports():
    from l2bridge.core import keys, noise, wire
    from l2bridge.core.config import ConfigError, parse_config
    from l2bridge.core.replay import ReplayWindow

# Fixed keys: the fuzzer is reproducible and seeds stay valid across runs.
A_PRIVATE = bytes([0x41] * 32)
B_PRIVATE = bytes([0x42] * 32)
E_PRIVATE = bytes([0x45] * 32)
PSK = bytes(range(32))
TS = noise.tai64n(1_700_000_000)
A = noise.Identity(A_PRIVATE)
B = noise.Identity(B_PRIVATE)
A_KNOWS_B = noise.PeerKeys(A, B.public, PSK)
B_KNOWS_A = noise.PeerKeys(B, A.public, PSK)
INITIATION, _STATE = noise.create_initiation(A, A_KNOWS_B, 7, TS, ephemeral_private=E_PRIVATE)
_STATE_FIELDS = (_STATE._ck, _STATE._h)
RESPONSE, KB = noise.consume_initiation(B, INITIATION, lambda pub: B_KNOWS_A).create_response(
    9, ephemeral_private=E_PRIVATE
)
KA = noise.InitiatorState(
    A, A_KNOWS_B, 7, *_STATE_FIELDS, noise._private(E_PRIVATE)
).consume_response(RESPONSE)
MAC1_TO_A = hashlib.blake2s(noise.LABEL_MAC1 + A.public).digest()
MAC1_TO_B = hashlib.blake2s(noise.LABEL_MAC1 + B.public).digest()
E_KEY = noise._private(E_PRIVATE)


def _lookup(public: bytes) -> noise.PeerKeys | None:
    return B_KNOWS_A if public == A.public else None


def _mac1(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2s(body, digest_size=16, key=key).digest()


def _fresh_initiator() -> noise.InitiatorState:
    """The state awaiting RESPONSE, rebuilt per input (each state yields one keypair)."""
    return noise.InitiatorState(A, A_KNOWS_B, 7, *_STATE_FIELDS, E_KEY)


def _resize(data: bytes, size: int) -> bytes:
    return data[:size].ljust(size, b"\x00")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, body = data[0] % 10, data[1:]
    if target == 0:
        with contextlib.suppress(noise.HandshakeError):
            noise.consume_initiation(B, body, _lookup)
    elif target == 1:
        fixed = _resize(body, noise.INITIATION_LEN)
        head = fixed[: noise.INITIATION_MAC1_OFFSET]
        message = head + _mac1(MAC1_TO_B, head) + fixed[noise.INITIATION_MAC1_OFFSET + 16 :]
        with contextlib.suppress(noise.HandshakeError):
            noise.consume_initiation(B, message, _lookup)
    elif target == 2:
        with contextlib.suppress(noise.HandshakeError):
            _fresh_initiator().consume_response(body)
    elif target == 3:
        fixed = _resize(body, noise.RESPONSE_LEN)
        head = fixed[:8] + struct.pack("<I", 7) + fixed[12 : noise.RESPONSE_MAC1_OFFSET]
        message = head + _mac1(MAC1_TO_A, head) + fixed[noise.RESPONSE_MAC1_OFFSET + 16 :]
        with contextlib.suppress(noise.HandshakeError):
            _fresh_initiator().consume_response(message)
    elif target == 4:
        try:
            noise.parse_data_header(body)
            noise.open_data(KB, body)
        except noise.HandshakeError:
            pass
    elif target == 5:
        counter = int.from_bytes(_resize(body, 8), "little")
        message = struct.pack("<IIQ", noise.MSG_DATA, KB.local_index, counter) + body[8:]
        with contextlib.suppress(noise.HandshakeError):
            noise.open_data(KB, message)
    elif target == 6:
        with contextlib.suppress(keys.KeyFormatError):
            keys.decode_key(body.decode("utf-8", "replace"), what="fuzz")
    elif target == 7:
        with contextlib.suppress(wire.WireError):
            wire.decode(body)
    elif target == 8:
        with contextlib.suppress(ConfigError):
            parse_config(body.decode("utf-8", "replace"), "fuzz.toml")
    else:
        window = ReplayWindow()
        for (counter,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8]):
            if window.check(counter) != window.update(counter):
                raise AssertionError(f"check and update disagree on {counter}")


def write_seeds(directory: str) -> None:
    """One valid input per target, so the fuzzer starts past every length check."""
    os.makedirs(directory, exist_ok=True)
    config = (
        '[site]\nname = "london"\nprivate_key_file = "/nonexistent/london.key"\n\n'
        '[[peer]]\nname = "berlin"\nendpoint = "192.0.2.1:55555"\n'
        f'public_key = "{keys.encode_key(B.public)}"\n'
    ).encode()
    seeds = {
        0: INITIATION,
        1: INITIATION,
        2: RESPONSE,
        3: RESPONSE,
        4: noise.seal(KA, 3, b"\x02" * 60),
        5: (3).to_bytes(8, "little") + noise.seal(KA, 3, b"\x02" * 60)[16:],
        6: keys.encode_key(A.public).encode(),
        7: wire.encode_hello("london", True),
        8: config,
        9: struct.pack("<4Q", 0, 9000, 5, 2**64 - 2**13 - 2),
    }
    for target, body in seeds.items():
        with open(os.path.join(directory, f"seed-{target}"), "wb") as file:
            file.write(bytes([target]) + body)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(sys.argv[2])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
