"""A multi-queue tap with vnet_hdr: each TCP flow stays on one queue.

Topology (scratch namespaces, ``nshelpers.extra_ns``):

    host ns                         bridge ns (scratch_ns)
    vh 10.9.1.1 ── veth ── vb ── br0 ── l2bq (tap, 2 queues, vnet_hdr + offloads)

The host reaches SERVER_IP through the tap: a static neighbour entry points it at
SERVER_MAC, which only this test answers for.  The test plays the server on the
tap queues: it answers each SYN with a SYN-ACK written into the queue the SYN
came from, so every flow gets established and the host sends data, and reads
every frame of every flow from both queue fds.

Kernel behaviours pinned here: with no steering program the tap picks a flow's
queue by its symmetric flow hash, so every frame of a flow leaves on one queue;
a frame *written* into a queue records that queue for its flow (the tap's flow
table), so the flow's next frames from the kernel follow the writer.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import select
import socket
import struct
import time
from collections.abc import Iterator

from nshelpers import checksum, extra_ns, link_up
from pyroute2 import IPRoute

from l2bridge.io.tap import ALL_OFFLOADS, VNET_HDR_LEN, TapDevice, open_tap
from netns.realise.nsenter import in_netns

TAP_NAME = "l2bq"
QUEUES = 2
FLOWS = 16  # at 8, all flows land on one queue once in 128 boots (hash seed is per boot)
FLOW_TIMEOUT_S = 10.0
MAX_FRAMES = 20_000
HOST_IP, SERVER_IP = "10.9.1.1", "10.9.1.2"
SERVER_PORT = 5201
SERVER_MAC = bytes.fromhex("020000000c0c")
SERVER_ISN = 1_000_000
PAYLOAD = secrets.token_bytes(3000)
NUD_PERMANENT = 0x80

ETH_HLEN = 14
ETH_P_IP = 0x0800
TCP_SYN, TCP_ACK = 0x02, 0x10


# --- helpers -----------------------------------------------------------------------------


@contextlib.contextmanager
def multiqueue_tap(br_ns: str, host_ns: str) -> Iterator[list[TapDevice]]:
    """br0 with veth vb (peer vh in ``host_ns``) and tap l2bq opened as QUEUES queues.

    Every queue has vnet_hdr and every offload; the host has a static neighbour
    entry SERVER_IP -> SERVER_MAC on vh.
    """
    with IPRoute(netns=br_ns) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("add", ifname="vb", kind="veth", peer={"ifname": "vh", "net_ns_fd": host_ns})
    with contextlib.ExitStack() as stack:
        queues = []
        for _ in range(QUEUES):
            with in_netns(br_ns):
                queue = open_tap(TAP_NAME, multi_queue=True, vnet_hdr=True)
            stack.enter_context(queue)
            queues.append(queue)
            assert queue.enable_offloads() == ALL_OFFLOADS
        link_up(br_ns, "br0")
        link_up(br_ns, "vb", master="br0")
        link_up(br_ns, TAP_NAME, master="br0")
        link_up(host_ns, "vh", address=HOST_IP)
        with IPRoute(netns=host_ns) as ipr:
            ipr.neigh(
                "add",
                dst=SERVER_IP,
                lladdr=SERVER_MAC.hex(":"),
                ifindex=ipr.link_lookup(ifname="vh")[0],
                state=NUD_PERMANENT,
            )
        yield queues


def server_segment(host_mac: bytes, dport: int, seq: int, ack: int, flags: int) -> bytes:
    """vnet header (all zero: a plain frame) + a complete SERVER -> HOST TCP segment."""
    src, dst = socket.inet_aton(SERVER_IP), socket.inet_aton(HOST_IP)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ~checksum(ip) & 0xFFFF) + ip[12:]
    tcp = struct.pack("!HHIIBBHHH", SERVER_PORT, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = checksum(src + dst + struct.pack("!HH", 6, len(tcp)))
    tcp = tcp[:16] + struct.pack("!H", ~checksum(tcp, pseudo) & 0xFFFF) + tcp[18:]
    eth = host_mac + SERVER_MAC + struct.pack("!H", ETH_P_IP)
    return bytes(VNET_HDR_LEN) + eth + ip + tcp


class Segment:
    """The fields of one host -> server TCP frame read from a queue (maybe a super-frame)."""

    __slots__ = ("host_mac", "sport", "seq", "flags", "payload_len")

    def __init__(self, item: bytes) -> None:
        eth = item[VNET_HDR_LEN:]
        self.host_mac = eth[6:12]
        ihl = (eth[ETH_HLEN] & 0x0F) * 4
        tcp = eth[ETH_HLEN + ihl :]
        self.sport, _dport, self.seq = struct.unpack("!HHI", tcp[:8])
        self.flags = tcp[13]
        self.payload_len = len(tcp) - (tcp[12] >> 4) * 4


def ours(item: bytes) -> bool:
    """An IPv4 TCP frame from the host to SERVER_IP:SERVER_PORT."""
    eth = item[VNET_HDR_LEN:]
    if len(eth) < ETH_HLEN + 40 or eth[12:14] != b"\x08\x00" or eth[ETH_HLEN + 9] != 6:
        return False
    ihl = (eth[ETH_HLEN] & 0x0F) * 4
    dport = struct.unpack("!H", eth[ETH_HLEN + ihl + 2 : ETH_HLEN + ihl + 4])[0]
    to_server = eth[ETH_HLEN + 16 : ETH_HLEN + 20] == socket.inet_aton(SERVER_IP)
    return to_server and dport == SERVER_PORT


class Server:
    """Plays SERVER_IP on the tap queues; records which queue carried which flow."""

    def __init__(self, queues: list[TapDevice]) -> None:
        self.queues = queues
        self.seen: dict[int, set[int]] = {}  # source port -> queues its frames arrived on
        self.data_frames: dict[int, list[int]] = {}  # source port -> queue of each data frame
        self.written_to: set[int] = set()  # queues a SYN-ACK was written into
        self.host: dict[int, tuple[bytes, int]] = {}  # source port -> (MAC, initial sequence)
        self.frames = 0

    def poll(self, timeout_s: float) -> int:
        """Read whatever both queues hold (waiting up to ``timeout_s``); answer SYNs.

        Returns how many frames were read.
        """
        fds = [queue.fd for queue in self.queues]
        readable, _, _ = select.select(fds, [], [], timeout_s)
        count = 0
        for index, queue in enumerate(self.queues):
            if queue.fd in readable:
                for item in queue.read_batch(64):
                    count += 1
                    if ours(item):
                        self.handle(index, Segment(item))
        self.frames += count
        return count

    def ack(self, index: int, port: int) -> None:
        """Write into queue ``index`` an ACK of the handshake of flow ``port``."""
        host_mac, isn = self.host[port]
        reply = server_segment(host_mac, port, SERVER_ISN + 1, isn + 1, TCP_ACK)
        self.queues[index].write(reply)

    def handle(self, index: int, segment: Segment) -> None:
        self.seen.setdefault(segment.sport, set()).add(index)
        if segment.payload_len:
            self.data_frames.setdefault(segment.sport, []).append(index)
        if segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
            self.host[segment.sport] = (segment.host_mac, segment.seq)
            reply = server_segment(
                segment.host_mac, segment.sport, SERVER_ISN, segment.seq + 1, TCP_SYN | TCP_ACK
            )
            self.queues[index].write(reply)
            self.written_to.add(index)


def connect_flows(host_ns: str) -> list[socket.socket]:
    clients = []
    try:
        for _ in range(FLOWS):
            with in_netns(host_ns):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(client)
            client.setblocking(False)
            assert client.connect_ex((SERVER_IP, SERVER_PORT)) == errno.EINPROGRESS
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def run_flows(server: Server, clients: list[socket.socket]) -> dict[int, socket.socket]:
    """Serve until every flow is established and has sent data; bounded in time and frames.

    Returns the clients by source port.
    """
    by_port = {client.getsockname()[1]: client for client in clients}
    pending = set(by_port)
    deadline = time.monotonic() + FLOW_TIMEOUT_S
    while pending or set(server.data_frames) != set(by_port):
        remaining = deadline - time.monotonic()
        assert remaining > 0, (
            f"flows not done in time: {len(pending)} unconnected, "
            f"{len(by_port) - len(server.data_frames)} without data"
        )
        assert server.frames < MAX_FRAMES
        server.poll(min(remaining, 0.1))
        for port in list(pending):
            client = by_port[port]
            _, writable, _ = select.select([], [client], [], 0)
            if writable:
                assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                assert client.send(PAYLOAD) > 0
                pending.discard(port)
    return by_port


# --- tests -------------------------------------------------------------------------------


def test_each_flow_stays_on_one_queue_and_both_queues_are_used(scratch_ns: str) -> None:
    with extra_ns() as host_ns, multiqueue_tap(scratch_ns, host_ns) as queues:
        clients = connect_flows(host_ns)
        with contextlib.ExitStack() as stack:
            for client in clients:
                stack.enter_context(client)
            server = Server(queues)
            run_flows(server, clients)

    assert len(server.seen) == FLOWS
    for port, queue_set in server.seen.items():
        assert len(queue_set) == 1, f"flow from port {port} arrived on queues {queue_set}"
    assert set().union(*server.seen.values()) == set(range(QUEUES))
    # SYN-ACKs written into each queue reached the host: every flow got established
    assert server.written_to == set(range(QUEUES))


def test_a_flow_follows_the_queue_its_reverse_frames_are_written_into(scratch_ns: str) -> None:
    with extra_ns() as host_ns, multiqueue_tap(scratch_ns, host_ns) as queues:
        clients = connect_flows(host_ns)
        with contextlib.ExitStack() as stack:
            for client in clients:
                stack.enter_context(client)
            server = Server(queues)
            by_port = run_flows(server, clients)

            port = next(iter(by_port))
            [before] = server.seen[port]
            other = 1 - before
            server.ack(other, port)  # a duplicate ACK of the handshake, into the other queue
            while server.poll(0):
                pass  # drain what the kernel queued before the move
            server.data_frames[port] = []
            by_port[port].send(PAYLOAD)
            deadline = time.monotonic() + FLOW_TIMEOUT_S
            while not server.data_frames[port]:
                assert time.monotonic() < deadline, "no data after the move"
                server.poll(0.1)

    assert set(server.data_frames[port]) == {other}
