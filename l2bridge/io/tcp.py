"""The TCP underlay: links that carry sealed datagrams as records, for paths without UDP.

A site listens on TCP on the port of its UDP ``listen`` address and dials a
peer's endpoint over TCP when UDP does not get through (``l2bridge.core.paths``
decides when).  A link carries exactly what UDP would: the same sealed
datagrams (handshakes, data, keepalives), framed by ``l2bridge.core.framing``.

``TcpLink``, one connected socket (non-blocking, ``TCP_NODELAY``):
  * inbound: ``wait_readable`` / ``recv_batch``, like the UDP transport, so the
    site runs its inbound loop over each link; the end of the stream, a reset
    or a record length no site sends raises ``LinkClosed``;
  * outbound (``send_batch``): the whole batch becomes one buffer and one send.
    What the kernel does not take waits in a user-space queue of at most
    ``queue_bytes``; records that do not fit are dropped and counted
    (``dropped``), never queued, and the kernel keeps at most
    ``NOTSENT_LOWAT_BYTES`` unsent (``TCP_NOTSENT_LOWAT``).  So a link never
    holds more than a few milliseconds of data: an inner TCP flow sees loss
    and backs off, instead of seconds of queueing (TCP-over-TCP meltdown).
    ``queue_bytes = 0`` is the naive tunnel, kept to measure the difference:
    kernel-sized buffers, and the sender waits for room (``send_batch`` takes
    less than it was given, ``wait_writable`` waits).
    ``flush`` (one task per link) writes the queue as the socket drains.

``TcpLinks``, the listener and all links of a site: ``serve`` accepts (at most
``MAX_LINKS`` links, ``MAX_PER_SOURCE`` per remote address: more are closed at
once, counted), ``dial`` connects within DIAL_TIMEOUT_S, and ``sweep`` closes a
link that has not authenticated within AUTH_DEADLINE_S or has been silent for
``idle_s``.  A link authenticates when the site says so (``authenticated``):
an unauthenticated link gets nothing but handshake answers.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from l2bridge.core import framing
from l2bridge.core.config import Endpoint
from l2bridge.errors import KernelError

NOTSENT_LOWAT_BYTES = 16384
TCP_NOTSENT_LOWAT = 25  # linux/tcp.h; CPython 3.11 does not export it
RECV_BYTES = 65536
NAIVE_QUEUE_BYTES = 4 * 1024 * 1024  # queue_bytes = 0: the sender waits beyond this
MAX_LINKS = 256
MAX_PER_SOURCE = 8
AUTH_DEADLINE_S = 5.0
DIAL_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 64


class LinkClosed(Exception):
    """The link ended: ``reason`` says how (a counter name)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TcpListenError(KernelError):
    """The TCP listener could not be set up (one line: address, errno, fix)."""


