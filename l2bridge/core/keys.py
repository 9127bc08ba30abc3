"""Static X25519 keys and pre-shared keys: generation, base64 text form, key files.

Text form (as ``wg genkey`` / ``wg pubkey`` / ``wg genpsk``): standard base64
of the 32 raw bytes, 44 characters ending in ``=``. Private keys are clamped
the way X25519 expects (RFC 7748), so a generated key is byte-identical to the
scalar actually used.

Flow of a key file (``read_private_key_file`` / ``read_psk_file``):
  1. open it without blocking and ``fstat`` the open descriptor (no
     check-then-open race; a FIFO or device is refused, never waited on)
  2. refuse it if any group/other permission bit is set (``mode & 0o077``)
  3. read at most ``KEY_FILE_MAX_BYTES`` and decode it with ``decode_key``.

Invariants: no message, ``repr`` or fingerprint ever contains private or
pre-shared key material (errors say what is wrong, never echo the value);
``fingerprint`` is derived from a public key only. Every error is a
``KeyFormatError`` (a ``ValueError``) whose ``str()`` is one line naming the
key or file, the problem and the fix.

Pure module: imports neither trio, socket nor pyroute2.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from l2bridge.core.files import FileProblem, read_regular_file
from l2bridge.errors import UsageError

# Specification constants.
KEY_LEN = 32
KEY_TEXT_LEN = 44  # base64 of 32 bytes, one "=" of padding
CURVE25519_P = 2**255 - 19

# Implementation constants.
KEY_FILE_MAX_BYTES = 4096  # a key file holds 44 characters and maybe a newline
KEY_FILE_MODE_MASK = 0o077  # any group/other permission bit refuses the file
FINGERPRINT_CHARS = 8

# u-coordinates (mod p) of the points of small order on Curve25519 and its
# twist: 0, 1, the two points of order 8, and p - 1. With p and p + 1 (which
# reduce to 0 and 1) these are the seven encodings every X25519 library
# refuses; any u >= p is a non-canonical encoding and is refused as well.
_LOW_ORDER_U = frozenset(
    {
        0,
        1,
        int.from_bytes(
            bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            "little",
        ),
        CURVE25519_P - 1,
    }
)
# A fixed scalar for the backstop test "X25519 gives all-zero": a point of
# small order multiplied by any clamped scalar (a multiple of 8) is zero.
_PROBE_PRIVATE = X25519PrivateKey.from_private_bytes(bytes([0x40] * KEY_LEN))


class KeyFormatError(UsageError, ValueError):
    """A key (text, bytes or file) that cannot be used; ``str()`` is one line."""


def _clamp(raw: bytes) -> bytes:
    key = bytearray(raw)
    key[0] &= 248
    key[31] &= 127
    key[31] |= 64
    return bytes(key)


def generate_private_key() -> bytes:
    """Return 32 random bytes clamped as X25519 expects (like ``wg genkey``)."""
    return _clamp(secrets.token_bytes(KEY_LEN))


def public_key(private: bytes) -> bytes:
    """Return the X25519 public key (32 bytes) of a 32-byte private key."""
    if len(private) != KEY_LEN:
        raise KeyFormatError(f"private key: expected {KEY_LEN} bytes, found {len(private)}")
    return X25519PrivateKey.from_private_bytes(bytes(private)).public_key().public_bytes_raw()


def generate_psk() -> bytes:
    """Return a fresh 32-byte pre-shared key (like ``wg genpsk``)."""
    return secrets.token_bytes(KEY_LEN)


def encode_key(raw: bytes) -> str:
    """Return the 44-character standard base64 text of a 32-byte key."""
    if len(raw) != KEY_LEN:
        raise KeyFormatError(f"key: expected {KEY_LEN} bytes, found {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str, *, what: str = "key") -> bytes:
    """Parse base64 key text (surrounding whitespace ignored) into 32 raw bytes.

    Raises ``KeyFormatError`` naming ``what`` (e.g. ``"peer[0].public_key"``)
    and the problem; the text itself is never repeated, since it may be a
    private key.
    """
    if not isinstance(text, str):
        raise KeyFormatError(f"{what}: expected base64 text, found {type(text).__name__}")
    text = text.strip()
    if len(text) != KEY_TEXT_LEN:
        raise KeyFormatError(
            f"{what}: expected {KEY_TEXT_LEN} characters of base64 (32 bytes, as printed by"
            f" `l2bridge genkey`/`pubkey`/`genpsk`), found {len(text)} characters"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(
            f"{what}: not valid base64 (only A-Z a-z 0-9 + / and one trailing =);"
            " copy the key again from `l2bridge genkey`/`pubkey`/`genpsk`"
        ) from None
    if len(raw) != KEY_LEN or base64.b64encode(raw).decode("ascii") != text:
        raise KeyFormatError(
            f"{what}: not the canonical base64 of a {KEY_LEN}-byte key;"
            " copy the key again from `l2bridge genkey`/`pubkey`/`genpsk`"
        )
    return raw


def is_low_order(public: bytes) -> bool:
    """True if ``public`` is unusable as an X25519 public key.

    That is: not 32 bytes, the top bit set or ``u >= p`` (non-canonical
    encodings, never produced by X25519), one of the points of small order,
    or (backstop) a point for which X25519 with a fixed scalar yields all-zero.
    """
    if len(public) != KEY_LEN or public[31] & 0x80:
        return True
    u = int.from_bytes(public, "little")
    if u >= CURVE25519_P or u in _LOW_ORDER_U:
        return True
    try:
        shared = _PROBE_PRIVATE.exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError:
        return True
    return shared == bytes(KEY_LEN)


def fingerprint(public: bytes) -> str:
    """Short, log-safe id of a PUBLIC key: the first 8 base64 characters + "…".

    Never call it on private or pre-shared keys: the prefix of their base64
    would be a prefix of the secret.
    """
    return base64.b64encode(bytes(public)).decode("ascii")[:FINGERPRINT_CHARS] + "…"


def _read_key_file(path: str, what: str) -> bytes:
    """Open without blocking, check type and mode on the open descriptor, read, decode."""
    try:
        data, info = read_regular_file(path, KEY_FILE_MAX_BYTES)
    except FileProblem as exc:
        raise KeyFormatError(
            f"{path}: cannot {exc.action} {what} file: {exc}; check the path in the configuration"
        ) from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & KEY_FILE_MODE_MASK:
        raise KeyFormatError(
            f"{path}: {what} file has mode {mode:04o}, readable or writable by group/others;"
            f" run `chmod 600 {path}`"
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError(
            f"{path}: {what} file is not ASCII text; it should hold one 44-character base64 key"
        ) from None
    return decode_key(text, what=f"{path}: {what}")


def read_private_key_file(path: str) -> bytes:
    """Read a private key file (mode 0600 or stricter); ``KeyFormatError`` otherwise.

    The key is returned as given (X25519 clamps it when used), so a file
    written by ``wg genkey`` works unchanged.
    """
    return _read_key_file(path, "private key")


def read_psk_file(path: str) -> bytes:
    """Read a pre-shared key file, under the same rules as a private key file."""
    return _read_key_file(path, "pre-shared key")


@dataclass(frozen=True, slots=True)
class Secrets:
    """A site's private key (None in cleartext) and its peers' pre-shared keys, by name.

    ``to_json``/``from_json`` carry them from a site's leader to its workers over
    their private channel; nothing else ever serialises them.
    """

    private: bytes | None
    psks: Mapping[str, bytes]

    def to_json(self) -> dict:
        return {
            "private": None if self.private is None else encode_key(self.private),
            "psks": {name: encode_key(psk) for name, psk in self.psks.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> Secrets:
        private = data["private"]
        return cls(None if private is None else decode_key(private),
                   {name: decode_key(psk) for name, psk in data["psks"].items()})
