"""Inbound: datagrams from the peers to the tap.

Inbound flow, per batch of the socket (``l2bridge.site.loop`` reads it, ``run``
for a TCP link):
  1. drain up to BATCH_DATAGRAMS receive calls; ``now`` is the batch's time,
     passed down; bursts past their hold time are given up (``expire_held``);
  2. demultiplex each datagram (``demux``): sealed mode - a handshake message
     goes to ``SessionTable.receive`` (``events.handshake`` when it completes
     one), a DATA packet to ``SessionTable.open``, whose keys name the peer
     (``events.authenticated``); cleartext - the source address names the peer
     (a stranger goes to ``events.stranger``);
  3. the inner message (``inner``; formats in ``l2bridge.core.wire``): FRAME →
     ``deliver``; FRAGMENT → the peer's reassembler → ``deliver``; SEGMENT →
     the peer's burst assembler → ``deliver_super``; HELLO → ``events.hello``;
     ASK, HINT, RELAY_TO, RELAYED → ``reach.message``;
  4. ``deliver``: ``switch.ingress`` (learning, the port's policy) says: the tap,
     a relay (a hub), or a drop counted for the peer.  A flooded frame (a FLOOD
     datagram, or a group destination, which the switch answers with FLOOD)
     goes through ``deliver_flooded``, where the layer-2 policy
     (``policy.ingress``: loop probes, storm control, DHCP/RA guard, bindings)
     decides first; known unicast never meets it (with ``arp_suppress`` on,
     ``deliver_snooping`` picks out ARP replies and NAs; ``select`` chooses).
     Relays wait until the batch is read (``Relay``, sent by ``outbound``; and
     ``reach.flush`` for datagrams relayed between two peers): the
     per-datagram path never awaits;
  5. after the batch: a MAC that moved between the tap and a peer wakes the
     guard room (``guard.flapped``).
A TCP link runs ``run(state, link)`` over its records: the same ``demux``, so
every layer-2 guard applies whichever way a datagram came (UDP, TCP, a relay).

Kept inline on purpose (the per-datagram path, where a call costs): the
common case of step 2 (an authenticated datagram from a peer already up at its
address only refreshes ``last_seen``; anything else goes through
``events.authenticated``), and the unwrapping of a FRAME in step 3.
"""

from __future__ import annotations

from typing import Protocol

import trio

from l2bridge.core import noise, offload, wire
from l2bridge.core.classify import LOOP_PROBE_MAC, STP_MACS
from l2bridge.core.ether import vlan_id
from l2bridge.core.mss import clamp_mss
from l2bridge.core.peers import Peer
from l2bridge.core.switch import FLOOD, TAP, Drop
from l2bridge.site import events, guard, outbound, reach
from l2bridge.site.state import SiteState

BATCH_DATAGRAMS = 64


class Source(Protocol):
    """Where datagrams come from: the UDP transport, or a TCP link."""

    async def wait_readable(self) -> None: ...

    def recv_batch(self, max_datagrams: int) -> list[tuple[bytes, object]]: ...

_DATA = bytes((noise.MSG_DATA,))
_FRAME, _FLOOD, _HDR = wire.TYPE_FRAME, wire.TYPE_FLOOD, wire.HEADER_LEN


async def run(state: SiteState, source: Source) -> None:
    """Until cancelled: ``source``'s datagrams to the tap (module flow).  The site's UDP
    socket is served by ``l2bridge.site.loop`` together with the tap; this loop serves
    one TCP link (``l2bridge.site.reach``)."""
    waiting: set[Peer] = set()  # peers holding incomplete bursts
    while True:
        deadline = next_hold(waiting)
        if deadline is None:
            await source.wait_readable()
        else:
            with trio.move_on_at(deadline):
                await source.wait_readable()
        batch = source.recv_batch(BATCH_DATAGRAMS)
        now = trio.current_time()
        await expire_held(state, waiting, now)
        state.inbound_since = now
        await demux(state, batch, now, waiting)
        state.inbound_since = None


def next_hold(waiting: set[Peer]) -> float | None:
    """When the earliest incomplete burst of ``waiting`` must be given up (None: none);
    peers whose bursts completed leave ``waiting``."""
    for peer in [p for p in waiting if not p.bursts.pending]:
        waiting.discard(peer)
    if not waiting:
        return None
    return min(p.bursts.next_deadline() for p in waiting)


async def expire_held(state: SiteState, waiting: set[Peer], now: float) -> None:
    """Deliver what incomplete bursts past their hold time have (the rest is counted lost)."""
    if not waiting:
        return
    relays: list[Relay] = []
    for held in list(waiting):
        for raw in held.bursts.expire(now):
            deliver_super(state, held, raw, now, relays)
        if not held.bursts.pending:
            waiting.discard(held)
    for relay in relays:
        await relay.send(state, now)


