"""Reaching peers beyond plain UDP: TCP links, relays through a neighbour, hints, DNS.

The policy is ``l2bridge.core.paths`` (pure); this room carries it out.  A
peer's ``addr`` says where its datagrams go, and how:

  tuple       UDP, through the site's transport
  TcpLink     a TCP link (``l2bridge.io.tcp``): sealed as for UDP, written as records
  RelayAddr   through a neighbour: sealed for the peer, wrapped in RELAY_TO, sealed
              again for the neighbour, which passes the inner datagram on (RELAYED)
  ToLeader    (a follower) handed unsealed to worker 0, which carries every TCP and
              relayed path of the site: worker 0 seals them all with lane 0, so the
              far side's worker 0 opens them, whatever its number of workers

``retarget`` is the one place a peer's path changes (``addr``, ``path``,
``room``, a log line).  Sending: ``outbound.send_datagrams`` hands the
``carry`` addresses (relay, to-leader) here; ``send_to`` sends one control
datagram on any path.  Receiving: ``message`` handles the reach messages
(ASK, HINT, RELAY_TO, RELAYED; formats in ``l2bridge.core.wire``) that
``inbound.inner`` passes on; what it relays or re-injects waits in ``state``
until the batch is read (``flush``).

Threat model of relaying: a relay passes on datagrams sealed end to end with
the two sites' own session, so it learns their sizes and timing, never their
content, and cannot forge or replay them (the far site's keys and replay window
judge them); it relays only between two of its own authenticated peers, never
to a peer it reaches through a relay itself, and only with ``relay = true``.
A hint is only a hint (``paths.hint_problem``).

Tasks of worker 0 (``run``): accept TCP links; per link, its inbound loop and
its flusher; the reach timers (``tick``: dial, probe, ask, punch, relay,
links past their deadline closed); the resolver; the followers' pipes
(``drain_pipe``, started by ``workers.Leader``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct

import trio

from l2bridge.core import framing, paths, wire
from l2bridge.core.peers import Peer
from l2bridge.errors import PeerError
from l2bridge.io.tcp import LinkClosed, TcpLink
from l2bridge.site import events, inbound, outbound
from l2bridge.site.state import SiteState

log = logging.getLogger("l2bridge")

TICK_S = 0.25  # the reach timers look this often (punches go every PUNCH_EVERY_S)
RESOLVE_TICK_S = 1.0
RESOLVE_DOWN_MAX_S = 5.0  # a down peer's name is resolved again at least this often
PIPE_MESSAGE_BYTES = 60_000  # one follower -> leader message (under a unix socket's default buffer)
_PIPE_HEADER = struct.Struct("!BII")  # name length, frames, bytes; then the name, records


class RelayAddr:
    """The path through neighbour ``via`` (one object per neighbour: ``via.relay_addr``)."""

    __slots__ = ("via",)
    carries = True

    def __init__(self, via: Peer) -> None:
        self.via = via

    def describe(self) -> str:
        return f"relay via {self.via.name}"


class ToLeader:
    """A follower's path for ``peer`` through worker 0 (one object per peer)."""

    __slots__ = ("peer",)
    carries = True

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def describe(self) -> str:
        return "via worker 0"


def prepare(state: SiteState) -> None:
    """Give every peer its reach (mode, who dials, quiet time) and path objects."""
    for peer, pc in zip(state.peers, state.config.peers, strict=True):
        adopt(state, peer, pc.transport)


def adopt(state: SiteState, peer: Peer, transport: str) -> None:
    """A peer (new, re-keyed or given another transport) starts over on its paths."""
    forget(state, peer)
    # Cleartext knows a peer by its UDP address only: no TCP, no relays, no hints.
    mode = paths.UDP if state.config.insecure else transport
    reach = peer.reach = paths.Reach(mode=mode, quiet_s=state.config.dead_after_s,
                                     dials=peer.configured is not None and state.links is not None,
                                     kind=paths.TCP if mode == paths.TCP else paths.UDP)
    peer.path = reach.kind
    peer.room = room_for(state, reach.kind)
    peer.relay_addr = RelayAddr(peer)
    peer.to_leader = ToLeader(peer)
    if peer.addr is not None and type(peer.addr) is not tuple:
        state.peers.unbind(peer)
    if state.identity_public is not None and peer.sessions is not None:
        state.by_key[peer.sessions.keys.public] = peer
        reach.lower = state.identity_public < peer.sessions.keys.public