class TcpLink:
    """One TCP connection carrying records (module docstring).  Hashable by identity:
    the site uses the link itself as the peer's address."""

    carries = False  # an address the site sends to itself (l2bridge.site.reach)

    def __init__(self, sock: socket.socket, remote: tuple, *, dialed: bool, opened: float,
                 queue_bytes: int) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if queue_bytes:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_BYTES)
        self.sock = sock
        self.remote = remote
        self.dialed = dialed
        self.opened = opened
        self.last_rx = opened
        self.queue_bytes = queue_bytes
        self.limit = queue_bytes or NAIVE_QUEUE_BYTES
        self.reader = framing.RecordReader()
        self.pending = bytearray()  # bytes the kernel has not taken yet, in order
        self.peer: Any = None  # the Peer, once a datagram on it authenticated
        self.closed: str | None = None  # why it closed
        self.dropped = 0  # records dropped: the queue was full
        self.records_in = 0
        self.records_out = 0
        self._drained = trio.Event()
        self._waiting = trio.Event()

    def __repr__(self) -> str:
        return f"<TcpLink {self.describe()}>"

    def describe(self) -> str:
        host, port = self.remote[0], self.remote[1]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"tcp {'to' if self.dialed else 'from'} {where}"

    # ------------------------------------------------------------ inbound

    async def wait_readable(self) -> None:
        if self.closed:
            raise LinkClosed(self.closed)
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except trio.ClosedResourceError:
            raise LinkClosed(self.closed or "closed") from None

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]:
        """Records received so far, as ``(datagram, self)``; ``LinkClosed`` when it ended."""
        if self.closed:
            raise LinkClosed(self.closed)
        out: list[tuple[bytes, object]] = []
        recv = self.sock.recv
        feed = self.reader.feed
        for _ in range(max_datagrams):
            try:
                data = recv(RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                self.close(f"tcp_{errno.errorcode.get(exc.errno or 0, 'error').lower()}")
                raise LinkClosed(self.closed or "tcp_error") from None
            if not data:
                self.close("tcp_eof")
                if out:
                    return out
                raise LinkClosed("tcp_eof")
            try:
                records = feed(data)
            except framing.FramingError as exc:
                self.close(exc.reason)
                raise LinkClosed(exc.reason) from None
            out += [(record, self) for record in records]
            if len(data) < RECV_BYTES:
                break
        if out:
            self.last_rx = trio.current_time()
            self.records_in += len(out)
        return out

    # ------------------------------------------------------------ outbound

    def send_batch(self, datagrams: list[bytes], addr: object = None) -> int:
        """Send ``datagrams`` as records: what the kernel takes now goes at once, the rest
        waits in the queue; how many were taken.

        Bounded (``queue_bytes`` > 0): always all of them, those that did not fit the
        queue dropped and counted (a record the kernel took in part is always queued
        whole: the stream stays records).  Naive: fewer once the queue is full.
        """
        if self.closed:
            return len(datagrams)
        count = len(datagrams)
        if not all(map(framing.fits, datagrams)):
            datagrams = [d for d in datagrams if framing.fits(d)]
            self.dropped += count - len(datagrams)
        buffer = framing.encode(datagrams)
        sent = 0
        if not self.pending:
            sent = self._send(buffer)
            if sent < 0:
                return count
        if sent == len(buffer):
            self.records_out += len(datagrams)
            return count
        # What is left: the rest of a record the kernel took in part (always), then
        # whole records while the queue has room.
        room = self.limit - len(self.pending)
        keep_from = keep_to = sent
        taken = 0
        pos = 0
        for datagram in datagrams:
            end = pos + framing.LENGTH_LEN + len(datagram)
            if end > sent:
                if pos >= sent and end - keep_from > room:
                    break
                keep_to = end
            taken += 1
            pos = end
        self.pending += buffer[keep_from:keep_to]
        self.records_out += taken
        if self.pending:
            self._waiting.set()
        if taken < len(datagrams) and self.queue_bytes:
            self.dropped += len(datagrams) - taken
            return count
        return taken + (count - len(datagrams))

    def send(self, data: bytes, addr: object = None) -> bool:
        """One datagram (a handshake, a keepalive): queued like any record."""
        return self.send_batch([data]) == 1

    def _send(self, data: bytes | bytearray) -> int:
        """One non-blocking send: the bytes the kernel took, -1 if the link failed."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.close(f"tcp_{errno.errorcode.get(exc.errno or 0, 'error').lower()}")
            return -1

    def _write(self) -> None:
        """Write what the kernel takes of the queue."""
        pending = self.pending
        sent = self._send(pending)
        if sent > 0:
            del pending[:sent]
        if not pending and not self._drained.is_set():
            self._drained.set()

    async def wait_writable(self) -> None:
        """(Naive mode) until the queue is below its bound again, or the link closed."""
        while self.pending and len(self.pending) >= self.limit and not self.closed:
            self._drained = trio.Event()
            await self._drained.wait()
        await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        """Until the link closes: write the queue as the socket drains."""
        while not self.closed:
            if not self.pending:
                self._waiting = trio.Event()
                await self._waiting.wait()
                continue
            try:
                await trio.lowlevel.wait_writable(self.sock)
            except trio.ClosedResourceError:
                return
            self._write()
            if not self.pending:
                self._drained.set()

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = reason
        self._waiting.set()
        self._drained.set()
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class Deadlined(Protocol):
    """What ``sweep_links`` reads of a link (a ``TcpLink`` or the fakes' in-memory one)."""

    closed: str | None
    peer: Any
    opened: float
    last_rx: float

    def close(self, reason: str = "closed") -> None: ...


L = TypeVar("L", bound=Deadlined)


def sweep_links(links: set[L], now: float, idle_s: float, counters: Counter[str]) -> list[L]:
    """Close the links past a deadline: not authenticated within ``AUTH_DEADLINE_S``
    (``tcp_unauthenticated``), or silent for ``idle_s`` (``tcp_idle``); each is counted
    under its reason.  Returns the links closed."""
    closed = []
    for link in list(links):
        if link.closed:
            continue
        if link.peer is None and now - link.opened >= AUTH_DEADLINE_S:
            reason = "tcp_unauthenticated"
        elif now - link.last_rx >= idle_s:
            reason = "tcp_idle"
        else:
            continue
        link.close(reason)
        counters[reason] += 1
        closed.append(link)
    return closed


class TcpLinks:
    """The listener and the links of one site (module docstring)."""

    def __init__(self, listener: socket.socket | None, *, queue_bytes: int,
                 idle_s: float) -> None:
        if listener is not None:
            listener.setblocking(False)
        self.listener = listener
        self.queue_bytes = queue_bytes
        self.idle_s = idle_s
        self.links: set[TcpLink] = set()
        self.counters: Counter[str] = Counter()

    @classmethod
    def listen(cls, listen: Endpoint, port: int, *, queue_bytes: int,
               idle_s: float) -> TcpLinks:
        """Listen on ``listen``'s address at ``port`` (the UDP socket's port)."""
        family = socket.AF_INET6 if listen.is_ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((listen.host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            where = Endpoint(listen.host, port)
            raise TcpListenError(
                f"cannot listen on TCP {where}: {exc.strerror} ({name}): another program "
                f"uses this TCP port; stop it, or set transport = \"udp\" on every peer"
            ) from None
        return cls(sock, queue_bytes=queue_bytes, idle_s=idle_s)

    @property
    def port(self) -> int | None:
        return None if self.listener is None else self.listener.getsockname()[1]

    async def serve(self, on_link: Callable[[TcpLink], Awaitable[None]],
                    nursery: trio.Nursery) -> None:
        """Accept until cancelled; each accepted link goes to ``on_link`` in ``nursery``."""
        listener = self.listener
        if listener is None:
            await trio.sleep_forever()
            return
        while True:
            try:
                await trio.lowlevel.wait_readable(listener)
            except trio.ClosedResourceError:
                return  # closed: the site is stopping
            while True:
                try:
                    sock, remote = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # ECONNABORTED, EMFILE, ...: that one is lost
                    self.counters[f"tcp_accept_{errno.errorcode.get(exc.errno or 0, 'error')}"
                                  .lower()] += 1
                    break
                if len(self.links) >= MAX_LINKS or \
                        self._from(remote[0]) >= MAX_PER_SOURCE:
                    self.counters["tcp_refused"] += 1
                    sock.close()
                    continue
                link = TcpLink(sock, remote, dialed=False, opened=trio.current_time(),
                               queue_bytes=self.queue_bytes)
                self.links.add(link)
                self.counters["tcp_accepted"] += 1
                nursery.start_soon(on_link, link)

    def _from(self, host: str) -> int:
        return sum(1 for link in self.links if link.remote[0] == host and not link.closed)

    async def dial(self, addr: tuple, family: int) -> TcpLink:
        """Connect to ``addr`` within DIAL_TIMEOUT_S; OSError (or TimeoutError) if not."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(addr)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno.errorcode.get(code, str(code)))
            with trio.fail_after(DIAL_TIMEOUT_S):
                await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, errno.errorcode.get(code, str(code)))
        except BaseException:
            sock.close()
            raise
        link = TcpLink(sock, addr, dialed=True, opened=trio.current_time(),
                       queue_bytes=self.queue_bytes)
        self.links.add(link)
        self.counters["tcp_dialed"] += 1
        return link

    def forget(self, link: TcpLink) -> None:
        """A link's task ended: it is closed and no longer counted."""
        link.close()
        self.links.discard(link)

    def sweep(self, now: float) -> list[TcpLink]:
        """Close links past their deadline (module docstring); the links closed."""
        return sweep_links(self.links, now, self.idle_s, self.counters)

    def close(self) -> None:
        for link in list(self.links):
            link.close("stopped")
        self.links.clear()
        if self.listener is not None:
            if self.listener.fileno() >= 0:
                trio.lowlevel.notify_closing(self.listener)
            self.listener.close()
