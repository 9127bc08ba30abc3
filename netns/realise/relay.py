"""The delay relay: a seeded layer-2 bump in one WAN link (this kernel has no netem).

The lab splits a site's link in the WAN namespace into two veth legs with
nothing on them (``impair.py``: ``S_g`` toward the gateway, ``S_r`` toward the
router's address) and runs ``python -m netns.realise.relay`` there; it moves every frame
from one leg to the other after its delay.

Flow (one process per link):
 1. open an AF_PACKET socket on each leg: ``PACKET_VNET_HDR`` so offloaded
    frames (partial checksums, TCP segmentation) cross untouched and are
    finished by the kernel on the far side; ``PACKET_IGNORE_OUTGOING`` so a leg
    never reads back what the relay sent on it
 2. print ``ready`` on stdout (the lab waits for it), then stdout is closed
 3. loop: sleep in epoll until a leg is readable or the next frame is due;
    drain each readable leg (at most ``BATCH_FRAMES``) into the ``DelayLine``
    of its direction; send every frame that is due
 4. SIGHUP: read the knobs again from ``--knobs FILE`` (JSON ``delay_ms``,
    ``jitter_ms``, ``reorder_percent``) and apply them to both directions at
    once (a timeline's impair event); frames already held keep their times
 5. SIGTERM / SIGINT: print the counters as one JSON line on stderr, exit 0

``DelayLine`` is the pure part (time is a parameter):
- every frame draws exactly two numbers from the direction's own
  ``random.Random`` (seeded with ``--seed`` and the direction), one for
  reordering and one for jitter, so the same frames in the same order always
  get the same decisions;
- delay: ``delay ± jitter`` (uniform); jitter alone never reorders: a frame is
  never released before the frame queued ahead of it (FIFO per direction);
- reordering: with probability ``reorder_percent`` a frame skips the queue and
  goes out at once, overtaking every frame still held back (netem's meaning);
- bounded: at most ``queue_frames`` frames wait per direction; beyond, a frame
  is dropped and counted;
- with delay and jitter at zero a frame goes straight through (no queue), which
  is the relay's own overhead as measured in docs/lab.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
FRAME_BUFFER_BYTES = 256 * 1024  # virtio header + the largest offloaded (GSO) frame
BATCH_FRAMES = 256  # frames drained from one leg before the other gets its turn
READY_LINE = "ready"
DEFAULT_QUEUE_FRAMES = 10_000


@dataclass
class LineCounters:
    frames_in: int = 0
    frames_out: int = 0
    early: int = 0  # chosen to skip the queue
    overtook: int = 0  # ... while other frames were held back (really reordered)
    queue_full: int = 0
    send_errors: int = 0
    truncated: int = 0
    max_queued: int = 0


@dataclass
class DelayLine:
    """One direction of the relay: frames in, each out at its release time (pure)."""

    delay_s: float
    jitter_s: float
    reorder_fraction: float
    rng: random.Random
    max_frames: int = DEFAULT_QUEUE_FRAMES
    counters: LineCounters = field(default_factory=LineCounters)
    _queue: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    _last_release: float = float("-inf")

    @property
    def passthrough(self) -> bool:
        return self.delay_s == 0 and self.jitter_s == 0

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, frame: bytes, now: float) -> bool:
        """Take ``frame`` arrived at ``now``; True when it must go out at once."""
        c = self.counters
        c.frames_in += 1
        if self.passthrough:
            return True
        u_reorder = self.rng.random()
        u_jitter = self.rng.random()
        if u_reorder < self.reorder_fraction:
            c.early += 1
            if self._queue:
                c.overtook += 1
            return True
        if len(self._queue) >= self.max_frames:
            c.queue_full += 1
            return False
        release = now + self.delay_s + (2.0 * u_jitter - 1.0) * self.jitter_s
        release = max(release, self._last_release, now)
        self._last_release = release
        self._queue.append((release, frame))
        if len(self._queue) > c.max_queued:
            c.max_queued = len(self._queue)
        return False

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> list[bytes]:
        """Every queued frame whose release time has come, in order."""
        out = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            out.append(queue.popleft()[1])
        return out


def make_lines(delay_ms: float, jitter_ms: float, reorder_percent: float, seed: int,
               queue_frames: int) -> tuple[DelayLine, DelayLine]:
    """(a → b, b → a), each with its own generator derived from ``seed``."""
    def line(direction: str) -> DelayLine:
        return DelayLine(delay_ms / 1000, jitter_ms / 1000, reorder_percent / 100,
                         random.Random(f"{seed}/{direction}"), queue_frames)

    return line("a-b"), line("b-a")


# ---------------------------------------------------------------- the process


class _Stop(Exception):
    pass


def _open_leg(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES)
    except PermissionError:  # a rootless lab: only up to net.core.{r,w}mem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    sock.bind((ifname, ETH_P_ALL))  # Python converts to network order itself
    sock.setblocking(False)
    return sock


def _send(sock: socket.socket, frame: bytes | memoryview, c: LineCounters) -> None:
    try:
        sock.send(frame)
        c.frames_out += 1
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.ENETDOWN,
                           errno.ENXIO):
            raise
        c.send_errors += 1


def set_knobs(lines: tuple[DelayLine, DelayLine], knobs: dict[str, float]) -> None:
    """New delay, jitter and reordering for both directions (missing keys stay)."""
    for line in lines:
        line.delay_s = float(knobs.get("delay_ms", line.delay_s * 1000)) / 1000
        line.jitter_s = float(knobs.get("jitter_ms", line.jitter_s * 1000)) / 1000
        line.reorder_fraction = float(knobs.get("reorder_percent",
                                                line.reorder_fraction * 100)) / 100


def _read_knobs(path: str, lines: tuple[DelayLine, DelayLine]) -> None:
    try:
        with open(path) as f:
            knobs = json.load(f)
        set_knobs(lines, knobs)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        print(f"relay: knobs {path}: {e}; keeping the old ones", file=sys.stderr, flush=True)
        return
    print(f"relay: knobs now {json.dumps(knobs)}", file=sys.stderr, flush=True)


def serve(a: str, b: str, lines: tuple[DelayLine, DelayLine], knobs: str | None = None
          ) -> None:
    """Relay frames between legs ``a`` and ``b`` until SIGTERM/SIGINT (flow: module doc)."""
    legs = (_open_leg(a), _open_leg(b))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGHUP, lambda signum, frame: None)  # the wakeup fd carries it
    routes = {
        legs[0].fileno(): (legs[0], legs[1], lines[0]),
        legs[1].fileno(): (legs[1], legs[0], lines[1]),
    }
    ep = select.epoll()
    for fd in routes:
        ep.register(fd, select.EPOLLIN)
    ep.register(wake_r, select.EPOLLIN)
    print(READY_LINE, flush=True)
    sys.stdout.close()
    buf = bytearray(FRAME_BUFFER_BYTES)
    view = memoryview(buf)
    outs = ((lines[0], legs[1]), (lines[1], legs[0]))
    clock = time.monotonic
    while True:
        due = [d for d in (lines[0].next_due(), lines[1].next_due()) if d is not None]
        timeout = max(0.0, min(due) - clock()) if due else -1.0
        events = ep.poll(timeout)
        now = clock()
        for fd, _ in events:
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    got = os.read(wake_r, 64)
                    if knobs is not None and signal.SIGHUP in got:
                        _read_knobs(knobs, lines)
                continue
            src, dst, line = routes[fd]
            c = line.counters
            for _ in range(BATCH_FRAMES):
                try:
                    n = src.recv_into(buf, 0, socket.MSG_TRUNC)
                except BlockingIOError:
                    break
                if n > FRAME_BUFFER_BYTES:
                    c.truncated += 1
                    continue
                if line.passthrough:
                    c.frames_in += 1
                    _send(dst, view[:n], c)
                elif line.push(bytes(view[:n]), now):
                    _send(dst, view[:n], c)
        if due:
            now = clock()
            for line, dst in outs:
                for frame in line.pop_due(now):
                    _send(dst, frame, line.counters)


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netns.realise.relay",
                                     description="delay/jitter/reorder relay between two "
                                                 "interfaces (run inside the WAN namespace)")
    parser.add_argument("--a", required=True, help="leg toward the gateway")
    parser.add_argument("--b", required=True, help="leg toward the router")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--reorder-percent", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queue-frames", type=int, default=DEFAULT_QUEUE_FRAMES)
    parser.add_argument("--knobs", help="JSON file read again on SIGHUP (new knobs)")
    args = parser.parse_args(argv)
    lines = make_lines(args.delay_ms, args.jitter_ms, args.reorder_percent, args.seed,
                       args.queue_frames)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        serve(args.a, args.b, lines, args.knobs)
    except _Stop:
        pass
    except OSError as e:
        print(f"relay {args.a} <-> {args.b}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        counters = {f"{args.a}->{args.b}": vars(lines[0].counters),
                    f"{args.b}->{args.a}": vars(lines[1].counters)}
        print(json.dumps({"relay": counters}), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
