"""TCP records: the sealed datagrams a TCP link carries, each behind a 2-byte length (pure).

The classic tunnel's framing (simpletun), kept byte for byte::

    length:u16 (big endian, 1..MAX_RECORD_BYTES) | record (one datagram, as UDP carries it)

What the classic tunnel got wrong is not the format but the writes: it wrote
the length and the record with two calls, and Nagle plus delayed ACKs held the
second back for tens of milliseconds.  Here a whole batch of records becomes
one buffer (``encode``) and goes out with one send on a TCP_NODELAY socket.

Inbound flow (``RecordReader.feed``): append the bytes received, then cut as
many whole records as the buffer holds; a partial record waits for more.  A
length of 0 or above ``MAX_RECORD_BYTES`` cannot come from a site (no datagram
is empty, none is that large) and raises ``FramingError``: the link is closed.
Memory is bounded: the reader holds at most one partial record plus the bytes
of one receive call.
"""

from __future__ import annotations

import struct

LENGTH = struct.Struct("!H")
LENGTH_LEN = LENGTH.size
# The largest record: one sealed datagram carries one frame of a 9000-byte LAN
# MTU (plus headers) or one SEGMENT chunk, which is never larger than a WAN datagram.
MAX_RECORD_BYTES = 16384

_pack = LENGTH.pack


class FramingError(Exception):
    """The byte stream is not a sequence of records; ``reason`` is the counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def encode(datagrams: list[bytes]) -> bytes:
    """One buffer holding ``datagrams`` as records, in order (the caller checks sizes)."""
    parts: list[bytes] = []
    append = parts.append
    for datagram in datagrams:
        append(_pack(len(datagram)))
        append(datagram)
    return b"".join(parts)


def fits(datagram: bytes) -> bool:
    """Whether ``datagram`` can be one record."""
    return 0 < len(datagram) <= MAX_RECORD_BYTES


class RecordReader:
    """Cut a byte stream into records (module docstring)."""

    __slots__ = ("_buffer", "records")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.records = 0  # records cut so far

    @property
    def partial(self) -> int:
        """Bytes held of a record not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The records completed by ``data`` (maybe none); ``FramingError`` on a bad length."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view = bytes(buffer)
        else:
            view = data
        out: list[bytes] = []
        offset = 0
        end = len(view)
        while end - offset >= LENGTH_LEN:
            size = view[offset] << 8 | view[offset + 1]
            if not 0 < size <= MAX_RECORD_BYTES:
                buffer.clear()
                raise FramingError(
                    "tcp_bad_length",
                    f"a record length of {size}: expected 1..{MAX_RECORD_BYTES}",
                )
            start = offset + LENGTH_LEN
            if end - start < size:
                break
            out.append(view[start : start + size])
            offset = start + size
        if offset < end:
            buffer[:] = view[offset:]
        else:
            buffer.clear()
        self.records += len(out)
        return out