async def demux(state: SiteState, batch: list[tuple[bytes, object]], now: float,
                waiting: set[Peer]) -> None:
    """Steps 2-4 for one batch; what must wait for the socket (a hub's relays) goes last."""
    relays: list[Relay] = []
    table = state.sessions
    if table is None:
        by_addr = state.peers.by_addr
        for data, addr in batch:
            peer = by_addr.get(addr)
            if peer is None:
                events.stranger(state, data, addr, now)
                continue
            peer.datagrams_in += 1
            inner(state, peer, data, addr, now, waiting, relays)
    else:
        receive = table.receive
        open_data = table.open
        peer_of = state.peer_of
        for data, addr in batch:
            if data[:1] != _DATA:  # a handshake message
                event = receive(data, addr, now)
                if event is not None:
                    events.handshake(state, event, addr, now)  # type: ignore[arg-type]
                continue
            opened = open_data(data, now)
            if opened is None:
                continue  # counted by the session table
            sessions, data = opened
            peer = peer_of[sessions]
            if peer.addr != addr or not peer.up:
                events.authenticated(state, peer, addr, now, _asks_reply(data))
            else:
                peer.last_seen = peer.path_seen = now
            if not data:  # a keepalive
                peer.keepalives_in += 1
                continue
            peer.datagrams_in += 1
            inner(state, peer, data, addr, now, waiting, relays)
    for relay in relays:
        await relay.send(state, now)
    await reach.flush(state, now, waiting)
    if state.switch.flapped != state.l2.flaps_seen:
        guard.flapped(state, now)


def _asks_reply(data: bytes) -> bool:
    """A HELLO asking for a reply: a probe, which proves no way back (``core.paths``)."""
    return len(data) > 1 and data[0] == wire.TYPE_HELLO and bool(data[1] & wire.HELLO_WANT_REPLY)


class Relay:
    """A frame or super-frame a hub passes on to other peers once the batch is read."""

    __slots__ = ("ingress", "frame", "decision", "meta")

    def __init__(self, ingress: Peer, frame: bytes, decision: int | Drop,
                 meta: offload.Meta | None = None) -> None:
        self.ingress = ingress
        self.frame = frame
        self.decision = decision
        self.meta = meta

    async def send(self, state: SiteState, now: float) -> None:
        if self.meta is None:
            await outbound.forward(state, self.frame, self.decision, self.ingress, now)
            return
        head = self.frame[:self.meta.hdr_len]
        chosen = outbound.targets(state, self.decision, head, now, ingress=self.ingress,
                                  count=outbound.segments(self.meta, self.frame))
        if isinstance(chosen, Drop):
            self.ingress.drop(chosen.value)
            return
        await outbound.super_to_peers(state, self.meta, self.frame, chosen, now)


def inner(state: SiteState, peer: Peer, data: bytes, addr: object, now: float,
          waiting: set[Peer], relays: list[Relay]) -> None:
    """Step 3: one inner message from ``peer``, which came by ``addr`` (formats:
    ``l2bridge.core.wire``)."""
    kind = data[0] if data else 0
    if kind == _FRAME:  # wire's FRAME is header | frame: unwrapped here, the per-frame path
        if len(data) <= _HDR:
            peer.drop("truncated")
            return
        if state.sessions is None:  # cleartext: a valid message is the peer's sign of life
            events.authenticated(state, peer, peer.addr, now)
        state.deliver(state, peer, data[_HDR:], now, relays)  # ``deliver``, or with snooping
        return
    try:
        if kind == _FLOOD:  # a frame the peer flooded: the policy's (``deliver_flooded``)
            if len(data) <= _HDR:
                peer.drop("truncated")
                return
            if state.sessions is None:
                events.authenticated(state, peer, peer.addr, now)
            deliver_flooded(state, peer, data[_HDR:], now, relays)
        elif kind == wire.TYPE_SEGMENT:
            ready = peer.bursts.feed(data, now)
            if state.sessions is None:
                events.authenticated(state, peer, peer.addr, now)
            if peer.bursts.pending:
                waiting.add(peer)
            for raw in ready:
                deliver_super(state, peer, raw, now, relays)
        elif kind == wire.TYPE_FRAGMENT:
            whole = peer.reassembler.feed(wire.decode(data), now)  # type: ignore[arg-type]
            if whole is not None:
                if state.sessions is None:
                    events.authenticated(state, peer, peer.addr, now)
                state.deliver(state, peer, whole, now, relays)
        elif kind == wire.TYPE_HELLO:
            events.hello(state, peer, data, now, addr)
        elif wire.TYPE_ASK <= kind <= wire.TYPE_RELAYED:
            reach.message(state, peer, data, addr, now)
        else:
            peer.drop("bad_type")
    except (wire.WireError, offload.OffloadError) as exc:
        peer.drop(exc.reason)


