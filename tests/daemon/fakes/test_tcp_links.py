"""The TCP underlay on real loopback sockets (no root): records, socket options, the
bounded queue that drops instead of delaying, the naive mode, and what a hostile client
can do (floods from one source, bad lengths, silence)."""

from __future__ import annotations

import socket

import pytest
import trio

from l2bridge.core.config import Endpoint
from l2bridge.io.tcp import (
    AUTH_DEADLINE_S,
    MAX_PER_SOURCE,
    NOTSENT_LOWAT_BYTES,
    TCP_NOTSENT_LOWAT,
    LinkClosed,
    TcpLink,
    TcpLinks,
    TcpListenError,
)

LOOPBACK = Endpoint("127.0.0.1", 0)


@pytest.fixture
async def server(nursery):
    links = TcpLinks.listen(LOOPBACK, 0, queue_bytes=65536, idle_s=30)
    accepted: list[TcpLink] = []

    async def on_link(link: TcpLink) -> None:
        accepted.append(link)

    nursery.start_soon(links.serve, on_link, nursery)
    yield links, accepted
    links.close()


async def dial(server_links: TcpLinks, *, queue_bytes: int = 65536) -> TcpLink:
    client = TcpLinks(None, queue_bytes=queue_bytes, idle_s=30)
    return await client.dial(("127.0.0.1", server_links.port), socket.AF_INET)


async def records(link: TcpLink, count: int) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < count:
            await link.wait_readable()
            got += [data for data, _ in link.recv_batch(64)]
    return got


async def test_records_cross_whole_and_in_order(server, nursery) -> None:
    links, accepted = server
    client = await dial(links)
    nursery.start_soon(client.flush)  # the site runs one per link
    sock = client.sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT_BYTES
    batch = [bytes([i]) * (i * 97 % 1500 + 1) for i in range(200)]
    for start in range(0, 200, 64):  # batches as the site sends them
        assert client.send_batch(batch[start : start + 64]) == len(batch[start : start + 64])
    await trio.sleep(0.05)
    [far] = accepted
    assert await records(far, 200) == batch
    assert far.records_in == 200 and client.records_out == 200 and client.dropped == 0
    assert far.remote[0] == "127.0.0.1" and not far.dialed and client.dialed


async def test_a_full_queue_drops_records_instead_of_delaying_them(server, nursery) -> None:
    links, accepted = server
    client = await dial(links, queue_bytes=65536)
    nursery.start_soon(client.flush)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await trio.sleep(0.05)
    [far] = accepted
    far.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    record = b"r" * 1400
    for _ in range(400):  # 560 kB at a reader that never reads
        assert client.send_batch([record] * 4) == 4  # never asks the caller to wait
    assert client.dropped > 0
    assert len(client.pending) <= 65536
    # What did go arrives intact, and the queue drains once the far side reads.
    got = await records(far, 10)
    assert all(r == record for r in got)


async def test_the_naive_mode_makes_the_sender_wait(server) -> None:
    links, accepted = server
    client = await dial(links, queue_bytes=0)
    record = b"n" * 1400
    taken = sum(client.send_batch([record] * 64) for _ in range(200))
    assert taken < 200 * 64  # it refused some: the caller must wait_writable
    assert client.dropped == 0


async def test_one_source_cannot_hold_more_than_its_share(server) -> None:
    links, accepted = server
    clients = [await dial(links) for _ in range(MAX_PER_SOURCE + 4)]
    await trio.sleep(0.2)
    assert len([link for link in links.links if not link.closed]) == MAX_PER_SOURCE
    assert links.counters["tcp_refused"] == 4
    for client in clients:
        client.close()


async def test_silent_and_unauthenticated_links_are_closed(server) -> None:
    links, accepted = server
    client = await dial(links)
    client.send_batch([b"\x01" * 10])
    client.sock.send(b"\x00\x40half")  # half a record, then nothing
    await trio.sleep(0.05)
    [far] = accepted
    assert links.sweep(trio.current_time()) == []
    assert links.sweep(trio.current_time() + AUTH_DEADLINE_S) == [far]
    assert far.closed == "tcp_unauthenticated"
    with pytest.raises(LinkClosed):
        await far.wait_readable()


@pytest.mark.parametrize("length", [0, 65535])
async def test_a_bad_length_closes_the_link(server, length: int) -> None:
    links, accepted = server
    client = await dial(links)
    client.sock.send(length.to_bytes(2, "big") + b"x" * 64)
    await trio.sleep(0.05)
    [far] = accepted
    with pytest.raises(LinkClosed) as closed:
        await records(far, 1)
    assert closed.value.reason == "tcp_bad_length"


async def test_the_far_end_closing_ends_the_link(server) -> None:
    links, accepted = server
    client = await dial(links)
    client.send_batch([b"last"])
    await trio.sleep(0.05)
    client.close()
    [far] = accepted
    assert await records(far, 1) == [b"last"]
    with pytest.raises(LinkClosed) as closed:
        await records(far, 1)
    assert closed.value.reason == "tcp_eof"


async def test_a_taken_port_is_one_line() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(TcpListenError) as caught:
            TcpLinks.listen(LOOPBACK, taken.getsockname()[1], queue_bytes=1, idle_s=1)
    finally:
        taken.close()
    message = str(caught.value)
    assert "\n" not in message and "EADDRINUSE" in message and "TCP 127.0.0.1:" in message


async def test_a_dial_nobody_answers_fails_fast() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ConnectionRefusedError):
        await TcpLinks(None, queue_bytes=1, idle_s=1).dial(("127.0.0.1", port), socket.AF_INET)
