"""The running site: frames between the tap and the peers, through the learning switch.

Outbound flow (tap → peers), per wake-up:
  1. wait until the tap is readable, then drain up to BATCH_FRAMES reads;
  2. ``now`` is read once per batch; on a vnet tap, runs of same-flow UDP
     datagrams are merged into USO super-frames (``offload.coalesce_udp``);
  3. per read: a super-frame (TSO/USO) is switched on its headers and goes to
     each chosen peer as one burst of SEGMENT chunks (a peer that did not
     advertise OFFLOAD gets it segmented); a plain frame (its checksum
     completed if the kernel left it partial) → optional MSS clamp →
     ``switch.egress`` → unicast to one peer, flood to every live peer, or a
     counted drop;
  4. each plain frame is split into datagrams once (FRAME, or FRAGMENTs when it
     does not fit the WAN MTU) and queued per peer; each peer's queue leaves in
     one ``send_batch`` (UDP GSO) at the end of the batch, or before a
     super-frame so that a flow's order holds.

Inbound flow (peers → tap), per wake-up:
  1. wait until the socket is readable (or until an incomplete burst's hold
     time ends), then drain up to BATCH_DATAGRAMS receive calls;
  2. per datagram: source address → peer (unknown sources are counted and
     dropped; a HELLO may bind a dial-in peer) → cheap type dispatch;
  3. FRAGMENTs go to the peer's reassembler, SEGMENTs to its burst assembler;
     both yield whole frames (a burst: the super-frame, or what arrived of it);
  4. ``switch.ingress`` → deliver to the tap (and, on a hub, relay to peers).

Secure mode (the default): every inner datagram above is sealed into a DATA
packet of the peer's current session before it is sent, and every received
datagram is authenticated by ``SecureLinks`` before anything else looks at it;
the peer is the one whose keys opened it, and its endpoint follows it
(roaming).  Cleartext mode (``insecure = true``) identifies peers by address.
Keepalives are HELLOs (sealed in secure mode) carrying the OFFLOAD flag.

Workers (``lane``/``lanes``/``follower``, see ``l2bridge.site.workers``): a follower
takes peer state and keys from the leader, never handshakes and runs no
liveness timers; its ``kicks`` ask the leader for a handshake.

Invariants: the per-frame path never logs, never awaits between a table lookup
and its update (switch methods are synchronous), and allocates only the
datagrams it sends.  Tap and transport are passed in, so the same Bridge runs on
real devices and on the in-memory fakes of ``l2bridge.io.fakes``.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

from l2bridge.core import noise, offload, wire
from l2bridge.core.config import SiteConfig
from l2bridge.core.ether import format_mac
from l2bridge.core.mss import clamp_mss
from l2bridge.core.peers import Peer, PeerTable
from l2bridge.core.secure import Established, PeerLink, Reply, SecureLinks, Timers
from l2bridge.core.switch import FLOOD, TAP, Drop, Switch
from l2bridge.io.transport import Transport

log = logging.getLogger("l2bridge")

BATCH_FRAMES = 64
BATCH_DATAGRAMS = 64
IPV4_UDP_OVERHEAD = 28
IPV6_UDP_OVERHEAD = 48
VLAN_TAGS_BYTES = 8  # room for QinQ on top of a full-MTU frame
REASSEMBLY_TIMEOUT_S = 2.0
REASSEMBLY_MAX_PENDING = 64
SEND_RETRIES = 100  # wake-ups waiting for socket buffer room before a frame is dropped
SEND_ERROR_RETRIES = 3  # send errors (counted) before a batch is given up

_FRAME = wire.TYPE_FRAME
_FRAGMENT = wire.TYPE_FRAGMENT
_HELLO = wire.TYPE_HELLO
_SEGMENT = offload.TYPE_SEGMENT
_DATA = bytes((noise.MSG_DATA,))
_HDR = wire.HEADER_LEN
_VNET = offload.VNET_HDR_LEN
_PLAIN_VNET = offload.PLAIN_VNET_HDR
_NEEDS_CSUM = offload.F_NEEDS_CSUM
_VNET_HDR = offload.VNET_HDR


class Tap(Protocol):
    """What the bridge needs from a tap device (real or fake).

    With ``vnet_hdr`` every read starts with a virtio_net_hdr and every write
    must start with one.
    """

    name: str
    vnet_hdr: bool

    async def wait_readable(self) -> None: ...

    def read_batch(self, max_frames: int) -> list[bytes]: ...

    def write(self, frame: bytes) -> object: ...


class Bridge:
    """One site's dataplane: a switch whose ports are the tap and the peers."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        tap: Tap,
        transport: Transport,
        identity: noise.Identity | None = None,
        psks: dict[str, bytes] | None = None,
        timers: Timers | None = None,
        clock_unix: Callable[[], float] | None = None,
        lane: int = 0,
        lanes: int = 1,
        follower: bool = False,
    ) -> None:
        self.config = config
        # Worker ``lane`` of ``lanes`` (l2bridge.site.workers); a follower takes peer state
        # and keys from the leader (worker 0) and never handshakes or keeps alive.
        self.lane = lane
        self.lanes = lanes
        self.follower = follower
        self.kicks: set[str] = set()  # a follower's peers waiting for keys
        self.worker_status: Callable[[], list[dict]] | None = None
        # Sections the running site adds to ``status`` (e.g. "plumbing"), computed on demand.
        self.status_sections: dict[str, Callable[[], object]] = {}
        self.tap = tap
        self.transport = transport
        max_frame = config.mtu + wire_eth_overhead()
        self.switch = Switch(
            hub=config.hub,
            ageing_s=config.ageing_s,
            max_entries=config.max_entries,
            max_entries_per_peer=config.max_entries_per_peer,
            max_frame=max_frame,
        )
        overhead = IPV6_UDP_OVERHEAD if config.listen.is_ipv6 else IPV4_UDP_OVERHEAD
        if not config.insecure:
            overhead += noise.DATA_HEADER_LEN + noise.TAG_LEN
        self.max_plaintext = config.wan_mtu - overhead
        self.fragmenter = wire.Fragmenter(self.max_plaintext)
        # Offload: super-frames from a vnet tap, bursts to peers that accept them.
        self.vnet = bool(getattr(tap, "vnet_hdr", False))
        self.offload = config.offload and self.vnet
        self.burst_id = 0
        self.peers = PeerTable(
            (
                Peer(
                    port=i + 1,
                    name=p.name,
                    configured=p.endpoint,
                    reassembler=wire.Reassembler(
                        max_pending=REASSEMBLY_MAX_PENDING,
                        timeout_s=REASSEMBLY_TIMEOUT_S,
                        max_frame=max_frame,
                    ),
                    bursts=offload.BurstAssembler(),
                )
                for i, p in enumerate(config.peers)
            ),
            keepalive_s=config.keepalive_s,
            dead_after_s=config.dead_after_s,
        )
        for peer, pc in zip(self.peers, config.peers, strict=True):
            peer.keepalive_s = min(config.keepalive_s, pc.persistent_keepalive_s)
            peer.allowed_macs = pc.allowed_macs
            if pc.max_macs is not None:
                self.switch.set_port_cap(peer.port, pc.max_macs)
        self.pinned_macs = config.pinned_macs or None
        self.secure: SecureLinks | None = None
        self.link_peer: dict[PeerLink, Peer] = {}
        if not config.insecure:
            if identity is None:
                raise ValueError("a secure site needs its identity (private key)")
            psks = psks or {}
            for peer, pc in zip(self.peers, config.peers, strict=True):
                link = PeerLink(
                    keys=noise.PeerKeys(identity, pc.public_key or b"", psks.get(pc.name)),
                    name=pc.name,
                    has_endpoint=pc.endpoint is not None,
                )
                peer.link = link
                self.link_peer[link] = peer
            if timers is None:
                timers = Timers().scaled(config.rekey_after_s / Timers().rekey_after_time_s)
            self.secure = SecureLinks(
                identity, self.link_peer, timers=timers, clock_unix=clock_unix,
                lane=lane, lanes=lanes, follower=follower,
            )
        self.now = 0.0
        self.hello_payloads = (
            wire.encode_hello(config.name, want_reply=False, offload=self.offload),
            wire.encode_hello(config.name, want_reply=True, offload=self.offload),
        )
        # Site-wide counters: frames from the tap, drops that belong to no peer.
        self.tap_frames_in = 0
        self.tap_bytes_in = 0
        self.tap_frames_out = 0
        self.tap_bytes_out = 0
        self.tap_drops: dict[str, int] = {}
        self.super_frames_in = 0
        self.super_frames_out = 0
        self.unknown_source = 0
        self.tap_write_errors = 0
        self.started_at: float | None = None

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every task of the site until cancelled."""
        self.started_at = trio.current_time()
        if not self.follower:
            await self.resolve_endpoints()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tap_to_peers)
            nursery.start_soon(self._peers_to_tap)
            nursery.start_soon(self._follower_timers if self.follower else self._timers)
            nursery.start_soon(self._table_gc)
            task_status.started()

    async def resolve_endpoints(self) -> None:
        """Resolve configured endpoints; a failure is logged and retried by the timers."""
        for peer in self.peers:
            if peer.configured is not None and peer.addr is None:
                await self._resolve(peer)

    async def _resolve(self, peer: Peer) -> None:
        try:
            addr = await self.transport.resolve(peer.configured)  # type: ignore[arg-type]
        except OSError as exc:
            peer.drop("resolve_failed")
            if peer.drops["resolve_failed"] == 1:
                log.warning("peer %s: cannot resolve %s: %s (will retry)",
                            peer.name, peer.configured, exc.strerror or exc)
            return
        self.peers.bind(peer, addr)

    async def _tap_to_peers(self) -> None:
        tap = self.tap
        egress = self.switch.egress
        split = self.fragmenter.split
        peers = self.peers
        by_port = peers.by_port
        mss = self.config.mss_clamp
        drops = self.tap_drops
        vnet = self.vnet
        # Per peer, this wake-up's datagrams: [datagrams, frames, bytes], sent together
        # (UDP GSO when they are of equal size) once the batch is read.
        queued: dict[Peer, list] = {}
        while True:
            await tap.wait_readable()
            frames = tap.read_batch(BATCH_FRAMES)
            if not frames:
                continue
            self.now = now = trio.current_time()
            self.tap_frames_in += len(frames)
            self.tap_bytes_in += sum(map(len, frames))
            if vnet and len(frames) > 1 and self.offload and peers.any_offload():
                frames = offload.coalesce_udp(frames)
            for frame in frames:
                if vnet:
                    if frame[1]:  # gso_type: a super-frame, after what is queued
                        if queued:
                            await self._send_queued(queued)
                        await self._super_out(frame, now)
                        continue
                    plain = self._plain_from_vnet(frame)
                    if plain is None:
                        continue
                    frame = plain
                if mss is not None:
                    frame = clamp_mss(frame, mss)
                decision = egress(frame, now)
                if type(decision) is int and decision > 0:
                    peer = by_port[decision]
                    peer.unicast_out += 1
                    _queue(queued, peer, split(frame), len(frame))
                elif decision is FLOOD:
                    live = peers.live
                    if live:
                        datagrams = split(frame)
                        for peer in live:
                            peer.flooded_out += 1
                            _queue(queued, peer, datagrams, len(frame))
                else:
                    reason = decision.value  # type: ignore[union-attr]
                    drops[reason] = drops.get(reason, 0) + 1
            if queued:
                await self._send_queued(queued)

    async def _send_queued(self, queued: dict[Peer, list]) -> None:
        """Send each peer's queued datagrams in one batch, then forget them."""
        for peer, (datagrams, frames, size) in queued.items():
            await self._send_datagrams(peer, datagrams, size, frames)
        queued.clear()

    def _plain_from_vnet(self, raw: bytes) -> bytes | None:
        """A non-GSO read of a vnet tap as a plain frame, its checksum made final."""
        if not raw[0] & _NEEDS_CSUM:
            return raw[_VNET:]
        _, _, _, _, start, offset = _VNET_HDR.unpack_from(raw)
        try:
            return offload.complete_checksum(raw[_VNET:], start, offset)
        except offload.OffloadError as exc:
            self.tap_drops[exc.reason] = self.tap_drops.get(exc.reason, 0) + 1
            return None

    async def _super_out(self, raw: bytes, now: float) -> None:
        """A super-frame from the tap: to one peer or flooded, as a burst or as frames."""
        try:
            meta = offload.parse_vnet(raw)
        except offload.OffloadError as exc:
            self.tap_drops[exc.reason] = self.tap_drops.get(exc.reason, 0) + 1
            return
        frame = raw[_VNET:]
        self.super_frames_in += 1
        decision = self.switch.egress(frame[:meta.hdr_len], now)
        if type(decision) is int and decision > 0:
            peer = self.peers.by_port[decision]
            peer.unicast_out += 1
            await self._super_to_peers(meta, frame, (peer,))
        elif decision is FLOOD:
            live = self.peers.live
            for peer in live:
                peer.flooded_out += 1
            await self._super_to_peers(meta, frame, live)
        else:
            reason = decision.value  # type: ignore[union-attr]
            self.tap_drops[reason] = self.tap_drops.get(reason, 0) + 1

    async def _super_to_peers(
        self, meta: offload.Meta, frame: bytes, targets: tuple[Peer, ...] | list[Peer]
    ) -> None:
        """Send a super-frame to ``targets``: one burst each, or ordinary frames.

        A peer gets the burst when it said it accepts SEGMENTs (HELLO's OFFLOAD
        flag) and the burst fits MAX_CHUNKS chunks; otherwise the super-frame is
        segmented here (final checksums) and sent frame by frame.
        """
        chunks: list[bytes] | None = None
        frames: list[tuple[list[bytes], int]] | None = None
        for peer in targets:
            if peer.offload and chunks is None:
                try:
                    size = offload.chunk_size_for(self.max_plaintext, meta.hdr_len)
                    if meta.gso_type & ~offload.GSO_ECN == offload.GSO_UDP_L4:
                        size -= size % meta.gso_size if meta.gso_size <= size else 0
                    chunks = offload.burst_chunks(meta, frame, self.burst_id, size)
                    self.burst_id = (self.burst_id + 1) & 0xFFFF
                except offload.OffloadError:
                    chunks = []
            if peer.offload and chunks:
                peer.bursts_out += 1
                await self._send_datagrams(peer, chunks, len(frame))
                continue
            if frames is None:
                split = self.fragmenter.split
                frames = [(split(f), len(f)) for f in offload.segment(meta, frame)]
            batch: dict[Peer, list] = {}
            for datagrams, size in frames:
                _queue(batch, peer, datagrams, size)
            await self._send_queued(batch)

    async def _send_datagrams(
        self, peer: Peer, datagrams: list[bytes], size: int, frames: int = 1
    ) -> None:
        """Seal datagrams (a burst, or a batch of frames) and send them in GSO batches.

        Waits for socket buffer room when needed (bounded); ``frames`` and
        ``size`` are what the datagrams carry, for the peer's counters.
        """
        addr = peer.addr
        if addr is None:
            peer.drop("no_endpoint")
            return
        secure = self.secure
        if secure is not None:
            sealed = secure.seal_many(peer.link, datagrams, self.now)
            if sealed is None:
                peer.drop("no_session")
                self._kick(peer)
                return
            datagrams = sealed
        send_batch = self.transport.send_batch
        sent = errors = 0
        for _ in range(SEND_RETRIES):
            try:
                sent += send_batch(datagrams[sent:] if sent else datagrams, addr)
            except OSError as exc:
                # Mostly an earlier datagram's ICMP error reported now: counted, then
                # the batch is tried again (a repeat is refused by the replay window).
                peer.drop(f"send_{_errno_name(exc)}")
                errors += 1
                if errors >= SEND_ERROR_RETRIES:
                    return
                continue
            if sent == len(datagrams):
                peer.datagrams_out += sent
                peer.frames_out += frames
                peer.bytes_out += size
                return
            await self.transport.wait_writable()
        peer.drop("send_buffer_full")

    async def _peers_to_tap(self) -> None:
        transport = self.transport
        by_addr = self.peers.by_addr
        ingress = self.switch.ingress
        mss = self.config.mss_clamp
        write = self._write_frame
        secure = self.secure
        receive = secure.receive if secure is not None else None
        open_data = secure.open if secure is not None else None
        link_peer = self.link_peer
        pinned = self.pinned_macs
        waiting: set[Peer] = set()  # peers holding incomplete bursts
        while True:
            if waiting:
                waiting = {p for p in waiting if p.bursts.pending}
            if waiting:
                deadline = min(p.bursts.next_deadline() for p in waiting)
                with trio.move_on_at(deadline):
                    await transport.wait_readable()
                batch = transport.recv_batch(BATCH_DATAGRAMS)
                self.now = now = trio.current_time()
                for held in list(waiting):
                    for raw in held.bursts.expire(now):
                        await self._super_in(held, raw, now)
                    if not held.bursts.pending:
                        waiting.discard(held)
            else:
                await transport.wait_readable()
                batch = transport.recv_batch(BATCH_DATAGRAMS)
                self.now = now = trio.current_time()
            for data, addr in batch:
                # 1. Who sent it: keys (secure) or source address (cleartext).
                if receive is None:
                    peer = by_addr.get(addr)
                    if peer is None:
                        self._from_stranger(data, addr, now)
                        continue
                else:
                    if data[:1] != _DATA:  # a handshake message
                        result = receive(data, addr, now)
                        if result is not None:
                            self._handshake_done(result, addr, now)  # type: ignore[arg-type]
                        continue
                    opened = open_data(data, now)  # type: ignore[misc]
                    if opened is None:
                        continue
                    link, data = opened
                    peer = link_peer[link]
                    if peer.addr != addr:
                        self._roam(peer, addr)
                    if not data:  # a keepalive
                        peer.keepalives_in += 1
                        peer.last_seen = now
                        if not peer.up and self.peers.seen(peer, now):
                            self._came_up(peer)
                        continue
                # 2. The inner message: a frame, a fragment, a burst's chunk, or a HELLO.
                peer.datagrams_in += 1
                kind = data[0] if data else 0
                if kind == _FRAME and len(data) > _HDR:
                    frame = data[_HDR:]
                elif kind == _SEGMENT:
                    try:
                        ready = peer.bursts.feed(data, now)
                    except offload.OffloadError as exc:
                        peer.drop(exc.reason)
                        continue
                    peer.last_seen = now
                    if peer.bursts.pending:
                        waiting.add(peer)
                    for raw in ready:
                        await self._super_in(peer, raw, now)
                    continue
                elif kind == _FRAGMENT:
                    whole = self._reassemble(peer, data, now)
                    if whole is None:
                        continue
                    frame = whole
                elif kind == _HELLO:
                    self._hello(peer, data, now)
                    continue
                else:
                    peer.drop("truncated" if kind == _FRAME else "bad_type")
                    continue
                peer.last_seen = now
                if not peer.up and self.peers.seen(peer, now):
                    self._came_up(peer)
                # 3. Layer-2 protections, then the switch.
                if peer.allowed_macs is not None or pinned is not None:
                    reason = self._mac_refused(peer, frame)
                    if reason is not None:
                        peer.drop(reason)
                        continue
                peer.frames_in += 1
                peer.bytes_in += len(frame)
                if mss is not None:
                    frame = clamp_mss(frame, mss)
                decision = ingress(frame, peer.port, now)
                if decision is TAP:
                    try:
                        write(frame)
                    except OSError:
                        self.tap_write_errors += 1
                        continue
                    self.tap_frames_out += 1
                    self.tap_bytes_out += len(frame)
                else:
                    await self._relay(peer, frame, decision)

    async def _super_in(self, peer: Peer, raw: bytes, now: float) -> None:
        """A super-frame rebuilt from a peer's burst (``raw`` = virtio_net_hdr + frame)."""
        frame = raw[_VNET:]
        hdr_len = raw[2] | raw[3] << 8
        if peer.allowed_macs is not None or self.pinned_macs is not None:
            reason = self._mac_refused(peer, frame)
            if reason is not None:
                peer.drop(reason)
                return
        if not peer.up and self.peers.seen(peer, now):
            self._came_up(peer)
        peer.bursts_in += 1
        peer.frames_in += 1
        peer.bytes_in += len(frame)
        decision = self.switch.ingress(frame[:hdr_len] if hdr_len else frame, peer.port, now)
        if decision is TAP or decision is FLOOD:
            self._super_to_tap(raw)
        if decision is TAP:
            return
        meta = offload.parse_vnet(raw)
        if decision is FLOOD:  # a hub: every other live peer too
            await self._super_to_peers(meta, frame, [p for p in self.peers.live if p is not peer])
        elif type(decision) is int:
            other = self.peers.by_port[decision]
            other.unicast_out += 1
            await self._super_to_peers(meta, frame, (other,))
        else:
            peer.drop(decision.value)  # type: ignore[union-attr]

    def _super_to_tap(self, raw: bytes) -> None:
        """Write a super-frame whole (vnet tap) or segmented (a tap without offloads)."""
        if self.vnet:
            writes = [raw]
        else:
            try:
                writes = offload.segment(offload.parse_vnet(raw), raw[_VNET:])
            except offload.OffloadError as exc:
                self.tap_drops[exc.reason] = self.tap_drops.get(exc.reason, 0) + 1
                return
        for data in writes:
            try:
                self.tap.write(data)
            except OSError:
                self.tap_write_errors += 1
                continue
            self.tap_frames_out += 1
            self.tap_bytes_out += len(data)
        self.super_frames_out += 1

    def _mac_refused(self, peer: Peer, frame: bytes) -> str | None:
        """Source MAC checks of authenticated peers: allow-list and locally pinned MACs."""
        src = frame[6:12]
        if peer.allowed_macs is not None and src not in peer.allowed_macs:
            return "mac_not_allowed"
        if self.pinned_macs is not None and src in self.pinned_macs:
            return "pinned_mac"
        return None

    def _roam(self, peer: Peer, addr: object) -> None:
        """The peer's endpoint follows its latest authenticated datagram."""
        old = peer.addr
        self.peers.bind(peer, addr)
        peer.roamed += 1
        if old is not None:
            log.info("peer %s roamed from %s to %s", peer.name,
                     self.transport.format_addr(old), self.transport.format_addr(addr))

    def _handshake_done(self, event: Reply | Established, addr: object, now: float) -> None:
        """Answer a valid INITIATION, or confirm our new keys with a keepalive."""
        peer = self.link_peer[event.link]
        if peer.addr != addr:
            self._roam(peer, addr)
        if event.datagram is not None:  # a RESPONSE to the peer's INITIATION
            self._send_raw(peer, event.datagram)
        else:
            self._send_keepalive(peer)
        peer.last_seen = now
        if not peer.up and self.peers.seen(peer, now):
            self._came_up(peer)

    def _send_raw(self, peer: Peer, datagram: bytes) -> None:
        """One control datagram (handshake, HELLO, keepalive): best effort, never waits."""
        if peer.addr is None:
            return
        try:
            self.transport.send(datagram, peer.addr)
        except OSError as exc:
            peer.drop(f"send_{_errno_name(exc)}")

    def _send_keepalive(self, peer: Peer) -> None:
        """A HELLO (sealed in secure mode): liveness, and whether we accept bursts."""
        hello = self.hello_payloads[not peer.up or peer.offload is None]
        if self.secure is None:
            self._send_raw(peer, hello)
            peer.hellos_out += 1
            return
        packet = self.secure.seal(peer.link, hello, self.now)
        if packet is None:
            self._kick(peer)
            return
        self._send_raw(peer, packet)
        peer.keepalives_out += 1

    def _kick(self, peer: Peer) -> None:
        """Start a handshake now if none is in flight (data is waiting for keys)."""
        if self.follower:
            self.kicks.add(peer.name)  # the leader handshakes
            return
        link = peer.link
        if self.secure is None or peer.addr is None or link.pending is not None:
            return
        waiting = link.next is not None and (
            self.now - link.next.created < self.secure.timers.rekey_timeout_s
        )
        if waiting:
            return  # we answered the peer's handshake: its first packet confirms the keys
        self._send_raw(peer, self.secure.initiation(link, self.now))

    def _reassemble(self, peer: Peer, data: bytes, now: float) -> bytes | None:
        try:
            message = wire.decode(data)
        except wire.WireError as exc:
            peer.drop(exc.reason)
            return None
        return peer.reassembler.feed(message, now)  # type: ignore[arg-type]

    async def _relay(self, peer: Peer, frame: bytes, decision: int | Drop) -> None:
        """What a hub does beyond the tap: flood to the other peers or relay to one."""
        split = self.fragmenter.split
        if decision is FLOOD:  # the tap and every live peer but the ingress one
            self._to_tap(frame)
            datagrams = None
            for other in self.peers.live:
                if other is not peer:
                    datagrams = datagrams or split(frame)
                    other.flooded_out += 1
                    await self._send_datagrams(other, datagrams, len(frame))
        elif type(decision) is int:  # the one peer that has the destination
            other = self.peers.by_port[decision]
            other.unicast_out += 1
            await self._send_datagrams(other, split(frame), len(frame))
        else:
            peer.drop(decision.value)  # type: ignore[union-attr]

    def _write_frame(self, frame: bytes) -> object:
        """Write one plain frame (behind an all-zero virtio_net_hdr on a vnet tap)."""
        if self.vnet:
            return self.tap.write(_PLAIN_VNET + frame)
        return self.tap.write(frame)

    def _to_tap(self, frame: bytes) -> None:
        try:
            self._write_frame(frame)
        except OSError:
            self.tap_write_errors += 1
            return
        self.tap_frames_out += 1
        self.tap_bytes_out += len(frame)

    def _from_stranger(self, data: bytes, addr: object, now: float) -> None:
        """A datagram from an address that belongs to no peer.

        Only a HELLO naming a dial-in peer (configured without an endpoint) is
        accepted: it binds that peer to this address.  Everything else is
        counted and dropped.
        """
        if data[:1] == bytes((_HELLO,)):
            try:
                hello = wire.decode(data)
            except wire.WireError:
                self.unknown_source += 1
                return
            peer = self.peers.by_name.get(hello.name)  # type: ignore[union-attr]
            if peer is not None and peer.configured is None:
                old = peer.addr
                self.peers.bind(peer, addr)
                if old is not None:
                    log.info("peer %s moved from %s to %s", peer.name,
                             self.transport.format_addr(old), self.transport.format_addr(addr))
                peer.datagrams_in += 1
                self._hello(peer, data, now)
                return
        self.unknown_source += 1

    def _hello(self, peer: Peer, data: bytes, now: float) -> None:
        try:
            hello = wire.decode(data)
        except wire.WireError as exc:
            peer.drop(exc.reason)
            return
        if self.secure is None:
            if hello.name != peer.name:  # type: ignore[union-attr]
                peer.drop("wrong_name")
                return
            peer.hellos_in += 1
        else:  # the keys named the peer; its name is the remote site's own label
            peer.keepalives_in += 1
        peer.offload = hello.offload  # type: ignore[union-attr]
        peer.last_seen = now
        if self.peers.seen(peer, now):
            self._came_up(peer)
        if hello.want_reply:  # type: ignore[union-attr]
            self._send_keepalive(peer)

    def _came_up(self, peer: Peer) -> None:
        log.info("peer %s is up at %s", peer.name, self.transport.format_addr(peer.addr))

    async def _timers(self) -> None:
        """Liveness and keepalives: HELLOs when due, dead peers down and flushed."""
        peers = self.peers
        secure = self.secure
        tick_s = 1.0 if secure is None else min(1.0, secure.timers.rekey_timeout_s / 4)
        while True:
            self.now = now = trio.current_time()
            if secure is not None:
                for link in secure.due_initiations(now):
                    peer = self.link_peer[link]
                    if peer.addr is not None:
                        self._send_raw(peer, secure.initiation(link, now))
                for link in secure.expire(now):
                    log.warning("peer %s: no handshake for %.0f s; its keys are dropped",
                                link.name, secure.timers.drop_keys_after_s)
            for peer in peers.dead(now):
                flushed = self.switch.flush_port(peer.port)
                peer.reassembler.expire(math.inf)  # partial frames of a dead peer go too
                peer.bursts.pending.clear()
                peer.offload = None  # it may come back as another version
                log.warning("peer %s is down (silent for %.1f s); %d MAC entries flushed",
                            peer.name, peers.dead_after_s, flushed)
            for peer in peers.hellos_due(now):
                self._send_keepalive(peer)
            for peer in peers:
                peer.reassembler.expire(now)
                if peer.configured is not None and peer.addr is None and not peer.up:
                    await self._resolve(peer)
            now = trio.current_time()
            await trio.sleep_until(min(peers.next_event(now), now + tick_s))

    async def _follower_timers(self) -> None:
        """A follower's timers: its partial frames expire, its keys age out; no liveness."""
        secure = self.secure
        while True:
            self.now = now = trio.current_time()
            if secure is not None:
                secure.expire(now)
            for peer in self.peers:
                peer.reassembler.expire(now)
            await trio.sleep(1.0)

    async def _table_gc(self) -> None:
        """Remove expired MAC entries; sleep until the next one expires."""
        while True:
            now = trio.current_time()
            nxt = self.switch.expire(now)
            if nxt is None:
                nxt = now + (self.config.ageing_s or math.inf)
            # Wake at least every ageing period: new entries may expire sooner.
            await trio.sleep_until(min(nxt, now + max(self.config.ageing_s, 1.0)))

    # ------------------------------------------------------------- inspection

    def status(self) -> dict:
        """Everything ``l2bridge show`` prints, as plain JSON-ready data."""
        now = trio.current_time()
        cfg = self.config
        return {
            "site": cfg.name,
            "listen": str(cfg.listen),
            "hub": cfg.hub,
            "bridge": cfg.bridge,
            "tap": self.tap.name,
            "uptime_s": round(now - (self.started_at or now), 3),
            "security": (
                "cleartext (filtered by peer address only)"
                if self.secure is None
                else "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s sessions, ChaCha20-Poly1305 data"
            ),
            "auth_drops": dict(sorted(self.secure.counters.items())) if self.secure else {},
            "local": {
                "frames_in": self.tap_frames_in,
                "bytes_in": self.tap_bytes_in,
                "frames_out": self.tap_frames_out,
                "bytes_out": self.tap_bytes_out,
                "drops": dict(sorted(self.tap_drops.items())),
                "tap_write_errors": self.tap_write_errors,
                "super_frames_in": self.super_frames_in,
                "super_frames_out": self.super_frames_out,
            },
            "offload": {
                "tap": self.vnet,
                "bursts": self.offload,
                "udp_gso": bool(getattr(self.transport, "gso", False)),
                "udp_gro": bool(getattr(self.transport, "gro", False)),
            },
            "unknown_source": self.unknown_source,
            "socket_errors": self.transport.errors,
            "fdb": {
                "entries": len(self.switch.entries(now)),
                **self.switch.counters,
            },
            "peers": [self._peer_status(p, now) for p in self.peers],
            "workers": {
                "count": self.lanes,
                "followers": self.worker_status() if self.worker_status is not None else [],
            },
            **{name: section() for name, section in self.status_sections.items()},
        }

    def _peer_status(self, peer: Peer, now: float) -> dict:
        drops = dict(peer.drops)
        for reason, count in peer.reassembler.counters.items():
            if reason != "reassembled" and count:
                drops[f"reassembly_{reason}"] = count
        return {
            "name": peer.name,
            "endpoint": self.transport.format_addr(peer.addr) if peer.addr is not None else None,
            "configured_endpoint": str(peer.configured) if peer.configured else None,
            "state": peer.state,
            "last_seen_s": None if peer.last_seen is None else round(now - peer.last_seen, 3),
            "frames_in": peer.frames_in,
            "bytes_in": peer.bytes_in,
            "frames_out": peer.frames_out,
            "bytes_out": peer.bytes_out,
            "unicast_out": peer.unicast_out,
            "flooded_out": peer.flooded_out,
            "datagrams_in": peer.datagrams_in,
            "datagrams_out": peer.datagrams_out,
            "hellos_in": peer.hellos_in,
            "hellos_out": peer.hellos_out,
            "times_down": peer.times_down,
            "keepalives_in": peer.keepalives_in,
            "keepalives_out": peer.keepalives_out,
            "roamed": peer.roamed,
            **self._link_status(peer, now),
            "mac_entries": self.switch.port_count(peer.port),
            "reassembled": peer.reassembler.counters.get("reassembled", 0),
            "offload": peer.offload,
            "bursts_in": peer.bursts_in,
            "bursts_out": peer.bursts_out,
            "burst_counters": dict(sorted(peer.bursts.counters.items())),
            "drops": dict(sorted(drops.items())),
        }

    def _link_status(self, peer: Peer, now: float) -> dict:
        link = peer.link
        if link is None:
            return {}
        from l2bridge.core.keys import fingerprint

        current = link.current
        return {
            "public_key": fingerprint(link.keys.public),
            "latest_handshake_s": (
                None if link.last_handshake is None else round(now - link.last_handshake, 3)
            ),
            "session_age_s": None if current is None else round(now - current.created, 3),
            "rx_counter": None if current is None else current.highest,
            "tx_counter": None if current is None else current.send_counter,
            "handshakes": link.handshakes,
            "rekeys": link.rekeys,
        }

    def fdb(self) -> list[dict]:
        now = trio.current_time()
        names = {p.port: p.name for p in self.peers}
        names[TAP] = "local"
        return [
            {"mac": format_mac(e.mac), "vlan": e.vlan, "peer": names.get(e.port, str(e.port)),
             "age_s": round(e.age_s, 1)}
            for e in sorted(self.switch.entries(now), key=lambda e: (e.vlan, e.mac))
        ]


def _queue(queued: dict[Peer, list], peer: Peer, datagrams: list[bytes], size: int) -> None:
    """Add one frame's datagrams to ``peer``'s entry of a batch: [datagrams, frames, bytes]."""
    entry = queued.get(peer)
    if entry is None:
        queued[peer] = [list(datagrams), 1, size]
    else:
        entry[0] += datagrams
        entry[1] += 1
        entry[2] += size


def wire_eth_overhead() -> int:
    """Bytes an Ethernet frame carries beyond the MTU: header plus room for two VLAN tags."""
    return 14 + VLAN_TAGS_BYTES


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "error").lower()


__all__ = ["Bridge", "Drop", "Tap"]
