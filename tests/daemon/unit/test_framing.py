"""TCP records: the 2-byte length framing, against a naive model with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l2bridge.core.framing import MAX_RECORD_BYTES, FramingError, RecordReader, encode, fits

RECORDS = st.lists(st.binary(min_size=1, max_size=300), max_size=30)


def naive_records(stream: bytes) -> tuple[list[bytes], bytes] | None:
    """The model: read length, read that many bytes, repeat; the rest is a partial record.
    None when a length no site sends comes first."""
    out = []
    while len(stream) >= 2:
        size = int.from_bytes(stream[:2], "big")
        if not 0 < size <= MAX_RECORD_BYTES:
            return None
        if len(stream) - 2 < size:
            break
        out.append(stream[2 : 2 + size])
        stream = stream[2 + size :]
    return out, stream


def test_encode_is_length_then_record_in_one_buffer() -> None:
    assert encode([b"abc", b"\x00"]) == b"\x00\x03abc\x00\x01\x00"
    assert encode([]) == b""


@given(RECORDS, st.lists(st.integers(min_value=1, max_value=97), max_size=40))
def test_any_cutting_of_the_stream_yields_the_same_records(records, cuts) -> None:
    stream = encode(records)
    reader = RecordReader()
    got: list[bytes] = []
    offset = 0
    for cut in cuts:
        got += reader.feed(stream[offset : offset + cut])
        offset += cut
    got += reader.feed(stream[offset:])
    assert got == records
    assert reader.partial == 0
    assert reader.records == len(records)


@given(st.binary(max_size=600))
def test_any_byte_stream_reads_as_the_model_says(stream) -> None:
    model = naive_records(stream)
    reader = RecordReader()
    if model is None:
        with pytest.raises(FramingError):
            reader.feed(stream)
        return
    records, rest = model
    assert reader.feed(stream) == records
    assert reader.partial == len(rest)


@pytest.mark.parametrize("length", [0, MAX_RECORD_BYTES + 1, 65535])
def test_lengths_no_site_sends_end_the_stream(length: int) -> None:
    reader = RecordReader()
    assert reader.feed(b"\x00\x01x") == [b"x"]
    with pytest.raises(FramingError) as caught:
        reader.feed(length.to_bytes(2, "big") + b"y" * 10)
    assert caught.value.reason == "tcp_bad_length"
    assert f"a record length of {length}" in str(caught.value)
    assert reader.partial == 0  # nothing kept of a broken stream


def test_memory_is_one_partial_record_at_most() -> None:
    reader = RecordReader()
    assert reader.feed(MAX_RECORD_BYTES.to_bytes(2, "big") + b"z" * (MAX_RECORD_BYTES - 1)) == []
    assert reader.partial == MAX_RECORD_BYTES + 1
    assert reader.feed(b"z") == [b"z" * MAX_RECORD_BYTES]
    assert reader.partial == 0


def test_fits() -> None:
    assert fits(b"x") and fits(b"x" * MAX_RECORD_BYTES)
    assert not fits(b"") and not fits(b"x" * (MAX_RECORD_BYTES + 1))