def forget(state: SiteState, peer: Peer) -> None:
    """``peer`` leaves (or starts over): its key, its link, relays through it."""
    for key, known in list(state.by_key.items()):
        if known is peer:
            del state.by_key[key]
    if peer.reach.link is not None:
        peer.reach.link.close("peer_reconfigured")
    if not state.follower:
        peer_gone(state, peer)


def endpoint_changed(state: SiteState, peer: Peer) -> None:
    """A reload gave ``peer`` another endpoint: forget the old one; the resolver runs."""
    old = peer.resolved
    peer.resolved, peer.resolved_at = None, float("-inf")
    if peer.reach.udp == old:
        peer.reach.udp = None
    if old is not None and peer.addr == old:
        state.peers.unbind(peer)


# ---------------------------------------------------------------- changing paths


def retarget(state: SiteState, peer: Peer, addr: object) -> None:
    """Data for ``peer`` goes to ``addr`` from now on; a change of path is logged once."""
    if addr is peer.addr or (type(addr) is tuple and addr == peer.addr):
        return
    old_path = peer.path
    path = path_of(addr, peer.reach.kind)
    if addr is None:
        state.peers.unbind(peer)
    else:
        state.peers.bind(peer, addr)
    peer.path = path
    peer.room = room_for(state, path)
    if path != old_path:
        log.info("peer %s: now over %s (%s)", peer.name, path.upper() if path != paths.RELAY
                 else "a relay", describe(state, addr))


def is_link(addr: object) -> bool:
    """Whether ``addr`` is a TCP link (``TcpLink`` or its in-memory fake)."""
    return addr is not None and type(addr) is not tuple and not addr.carries  # type: ignore[attr-defined]


def path_of(addr: object, kind: str) -> str:
    if is_link(addr):
        return paths.TCP
    if type(addr) is RelayAddr:
        return paths.RELAY
    if type(addr) is ToLeader:
        return kind
    return paths.UDP


def room_for(state: SiteState, path: str) -> int | None:
    budget = state.budget
    if path == paths.RELAY:
        return budget.relay_room
    if path == paths.TCP:
        return budget.tcp_room
    return None


def describe(state: SiteState, addr: object) -> str:
    if addr is None:
        return "no endpoint"
    if type(addr) is tuple:
        return state.transport.format_addr(addr)
    return addr.describe()  # type: ignore[attr-defined]


def arrived(state: SiteState, peer: Peer, addr: object, now: float, probe: bool) -> None:
    """Worker 0: an authenticated datagram from ``peer`` came by ``addr``; follow the
    path rules (``paths.Reach``)."""
    reach = peer.reach
    kind = type(addr)
    if kind is tuple:
        old = reach.udp
        if old != addr:  # its UDP endpoint is learned (the first one too) or moved, even
            peer.roamed += 1  # while data goes another way (a relay, a TCP link)
            if old is not None:
                log.info("peer %s roamed from %s to %s", peer.name, describe(state, old),
                         describe(state, addr))
        if reach.arrived_udp(addr, probe=probe):
            retarget(state, peer, addr)
    elif is_link(addr):
        link: TcpLink = addr  # type: ignore[assignment]
        link.peer = peer
        moved, retire = reach.arrived_link(link, now, dialed=link.dialed,
                                           path_seen=peer.path_seen)
        if retire is not None:
            retire.close("tcp_replaced")
        if moved:
            retarget(state, peer, link)
    elif kind is RelayAddr:
        via = addr.via  # type: ignore[attr-defined]
        if via.path == paths.RELAY:
            peer.drop("relay_chain")
            return
        if reach.arrived_relayed(via, now, path_seen=peer.path_seen):
            retarget(state, peer, addr)


