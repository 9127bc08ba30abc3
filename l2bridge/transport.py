"""The UDP underlay: one non-blocking socket, IPv4 or IPv6 (dual-stack on ``[::]``).

The bridge drives it in batches: ``wait_readable`` once, then ``recv_batch``
drains until EAGAIN.  ``send`` never blocks: it returns False when the socket
buffer is full so the caller can ``wait_writable`` and retry.
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

import trio

from l2bridge.config import Endpoint

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM_BYTES = 65535
RESOLVE_TIMEOUT_S = 5.0
SO_SNDBUFFORCE = 32  # not exported by the socket module; root may exceed rmem_max/wmem_max
SO_RCVBUFFORCE = 33

# recvfrom errors that say something about an earlier datagram (ICMP), not about
# the socket: counted, then the drain goes on.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.ENOBUFS,
        errno.EPERM,
    }
)


class TransportError(Exception):
    """The socket could not be set up; the message names the address and the fix."""


class Transport(Protocol):
    """What the bridge needs from a datagram transport (UDP or an in-memory fake)."""

    errors: int

    async def wait_readable(self) -> None: ...

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]: ...

    def send(self, data: bytes, addr: object) -> bool: ...

    async def wait_writable(self) -> None: ...

    async def resolve(self, endpoint: Endpoint) -> object: ...

    def format_addr(self, addr: object) -> str: ...

    def close(self) -> None: ...


class UdpTransport:
    """A bound UDP socket; addresses are the tuples ``recvfrom`` returns."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.family = sock.family
        self.errors = 0  # transient receive errors, counted and survived
        self.last_error: str | None = None

    @classmethod
    def open(cls, listen: Endpoint) -> UdpTransport:
        family = socket.AF_INET6 if listen.is_ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for force, plain in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            sock.close()
            raise TransportError(_bind_message(listen, exc)) from None
        return cls(sock)

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]:
        recvfrom = self.sock.recvfrom
        batch: list[tuple[bytes, object]] = []
        append = batch.append
        for _ in range(max_datagrams):
            try:
                append(recvfrom(MAX_DATAGRAM_BYTES))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in TRANSIENT_ERRNOS:
                    raise
                self.errors += 1
                self.last_error = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return batch

    def send(self, data: bytes, addr: object) -> bool:
        """Send one datagram; False when the socket buffer is full (retry when writable)."""
        try:
            self.sock.sendto(data, addr)  # type: ignore[call-overload]
        except BlockingIOError:
            return False
        return True

    async def resolve(self, endpoint: Endpoint) -> object:
        """The socket address for ``endpoint`` in this socket's family."""
        flags = socket.AI_V4MAPPED if self.family == socket.AF_INET6 else 0
        with trio.move_on_after(RESOLVE_TIMEOUT_S):
            infos = await trio.socket.getaddrinfo(
                endpoint.host, endpoint.port, self.family, socket.SOCK_DGRAM, 0, flags
            )
            if infos:
                return infos[0][4]
        raise OSError(errno.ETIMEDOUT, f"resolving {endpoint.host!r} timed out")

    def format_addr(self, addr: object) -> str:
        host, port = addr[0], addr[1]  # type: ignore[index]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


def _bind_message(listen: Endpoint, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    hint = {
        errno.EADDRINUSE: "another l2bridge or program uses this port: "
        "stop it or change [site].listen",
        errno.EADDRNOTAVAIL: "no interface here has this address: use 0.0.0.0 / [::] or an "
        "address of this host in [site].listen",
        errno.EACCES: "ports below 1024 need root: run as root or choose a higher port",
    }.get(exc.errno or 0, "check [site].listen")
    return f"cannot listen on {listen}: {exc.strerror} ({name}): {hint}"
