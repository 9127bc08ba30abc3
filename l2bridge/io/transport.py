"""The UDP underlay: one non-blocking socket, IPv4 or IPv6 (dual-stack on ``[::]``).

A site with N worker processes shares one UDP port (``open_group``): N sockets in
one SO_REUSEPORT group, and a classic BPF program that steers each inbound
datagram to the worker owning its lane.  Flow of ``open_group`` (count > 1):
  1. socket 0: options, SO_REUSEPORT, then the steering program attached *before*
     bind: a socket that already owns a reuseport group cannot join another one,
     so a second l2bridge on the same port fails with EADDRINUSE instead of
     silently sharing the first one's traffic;
  2. bind socket 0 (port 0 picks a free port; the others take the one it got);
  3. sockets 1..N-1: options, SO_REUSEPORT, bind: each joins the group at the
     next index, so socket k is group index k, which the program returns.
Steering (the program sees the UDP payload at offset 0): a DATA datagram
(byte 0 == 4) goes to socket ``byte1 % N`` (byte 1 is the lane); everything else
(handshakes, cleartext control, anything shorter than 2 bytes) to socket 0.
The kernel keeps indexes dense: when a member closes, the last one takes its
index, and while fewer than N sockets remain, an index past the end falls back to
the kernel's flow hash; so a group is rebuilt whole, never one member replaced.
Steering is per buffer, not per datagram: with UDP GRO the kernel would merge
same-sized datagrams of several lanes from one peer address into one buffer for
the owner of the first one's lane.  That is why a group never uses GRO
(``l2bridge.core.caps.gro_allowed``, the one place that rule is made).  A worker
wraps its inherited socket with ``UdpTransport.from_socket``.

A site drives it in batches: ``wait_readable`` once, then ``recv_batch``
drains until EAGAIN.  ``send`` never blocks: it returns False when the socket
buffer is full so the caller can ``wait_writable`` and retry.

Kernel offloads, each asked for by the caller and probed (``gso``/``gro`` say
what the kernel granted):

Outbound flow of ``send_batch``:
  1. cut the batch into runs: consecutive datagrams of one size, optionally
     closed by one shorter, non-empty datagram, at most ``GSO_MAX_SEGMENTS`` datagrams and
     ``GSO_MAX_PAYLOAD_BYTES`` bytes;
  2. with UDP GSO, send each run with one ``sendmsg`` carrying a ``UDP_SEGMENT``
     control message (the kernel cuts it back into the same datagrams); a run of
     one is a plain ``sendto``;
  3. if the kernel refuses GSO (EIO, EINVAL, EOPNOTSUPP: a route or device
     without checksum offload), turn GSO off for good, count it in
     ``gso_fallbacks`` and send the rest one datagram per ``sendto``;
  4. stop at EAGAIN and return how many datagrams were sent: the caller retries the rest.

Inbound flow of ``recv_batch`` with UDP GRO:
  1. ``recvmsg`` one buffer; the kernel may have merged a train of same-sized
     datagrams from one sender, and then says so with a ``UDP_GRO`` control
     message carrying the segment size;
  2. split the buffer at that size (the last piece may be shorter): the caller
     sees exactly the datagrams the peer sent, in order, with the same address.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from typing import Protocol

import trio

from l2bridge.core.caps import MAX_WORKERS, gro_allowed
from l2bridge.core.config import Endpoint
from l2bridge.errors import KernelError, PeerError

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM_BYTES = 65535
RESOLVE_TIMEOUT_S = 5.0
SO_SNDBUFFORCE = 32  # not exported by the socket module; root may exceed rmem_max/wmem_max
SO_RCVBUFFORCE = 33

# linux/udp.h; CPython 3.11 exports neither option
SOL_UDP = 17
UDP_SEGMENT = 103  # sendmsg cmsg / sockopt: u16 segment size (UDP GSO)
UDP_GRO = 104  # sockopt on; recvmsg cmsg: int segment size of a merged buffer

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h: a classic BPF program picks the member

# classic BPF opcodes (linux/bpf_common.h) of the lane-steering program
BPF_LD_B_ABS = 0x30  # A = payload[k] (one byte); out of range ends the program with 0
BPF_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
BPF_MOD_K = 0x94  # A %= k
BPF_RET_A = 0x16  # return A
BPF_RET_K = 0x06  # return k
MSG_DATA = 4  # l2bridge/noise.py: byte 0 of a DATA datagram; byte 1 is its lane
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_SOCK_FPROG = struct.Struct("@HP")  # struct sock_fprog: length, pointer to the filters

GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (newer allow 128)
GSO_MAX_PAYLOAD_BYTES = 65000  # one sendmsg stays below the 64 KiB IP/UDP length limit
GRO_CMSG_BYTES = socket.CMSG_SPACE(4)
# sendmsg errors meaning "this path cannot do GSO": fall back to one sendto per datagram
GSO_REFUSED_ERRNOS = frozenset({errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})

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


class TransportError(KernelError):
    """The socket could not be set up; the message names the address and the fix."""


class Transport(Protocol):
    """What a site needs from a datagram transport (UDP or an in-memory fake).

    ``gso``/``gro``: whether sends are cut and receives merged by the kernel
    (``gso`` may turn False by itself when the kernel refuses a GSO send);
    ``errors``: transient receive errors survived.  ``resolve`` raises
    ``PeerError`` when an endpoint cannot be resolved.
    """

    errors: int
    gso: bool
    gro: bool

    async def wait_readable(self) -> None: ...

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]: ...

    def send(self, data: bytes, addr: object) -> bool: ...

    def send_batch(self, datagrams: list[bytes], addr: object) -> int: ...

    async def wait_writable(self) -> None: ...

    async def resolve(self, endpoint: Endpoint) -> object: ...

    def format_addr(self, addr: object) -> str: ...

    def sockaddr(self, host: str, port: int) -> object | None: ...

    def host_port(self, addr: object) -> tuple[str, int]: ...

    def close(self) -> None: ...


class UdpTransport:
    """A bound UDP socket; addresses are the tuples ``recvfrom`` returns.

    ``gso``/``gro`` say whether UDP GSO / GRO are in use (both False unless
    ``open`` probed them); ``gso`` turns False by itself when the kernel refuses
    a GSO send, counted in ``gso_fallbacks``.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.family = sock.family
        self.errors = 0  # transient receive errors, counted and survived
        self.last_error: str | None = None
        self.gso = False
        self.gro = False
        self.gso_fallbacks = 0

    @classmethod
    def open(cls, listen: Endpoint, *, offload: bool = True) -> UdpTransport:
        """Bind one socket on ``listen``; with ``offload`` ask for UDP GSO and GRO.

        A kernel without either offload is not an error: the flag stays False.
        """
        gro = gro_allowed(offload=offload, sockets=1)
        [sock] = open_group(listen, 1, gro=gro)
        return cls.from_socket(sock, gso=offload, gro=gro)

    @classmethod
    def from_socket(cls, sock: socket.socket, *, gso: bool, gro: bool) -> UdpTransport:
        """Wrap a bound UDP socket (e.g. ``socket.socket(fileno=fd)`` inherited by a worker).

        Asks the kernel for UDP GSO and GRO as told and records what it granted;
        without ``gro`` GRO is switched off, so a socket that ``open_group``
        prepared with it never hands this transport merged buffers.  The
        transport owns ``sock`` from now on and makes it non-blocking.
        """
        transport = cls(sock)
        if gso:
            transport.gso = _try_setsockopt(sock, UDP_SEGMENT, 0)
        if gro:
            transport.gro = _try_setsockopt(sock, UDP_GRO, 1)
        else:
            _try_setsockopt(sock, UDP_GRO, 0)  # a kernel without UDP_GRO never merges
        return transport

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    async def wait_readable(self) -> None:
        await trio.lowlevel.wait_readable(self.sock)

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]:
        """Drain up to ``max_datagrams`` receive calls, stopping early at EAGAIN.

        Returns one ``(datagram, addr)`` per UDP datagram as its sender sent it;
        with GRO one call may yield several, so the list may be longer than
        ``max_datagrams``.  Transient errors (ICMP reports) are counted in
        ``errors`` and the drain goes on.
        """
        if self.gro:
            return self._recv_batch_gro(max_datagrams)
        recvfrom = self.sock.recvfrom
        batch: list[tuple[bytes, object]] = []
        append = batch.append
        for _ in range(max_datagrams):
            try:
                append(recvfrom(MAX_DATAGRAM_BYTES))
            except BlockingIOError:
                break
            except OSError as exc:
                self._survive(exc)
        return batch

    def _survive(self, exc: OSError) -> None:
        """A receive error: an earlier datagram's ICMP report is counted and the drain goes
        on; anything else is the socket's own failure and raises."""
        if exc.errno not in TRANSIENT_ERRNOS:
            raise exc
        self.errors += 1
        self.last_error = errno.errorcode.get(exc.errno or 0, str(exc.errno))

    def _recv_batch_gro(self, max_datagrams: int) -> list[tuple[bytes, object]]:
        recvmsg = self.sock.recvmsg
        batch: list[tuple[bytes, object]] = []
        append = batch.append
        for _ in range(max_datagrams):
            try:
                data, ancdata, _flags, addr = recvmsg(MAX_DATAGRAM_BYTES, GRO_CMSG_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                self._survive(exc)
                continue
            size = 0
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO:
                    size = int.from_bytes(value[:4], sys.byteorder)
            if 0 < size < len(data):
                for offset in range(0, len(data), size):
                    append((data[offset : offset + size], addr))
            else:
                append((data, addr))
        return batch

    def send(self, data: bytes, addr: object) -> bool:
        """Send one datagram; False when the socket buffer is full (retry when writable)."""
        try:
            self.sock.sendto(data, addr)  # type: ignore[call-overload]
        except BlockingIOError:
            return False
        return True

    def send_batch(self, datagrams: list[bytes], addr: object) -> int:
        """Send ``datagrams`` to ``addr`` in order; return how many went before EAGAIN.

        Every datagram arrives as its own UDP datagram whether GSO is used or
        not.  Errors other than EAGAIN (and the GSO refusals above) propagate
        as they do from ``send``.
        """
        if not self.gso:
            return self._send_each(datagrams, 0, addr)
        sendmsg = self.sock.sendmsg
        sendto = self.sock.sendto
        count = len(datagrams)
        start = 0
        while start < count:
            size = len(datagrams[start])
            end = start + 1
            if size:
                limit = min(count, start + GSO_MAX_SEGMENTS)
                total = size
                while end < limit:
                    length = len(datagrams[end])
                    if length > size or not length or total + length > GSO_MAX_PAYLOAD_BYTES:
                        break  # (an empty datagram cannot be a segment: it would vanish)
                    total += length
                    end += 1
                    if length < size:
                        break  # a shorter datagram closes the run
            try:
                if end - start == 1:
                    sendto(datagrams[start], addr)  # type: ignore[call-overload]
                else:
                    cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
                    sendmsg(datagrams[start:end], cmsg, 0, addr)  # type: ignore[arg-type]
            except BlockingIOError:
                return start
            except OSError as exc:
                if end - start == 1 or exc.errno not in GSO_REFUSED_ERRNOS:
                    raise
                self.gso = False
                self.gso_fallbacks += 1
                return self._send_each(datagrams, start, addr)
            start = end
        return count

    def _send_each(self, datagrams: list[bytes], start: int, addr: object) -> int:
        """One sendto per datagram from index ``start``; the index reached at EAGAIN."""
        sendto = self.sock.sendto
        index = start
        try:
            for index in range(start, len(datagrams)):
                sendto(datagrams[index], addr)  # type: ignore[call-overload]
        except BlockingIOError:
            return index
        return len(datagrams)

    async def resolve(self, endpoint: Endpoint) -> object:
        """The socket address for ``endpoint`` in this socket's family (``PeerError`` if none)."""
        flags = socket.AI_V4MAPPED if self.family == socket.AF_INET6 else 0
        with trio.move_on_after(RESOLVE_TIMEOUT_S):
            try:
                infos = await trio.socket.getaddrinfo(
                    endpoint.host, endpoint.port, self.family, socket.SOCK_DGRAM, 0, flags
                )
            except OSError as exc:
                raise PeerError(f"cannot resolve {endpoint}: {exc.strerror or exc}") from None
            if infos:
                return infos[0][4]
        raise PeerError(f"cannot resolve {endpoint}: no answer within {RESOLVE_TIMEOUT_S:g} s")

    def format_addr(self, addr: object) -> str:
        host, port = self.host_port(addr)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def host_port(self, addr: object) -> tuple[str, int]:
        """The IP literal (an IPv4-mapped address as plain IPv4) and port of ``addr``."""
        host, port = addr[0], addr[1]  # type: ignore[index]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, port

    def sockaddr(self, host: str, port: int) -> object | None:
        """The address this socket sends to for IP literal ``host`` (None: not its family)."""
        if self.family == socket.AF_INET6:
            return ("::ffff:" + host if "." in host else host, port, 0, 0)
        return None if ":" in host else (host, port)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


def open_group(listen: Endpoint, count: int, *, gro: bool = False) -> list[socket.socket]:
    """Bind ``count`` UDP sockets on ``listen``; socket k receives the lanes ``k mod count``.

    ``count == 1`` is one plain socket (no SO_REUSEPORT, no program): a
    single-process site behaves as it always did.  For ``count > 1`` see the flow
    in the module docstring.  Every socket gets the transport's options (socket
    buffers, V6ONLY off on IPv6) and, with ``gro`` (a lone socket only: see
    ``gro_allowed``), UDP GRO before it is bound, so it merges from the first
    datagram.  The sockets are blocking and not inheritable;
    ``UdpTransport.from_socket`` wraps one.  Raises TransportError (one line:
    address, errno, fix) after closing every socket it opened.
    """
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"a socket group has 1..{MAX_WORKERS} sockets, not {count}")
    if gro and not gro_allowed(offload=True, sockets=count):
        raise ValueError(f"a group of {count} sockets never uses UDP GRO (see gro_allowed)")
    family = socket.AF_INET6 if listen.is_ipv6 else socket.AF_INET
    sockets: list[socket.socket] = []
    port = listen.port
    try:
        for index in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            _set_options(sock, gro=gro)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if index == 0:
                    _attach_steering(sock, listen, count)
            sock.bind((listen.host, port))
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise TransportError(_bind_message(listen, exc)) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def steering_program(count: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program of a group of ``count``: (code, jt, jf, k) per instruction.

    Run on the UDP payload, it returns the index of the socket that gets it::

        0: ldb [0]            A = type
        1: jeq #4, 0, 3       not DATA -> 5
        2: ldb [1]            A = lane
        3: mod #count         A = lane % count
        4: ret a
        5: ret #0             handshakes, cleartext control: socket 0

    A payload too short for a load ends the program with 0: socket 0.
    """
    return [
        (BPF_LD_B_ABS, 0, 0, 0),
        (BPF_JEQ_K, 0, 3, MSG_DATA),
        (BPF_LD_B_ABS, 0, 0, 1),
        (BPF_MOD_K, 0, 0, count),
        (BPF_RET_A, 0, 0, 0),
        (BPF_RET_K, 0, 0, 0),
    ]


def _attach_steering(sock: socket.socket, listen: Endpoint, count: int) -> None:
    """SO_ATTACH_REUSEPORT_CBPF the steering program; the kernel copies it during the call."""
    program = steering_program(count)
    code = b"".join(_SOCK_FILTER.pack(*instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SOCK_FPROG.pack(len(program), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise TransportError(
            f"cannot share {listen} between {count} workers: attaching the lane-steering "
            f"program failed: {exc.strerror} ({name}): run with workers = 1"
        ) from None


def _set_options(sock: socket.socket, *, gro: bool) -> None:
    """The options every l2bridge UDP socket has, set before bind."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for force, plain in (
        (SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
    if gro:
        _try_setsockopt(sock, UDP_GRO, 1)


def _try_setsockopt(sock: socket.socket, option: int, value: int) -> bool:
    """Set a SOL_UDP option; False when this kernel does not know it."""
    try:
        sock.setsockopt(SOL_UDP, option, value)
    except OSError:
        return False
    return True


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
