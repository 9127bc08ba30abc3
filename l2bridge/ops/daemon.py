"""``l2bridge up``: a site on real devices, from start to a clean, bounded stop.

Start-up, each step's undo registered as soon as it succeeds:
  0. ``preflight``: every validation (keys, control path) before anything is
     touched - ``l2bridge check`` runs the same; then claim the control path
     (``control.ControlClaim``: a second l2bridge of this site stops here);
  1. open the tap (created, or the existing persistent one attached): with
     ``offload`` IFF_VNET_HDR + TUNSETOFFLOAD, with ``workers`` > 1 one queue
     per worker;
  2. plumb it: bridge created if missing (marked as this site's), tap and LAN
     NICs enslaved, MTU set; from now on ``PlumbingWatch`` keeps it so;
  3. bind the UDP socket (a group of one per worker) and, for a sealed site, listen
     on TCP on the same port (``l2bridge.io.tcp``; worker 0 carries every link);
  4. run the dataplane, start the other workers (``l2bridge.site.workers``), the
     plumbing watch and the metrics server, then open the control socket (its
     presence = ready);
  5. the service (``ops.service``): reloads, ``STATUS=``, watchdog pings; then
     ``READY=1`` to the service manager (``$NOTIFY_SOCKET``), if there is one.
SIGINT/SIGTERM send ``STOPPING=1`` and cancel everything; the undo stack then
leaves the host as found.  SIGHUP reloads the config file (never fatal).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal

import trio

from l2bridge.core import keys, noise
from l2bridge.core.caps import Capabilities, gro_allowed
from l2bridge.core.config import SiteConfig, load_secrets
from l2bridge.core.keys import Secrets
from l2bridge.io import pmqos, stormguard
from l2bridge.io.netctl import BridgePlumbing
from l2bridge.io.notify import Notifier
from l2bridge.io.plumbwatch import PlumbingWatch
from l2bridge.io.tap import TrioTap, open_tap, tap_info
from l2bridge.io.tcp import TcpLinks
from l2bridge.io.transport import UdpTransport, open_group
from l2bridge.ops import control
from l2bridge.ops.service import Service
from l2bridge.site.site import Site
from l2bridge.site.workers import Leader

log = logging.getLogger("l2bridge")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HANDLED_SIGNALS = (signal.SIGHUP,)  # reload: never fatal (a clean stop is SIGINT/SIGTERM)
LINK_IDLE_DEAD_AFTERS = 2  # a TCP link silent for two dead_after periods is closed

CLEARTEXT_WARNING = (
    "insecure = true: traffic is CLEARTEXT, filtered only by peer address; anyone on the "
    "path can read it and anyone who can spoof a peer's address can inject frames into "
    "this LAN. Use it only in labs."
)


def preflight(config: SiteConfig) -> Secrets:
    """Every check ``up`` makes before it touches the system; ``l2bridge check`` runs this.

    Key files (existence, type, mode, content), pre-shared keys, this site's own
    key among its peers, and the control socket's directory and path.  Reads
    only: nothing is created, opened for writing or waited on.
    """
    secrets = load_secrets(config)
    control.check_directory(config.control, create=False)
    control.check_path(config.control)
    return secrets


def log_identity(config: SiteConfig, secrets: Secrets) -> None:
    """The site's and its peers' key fingerprints (never the keys)."""
    if secrets.private is None:
        return
    log.info("site %s identity %s", config.name,
             keys.fingerprint(keys.public_key(secrets.private)))
    for peer in config.peers:
        log.info("peer %s key %s%s", peer.name, keys.fingerprint(peer.public_key),  # type: ignore[arg-type]
                 " + pre-shared key" if peer.name in secrets.psks else "")


def bridge_marker(config: SiteConfig) -> str:
    """The alias l2bridge gives a bridge it creates, so a later run knows it as its own."""
    return f"l2bridge site {config.name}"


async def serve_site(
    config: SiteConfig,
    secrets: Secrets | None = None,
    notifier: Notifier | None = None,
    *,
    task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bring the site up on real devices and run it until cancelled.

    With ``workers`` > 1 the tap gets one queue per worker and the port one
    socket per worker (an SO_REUSEPORT group); this process is worker 0 and
    starts the others (``l2bridge.site.workers``).
    """
    if secrets is None:
        secrets = preflight(config)
    if notifier is None:
        notifier = Notifier(None)
    log_identity(config, secrets)
    workers = config.workers
    with contextlib.ExitStack() as undo:
        # Before anything else: no second l2bridge of this site touches what the first runs.
        claim = undo.enter_context(control.ControlClaim(config.control))
        existing = tap_info(config.tap) if workers > 1 else None
        if existing is not None and not existing.multi_queue:
            log.warning("tap %s exists as a single-queue device: running 1 worker instead of "
                        "%d (recreate it with l2bridge tap add --multi-queue, or set "
                        "workers = 1)", config.tap, workers)
            workers = 1
        if config.low_latency:
            undo.enter_context(pmqos.hold())
            log.info("low_latency: CPU wake-up latency held at 0 µs (idle CPUs poll)")
        queues = []
        for _ in range(workers):
            queue = open_tap(config.tap, "tap", vnet_hdr=config.offload, multi_queue=workers > 1)
            undo.callback(queue.close)
            queues.append(queue)
        device = queues[0]
        if config.offload and not device.enable_offloads():
            log.warning("tap %s: the kernel refused every offload (TUNSETOFFLOAD); "
                        "frames go one by one", config.tap)
        tap = TrioTap(device)
        undo.callback(tap.close)
        plumb = undo.enter_context(
            BridgePlumbing(
                bridge=config.bridge, tap=config.tap, interfaces=config.interfaces,
                mtu=config.mtu, marker=bridge_marker(config),
            )
        )
        watch = PlumbingWatch(plumb)
        gro = gro_allowed(offload=config.offload, sockets=workers)
        socks = open_group(config.listen, workers, gro=gro)
        for sock in socks[1:]:
            undo.callback(sock.close)
        transport = UdpTransport.from_socket(socks[0], gso=config.offload, gro=gro)
        undo.callback(transport.close)
        links = None
        if not config.insecure:  # the TCP transport: the same port number as UDP
            links = TcpLinks.listen(config.listen, transport.local_port,
                                    queue_bytes=config.tcp_send_queue,
                                    idle_s=LINK_IDLE_DEAD_AFTERS * config.dead_after_s)
            undo.callback(links.close)
        caps = Capabilities.decide(offload=config.offload, vnet_hdr=device.vnet_hdr,
                                   tap_offloads=device.offloads, udp_gso=transport.gso,
                                   udp_gro=transport.gro, lanes=workers)
        identity = None if secrets.private is None else noise.Identity(secrets.private)
        site = Site(config, tap=tap, transport=transport, caps=caps, identity=identity,
                    psks=dict(secrets.psks), links=links)
        service = Service(site, secrets, notifier)
        site.state.l2.topology_hooks.append(plumb.flush_fdb)  # a loop blocked or released
        storm_stage = stormguard.attach(config, undo)  # storm control's first stage
        if storm_stage is not None:
            site.state.l2.policy_hooks.append(storm_stage.follow)
        sections = site.state.status_sections
        sections["plumbing"] = watch.status
        sections["config"] = service.view
        async with trio.open_nursery() as nursery:
            await nursery.start(site.run)
            if workers > 1:
                leader = Leader(site, secrets)
                await nursery.start(leader.run, [q.fd for q in queues], socks)
                sections["workers"] = leader.status
                site.state.health_checks.append(leader.health)
                service.followers = leader.reload
                for queue, sock in zip(queues[1:], socks[1:], strict=True):
                    queue.close()  # the followers hold them now
                    sock.close()
            await nursery.start(watch.run)
            if config.metrics is not None:
                await _start_metrics(nursery, config, site)
            await nursery.start(
                functools.partial(control.serve, claim=claim), config.control,
                _handler(site, service),
            )
            await nursery.start(service.run)
            log.info(
                "site %s up: listening on %s, bridge %s, tap %s, %d peer(s)%s; offload %s%s",
                config.name, config.listen, config.bridge, config.tap, len(config.peers),
                ", hub" if config.hub else "", _offload_summary(caps),
                f"; {workers} workers" if workers > 1 else "",
            )
            notifier.ready(service.summary())
            task_status.started(service)


