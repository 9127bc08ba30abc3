"""Outbound: frames from the tap to the peers.

Outbound flow, per batch of tap reads (``handle``; ``l2bridge.site.loop`` reads
the tap):
  1. up to BATCH_FRAMES reads; ``now`` is the batch's time, passed down;
  2. on a vnet tap, runs of same-flow UDP datagrams become USO super-frames
     (``offload.coalesce_udp``);
  3. per read: a super-frame leaves on its own (``send_super``) after what is
     queued, so a flow's order holds; a plain frame (its checksum completed if
     the kernel left it partial, MSS clamped) goes to ``switch.egress``, which
     says: one peer, flood, or a counted drop.  Only a flooded frame meets the
     layer-2 policy (``policy.egress``: loop probes, storm control, DHCP/RA
     guard, ARP/ND answers), which says which peers get it;
  4. each plain frame is cut into datagrams once (``Fragmenter.split``: one
     FRAME, or FRAGMENTs when it does not fit; a flooded FRAME is flagged) and
     queued per peer; each peer's queue leaves in one ``send_datagrams`` at the
     end of the batch;
  5. after the batch: a MAC that moved between the tap and a peer wakes the
     guard room (``guard.flapped``).
Transmission (``send_datagrams``, the one send path for frames, bursts and
relays): seal the batch with the peer's current session, send it in UDP GSO
runs (or as one write of records on a TCP link), wait (bounded) when the
socket buffer is full; a relayed peer's datagrams, and a follower's for a
peer that worker 0 carries, go through ``reach.carry``.  Each peer's frames
are cut for its path (``peer.room``: the site's budget, less through a relay,
more on a TCP link).  Control datagrams (handshakes, keepalives) go out one by
one with ``reach.send_to``, never waiting.

The batch loop of ``handle`` dispatches unicast / flood / drop inline on purpose
(it is the per-frame path); everything else uses ``targets``.
"""

from __future__ import annotations

import errno

from l2bridge.core import offload
from l2bridge.core.mss import clamp_mss
from l2bridge.core.paths import RELAY
from l2bridge.core.peers import Peer
from l2bridge.core.switch import FLOOD, Drop
from l2bridge.site import events, guard, reach
from l2bridge.site.state import SiteState

BATCH_FRAMES = 64
SEND_RETRIES = 100  # wake-ups waiting for socket buffer room before a batch is dropped
SEND_ERROR_RETRIES = 3  # send errors (counted) before a batch is given up

_VNET = offload.VNET_HDR_LEN
_NEEDS_CSUM = offload.F_NEEDS_CSUM
_VNET_HDR = offload.VNET_HDR


async def handle(state: SiteState, frames: list[bytes], now: float) -> None:
    """Steps 2-5 for one batch of tap reads (module flow)."""
    state.outbound_since = now
    switch = state.switch
    egress = switch.egress
    flood = state.policy.egress
    split = state.fragmenter.split
    within = state.fragmenter.split_within
    peers = state.peers
    by_port = peers.by_port
    mss = state.config.mss_clamp
    counters = state.counters
    vnet = state.caps.vnet_hdr
    counters.tap_frames_in += len(frames)
    counters.tap_bytes_in += sum(map(len, frames))
    if vnet and state.caps.bursts and len(frames) > 1 and peers.any_offload():
        frames = offload.coalesce_udp(frames)
    # Per peer, this batch's datagrams: [datagrams, frames, bytes], sent together.
    queued: dict[Peer, list] = {}
    for frame in frames:
        if vnet:
            if frame[1]:  # gso_type: a super-frame, after what is queued
                if queued:
                    await send_queued(state, queued, now)
                await send_super(state, frame, now)
                continue
            plain = _plain_from_vnet(state, frame)
            if plain is None:
                continue
            frame = plain
        if mss is not None:
            frame = clamp_mss(frame, mss)
        decision = egress(frame, now)
        if type(decision) is int and decision > 0:
            peer = by_port[decision]
            peer.unicast_out += 1
            room = peer.room
            _queue(queued, peer, split(frame) if room is None else within(frame, room),
                   len(frame))
        elif decision is FLOOD:
            chosen = flood(frame, now)  # the layer-2 policy: which peers, counted
            if chosen:
                cut: dict[tuple[bool, int | None], list[bytes]] = {}
                for peer in chosen:
                    _queue(queued, peer, flooded_datagrams(state, peer, frame, cut), len(frame))
        else:
            counters.tap_drop(decision.value)  # type: ignore[union-attr]
    if queued:
        await send_queued(state, queued, now)
    if switch.flapped != state.l2.flaps_seen:
        guard.flapped(state, now)
    state.outbound_since = None


