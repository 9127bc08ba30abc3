"""``python -m l2bridge.site.worker``: one follower worker of a site (started by its leader).

Not a user command: ``l2bridge up`` with ``workers = N`` starts N-1 of these,
each with inherited fds (a tap queue, a socket of the SO_REUSEPORT group, a
channel to the leader, a pipe for the datagrams the leader carries).  Flow:
read the leader's ``setup`` from the channel (its parsed config, keys and
capabilities: a follower reads no file of its own) → wrap the fds → run a
follower ``Site`` (lane k) and the channel (``workers.Follower``) until the
leader goes away or SIGTERM.  SIGINT and SIGHUP
are ignored: a terminal's Ctrl-C reaches the leader, which stops its workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys

import trio

from l2bridge.core import noise
from l2bridge.errors import EXIT_FAILED, EXIT_USAGE, L2bridgeError
from l2bridge.io import logs
from l2bridge.io.tap import TapDevice, TrioTap
from l2bridge.io.transport import UdpTransport
from l2bridge.site import reach
from l2bridge.site.site import Site
from l2bridge.site.workers import MAX_MESSAGE_BYTES, Follower, channel_from_fd, setup_of

log = logging.getLogger("l2bridge")


async def serve(args: argparse.Namespace) -> None:
    channel = channel_from_fd(args.channel_fd)
    try:
        config, secrets, caps = setup_of(json.loads(await channel.recv(MAX_MESSAGE_BYTES)))
        logs.setup(config.name, config.log_level, worker=args.lane)
        device = TapDevice(config.tap, "tap", args.tap_fd, vnet_hdr=caps.vnet_hdr)
        tap = TrioTap(device)
        transport = UdpTransport.from_socket(socket.socket(fileno=args.sock_fd),
                                             gso=caps.udp_gso, gro=False)
        try:
            identity = None if secrets.private is None else noise.Identity(secrets.private)
            site = Site(config, tap=tap, transport=transport, caps=caps, identity=identity,
                        psks=dict(secrets.psks), lane=args.lane, follower=True)
            site.state.pipe = reach.Pipe(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET,
                                                       fileno=args.pipe_fd))
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(site.run)

                    async def stop_on_signal() -> None:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(stop_on_signal)
                    await Follower(site, channel, args.lane, secrets).run()
                    nursery.cancel_scope.cancel()
        finally:
            transport.close()
            tap.close()
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m l2bridge.site.worker")
    for name in ("lane", "tap-fd", "sock-fd", "channel-fd", "pipe-fd"):
        p.add_argument(f"--{name}", type=int, required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the leader owns the site's signals
    try:
        trio.run(serve, args)
    except L2bridgeError as exc:
        print(f"l2bridge worker {args.lane}: {exc}", file=sys.stderr)
        return exc.exit_status
    except (OSError, ValueError) as exc:
        print(f"l2bridge worker {args.lane}: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, OSError) else EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
