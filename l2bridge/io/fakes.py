"""In-memory stand-ins for the tap and the UDP network, so the whole dataplane
runs in tests without root (the same ``Site`` runs on real devices).

``FakeTap``: ``inject(frame)`` is what the kernel bridge would send into the tap
(the site reads it); ``delivered`` collects what the site writes to the tap,
but for its loop probes, which go to ``probes``.  ``join(other)`` is a second
layer-2 path between two sites' LANs (a backup cable): whatever one site
writes into its LAN comes back out of the other's tap, both ways.

``FakeNetwork``: a datagram fabric between ``FakeTransport``s.  Delivery is
immediate and in order; ``drop`` may be set to a predicate to lose datagrams;
queues are bounded (overflow is counted, like a full socket buffer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from l2bridge.core.classify import LOOP_PROBE_MAC
from l2bridge.core.config import Endpoint

_VNET_HDR_LEN = 10  # struct virtio_net_hdr, ahead of every frame of a vnet tap
FAKE_QUEUE_DATAGRAMS = 4096
FAKE_TAP_QUEUE_FRAMES = 4096


class _Readiness:
    """A level-triggered readable flag for trio (like a non-blocking fd)."""

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    def notify(self) -> None:
        self._lot.unpark_all()

    async def wait(self, ready: Callable[[], bool]) -> None:
        if ready():
            await trio.lowlevel.checkpoint()
            return
        await self._lot.park()


class FakeTap:
    """A tap device in memory."""

    def __init__(self, name: str = "l2b0") -> None:
        self.name = name
        self._inbox: deque[bytes] = deque()
        self._ready = _Readiness()
        self.delivered: list[bytes] = []
        self.probes: list[bytes] = []
        self.joined: list[FakeTap] = []  # LANs joined to ours by another path
        self.overflow = 0
        self.closed = False
        self.vnet_hdr = False  # plain frames: no virtio_net_hdr, no super-frames

    def join(self, other: FakeTap) -> None:
        """Another layer-2 path between this LAN and ``other``'s (both ways)."""
        self.joined.append(other)
        other.joined.append(self)

    def unjoin(self, other: FakeTap) -> None:
        self.joined.remove(other)
        other.joined.remove(self)

    # The kernel side.
    def inject(self, frame: bytes) -> None:
        if len(self._inbox) >= FAKE_TAP_QUEUE_FRAMES:
            self.overflow += 1
            return
        self._inbox.append(frame)
        self._ready.notify()

    # The site's side (the Tap protocol).
    async def wait_readable(self) -> None:
        await self._ready.wait(lambda: bool(self._inbox))

    def read_batch(self, max_frames: int) -> list[bytes]:
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(max_frames, len(inbox)))]

    def write(self, frame: bytes) -> None:
        frame = bytes(frame)
        dst = frame[_VNET_HDR_LEN:_VNET_HDR_LEN + 6] if self.vnet_hdr else frame[:6]
        (self.probes if dst == LOOP_PROBE_MAC else self.delivered).append(frame)
        for other in self.joined:
            other.inject(frame)

    def close(self) -> None:
        self.closed = True


class FakeNetwork:
    """Connects FakeTransports by address ``(host, port)``."""

    def __init__(self) -> None:
        self.transports: dict[tuple[str, int], FakeTransport] = {}
        self.drop: Callable[[bytes, tuple[str, int], tuple[str, int]], bool] | None = None
        self.sent = 0
        self.lost = 0

    def transport(self, host: str, port: int = 55555) -> FakeTransport:
        addr = (host, port)
        if addr in self.transports:
            raise ValueError(f"address {host}:{port} is already bound")
        transport = FakeTransport(self, addr)
        self.transports[addr] = transport
        return transport

    def deliver(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        self.sent += 1
        if self.drop is not None and self.drop(data, src, dst):
            self.lost += 1
            return
        target = self.transports.get(dst)
        if target is None or target.closed:
            self.lost += 1
            return
        target._receive(bytes(data), src)


class FakeTransport:
    """One bound address on a FakeNetwork (the Transport protocol)."""

    def __init__(self, network: FakeNetwork, addr: tuple[str, int]) -> None:
        self.network = network
        self.addr = addr
        self._inbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._ready = _Readiness()
        self.errors = 0
        self.overflow = 0
        self.closed = False
        self.gso = False  # no kernel offloads in memory: send_batch is a loop over send
        self.gro = False

    def _receive(self, data: bytes, src: tuple[str, int]) -> None:
        if len(self._inbox) >= FAKE_QUEUE_DATAGRAMS:
            self.overflow += 1
            return
        self._inbox.append((data, src))
        self._ready.notify()

    async def wait_readable(self) -> None:
        await self._ready.wait(lambda: bool(self._inbox))

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]:
        inbox = self._inbox
        return [inbox.popleft() for _ in range(min(max_datagrams, len(inbox)))]

    def send(self, data: bytes, addr: object) -> bool:
        self.network.deliver(data, self.addr, addr)  # type: ignore[arg-type]
        return True

    def send_batch(self, datagrams: list[bytes], addr: object) -> int:
        """Like UdpTransport.send_batch: how many were sent before the buffer was full."""
        for sent, data in enumerate(datagrams):
            if not self.send(data, addr):
                return sent
        return len(datagrams)

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    async def resolve(self, endpoint: Endpoint) -> object:
        await trio.lowlevel.checkpoint()
        return (endpoint.host, endpoint.port)

    def format_addr(self, addr: object) -> str:
        host: str
        port: int
        host, port = addr  # type: ignore[misc]
        return f"{host}:{port}"

    def inject(self, data: bytes, src: tuple[str, int]) -> None:
        """Receive a datagram from an arbitrary source (garbage, strangers)."""
        self._receive(data, src)

    def close(self) -> None:
        self.closed = True