def link_lost(state: SiteState, link: TcpLink) -> None:
    """A link ended: the peer it carried falls back (auto: to UDP)."""
    peer = link.peer
    if peer is None or peer.reach.link is not link:
        return
    log.info("peer %s: TCP link %s closed (%s)", peer.name, link.describe().split(" ", 2)[-1],
             link.closed)
    if peer.reach.link_lost(link):
        retarget(state, peer, fallback(peer))


def fallback(peer: Peer) -> object:
    """Where data goes after its path failed: the UDP endpoint (auto), nowhere (tcp)."""
    reach = peer.reach
    if reach.kind == paths.TCP:
        return reach.link
    return reach.udp if reach.udp is not None else peer.resolved


def peer_gone(state: SiteState, peer: Peer) -> None:
    """``peer`` went down or away: paths relayed through it fall back."""
    for other in state.peers:
        if other is not peer and other.reach.relay_lost(peer):
            retarget(state, other, fallback(other))


# ---------------------------------------------------------------- sending


def send_to(state: SiteState, peer: Peer, addr: object, datagram: bytes, now: float) -> None:
    """One control datagram to ``peer`` by ``addr`` (any path); best effort, never waits."""
    try:
        if type(addr) is tuple:
            state.transport.send(datagram, addr)
        elif is_link(addr):
            addr.send(datagram)  # type: ignore[attr-defined]
        elif type(addr) is RelayAddr:
            via = addr.via  # type: ignore[attr-defined]
            wrapped = _relay_to(peer, via, [datagram])
            if wrapped:
                send_inner(state, via, wrapped[0], now)
    except OSError as exc:
        peer.drop(f"send_{outbound.errno_name(exc)}")


def _relay_to(peer: Peer, via: Peer, sealed: list[bytes]) -> list[bytes]:
    """``peer``'s sealed datagrams as RELAY_TO messages for neighbour ``via`` ([]: it cannot
    relay now: no path to it, or it is relayed itself)."""
    if via.addr is None or type(via.addr) is RelayAddr or not via.up:
        peer.drop("relay_down")
        return []
    key = peer.sessions.keys.public
    return [wire.encode_relay(key, d, to=True) for d in sealed]


async def carry(state: SiteState, peer: Peer, addr: object, datagrams: list[bytes], size: int,
                now: float, frames: int) -> None:
    """``outbound.send_datagrams`` for the carrying paths: a relay, or (a follower) worker 0."""
    if type(addr) is ToLeader:
        state.pipe.hand(peer, datagrams, frames, size)  # type: ignore[union-attr]
        return
    table = state.sessions
    assert table is not None  # relays exist in sealed mode only
    sealed = table.seal_many(peer.sessions, datagrams, now)
    if sealed is None:
        peer.drop("no_session")
        events.kick(state, peer, now)
        return
    via = addr.via  # type: ignore[attr-defined]
    wrapped = _relay_to(peer, via, sealed)
    if wrapped:
        await outbound.send_datagrams(state, via, wrapped, 0, now, 0)
        peer.datagrams_out += len(sealed)
        peer.frames_out += frames
        peer.bytes_out += size


def send_inner(state: SiteState, peer: Peer, message: bytes, now: float,
               to: object = None) -> bool:
    """Seal one inner message for ``peer`` and send it by ``to`` (default: its path)."""
    table = state.sessions
    if table is None:
        return False
    packet = table.seal(peer.sessions, message, now)
    if packet is None:
        return False
    send_to(state, peer, peer.addr if to is None else to, packet, now)
    return True


