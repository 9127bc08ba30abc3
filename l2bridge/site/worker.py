"""``python -m l2bridge.site.worker``: one follower worker of a site (started by its leader).

Not a user command: ``l2bridge up`` with ``workers = N`` starts N-1 of these,
each with inherited fds (a tap queue, a socket of the SO_REUSEPORT group, a
channel to the leader).  Flow: load the same config and keys as the leader →
wrap the fds → run a follower Bridge (lane k of N) and the channel
(``workers.Follower``) until the leader goes away or SIGTERM.  SIGINT and
SIGHUP are ignored: a terminal's Ctrl-C reaches the leader, which stops its
workers.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

import trio

from l2bridge.core.config import ConfigError, SiteConfig, load_config
from l2bridge.errors import EXIT_FAILED, EXIT_USAGE
from l2bridge.io.tap import TapDevice
from l2bridge.io.transport import UdpTransport
from l2bridge.ops.daemon import KeyLoadError, TrioTap, load_secrets
from l2bridge.site.site import Bridge
from l2bridge.site.workers import Follower, channel_from_fd

log = logging.getLogger("l2bridge")


async def serve(config: SiteConfig, args: argparse.Namespace) -> None:
    identity, psks = load_secrets(config)
    device = TapDevice(config.tap, "tap", args.tap_fd, vnet_hdr=config.offload)
    tap = TrioTap(device)
    transport = UdpTransport.from_socket(
        socket.socket(fileno=args.sock_fd), offload=config.offload, gro=False
    )
    channel = channel_from_fd(args.channel_fd)
    bridge = Bridge(config, tap=tap, transport=transport, identity=identity, psks=psks,
                    lane=args.lane, lanes=args.lanes, follower=True)
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                await Follower(bridge, channel, args.lane).run()
                nursery.cancel_scope.cancel()
    finally:
        channel.close()
        transport.close()
        tap.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m l2bridge.site.worker")
    p.add_argument("--config", required=True)
    for name in ("lane", "lanes", "tap-fd", "sock-fd", "channel-fd"):
        p.add_argument(f"--{name}", type=int, required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the leader owns the site's signals
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"l2bridge worker {args.lane}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format=f"%(asctime)s l2bridge[{config.name}/{args.lane}] %(levelname)s: %(message)s",
    )
    try:
        trio.run(serve, config, args)
    except KeyLoadError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except OSError as exc:
        log.error("worker %d: %s", args.lane, exc)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
