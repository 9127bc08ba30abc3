"""In-memory stand-ins for the tap and the UDP network, so the whole dataplane
runs in tests without root (the same ``Site`` runs on real devices).

``FakeTap``: ``inject(frame)`` is what the kernel bridge would send into the tap
(the site reads it); ``delivered`` collects what the site writes to the tap,
but for its loop probes, which go to ``probes``.  ``join(other)`` is a second
layer-2 path between two sites' LANs (a backup cable): whatever one site
writes into its LAN comes back out of the other's tap, both ways.

``FakeNetwork``: a datagram fabric between ``FakeTransport``s.  Delivery is
immediate and in order; ``drop`` may be set to a predicate to lose datagrams;
queues are bounded (overflow is counted, like a full socket buffer).  It also
carries TCP: ``FakeLinks`` (the ``l2bridge.io.tcp.TcpLinks`` of one site) dial
each other by address, and each connection is a pair of ``FakeLink``s whose
bytes go through the real record framing; ``tcp_refused`` may be set to a
predicate ``(src, dst) -> bool`` to refuse connections (a firewall).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from l2bridge.core import framing
from l2bridge.core.classify import LOOP_PROBE_MAC
from l2bridge.core.config import Endpoint
from l2bridge.errors import PeerError

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
        self.listeners: dict[tuple[str, int], FakeLinks] = {}
        self.names: dict[str, str] = {}  # the DNS: name -> address
        self.tcp_refused: Callable[[tuple[str, int], tuple[str, int]], bool] | None = None

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
        """The address of ``endpoint``: a name through the network's ``names`` (unknown:
        ``PeerError``, as a resolver's NXDOMAIN), an address as it is."""
        await trio.lowlevel.checkpoint()
        host = endpoint.host
        if any(c.isalpha() for c in host) and ":" not in host:
            if host not in self.network.names:
                raise PeerError(f"cannot resolve {endpoint}: no such name")
            host = self.network.names[host]
        return (host, endpoint.port)

    def format_addr(self, addr: object) -> str:
        host: str
        port: int
        host, port = addr  # type: ignore[misc]
        return f"{host}:{port}"

    def host_port(self, addr: object) -> tuple[str, int]:
        return addr  # type: ignore[return-value]

    def sockaddr(self, host: str, port: int) -> object | None:
        return (host, port)

    def inject(self, data: bytes, src: tuple[str, int]) -> None:
        """Receive a datagram from an arbitrary source (garbage, strangers)."""
        self._receive(data, src)

    def close(self) -> None:
        self.closed = True


class FakeLink:
    """One end of an in-memory TCP connection (the ``l2bridge.io.tcp.TcpLink`` interface)."""

    carries = False

    def __init__(self, remote: tuple[str, int], *, dialed: bool, queue_bytes: int) -> None:
        self.remote = remote
        self.dialed = dialed
        self.opened = self.last_rx = trio.current_time()
        self.queue_bytes = queue_bytes
        self.other: FakeLink | None = None
        self.reader = framing.RecordReader()
        self._inbox = bytearray()
        self._ready = _Readiness()
        self.pending = b""
        self.peer: object = None
        self.closed: str | None = None
        self.dropped = self.records_in = self.records_out = 0

    def describe(self) -> str:
        return f"tcp {'to' if self.dialed else 'from'} {self.remote[0]}:{self.remote[1]}"

    async def wait_readable(self) -> None:
        from l2bridge.io.tcp import LinkClosed

        await self._ready.wait(lambda: bool(self._inbox) or self.closed is not None)
        if self.closed and not self._inbox:
            raise LinkClosed(self.closed)

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]:
        from l2bridge.io.tcp import LinkClosed

        if not self._inbox:
            if self.closed:
                raise LinkClosed(self.closed)
            return []
        data, self._inbox = bytes(self._inbox), bytearray()
        try:
            records = self.reader.feed(data)
        except framing.FramingError as exc:
            self.close(exc.reason)
            raise LinkClosed(exc.reason) from None
        self.last_rx = trio.current_time()
        self.records_in += len(records)
        return [(record, self) for record in records]

    def send_batch(self, datagrams: list[bytes], addr: object = None) -> int:
        if not self.closed and self.other is not None and not self.other.closed:
            self.records_out += len(datagrams)
            self.other._receive(framing.encode(datagrams))
        return len(datagrams)

    def send(self, data: bytes, addr: object = None) -> bool:
        return self.send_batch([data]) == 1

    def _receive(self, data: bytes) -> None:
        self._inbox += data
        self._ready.notify()

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        await self._ready.wait(lambda: self.closed is not None)

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = reason
        self._ready.notify()
        other = self.other
        if other is not None and not other.closed:
            other.close("tcp_eof")


class FakeLinks:
    """One site's TCP side on a FakeNetwork (the ``l2bridge.io.tcp.TcpLinks`` interface)."""

    def __init__(self, network: FakeNetwork, addr: tuple[str, int], *, queue_bytes: int = 65536,
                 idle_s: float = 30.0) -> None:
        from collections import Counter

        self.network = network
        self.addr = addr
        self.queue_bytes = queue_bytes
        self.idle_s = idle_s
        self.links: set[FakeLink] = set()
        self.counters: Counter[str] = Counter()
        self._accepted: deque[FakeLink] = deque()
        self._ready = _Readiness()
        network.listeners[addr] = self

    @property
    def port(self) -> int:
        return self.addr[1]

    async def serve(self, on_link: Callable, nursery: trio.Nursery) -> None:
        while True:
            await self._ready.wait(lambda: bool(self._accepted))
            while self._accepted:
                link = self._accepted.popleft()
                self.links.add(link)
                self.counters["tcp_accepted"] += 1
                nursery.start_soon(on_link, link)

    async def dial(self, addr: tuple, family: int) -> FakeLink:
        await trio.lowlevel.checkpoint()
        dst = (addr[0], addr[1])
        target = self.network.listeners.get(dst)
        refused = self.network.tcp_refused
        if target is None or (refused is not None and refused(self.addr, dst)):
            raise ConnectionRefusedError(111, "Connection refused")
        mine = FakeLink(dst, dialed=True, queue_bytes=self.queue_bytes)
        theirs = FakeLink(self.addr, dialed=False, queue_bytes=target.queue_bytes)
        mine.other, theirs.other = theirs, mine
        self.links.add(mine)
        self.counters["tcp_dialed"] += 1
        target._accepted.append(theirs)
        target._ready.notify()
        return mine

    def forget(self, link: FakeLink) -> None:
        link.close()
        self.links.discard(link)

    def sweep(self, now: float) -> list[FakeLink]:
        from l2bridge.io.tcp import sweep_links

        return sweep_links(self.links, now, self.idle_s, self.counters)

    def close(self) -> None:
        for link in list(self.links):
            link.close("stopped")
        self.network.listeners.pop(self.addr, None)
