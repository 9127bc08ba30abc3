"""Peer events: what happens to a peer, as named hooks, and the timers that drive them.

The hooks are the only way the rooms and the workers change a peer's state
(wireguard-go's ``timersAnyAuthenticatedPacketReceived`` pattern):

  authenticated(state, peer, addr, now)  a datagram proved it came from ``peer`` (its keys
                                         opened it; in cleartext, its address and a valid
                                         message): the endpoint follows it (roaming), it
                                         is alive, and a peer that was down is up
  handshake(state, event, addr, now)     a handshake completed: answer it, or confirm our keys
  hello(state, peer, message, now)       a HELLO (the keepalive) arrived
  stranger(state, datagram, addr, now)   cleartext: a datagram from no peer's address
  keepalive(state, peer, now)            send a HELLO (sealed in secure mode)
  kick(state, peer, now)                 data waits for keys: handshake now if none in flight
  peer_down(state, peer)                 silence for ``dead_after``: forget what it taught us
  peer_up(state, peer, now)              a follower hears from the leader that a peer is up

Timers (the leader): ``timers`` sends due handshakes and keepalives, drops
expired keys and takes silent peers down; ``follower_timers`` only expires a
follower's keys and partial frames; ``table_gc`` removes aged MAC entries.
Which path a peer's datagrams take, and resolving its endpoint, is
``l2bridge.site.reach``'s (``authenticated`` hands it every arrival).
"""

from __future__ import annotations

import logging
import math

import trio

from l2bridge.core import paths, wire
from l2bridge.core.peers import Peer
from l2bridge.core.secure import Established, Reply
from l2bridge.site import guard, reach
from l2bridge.site.state import SiteState

log = logging.getLogger("l2bridge")

TIMER_TICK_MAX_S = 1.0  # the timers look at least this often
FOLLOWER_TICK_S = 1.0


def authenticated(state: SiteState, peer: Peer, addr: object, now: float,
                  probe: bool = False) -> None:
    """Any datagram that proved it came from ``peer`` (see the module docstring).

    ``addr`` is how it came (a UDP address, a TCP link, a relay); ``probe``: it
    can have come one way only (an INITIATION, a HELLO asking for a reply), so
    it proves nothing about the way back (``l2bridge.core.paths``).
    """
    if peer.addr != addr:
        if not state.follower:
            reach.arrived(state, peer, addr, now, probe)
        elif type(addr) is tuple and type(peer.addr) is not reach.ToLeader:
            roam(state, peer, addr)  # a follower follows UDP; worker 0 decides other paths
    if peer.addr == addr:
        peer.path_seen = now
    peer.last_seen = now
    if not peer.up and state.peers.seen(peer, now):
        log.info("peer %s is up (%s)", peer.name, reach.describe(state, peer.addr))
        guard.peer_up(state, now)  # a loop through this tunnel shows at once


def roam(state: SiteState, peer: Peer, addr: object) -> None:
    """The peer's UDP endpoint follows its latest authenticated datagram."""
    old = peer.addr
    state.peers.bind(peer, addr)
    peer.roamed += 1
    if old is not None:
        log.info("peer %s roamed from %s to %s", peer.name,
                 state.transport.format_addr(old), state.transport.format_addr(addr))


def handshake(state: SiteState, event: Reply | Established, addr: object, now: float) -> None:
    """Answer a valid INITIATION the way it came, or confirm our new keys with a keepalive."""
    peer = state.peer_of[event.peer]
    authenticated(state, peer, addr, now, probe=event.datagram is not None)
    if event.datagram is not None:  # a RESPONSE to the peer's INITIATION
        reach.send_to(state, peer, reply_path(peer, addr), event.datagram, now)
    else:
        keepalive(state, peer, now)


def reply_path(peer: Peer, addr: object) -> object:
    """Where an answer to a request that came by ``addr`` goes: back the same way, unless
    this peer's transport forbids that way (then its own path)."""
    mode = peer.reach.mode
    if peer.addr is not None and (
        (mode == paths.TCP and not reach.is_link(addr))
        or (mode == paths.UDP and reach.is_link(addr))
    ):
        return peer.addr
    return addr


def hello(state: SiteState, peer: Peer, message: bytes, now: float,
          addr: object = None) -> None:
    """A HELLO from ``peer`` (by ``addr``): liveness, whether it accepts bursts, maybe a
    reply wanted (sent back the way it came, never asking for one itself)."""
    try:
        parsed = wire.decode(message)
    except wire.WireError as exc:
        peer.drop(exc.reason)
        return
    assert isinstance(parsed, wire.Hello)
    if state.sessions is None:
        if parsed.name != peer.name:
            peer.drop("wrong_name")
            return
        peer.hellos_in += 1
    else:  # the keys named the peer; its name is the remote site's own label
        peer.keepalives_in += 1
    peer.offload = parsed.offload
    peer.floods = parsed.floods
    if state.sessions is None:
        authenticated(state, peer, peer.addr, now)
    guard.hello_flag(state, peer, parsed.blocked, now)
    if parsed.want_reply:
        keepalive(state, peer, now, to=None if addr is None else reply_path(peer, addr),
                  reply=True)