def send_initiation(state: SiteState, peer: Peer, now: float, *, fresh: bool = True,
                    extra: tuple[object, ...] = ()) -> None:
    """A handshake INITIATION on every path that may reach ``peer``: its current one,
    its UDP endpoint, its TCP link, and ``extra`` (a hinted endpoint, a relay).  One
    initiation for all: the first copy to arrive is answered, the others are replays.
    With ``fresh`` False the one in flight is sent again if it is recent."""
    table = state.sessions
    if table is None or state.follower:
        return
    reach = peer.reach
    candidates: list[object] = [peer.addr]
    if reach.mode != paths.TCP:
        candidates += [reach.udp, peer.resolved]
    if reach.mode != paths.UDP:
        candidates.append(reach.link)
    candidates += extra
    targets: list[object] = []
    for target in candidates:
        if target is not None and type(target) is not ToLeader and target not in targets:
            targets.append(target)
    if not targets:
        return  # nowhere to send it yet: no attempt is spent
    sessions = peer.sessions
    pending = peer.initiation
    if fresh or pending is None or sessions.pending is None \
            or now - pending[1] >= table.timers.rekey_timeout_s:
        pending = peer.initiation = (table.initiation(sessions, now), now)
    for target in targets:
        send_to(state, peer, target, pending[0], now)


# ---------------------------------------------------------------- receiving


def message(state: SiteState, peer: Peer, data: bytes, addr: object, now: float) -> None:
    """One reach message from ``peer`` (ASK, HINT, RELAY_TO, RELAYED)."""
    if state.sessions is None or state.follower:
        peer.drop("reach_not_here")  # cleartext has none; worker 0 does all of it
        return
    try:
        parsed = wire.decode(data)
    except wire.WireError as exc:
        peer.drop(exc.reason)
        return
    if isinstance(parsed, wire.Ask):
        _answer(state, peer, parsed.key, now)
    elif isinstance(parsed, wire.Hint):
        _hinted(state, peer, parsed, now)
    elif isinstance(parsed, wire.Relayed):
        if parsed.to:
            _relay_on(state, peer, parsed)
        elif type(addr) is RelayAddr:
            peer.drop("relay_nested")
        else:  # re-injected as if it came through this neighbour (``flush``)
            state.reinjected.append((parsed.datagram, peer.relay_addr))


def _answer(state: SiteState, asker: Peer, key: bytes, now: float) -> None:
    """A neighbour asks where site ``key`` is: tell it, and tell that site about the asker
    (so both punch at once), if we reach it over UDP; silence otherwise."""
    target = state.by_key.get(key)
    if target is None or target is asker:
        asker.drop("ask_unknown")
        return
    if not target.up or target.path != paths.UDP or target.reach.udp is None:
        return
    if not paths.answer_due(state.answered, asker.port, target.port, now):
        return
    relay_ok = state.config.relay
    host, port = state.transport.host_port(target.reach.udp)
    send_inner(state, asker, wire.encode_hint(key, host, port, relay_ok), now)
    if asker.path == paths.UDP and asker.reach.udp is not None:
        host, port = state.transport.host_port(asker.reach.udp)
        send_inner(state, target, wire.encode_hint(asker.sessions.keys.public, host, port,
                                                   relay_ok), now)


def _hinted(state: SiteState, neighbour: Peer, hint: wire.Hint, now: float) -> None:
    subject = state.by_key.get(hint.key)
    if subject is None or subject is neighbour:
        neighbour.drop("hint_unknown")
        return
    seen_at = None
    if type(neighbour.addr) is tuple:
        seen_at = state.transport.host_port(neighbour.addr)[0]
    listen = state.config.listen
    problem = paths.hint_problem(hint.address, hint.port, neighbour=seen_at,
                                 listen_host=listen.host, listen_port=listen.port)
    addr = None if problem else state.transport.sockaddr(hint.address, hint.port)
    if addr is None:
        neighbour.drop("hint_ignored")
        log.debug("peer %s: hint for %s ignored: %s", neighbour.name, subject.name,
                  problem or "another address family")
        return
    relay = neighbour if hint.relay_ok and neighbour.path != paths.RELAY else None
    subject.reach.hinted(addr, relay, now)
    log.debug("peer %s: %s says it is at %s%s", subject.name, neighbour.name,
              state.transport.format_addr(addr), " (relay offered)" if relay else "")


def _relay_on(state: SiteState, source: Peer, relayed: wire.Relayed) -> None:
    target = state.by_key.get(relayed.key)
    if not state.config.relay:
        source.drop("relay_off")
    elif target is None or target is source:
        source.drop("relay_unknown")
    elif not target.up or target.addr is None or target.path == paths.RELAY:
        source.drop("relay_down")
    else:
        size = len(relayed.datagram)
        source.relayed_in += size
        target.relayed_out += size
        state.forwarding.setdefault(target, []).append(
            wire.encode_relay(source.sessions.keys.public, relayed.datagram, to=False))