def targets(state: SiteState, decision: int | Drop, frame: bytes, now: float, *,
            ingress: Peer | None = None, count: int = 1) -> list[Peer] | Drop:
    """The peers a switch decision sends ``frame`` to (counted unicast or flooded), or the drop.

    A flood meets the layer-2 policy (``count``: the segments of a super-frame);
    ``ingress`` is the peer a relayed frame came from: a flood never goes back to it.
    """
    if decision is FLOOD:
        if ingress is None:
            return state.policy.egress(frame, now, count)
        return state.policy.relay(frame, ingress, now, count)
    if type(decision) is int and decision > 0:
        peer = state.peers.by_port[decision]
        peer.unicast_out += 1
        return [peer]
    return decision  # type: ignore[return-value]


async def forward(state: SiteState, frame: bytes, decision: int | Drop, ingress: Peer,
                  now: float) -> None:
    """A hub relays a frame from ``ingress``: to one peer, or flooded to the others."""
    chosen = targets(state, decision, frame, now, ingress=ingress)
    if isinstance(chosen, Drop):
        ingress.drop(chosen.value)
        return
    if chosen:
        cut: dict[tuple[bool, int | None], list[bytes]] = {}
        for peer in chosen:
            if decision is FLOOD:
                datagrams = flooded_datagrams(state, peer, frame, cut)
            else:
                room = peer.room
                datagrams = (state.fragmenter.split(frame) if room is None
                             else state.fragmenter.split_within(frame, room))
            await send_datagrams(state, peer, datagrams, len(frame), now)


def flooded_datagrams(state: SiteState, peer: Peer, frame: bytes,
                      cut: dict[tuple[bool, int | None], list[bytes]]) -> list[bytes]:
    """A flooded frame's datagrams for ``peer``: FLOOD where it takes them (FRAME for an
    older version), cut for its path's room; ``cut`` keeps each cut for the next peer."""
    key = (peer.floods, peer.room)
    datagrams = cut.get(key)
    if datagrams is None:
        fragmenter = state.fragmenter
        if peer.floods:
            datagrams = fragmenter.split_flooded(frame, peer.room)
        elif peer.room is None:
            datagrams = fragmenter.split(frame)
        else:
            datagrams = fragmenter.split_within(frame, peer.room)
        cut[key] = datagrams
    return datagrams


async def send_queued(state: SiteState, queued: dict[Peer, list], now: float) -> None:
    """Send each peer's queued datagrams in one batch, then forget them."""
    for peer, (datagrams, frames, size) in queued.items():
        await send_datagrams(state, peer, datagrams, size, now, frames)
    queued.clear()


def _queue(queued: dict[Peer, list], peer: Peer, datagrams: list[bytes], size: int) -> None:
    """Add one frame's datagrams to ``peer``'s entry of a batch: [datagrams, frames, bytes]."""
    entry = queued.get(peer)
    if entry is None:
        queued[peer] = [list(datagrams), 1, size]
    else:
        entry[0] += datagrams
        entry[1] += 1
        entry[2] += size


def _plain_from_vnet(state: SiteState, raw: bytes) -> bytes | None:
    """A non-GSO read of a vnet tap as a plain frame, its checksum made final."""
    if not raw[0] & _NEEDS_CSUM:
        return raw[_VNET:]
    _, _, _, _, start, offset = _VNET_HDR.unpack_from(raw)
    try:
        return offload.complete_checksum(raw[_VNET:], start, offset)
    except offload.OffloadError as exc:
        state.counters.tap_drop(exc.reason)
        return None


