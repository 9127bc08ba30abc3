"""UDP GSO and GRO in the real transport, on loopback.

Every test sends a known list of datagrams with ``send_batch`` and checks that
the receiver's ``recv_batch`` yields exactly those datagrams, bytes equal and in
order, whichever offloads the two ends use.  A recording proxy around the
sending socket shows how the batch was cut into ``sendmsg``/``sendto`` calls.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest
import trio
from support import have_ipv6_loopback

from l2bridge.core.config import Endpoint
from l2bridge.io.transport import (
    GSO_MAX_PAYLOAD_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    UdpTransport,
)

STEP_TIMEOUT_S = 20.0  # a wait for something that must happen: clearly broken past this
SO_NO_CHECK = 11  # asm-generic/socket.h: UDP/IPv4 without checksum, which GSO refuses


FAMILIES = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1", id="ipv6", marks=pytest.mark.skipif(not have_ipv6_loopback(), reason="no ::1")
    ),
]


def payloads(sizes: list[int]) -> list[bytes]:
    """Distinct datagrams: each starts with its index, then a byte pattern."""
    out = []
    for index, size in enumerate(sizes):
        head = struct.pack("!H", index)[:size]
        out.append(head + bytes((index + i) & 0xFF for i in range(size - len(head))))
    return out


class RecordingSocket:
    """Wraps a socket: records every send call and can inject errors.

    ``calls`` holds ``("sendmsg", segment_size, [lengths])`` or ``("sendto", length)``.
    ``fail`` maps a call number (0-based, counting both kinds) to an errno to raise.
    """

    def __init__(self, sock: socket.socket, fail: dict[int, int] | None = None) -> None:
        self._sock = sock
        self.calls: list[tuple[object, ...]] = []
        self.fail = fail or {}
        self._count = 0

    def _maybe_fail(self) -> None:
        number = self._count
        self._count += 1
        err = self.fail.get(number)
        if err == errno.EAGAIN:
            raise BlockingIOError(err, os.strerror(err))
        if err is not None:
            raise OSError(err, os.strerror(err))

    def sendmsg(self, buffers, ancdata, flags, addr):  # type: ignore[no-untyped-def]
        self._maybe_fail()
        ((level, kind, value),) = ancdata
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        self.calls.append(("sendmsg", struct.unpack("=H", value)[0], [len(b) for b in buffers]))
        return self._sock.sendmsg(buffers, ancdata, flags, addr)

    def sendto(self, data, addr):  # type: ignore[no-untyped-def]
        self._maybe_fail()
        self.calls.append(("sendto", len(data)))
        return self._sock.sendto(data, addr)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


def open_pair(host: str, *, tx_offload: bool = True, rx_offload: bool = True):
    tx = UdpTransport.open(Endpoint(host, 0), offload=tx_offload)
    rx = UdpTransport.open(Endpoint(host, 0), offload=rx_offload)
    return tx, rx, (host, rx.local_port)


@pytest.fixture
def closing() -> Iterator[list[UdpTransport]]:
    opened: list[UdpTransport] = []
    yield opened
    for transport in opened:
        transport.sock.close()


async def receive(rx: UdpTransport, count: int, max_calls: int = 64) -> list[bytes]:
    """Exactly ``count`` datagrams (more is a failure), bounded by STEP_TIMEOUT_S."""
    got: list[bytes] = []
    with trio.fail_after(STEP_TIMEOUT_S):
        while len(got) < count:
            await rx.wait_readable()
            got.extend(data for data, _ in rx.recv_batch(max_calls))
    assert rx.recv_batch(max_calls) == []
    return got


def runs_of(calls: list[tuple[object, ...]]) -> list[int]:
    """Datagrams per send call, in order."""
    return [len(c[2]) if c[0] == "sendmsg" else 1 for c in calls]  # type: ignore[arg-type]


# --- probing ---------------------------------------------------------------------------


def test_offload_probes_gso_and_gro_and_offload_false_leaves_them_off(closing):
    on = UdpTransport.open(Endpoint("127.0.0.1", 0))
    off = UdpTransport.open(Endpoint("127.0.0.1", 0), offload=False)
    closing.extend([on, off])
    assert (on.gso, on.gro) == (True, True)  # Linux >= 5.0 has both
    assert (off.gso, off.gro) == (False, False)
    assert on.sock.getsockopt(SOL_UDP, UDP_GRO) == 1
    assert off.sock.getsockopt(SOL_UDP, UDP_GRO) == 0
    assert on.gso_fallbacks == off.gso_fallbacks == 0


# --- GSO send, GRO on and off ------------------------------------------------------------


@pytest.mark.parametrize("host", FAMILIES)
async def test_gso_train_arrives_merged_with_gro_and_split_back(closing, host):
    tx, rx, addr = open_pair(host)
    closing.extend([tx, rx])
    sent = payloads([1400] * 40 + [300])
    tx.sock = RecordingSocket(tx.sock)  # type: ignore[assignment]

    assert tx.send_batch(sent, addr) == 41

    assert tx.sock.calls == [("sendmsg", 1400, [1400] * 40 + [300])]  # type: ignore[attr-defined]
    with trio.fail_after(STEP_TIMEOUT_S):
        await rx.wait_readable()
    batch = rx.recv_batch(1)  # one recvmsg: the kernel kept the train whole
    assert [data for data, _ in batch] == sent
    assert {src[1] for _, src in batch} == {tx.local_port}
    assert rx.recv_batch(8) == []


@pytest.mark.parametrize("host", FAMILIES)
async def test_gso_train_to_a_receiver_without_gro_arrives_as_datagrams(closing, host):
    tx, rx, addr = open_pair(host, rx_offload=False)
    closing.extend([tx, rx])
    sent = payloads([1400] * 40 + [300])

    assert tx.send_batch(sent, addr) == 41

    assert await receive(rx, 41, max_calls=100) == sent


async def test_dual_stack_receiver_with_gro_splits_an_ipv4_train(closing):
    tx = UdpTransport.open(Endpoint("127.0.0.1", 0))
    rx = UdpTransport.open(Endpoint("::", 0))
    closing.extend([tx, rx])
    assert rx.gro
    sent = payloads([1000] * 10 + [7])

    assert tx.send_batch(sent, ("127.0.0.1", rx.local_port)) == 11

    assert await receive(rx, 11) == sent


async def test_mixed_sizes_are_cut_into_runs_closed_by_one_shorter_datagram(closing):
    tx, rx, addr = open_pair("127.0.0.1")
    closing.extend([tx, rx])
    sizes = [1400] * 5 + [1200] * 3 + [1400] + [100] * 10 + [1500] + [1]
    sent = payloads(sizes)
    tx.sock = RecordingSocket(tx.sock)  # type: ignore[assignment]

    assert tx.send_batch(sent, addr) == len(sent)

    assert tx.sock.calls == [  # type: ignore[attr-defined]
        ("sendmsg", 1400, [1400] * 5 + [1200]),
        ("sendmsg", 1200, [1200, 1200]),
        ("sendmsg", 1400, [1400, 100]),
        ("sendmsg", 100, [100] * 9),
        ("sendmsg", 1500, [1500, 1]),
    ]
    assert await receive(rx, len(sent)) == sent


async def test_a_lone_datagram_and_empty_datagrams_go_by_sendto(closing):
    tx, rx, addr = open_pair("127.0.0.1")
    closing.extend([tx, rx])
    sent = [b"x" * 50, b"", b"", b"y" * 60]
    tx.sock = RecordingSocket(tx.sock)  # type: ignore[assignment]

    assert tx.send_batch(sent, addr) == 4

    # an empty datagram cannot be a GSO segment (it would vanish): it goes alone
    assert tx.sock.calls == [  # type: ignore[attr-defined]
        ("sendto", 50),
        ("sendto", 0),
        ("sendto", 0),
        ("sendto", 60),
    ]
    assert await receive(rx, 4) == sent
    assert tx.send_batch([], addr) == 0


@pytest.mark.parametrize("rx_offload", [True, False], ids=["gro", "no-gro"])
async def test_runs_stop_at_64_segments_and_at_65000_bytes(closing, rx_offload):
    tx, rx, addr = open_pair("127.0.0.1", rx_offload=rx_offload)
    closing.extend([tx, rx])
    small = payloads([500] * 150)
    big = payloads([1400] * 100)
    tx.sock = RecordingSocket(tx.sock)  # type: ignore[assignment]

    assert tx.send_batch(small, addr) == 150
    assert await receive(rx, 150, max_calls=200) == small
    assert tx.send_batch(big, addr) == 100
    assert await receive(rx, 100, max_calls=200) == big

    per_call = GSO_MAX_PAYLOAD_BYTES // 1400
    assert per_call == 46
    assert runs_of(tx.sock.calls) == [  # type: ignore[attr-defined]
        GSO_MAX_SEGMENTS, GSO_MAX_SEGMENTS, 150 - 2 * GSO_MAX_SEGMENTS,
        per_call, per_call, 100 - 2 * per_call,
    ]


# --- fallbacks ---------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.EIO, errno.EINVAL, errno.EOPNOTSUPP])
async def test_refused_gso_falls_back_to_sendto_and_loses_nothing(closing, err):
    tx, rx, addr = open_pair("127.0.0.1")
    closing.extend([tx, rx])
    sent = payloads([1000] * 3 + [1200] * 4 + [10])
    tx.sock = RecordingSocket(tx.sock, fail={1: err})  # type: ignore[assignment]

    assert tx.send_batch(sent, addr) == len(sent)

    assert (tx.gso, tx.gso_fallbacks) == (False, 1)
    assert tx.sock.calls == [  # type: ignore[attr-defined]
        ("sendmsg", 1000, [1000] * 3),
        *[("sendto", n) for n in [1200] * 4 + [10]],
    ]
    assert await receive(rx, len(sent)) == sent
    # later batches go one by one straight away
    assert tx.send_batch(sent[:3], addr) == 3
    assert runs_of(tx.sock.calls)[-3:] == [1, 1, 1]  # type: ignore[attr-defined]
    assert await receive(rx, 3) == sent[:3]
    assert tx.gso_fallbacks == 1


async def test_kernel_refusing_gso_on_a_checksumless_socket_falls_back(closing):
    """A real refusal: UDP GSO needs checksums, and SO_NO_CHECK turns them off."""
    tx, rx, addr = open_pair("127.0.0.1")
    closing.extend([tx, rx])
    tx.sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    sent = payloads([800] * 20)

    assert tx.send_batch(sent, addr) == 20

    assert (tx.gso, tx.gso_fallbacks) == (False, 1)
    assert await receive(rx, 20, max_calls=100) == sent


async def test_other_send_errors_propagate(closing):
    tx, _rx, addr = open_pair("127.0.0.1")
    closing.extend([tx, _rx])
    tx.sock = RecordingSocket(tx.sock, fail={0: errno.ENETUNREACH})  # type: ignore[assignment]
    with pytest.raises(OSError) as info:
        tx.send_batch(payloads([100] * 4), addr)
    assert info.value.errno == errno.ENETUNREACH
    assert (tx.gso, tx.gso_fallbacks) == (True, 0)


@pytest.mark.parametrize("offload", [True, False], ids=["gso", "plain"])
async def test_full_socket_buffer_returns_the_count_sent_so_far(closing, offload):
    tx, rx, addr = open_pair("127.0.0.1", tx_offload=offload)
    closing.extend([tx, rx])
    sent = payloads([600] * 4 + [700] * 3)
    # gso: the second call is the 700-byte run; plain: the fifth datagram
    fail_at = 1 if offload else 4
    tx.sock = RecordingSocket(tx.sock, fail={fail_at: errno.EAGAIN})  # type: ignore[assignment]

    assert tx.send_batch(sent, addr) == 4
    assert tx.send_batch(sent[4:], addr) == 3

    assert await receive(rx, 7) == sent
    assert tx.gso_fallbacks == 0


async def test_offload_false_uses_one_sendto_per_datagram_and_recvfrom(closing):
    tx, rx, addr = open_pair("127.0.0.1", tx_offload=False, rx_offload=False)
    closing.extend([tx, rx])
    sent = payloads([1400] * 10 + [20])
    tx.sock = RecordingSocket(tx.sock)  # type: ignore[assignment]

    assert tx.send_batch(sent, addr) == 11

    assert tx.sock.calls == [("sendto", n) for n in [1400] * 10 + [20]]  # type: ignore[attr-defined]
    with trio.fail_after(STEP_TIMEOUT_S):
        await rx.wait_readable()
    assert len(rx.recv_batch(3)) == 3  # without GRO one call is one datagram
    assert [d for d, _ in rx.recv_batch(3)] == sent[3:6]
    assert await receive(rx, 5) == sent[6:]


async def test_gro_receive_survives_transient_errors(closing):
    tx, rx, addr = open_pair("127.0.0.1")
    closing.extend([tx, rx])
    sent = payloads([900] * 5)
    assert tx.send_batch(sent, addr) == 5
    real = rx.sock
    failed = []

    class FlakyRecv:
        def recvmsg(self, *args):  # type: ignore[no-untyped-def]
            if not failed:
                failed.append(1)
                raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
            return real.recvmsg(*args)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    rx.sock = FlakyRecv()  # type: ignore[assignment]
    with trio.fail_after(STEP_TIMEOUT_S):
        await trio.lowlevel.wait_readable(real)
    assert [d for d, _ in rx.recv_batch(4)] == sent
    assert (rx.errors, rx.last_error) == (1, "ECONNREFUSED")
    rx.sock = real
