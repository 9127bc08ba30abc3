"""Keys: generation, base64 text, low-order detection, fingerprints and key files."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core.keys import (
    CURVE25519_P,
    KEY_LEN,
    KeyFormatError,
    decode_key,
    encode_key,
    fingerprint,
    generate_private_key,
    generate_psk,
    is_low_order,
    public_key,
    read_private_key_file,
    read_psk_file,
)

# RFC 7748 section 6.1: Alice's X25519 key pair.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")

# The seven encodings every X25519 implementation refuses (0, 1, the two
# points of order 8, p - 1, p, p + 1), little-endian.
LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (CURVE25519_P - 1).to_bytes(32, "little"),
    CURVE25519_P.to_bytes(32, "little"),
    (CURVE25519_P + 1).to_bytes(32, "little"),
]


def test_rfc7748_public_key() -> None:
    assert public_key(ALICE_PRIVATE) == ALICE_PUBLIC


def test_generated_private_keys_are_clamped_and_distinct() -> None:
    keys = {generate_private_key() for _ in range(64)}
    assert len(keys) == 64
    for key in keys:
        assert len(key) == KEY_LEN
        assert key[0] & 7 == 0
        assert key[31] & 0x80 == 0
        assert key[31] & 0x40 == 0x40
        expected = X25519PrivateKey.from_private_bytes(key).public_key().public_bytes_raw()
        assert public_key(key) == expected
        assert not is_low_order(public_key(key))


def test_psks_are_random_32_bytes() -> None:
    psks = {generate_psk() for _ in range(32)}
    assert len(psks) == 32
    assert all(len(p) == KEY_LEN for p in psks)


def test_encode_is_standard_base64_like_wg() -> None:
    text = encode_key(ALICE_PUBLIC)
    assert text == "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
    assert len(text) == 44
    assert decode_key(text) == ALICE_PUBLIC
    assert decode_key(f"  {text}\n") == ALICE_PUBLIC


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "found 0 characters"),
        ("abc", "found 3 characters"),
        ("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo", "found 43 characters"),
        ("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm!=", "not valid base64"),
        ("hSDwCYkwp1R0i33ctD73Wg2-Og0mOBr066SpjqqbTmo=", "not valid base64"),
        ("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp=", "not the canonical base64"),
        ("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmé=", "not valid base64"),
    ],
)
def test_decode_errors_name_what_and_never_echo_the_key(text: str, problem: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        decode_key(text, what="site.private_key")
    message = str(info.value)
    assert message.startswith("site.private_key: ")
    assert problem in message
    assert "\n" not in message
    if len(text) > 8:
        assert text[:20] not in message


def test_decode_refuses_non_text() -> None:
    with pytest.raises(KeyFormatError, match="expected base64 text"):
        decode_key(b"x" * 44)  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_decode_arbitrary_text_raises_only_key_format_error(text: str) -> None:
    try:
        raw = decode_key(text)
    except KeyFormatError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(raw) == KEY_LEN
        assert encode_key(raw) == text.strip()


@given(st.binary(min_size=32, max_size=32))
def test_encode_decode_round_trip(raw: bytes) -> None:
    assert decode_key(encode_key(raw)) == raw


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_points_detected(point: bytes) -> None:
    assert is_low_order(point)
    high = point[:31] + bytes([point[31] | 0x80])
    assert is_low_order(high)


def test_non_canonical_encodings_detected() -> None:
    assert is_low_order((CURVE25519_P + 2).to_bytes(32, "little"))  # u = 2, non-canonical
    assert is_low_order((2**255 - 1).to_bytes(32, "little"))
    assert is_low_order(ALICE_PUBLIC[:31] + bytes([ALICE_PUBLIC[31] | 0x80]))
    assert is_low_order(ALICE_PUBLIC[:31])  # wrong length
    assert not is_low_order(ALICE_PUBLIC)
    assert not is_low_order((9).to_bytes(32, "little"))  # the base point


def test_fingerprint_is_short_and_from_the_public_key() -> None:
    assert fingerprint(ALICE_PUBLIC) == "hSDwCYkw…"
    assert len(fingerprint(ALICE_PUBLIC)) == 9


def _write(path: Path, text: str, mode: int) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_private_key_file_0600_accepted(tmp_path: Path) -> None:
    text = encode_key(ALICE_PRIVATE)
    path = _write(tmp_path / "site.key", text + "\n", 0o600)
    assert read_private_key_file(path) == ALICE_PRIVATE
    path = _write(tmp_path / "ro.key", text, 0o400)
    assert read_private_key_file(path) == ALICE_PRIVATE


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601, 0o620])
def test_group_or_other_permissions_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "site.key", encode_key(ALICE_PRIVATE), mode)
    with pytest.raises(KeyFormatError) as info:
        read_private_key_file(path)
    message = str(info.value)
    assert message.startswith(path + ": ")
    assert f"{mode:04o}" in message
    assert f"chmod 600 {path}" in message
    with pytest.raises(KeyFormatError, match="chmod 600"):
        read_psk_file(path)


def test_malformed_key_file_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.key", "not a key\n", 0o600)
    with pytest.raises(KeyFormatError) as info:
        read_private_key_file(path)
    assert str(info.value).startswith(f"{path}: private key: expected 44 characters")
    path = _write(tmp_path / "bad.psk", "*" * 44, 0o600)
    with pytest.raises(KeyFormatError, match=r"bad\.psk: pre-shared key: not valid base64"):
        read_psk_file(path)


def test_missing_binary_large_and_directory_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.key")
    with pytest.raises(KeyFormatError, match=r"nope\.key: cannot open private key file: No such"):
        read_private_key_file(missing)
    binary = tmp_path / "bin.key"
    binary.write_bytes(b"\xff" * 44)
    os.chmod(binary, 0o600)
    with pytest.raises(KeyFormatError, match="not ASCII text"):
        read_private_key_file(str(binary))
    large = _write(tmp_path / "large.key", "A" * 5000, 0o600)
    with pytest.raises(KeyFormatError, match="larger than 4096 bytes"):
        read_private_key_file(large)
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFormatError, match="not a regular file"):
        read_private_key_file(str(directory))


def test_a_fifo_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "site.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFormatError, match="a FIFO, not a regular file"):
        read_private_key_file(str(fifo))  # waited forever for a writer in open() before
    with pytest.raises(KeyFormatError, match="a FIFO, not a regular file"):
        read_psk_file(str(fifo))


def test_wg_style_psk_file(tmp_path: Path) -> None:
    psk = generate_psk()
    path = _write(tmp_path / "peer.psk", base64.b64encode(psk).decode() + "\n", 0o600)
    assert read_psk_file(path) == psk