async def send_super(state: SiteState, raw: bytes, now: float) -> None:
    """A super-frame from the tap: switched on its headers, to one peer or flooded."""
    try:
        meta = offload.parse_vnet(raw)
    except offload.OffloadError as exc:
        state.counters.tap_drop(exc.reason)
        return
    frame = raw[_VNET:]
    state.counters.super_frames_in += 1
    head = frame[:meta.hdr_len]
    chosen = targets(state, state.switch.egress(head, now), head, now, count=segments(meta, frame))
    if isinstance(chosen, Drop):
        state.counters.tap_drop(chosen.value)
        return
    await super_to_peers(state, meta, frame, chosen, now)


async def super_to_peers(state: SiteState, meta: offload.Meta, frame: bytes,
                         chosen: list[Peer], now: float) -> None:
    """Send a super-frame to ``chosen``: one burst each, or ordinary frames.

    A peer gets the burst when it said it accepts SEGMENTs (HELLO's OFFLOAD
    flag) and the burst fits MAX_CHUNKS chunks; otherwise the super-frame is
    segmented here (final checksums) and sent frame by frame.
    """
    chunks: list[bytes] | None = None
    segments: list[bytes] | None = None
    for peer in chosen:
        burst = peer.offload and peer.path != RELAY  # a relay's envelope leaves no room
        if burst and chunks is None:
            chunks = _burst(state, meta, frame)
        if burst and chunks:
            peer.bursts_out += 1
            await send_datagrams(state, peer, chunks, len(frame), now)
            continue
        if segments is None:
            segments = offload.segment(meta, frame)
        within = state.fragmenter.split_within
        room = peer.room or state.budget.frame_room
        batch: dict[Peer, list] = {}
        for segment in segments:
            _queue(batch, peer, within(segment, room), len(segment))
        await send_queued(state, batch, now)


def segments(meta: offload.Meta, frame: bytes) -> int:
    """How many frames a super-frame stands for (what storm control counts)."""
    if meta.gso_size <= 0:
        return 1
    return max(1, -(-(len(frame) - meta.hdr_len) // meta.gso_size))


def _burst(state: SiteState, meta: offload.Meta, frame: bytes) -> list[bytes]:
    """The SEGMENT chunks of one super-frame ([] when it cannot be a burst)."""
    try:
        size = offload.chunk_size_for(state.budget.max_plaintext, meta.hdr_len)
        if meta.gso_type & ~offload.GSO_ECN == offload.GSO_UDP_L4:
            size -= size % meta.gso_size if meta.gso_size <= size else 0
        chunks = offload.burst_chunks(meta, frame, state.burst_id, size)
    except offload.OffloadError:
        return []
    state.burst_id = (state.burst_id + state.caps.lanes) & 0xFFFF
    return chunks


async def send_datagrams(state: SiteState, peer: Peer, datagrams: list[bytes], size: int,
                         now: float, frames: int = 1) -> None:
    """Seal datagrams (a burst, or a batch of frames) and send them in GSO batches.

    Waits for socket buffer room when needed (bounded); ``frames`` and
    ``size`` are what the datagrams carry, for the peer's counters.
    """
    addr = peer.addr
    if addr is None:
        peer.drop("no_endpoint")
        return
    if type(addr) is not tuple and addr.carries:  # type: ignore[attr-defined]
        await reach.carry(state, peer, addr, datagrams, size, now, frames)
        return
    table = state.sessions
    if table is not None:
        sealed = table.seal_many(peer.sessions, datagrams, now)
        if sealed is None:
            peer.drop("no_session")
            events.kick(state, peer, now)
            return
        datagrams = sealed
    transport = state.transport if type(addr) is tuple else addr  # a TCP link takes records
    send_batch = transport.send_batch  # type: ignore[union-attr]
    sent = errors = 0
    for _ in range(SEND_RETRIES):
        try:
            sent += send_batch(datagrams[sent:] if sent else datagrams, addr)
        except OSError as exc:
            # Mostly an earlier datagram's ICMP error reported now: counted, then
            # the batch is tried again (a repeat is refused by the replay window).
            peer.drop(f"send_{errno_name(exc)}")
            errors += 1
            if errors >= SEND_ERROR_RETRIES:
                return
            continue
        if sent == len(datagrams):
            peer.datagrams_out += sent
            peer.frames_out += frames
            peer.bytes_out += size
            return
        await transport.wait_writable()  # type: ignore[union-attr]
    peer.drop("send_buffer_full")


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "error").lower()