def deliver(state: SiteState, peer: Peer, frame: bytes, now: float,
            relays: list[Relay]) -> None:
    """Step 4: one whole frame from ``peer`` to the tap (and, on a hub, to other peers).

    Known unicast tests nothing it did not test before layer-2 safety: a group
    destination comes back from the switch as FLOOD and goes to ``deliver_flooded``.
    """
    mss = state.config.mss_clamp
    if mss is not None:
        frame = clamp_mss(frame, mss)
    decision = state.switch.ingress(frame, peer.port, now)
    if decision is TAP:
        _to_tap(state, peer, frame)
        return
    if decision is FLOOD:
        deliver_flooded(state, peer, frame, now, relays, decision)
        return
    if decision in _REFUSALS:
        if decision is Drop.LOOP_BLOCKED and frame[:6] in STP_MACS:
            _to_tap(state, peer, frame)  # BPDUs cross a blocked tunnel: STP sees every path
            return
        peer.drop(decision.value)  # type: ignore[union-attr]
        return
    peer.frames_in += 1
    peer.bytes_in += len(frame)
    relays.append(Relay(peer, frame, decision))  # a hub's unicast, or a counted drop


def deliver_snooping(state: SiteState, peer: Peer, frame: bytes, now: float,
                     relays: list[Relay]) -> None:
    """``deliver`` with ARP/ND suppression on: unicast ARP replies and NAs teach bindings."""
    state.policy.snoop(frame, now)
    deliver(state, peer, frame, now, relays)


def select(state: SiteState) -> None:
    """Which ``deliver`` the site's frames take (at start and after a reload)."""
    state.deliver = deliver_snooping if state.l2.snoop else deliver


def deliver_flooded(state: SiteState, peer: Peer, frame: bytes, now: float,
                    relays: list[Relay], decision: int | Drop | None = None) -> None:
    """A frame ``peer`` flooded (FLOOD, or a group destination): the layer-2 policy
    decides first, then it goes to the tap (and, on a hub, to the other spokes)."""
    policy = state.policy
    if decision is None:
        if frame[:6] == LOOP_PROBE_MAC:  # never delivered, never learned
            policy.ingress(frame, peer, now)
            return
        mss = state.config.mss_clamp
        if mss is not None:
            frame = clamp_mss(frame, mss)
        decision = state.switch.ingress(frame, peer.port, now)
        if decision in _REFUSALS:
            if decision is Drop.LOOP_BLOCKED and frame[:6] in STP_MACS:
                _to_tap(state, peer, frame)  # BPDUs cross a blocked tunnel
                return
            peer.drop(decision.value)  # type: ignore[union-attr]
            return
    if not policy.ingress(frame, peer, now):
        return
    if decision is TAP or decision is FLOOD:
        _to_tap(state, peer, frame)
        if decision is FLOOD and state.switch.hub:
            relays.append(Relay(peer, frame, decision))
        return
    peer.frames_in += 1
    peer.bytes_in += len(frame)
    relays.append(Relay(peer, frame, decision))  # a hub: known at another spoke


def _to_tap(state: SiteState, peer: Peer, frame: bytes) -> None:
    counters = state.counters
    try:
        state.tap.write(offload.PLAIN_VNET_HDR + frame if state.caps.vnet_hdr else frame)
    except OSError:
        counters.tap_write_errors += 1
    else:
        counters.tap_frames_out += 1
        counters.tap_bytes_out += len(frame)
    peer.frames_in += 1
    peer.bytes_in += len(frame)


_REFUSALS = frozenset({Drop.PINNED_MAC, Drop.MAC_NOT_ALLOWED, Drop.LOOP_BLOCKED})


def deliver_super(state: SiteState, peer: Peer, raw: bytes, now: float,
                  relays: list[Relay]) -> None:
    """A super-frame rebuilt from a peer's burst (``raw`` = virtio_net_hdr + frame)."""
    frame = raw[offload.VNET_HDR_LEN:]
    hdr_len = raw[2] | raw[3] << 8
    head = frame[:hdr_len] if hdr_len else frame
    decision = state.switch.ingress(head, peer.port, now)
    if decision in _REFUSALS:
        peer.drop(decision.value)  # type: ignore[union-attr]
        return
    if frame[0] & 1 or state.switch.lookup(vlan_id(frame), frame[:6], now) is None:
        # flooded (a group, or a destination not known here): the policy's, per burst
        meta = offload.parse_vnet(raw)
        if not state.policy.ingress(head, peer, now, outbound.segments(meta, frame)):
            return
    peer.bursts_in += 1
    peer.frames_in += 1
    peer.bytes_in += len(frame)
    if decision is TAP or decision is FLOOD:
        _super_to_tap(state, raw)
    if decision is not TAP and (decision is not FLOOD or state.switch.hub):
        relays.append(Relay(peer, frame, decision, offload.parse_vnet(raw)))


def _super_to_tap(state: SiteState, raw: bytes) -> None:
    """Write a super-frame whole (vnet tap) or segmented (a tap without offloads)."""
    counters = state.counters
    if state.caps.vnet_hdr:
        writes = [raw]
    else:
        try:
            writes = offload.segment(offload.parse_vnet(raw), raw[offload.VNET_HDR_LEN:])
        except offload.OffloadError as exc:
            counters.tap_drop(exc.reason)
            return
    for data in writes:
        try:
            state.tap.write(data)
        except OSError:
            counters.tap_write_errors += 1
            continue
        counters.tap_frames_out += 1
        counters.tap_bytes_out += len(data)
    counters.super_frames_out += 1