async def _start_metrics(nursery: trio.Nursery, config: SiteConfig, site: Site) -> None:
    """Serve /metrics on ``[site].metrics``; an address that cannot be bound is one line.

    Imported here: a site without metrics never loads the Prometheus library (40 ms of
    every start-up)."""
    from l2bridge.ops import metrics

    try:
        listener = metrics.bind(config.metrics)  # type: ignore[arg-type]
    except metrics.MetricsError as exc:
        log.error("%s; the site runs without metrics", exc)
        return
    await nursery.start(metrics.serve, listener, site.status)
    log.info("metrics: http://%s/metrics", config.metrics)


def _offload_summary(caps: Capabilities) -> str:
    if not caps.vnet_hdr:
        return "off"
    parts = [f"tap 0x{caps.tap_offloads:x}", f"UDP GSO {'on' if caps.udp_gso else 'off'}",
             f"GRO {'on' if caps.udp_gro else 'off'}"]
    return ", ".join(parts)


def _handler(site: Site, service: Service):
    async def handle(cmd: str) -> object:
        if cmd == "show":
            return site.status()
        if cmd == "fdb":
            return site.fdb()
        if cmd == "reload":
            return await service.reload()
        raise LookupError(f"unknown command {cmd!r} (known: show, fdb, reload)")

    return handle


async def run(config: SiteConfig, secrets: Secrets | None = None,
              notifier: Notifier | None = None) -> None:
    """Run a site in the foreground until SIGINT or SIGTERM (``secrets``: from preflight).

    SIGHUP reloads the config file (``Service.reload``); one during start-up
    is kept for when the site is up.
    """
    notifier = notifier or Notifier.from_env()
    if config.insecure:
        log.warning(CLEARTEXT_WARNING)
    service: Service | None = None
    reload_waiting = False
    try:
        with trio.open_signal_receiver(*STOP_SIGNALS, *HANDLED_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signals() -> None:
                    nonlocal reload_waiting
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if signum in STOP_SIGNALS:
                            log.info("%s: shutting down", name)
                            notifier.stopping()
                            nursery.cancel_scope.cancel()
                            return
                        log.info("%s: reloading %s", name, config.path)
                        if service is None:
                            reload_waiting = True
                        else:
                            service.request_reload()

                # Signals are received from the start: one during start-up is a clean stop.
                nursery.start_soon(on_signals)
                service = await nursery.start(serve_site, config, secrets, notifier)
                if reload_waiting:
                    service.request_reload()
    finally:
        notifier.close()
    log.info("site %s stopped", config.name)