async def flush(state: SiteState, now: float, waiting: set[Peer]) -> None:
    """After a batch: pass on what we relay, then open what was relayed to us."""
    if state.forwarding:
        forwarding, state.forwarding = state.forwarding, {}
        for target, datagrams in forwarding.items():
            await outbound.send_datagrams(state, target, datagrams, 0, now, 0)
    if state.reinjected:
        batch, state.reinjected = state.reinjected, []
        await inbound.demux(state, batch, now, waiting)


# ---------------------------------------------------------------- worker 0's tasks


async def run(state: SiteState) -> None:
    """Worker 0, until cancelled: TCP links, the reach timers, the resolver (the
    followers' pipes are drained by ``workers.Leader``)."""
    async with trio.open_nursery() as nursery:
        links = state.links
        if links is not None:
            nursery.start_soon(links.serve, lambda link: serve_link(state, link), nursery)
        nursery.start_soon(_timers, state, nursery)
        nursery.start_soon(resolver, state)


async def serve_link(state: SiteState, link: TcpLink) -> None:
    """One link: its records through the inbound loop, its queue flushed, until it ends."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.flush)
            with contextlib.suppress(LinkClosed):
                await inbound.run(state, link)
            nursery.cancel_scope.cancel()
    finally:
        state.links.forget(link)  # type: ignore[union-attr]
        link_lost(state, link)


async def _timers(state: SiteState, nursery: trio.Nursery) -> None:
    while True:
        tick(state, trio.current_time(), nursery)
        await trio.sleep(TICK_S)


def tick(state: SiteState, now: float, nursery: trio.Nursery) -> None:
    """What the reach timers do now, for every peer (``paths.Reach.due``)."""
    if state.links is not None:
        for link in state.links.sweep(now):
            link_lost(state, link)
    if state.sessions is None:
        return
    for peer in list(state.peers):
        due = peer.reach.due(now, up=peer.up)
        if not due:
            continue
        if due.dial:
            nursery.start_soon(dial, state, peer)
        for addr in due.probe:
            send_inner(state, peer, state.hellos[1][peer.blocked is not None], now, to=addr)
        if due.ask:
            ask = wire.encode_ask(peer.sessions.keys.public)
            for neighbour in state.peers.live:
                if neighbour is not peer and neighbour.path != paths.RELAY:
                    send_inner(state, neighbour, ask, now)
        if due.punch is not None:
            if peer.up:  # relayed: a sealed HELLO asking for a reply, straight at it
                send_inner(state, peer, state.hellos[1][peer.blocked is not None], now,
                           to=due.punch)
            else:
                send_initiation(state, peer, now, fresh=False, extra=(due.punch,))
        if due.relay is not None:
            send_initiation(state, peer, now, fresh=False, extra=(due.relay.relay_addr,))


async def dial(state: SiteState, peer: Peer) -> None:
    """Open a TCP link to ``peer``'s configured endpoint and handshake over it."""
    reach = peer.reach
    target = peer.resolved
    links = state.links
    if target is None or links is None:
        reach.dial_done(trio.current_time(), ok=False)
        return
    family = socket.AF_INET6 if len(target) == 4 else socket.AF_INET  # type: ignore[arg-type]
    try:
        link = await links.dial(target, family)  # type: ignore[arg-type]
    except (OSError, trio.TooSlowError) as exc:
        reach.dial_done(trio.current_time(), ok=False)
        peer.drop("tcp_dial_failed")
        if peer.drops["tcp_dial_failed"] == 1:
            reason = "no answer" if isinstance(exc, trio.TooSlowError) else \
                (exc.strerror or str(exc))
            log.info("peer %s: TCP to %s failed: %s (retrying)", peer.name,
                     describe(state, target), reason)
        return
    reach.dial_done(trio.current_time(), ok=True)
    log.debug("peer %s: %s open", peer.name, link.describe())
    if state.nursery is not None:
        state.nursery.start_soon(serve_link, state, link)
    send_initiation(state, peer, trio.current_time(), fresh=False, extra=(link,))