def stranger(state: SiteState, datagram: bytes, addr: object, now: float) -> None:
    """Cleartext: a datagram from an address that belongs to no peer.

    Only a HELLO naming a dial-in peer (configured without an endpoint) is
    accepted: it binds that peer to this address.  Everything else is counted
    and dropped.
    """
    if datagram[:1] == bytes((wire.TYPE_HELLO,)):
        try:
            parsed = wire.decode(datagram)
        except wire.WireError:
            state.counters.unknown_source += 1
            return
        assert isinstance(parsed, wire.Hello)
        peer = state.peers.by_name.get(parsed.name)
        if peer is not None and peer.configured is None:
            old = peer.addr
            state.peers.bind(peer, addr)
            if old is not None:
                log.info("peer %s moved from %s to %s", peer.name,
                         state.transport.format_addr(old), state.transport.format_addr(addr))
            peer.datagrams_in += 1
            hello(state, peer, datagram, now)
            return
    state.counters.unknown_source += 1


def keepalive(state: SiteState, peer: Peer, now: float, to: object = None,
              reply: bool = False) -> None:
    """A HELLO (sealed in secure mode): liveness, and whether we accept bursts; ``to``
    another path than the peer's; a ``reply`` never asks for one."""
    message = state.hellos[not reply and (not peer.up or peer.offload is None)][
        peer.blocked is not None]
    target = peer.addr if to is None else to
    if state.sessions is None:
        if target is not None:
            reach.send_to(state, peer, target, message, now)
        peer.hellos_out += 1
        return
    packet = state.sessions.seal(peer.sessions, message, now)
    if packet is None:
        kick(state, peer, now)
        return
    if target is not None:
        reach.send_to(state, peer, target, packet, now)
    peer.keepalives_out += 1


def kick(state: SiteState, peer: Peer, now: float) -> None:
    """Start a handshake now if none is in flight (data is waiting for keys)."""
    if state.follower:
        state.kicks.add(peer.name)  # the leader handshakes
        return
    table = state.sessions
    sessions = peer.sessions
    if table is None or (peer.addr is None and peer.reach.link is None) \
            or sessions.pending is not None:
        return
    if sessions.next is not None and now - sessions.next.created < table.timers.rekey_timeout_s:
        return  # we answered the peer's handshake: its first packet confirms the keys
    reach.send_initiation(state, peer, now)


def peer_down(state: SiteState, peer: Peer) -> int:
    """``peer`` is down: stop flooding to it and forget what it taught us; the count flushed.

    The same cleanup in the leader and in every follower: its MAC entries, its
    partial frames and bursts, and whether it accepts bursts (it may come back
    as another version).
    """
    state.peers.mark_down(peer)
    if peer.blocks_us:  # it says so again in its first HELLO when it comes back
        state.peers.block(peer, peer.blocked, by_peer=False)
    flushed = state.switch.flush_port(peer.port)
    guard.sync_switch(state, peer)
    peer.reassembler.expire(math.inf)
    peer.bursts.pending.clear()
    peer.offload = None
    peer.floods = False
    if not state.follower:
        reach.peer_gone(state, peer)
    return flushed


def peer_up(state: SiteState, peer: Peer, now: float) -> None:
    """A follower: the leader says ``peer`` is up (the leader heard from it)."""
    if not peer.up:
        state.peers.seen(peer, now)


async def timers(state: SiteState) -> None:
    """The leader's timers: handshakes and keepalives when due, dead peers down."""
    peers = state.peers
    table = state.sessions
    tick_s = TIMER_TICK_MAX_S
    if table is not None:
        tick_s = min(tick_s, table.timers.rekey_timeout_s / 4)
    while True:
        now = trio.current_time()
        state.ticked = now
        if table is not None:
            for sessions in table.due_initiations(now):
                reach.send_initiation(state, state.peer_of[sessions], now)
            for sessions in table.expire(now):
                log.warning("peer %s: no handshake for %.0f s; its keys are dropped",
                            sessions.name, table.timers.drop_keys_after_s)
        for peer in peers.dead(now):
            flushed = peer_down(state, peer)
            log.warning("peer %s is down (silent for %.1f s); %d MAC entries flushed",
                        peer.name, peers.dead_after_s, flushed)
        for peer in peers.hellos_due(now):
            keepalive(state, peer, now)
        for peer in peers:
            peer.reassembler.expire(now)
        now = trio.current_time()
        await trio.sleep_until(min(peers.next_event(now), now + tick_s))


async def follower_timers(state: SiteState) -> None:
    """A follower's timers: its partial frames expire, its keys age out; no liveness."""
    while True:
        now = trio.current_time()
        state.ticked = now
        if state.sessions is not None:
            state.sessions.expire(now)
        for peer in state.peers:
            peer.reassembler.expire(now)
        guard.report(state, now)  # this worker's duplicate MACs and binding conflicts
        if state.policy.bindings is not None:
            state.policy.bindings.expire(now)
        await trio.sleep(FOLLOWER_TICK_S)


async def table_gc(state: SiteState) -> None:
    """Remove expired MAC entries; sleep until the next one expires."""
    ageing_s = state.config.ageing_s
    while True:
        now = trio.current_time()
        nxt = state.switch.expire(now)
        if nxt is None:
            nxt = now + (ageing_s or math.inf)
        # Wake at least every ageing period: new entries may expire sooner.
        await trio.sleep_until(min(nxt, now + max(ageing_s, 1.0)))
