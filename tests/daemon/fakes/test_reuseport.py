"""One UDP port for N workers: an SO_REUSEPORT group steered by lane, on loopback.

Every test sends known datagrams from several client sockets (so several source
ports: the kernel's flow hash alone would scatter them) and checks which member
of the group each one reached, bytes equal.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest
import trio
from support import have_ipv6_loopback

from l2bridge.core.caps import MAX_WORKERS
from l2bridge.core.config import Endpoint
from l2bridge.io.transport import (
    SOL_UDP,
    UDP_GRO,
    TransportError,
    UdpTransport,
    open_group,
    steering_program,
)

STEP_TIMEOUT_S = 20.0  # a wait for something that must happen: clearly broken past this
GROUP_SIZE = 3
CLIENTS = 4
LANES = range(8)
NON_DATA_TYPES = (1, 2, 0x11, 0x14)  # handshake initiation/response, cleartext control


NO_IPV6 = pytest.mark.skipif(not have_ipv6_loopback(), reason="no ::1")
# (listen address, address the clients send to)
FAMILIES = [
    pytest.param("127.0.0.1", "127.0.0.1", id="ipv4"),
    pytest.param("::1", "::1", id="ipv6", marks=NO_IPV6),
    pytest.param("::", "127.0.0.1", id="dual-stack", marks=NO_IPV6),
]


@contextlib.contextmanager
def group_on(listen: str) -> Iterator[list[socket.socket]]:
    """A group of GROUP_SIZE on a free port of ``listen``, closed on every exit path."""
    sockets = open_group(Endpoint(listen, 0), GROUP_SIZE)
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def data_datagram(lane: int, client: int) -> bytes:
    """A DATA-like datagram: type 4, lane, 2 zero bytes, receiver, counter, body."""
    return bytes([4, lane, 0, 0]) + client.to_bytes(4, "little") + bytes(8) + b"sealed" * 4


def other_datagram(kind: int, client: int) -> bytes:
    # byte 1 looks like a lane on purpose: only DATA is steered by it
    return bytes([kind, 7, 0, 0]) + client.to_bytes(4, "little") + b"handshake" * 3


def stamped(datagram: bytes, client: int) -> bytes:
    """``datagram`` with bytes 4..8 naming the client; too short ones go as they are."""
    if len(datagram) < 8:
        return datagram
    return datagram[:4] + client.to_bytes(4, "little") + datagram[8:]


def send_from_clients(family: int, target: tuple[str, int], datagrams: list[bytes]) -> None:
    """Send every datagram from each of CLIENTS sockets, i.e. from CLIENTS source ports."""
    for client in range(CLIENTS):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for datagram in datagrams:
                sock.sendto(stamped(datagram, client), target)


def drain(sock: socket.socket) -> list[bytes]:
    """Everything queued on ``sock`` (loopback delivers before sendto returns)."""
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            return got


def client_family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@pytest.mark.parametrize(("listen", "target_host"), FAMILIES)
def test_data_goes_to_the_lane_owner_and_everything_else_to_socket_0(
    listen: str, target_host: str
) -> None:
    with group_on(listen) as group:
        received = send_to_group(group, target_host)
    expected: list[list[bytes]] = [[] for _ in range(GROUP_SIZE)]
    for client in range(CLIENTS):
        for datagram in MIXED:
            owner = datagram[1] % GROUP_SIZE if len(datagram) >= 2 and datagram[0] == 4 else 0
            expected[owner].append(stamped(datagram, client))
    # per member: exactly the expected datagrams, in sending order (loopback keeps it)
    assert received == expected
    assert len(received[1]) == CLIENTS * 3  # lanes 1, 4, 7
    assert len(received[2]) == CLIENTS * 2  # lanes 2, 5


MIXED = [data_datagram(lane, 0) for lane in LANES]
MIXED += [other_datagram(kind, 0) for kind in NON_DATA_TYPES]
MIXED += [b"", b"\x04"]  # too short to carry a lane: socket 0


def send_to_group(group: list[socket.socket], target_host: str) -> list[list[bytes]]:
    port = group[0].getsockname()[1]
    assert [sock.getsockname()[1] for sock in group] == [port] * GROUP_SIZE
    send_from_clients(client_family(target_host), (target_host, port), MIXED)
    return [drain(sock) for sock in group]


def test_a_group_of_one_is_a_plain_socket() -> None:
    [sock] = open_group(Endpoint("127.0.0.1", 0), 1, gro=True)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert sock.getsockopt(SOL_UDP, UDP_GRO) == 1  # a lone socket may merge
        # no steering program: a second plain socket cannot share the port
        with pytest.raises(TransportError, match="EADDRINUSE"):
            open_group(Endpoint("127.0.0.1", sock.getsockname()[1]), 1)


@pytest.mark.parametrize(("listen", "target_host"), FAMILIES[:2])
def test_a_second_group_on_the_port_is_refused_but_a_bare_reuseport_socket_joins(
    listen: str, target_host: str
) -> None:
    """Reuseport groups are per user: a bare SO_REUSEPORT socket of the same uid joins.

    A second l2bridge does not: its socket 0 owns a group (the program is attached
    before bind), and the kernel refuses to bind such a socket into another group.
    """
    with group_on(listen) as group:
        check_second_group_and_bare_socket(group, listen, target_host)


def check_second_group_and_bare_socket(
    group: list[socket.socket], listen: str, target_host: str
) -> None:
    port = group[0].getsockname()[1]
    listen_endpoint = Endpoint(listen, port)
    for count in (GROUP_SIZE, 2, 1):
        with pytest.raises(TransportError) as info:
            open_group(listen_endpoint, count)
        assert str(info.value) == (
            f"cannot listen on {listen_endpoint}: Address already in use (EADDRINUSE): "
            "another l2bridge or program uses this port: stop it or change [site].listen"
        )
    bare = socket.socket(group[0].family, socket.SOCK_DGRAM)
    with bare:
        bare.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bare.bind((listen, port))  # joins as index 3: the program never returns 3
        send_from_clients(
            client_family(target_host), (target_host, port), [data_datagram(1, 0)]
        )
        assert drain(bare) == []
        assert len(drain(group[1])) == CLIENTS
    # the group still steers after the extra member left
    send_from_clients(client_family(target_host), (target_host, port), [data_datagram(2, 0)])
    assert len(drain(group[2])) == CLIENTS


def test_a_failed_group_closes_every_socket_it_opened() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        before = set(os.listdir("/proc/self/fd"))
        refused = r"^cannot listen on 127\.0\.0\.1:\d+: .*\(EADDRINUSE\)"
        with pytest.raises(TransportError, match=refused):
            open_group(Endpoint("127.0.0.1", port), GROUP_SIZE)
        assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ValueError, match=f"1..{MAX_WORKERS} sockets, not 0"):
        open_group(Endpoint("127.0.0.1", 0), 0)


def test_the_steering_program_listing() -> None:
    assert steering_program(3) == [
        (0x30, 0, 0, 0),  # ldb [0]
        (0x15, 0, 3, 4),  # jeq #4, 0, 3
        (0x30, 0, 0, 1),  # ldb [1]
        (0x94, 0, 0, 3),  # mod #3
        (0x16, 0, 0, 0),  # ret a
        (0x06, 0, 0, 0),  # ret #0
    ]


async def test_a_worker_wraps_its_inherited_socket_with_from_socket() -> None:
    group = open_group(Endpoint("127.0.0.1", 0), 2)
    port = group[0].getsockname()[1]
    # a worker process receives the fd number and wraps it; here: a dup of member 1
    # from_socket does what it is told (the rule that a group never merges is core.caps')
    worker = UdpTransport.from_socket(socket.socket(fileno=os.dup(group[1].fileno())),
                                      gso=True, gro=True)
    plain = UdpTransport.from_socket(
        socket.socket(fileno=os.dup(group[0].fileno())), gso=False, gro=False
    )
    try:
        assert worker.gro and worker.gso
        assert not plain.gro and not plain.gso
        assert plain.sock.getsockopt(SOL_UDP, UDP_GRO) == 0  # switched off, not just unused
        assert worker.local_port == port
        payload = data_datagram(3, 0)  # lane 3 -> member 1
        send_from_clients(socket.AF_INET, ("127.0.0.1", port), [payload])
        with trio.fail_after(STEP_TIMEOUT_S):
            await worker.wait_readable()
        got = worker.recv_batch(16)
        assert [data for data, _ in got] == [stamped(payload, client) for client in range(CLIENTS)]
        assert plain.recv_batch(16) == []
    finally:
        worker.close()
        plain.close()
        for sock in group:
            sock.close()


async def test_open_keeps_its_errors_and_options() -> None:
    transport = UdpTransport.open(Endpoint("127.0.0.1", 0))
    try:
        assert transport.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert transport.sock.getblocking() is False
        with pytest.raises(TransportError) as info:
            UdpTransport.open(Endpoint("127.0.0.1", transport.local_port))
        assert str(info.value).startswith(
            f"cannot listen on 127.0.0.1:{transport.local_port}: Address already in use "
            "(EADDRINUSE): "
        )
    finally:
        transport.close()