async def resolver(state: SiteState) -> None:
    """Resolve configured endpoints: at once, again while a peer is down (at most every
    RESOLVE_DOWN_MAX_S) and every ``resolve_interval`` while it is up; names only."""
    interval = state.config.resolve_interval_s
    while True:
        now = trio.current_time()
        for peer in list(state.peers):
            endpoint = peer.configured
            if endpoint is None:
                continue
            if peer.resolved is not None:
                if _is_literal(endpoint.host):  # type: ignore[attr-defined]
                    continue
                every = interval if peer.up else min(interval, RESOLVE_DOWN_MAX_S)
                if now - peer.resolved_at < every:
                    continue
            await resolve(state, peer)
        await trio.sleep(RESOLVE_TICK_S)


async def resolve(state: SiteState, peer: Peer) -> None:
    """Resolve ``peer``'s configured endpoint once; a changed address is used at once."""
    endpoint = peer.configured
    try:
        addr = await state.transport.resolve(endpoint)  # type: ignore[arg-type]
    except PeerError as exc:
        peer.resolved_at = trio.current_time()
        peer.drop("resolve_failed")
        if peer.drops["resolve_failed"] == 1:
            log.warning("peer %s: %s (will retry)", peer.name, exc)
        return
    now = trio.current_time()
    peer.resolved_at = now
    old = peer.resolved
    if addr == old:
        return
    peer.resolved = addr
    reach = peer.reach
    if old is not None:
        log.info("peer %s: %s now resolves to %s (was %s)", peer.name, endpoint,
                 describe(state, addr), describe(state, old))
    if reach.udp is None or reach.udp == old:
        reach.udp = addr
    if reach.kind == paths.UDP and (peer.addr is None or peer.addr == old):
        retarget(state, peer, addr)
    if old is not None and not state.follower:
        send_initiation(state, peer, now)


def _is_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- followers' pipes


class Pipe:
    """A follower's end of its data pipe to worker 0 (a SOCK_SEQPACKET socket)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.dropped = 0

    def hand(self, peer: Peer, datagrams: list[bytes], frames: int, size: int) -> None:
        """Hand ``peer``'s unsealed datagrams to worker 0; dropped (counted) when it lags."""
        name = peer.name.encode()
        head = _PIPE_HEADER.pack(len(name), frames, size) + name
        start = 0
        while start < len(datagrams):
            end, room = start, PIPE_MESSAGE_BYTES
            while end < len(datagrams) and len(datagrams[end]) + 2 <= room:
                room -= len(datagrams[end]) + 2
                end += 1
            end = max(end, start + 1)
            try:
                self.sock.send(head + framing.encode(datagrams[start:end]))
            except OSError:
                self.dropped += end - start
                peer.drop("leader_busy")
                return
            head = _PIPE_HEADER.pack(len(name), 0, 0) + name  # counted once
            start = end

    def close(self) -> None:
        self.sock.close()


async def drain_pipe(state: SiteState, sock: socket.socket) -> None:
    """Worker 0: what a follower hands over goes out on the peer's path, sealed here."""
    sock.setblocking(False)
    while True:
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data = sock.recv(PIPE_MESSAGE_BYTES + 256)
            except BlockingIOError:
                break
            if not data:
                return
            length, frames, size = _PIPE_HEADER.unpack_from(data)
            start = _PIPE_HEADER.size
            name = data[start : start + length].decode(errors="replace")
            peer = state.peers.by_name.get(name)
            try:
                datagrams = framing.RecordReader().feed(data[start + length :])
            except framing.FramingError:
                continue
            if peer is not None and datagrams:
                state.counters.carried_frames += frames
                await outbound.send_datagrams(state, peer, datagrams, size,
                                              trio.current_time(), frames)


__all__ = ["Pipe", "RelayAddr", "ToLeader", "carry", "message", "retarget", "run", "send_to"]
