"""Authenticated sessions with peers: handshakes, keypairs, replay windows, timers.

Sans-I/O: the site hands datagrams and the time in, and sends what comes
out.  Built on ``noise`` (Noise_IKpsk2 as WireGuard builds it) and ``replay``.

Receive flow (``SessionTable.receive``), cheapest checks first:
  1. the first byte and the length decide the message type (reserved bytes zero);
  2. DATA: receiver index → keypair (unknown: dropped) → counter not too old
     (replay window, no state change) → AEAD open → replay window updated →
     the peer's endpoint follows the datagram (roaming) → key confirmation;
  3. INITIATION: mac1 (one keyed hash) → per-source rate limit → DH and
     decryption → the peer's TAI64N timestamp must be newer than any seen →
     a RESPONSE goes back; the new keypair waits for its first data packet;
  4. RESPONSE: mac1 → our pending initiation by index → DH → new current keypair.
Nothing unauthenticated changes state or gets a reply, except a RESPONSE to a
valid INITIATION.

Lanes (several worker processes on one session): worker ``lane`` of ``lanes``
seals with that lane byte and only the counters ``lane, lane + lanes,
lane + 2*lanes, ...``, so no two workers ever use the same nonce with a
keypair. A receiver keeps one replay window per lane of each session
(``Session.windows``), created on the lane's first authenticated packet: one
lane running far ahead of another (different flows, different workers) never
pushes the other's counters out of the window.

Leader and followers: worker 0 (the leader) does every handshake and owns the
timers; after any change to a peer's sessions it finds the peer in
``changed`` and hands ``snapshot(peer, now)`` to the followers, which
``apply_snapshot`` it. A follower (``follower=True``) drops handshake
messages (counted ``not_leader``), never initiates, and only seals, opens and
expires (reject-after-time, drop-keys) what the leader gave it. A snapshot
holds key material: it travels only between the workers of one site, and is
never logged.

Timers (WireGuard's constants, ``tick``): a peer with an endpoint handshakes at
start and retries every REKEY_TIMEOUT_S plus jitter, backing off to
RETRY_MAX_S after REKEY_ATTEMPT_TIME_S, forever; the initiator of the current
keypair rekeys after REKEY_AFTER_TIME_S (or REKEY_AFTER_MESSAGES), the other
side after REKEY_AFTER_TIME_S + RESPONDER_REKEY_DELAY_S if no new keypair came;
keypairs are unusable after REJECT_AFTER_TIME_S; all key material of a peer is
dropped after DROP_KEYS_AFTER_S without a new handshake.  Old keypairs keep
decrypting until they expire, so a rekey under load loses no frame.  When
both sides initiated at once (handshakes crossed), each may send with the
keypair the other initiated; a completed handshake then retires whichever of
current/previous the peer is NOT sending with (the one that opened a DATA
packet least recently), never the one its packets are still in flight with.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from l2bridge.core import noise
from l2bridge.core.caps import MAX_WORKERS
from l2bridge.core.replay import REJECT_AFTER_MESSAGES, ReplayWindow

SessionSnapshot = dict[str, object]  # JSON-ready: see SessionTable.snapshot

# Specification constants (WireGuard, whitepaper §6).
REKEY_AFTER_MESSAGES = 2**60
REKEY_AFTER_TIME_S = 120.0
REJECT_AFTER_TIME_S = 180.0
REKEY_ATTEMPT_TIME_S = 90.0
REKEY_TIMEOUT_S = 5.0
KEEPALIVE_TIMEOUT_S = 10.0
DROP_KEYS_AFTER_S = 3 * REJECT_AFTER_TIME_S
# Implementation constants.
RETRY_JITTER_S = 0.333
RETRY_MAX_S = 30.0  # a configured endpoint is retried forever, at least this often
RESPONDER_REKEY_DELAY_S = KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S
HANDSHAKES_PER_SOURCE_PER_S = 20.0
HANDSHAKE_BURST = 5
RATE_LIMIT_SOURCES = 4096  # tracked sources; the oldest is forgotten beyond this
MIN_INITIATION_INTERVAL_S = 0.05  # per peer: a faster initiation flood is ignored
SNAPSHOT_VERSION = 1
_SLOTS = ("current", "previous", "next")


@dataclass(frozen=True, slots=True)
class Timers:
    """The protocol's timing, scalable for tests (``scaled(0.01)``)."""

    rekey_after_time_s: float = REKEY_AFTER_TIME_S
    reject_after_time_s: float = REJECT_AFTER_TIME_S
    rekey_attempt_time_s: float = REKEY_ATTEMPT_TIME_S
    rekey_timeout_s: float = REKEY_TIMEOUT_S
    retry_max_s: float = RETRY_MAX_S
    retry_jitter_s: float = RETRY_JITTER_S
    responder_rekey_delay_s: float = RESPONDER_REKEY_DELAY_S
    drop_keys_after_s: float = DROP_KEYS_AFTER_S
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES

    def scaled(self, factor: float) -> Timers:
        return Timers(
            rekey_after_time_s=self.rekey_after_time_s * factor,
            reject_after_time_s=self.reject_after_time_s * factor,
            rekey_attempt_time_s=self.rekey_attempt_time_s * factor,
            rekey_timeout_s=self.rekey_timeout_s * factor,
            retry_max_s=self.retry_max_s * factor,
            retry_jitter_s=self.retry_jitter_s * factor,
            responder_rekey_delay_s=self.responder_rekey_delay_s * factor,
            drop_keys_after_s=self.drop_keys_after_s * factor,
            rekey_after_messages=self.rekey_after_messages,
            reject_after_messages=self.reject_after_messages,
        )


@dataclass(eq=False, slots=True)
class Session:
    """One keypair in use: its next send counter and one replay window per lane.

    ``send_counter`` is the next counter this worker seals with; it advances
    by the worker's lane count. ``windows`` maps a lane to its window, which
    exists only once a packet of that lane authenticated.
    """

    keypair: noise.Keypair
    created: float
    peer: PeerSessions
    send_counter: int = 0
    windows: dict[int, ReplayWindow] = field(default_factory=dict)
    confirmed: bool = False  # the initiator's keys are confirmed by the response
    initiator: bool = False  # we sent its INITIATION (only then do we rekey it on time)
    last_received: float = float("-inf")  # when a DATA packet last opened with it

    @property
    def highest(self) -> int:
        """The highest counter accepted on any lane, -1 if none."""
        return max((window.highest for window in self.windows.values()), default=-1)

    @property
    def window(self) -> ReplayWindow:
        """Lane 0's replay window, read-only (an empty one, not stored, before its first packet)."""
        window = self.windows.get(0)
        return ReplayWindow() if window is None else window


@dataclass(eq=False, slots=True)
class PeerSessions:
    """The crypto side of one peer: keys, sessions, handshake in flight, timestamps."""

    keys: noise.PeerKeys
    name: str
    has_endpoint: bool
    current: Session | None = None
    previous: Session | None = None
    next: Session | None = None  # responder side, until the first data packet confirms it
    pending: noise.InitiatorState | None = None
    pending_index: int | None = None
    pending_since: float | None = None  # start of the current series of attempts
    last_initiation: float = float("-inf")
    last_handshake: float | None = None  # a completed handshake, either role
    greatest_timestamp: bytes = b""
    last_received_initiation: float = float("-inf")
    handshakes: int = 0
    rekeys: int = 0

    def sendable(self, now: float, timers: Timers) -> Session | None:
        session = self.current
        if (
            session is None
            or now - session.created >= timers.reject_after_time_s
            or session.send_counter >= timers.reject_after_messages
        ):
            return None
        return session


class TokenBuckets:
    """Per-source token buckets with a bounded number of tracked sources."""

    def __init__(self, rate_per_s: float, burst: int, max_sources: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: dict[object, list[float]] = {}

    def allow(self, source: object, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[source] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True


@dataclass(frozen=True, slots=True)
class Received:
    """An authenticated DATA packet: who sent it and its plaintext (b"" = keepalive)."""

    peer: PeerSessions
    plaintext: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """A handshake message to send back to the source address."""

    peer: PeerSessions
    datagram: bytes


@dataclass(frozen=True, slots=True)
class Established:
    """A handshake completed with ``peer``; ``datagram`` (if any) goes back to the source."""

    peer: PeerSessions
    datagram: bytes | None


class SessionTable:
    """All of a site's authenticated peers, keyed by index and by public key.

    ``lane``/``lanes``: this worker's lane and the site's number of workers
    (precondition ``0 <= lane < lanes <= MAX_WORKERS``). ``follower``: a worker that
    gets its sessions from the leader's snapshots (``identity`` may be None).
    ``changed``: peers whose sessions changed since the daemon last drained it.
    """

    def __init__(
        self,
        identity: noise.Identity | None,
        peers: Iterable[PeerSessions],
        *,
        timers: Timers = Timers(),
        clock_unix: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        lane: int = 0,
        lanes: int = 1,
        follower: bool = False,
    ) -> None:
        if not 0 <= lane < lanes <= MAX_WORKERS:
            raise ValueError(
                f"lane {lane} of {lanes}: expected 0 <= lane < lanes <= {MAX_WORKERS}"
            )
        if identity is None and not follower:
            raise ValueError("SessionTable: a leader needs an identity (only a follower has none)")
        self.identity = identity
        self.lane = lane
        self.lanes = lanes
        self.follower = follower
        self.changed: set[PeerSessions] = set()
        self.timers = timers
        self.peers = list(peers)
        self.by_public = {peer.keys.public: peer for peer in self.peers}
        self.by_index: dict[int, Session] = {}  # local index → session (current, previous or next)
        self.pending: dict[int, PeerSessions] = {}  # local index of an initiation in flight → peer
        self.rate = TokenBuckets(HANDSHAKES_PER_SOURCE_PER_S, HANDSHAKE_BURST, RATE_LIMIT_SOURCES)
        self.rng = rng or random.Random()
        self._clock_unix = clock_unix
        self.counters: dict[str, int] = {}

    # ---------------------------------------------------------------- helpers

    def count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def _new_index(self) -> int:
        while True:
            index = secrets.randbits(32)
            if index not in self.by_index and index not in self.pending:
                return index

    def _timestamp(self, now: float) -> bytes:
        unix = self._clock_unix() if self._clock_unix is not None else time.time()
        return noise.tai64n(unix)

    def _install(
        self, peer: PeerSessions, keypair: noise.Keypair, now: float, *, initiator: bool
    ) -> None:
        session = Session(keypair=keypair, created=now, peer=peer, send_counter=self.lane,
                          confirmed=initiator, initiator=initiator)
        self.by_index[keypair.local_index] = session
        if initiator:
            current, previous = peer.current, peer.previous
            if (current is not None and previous is not None
                    and previous.last_received > current.last_received):
                # Handshakes crossed: the peer still sends with the older keypair,
                # so that one stays and the one we were sending with goes.
                self._retire(current)
            else:
                self._retire(previous)
                peer.previous = current
            peer.current = session
        else:
            self._retire(peer.next)
            peer.next = session
        peer.last_handshake = now
        peer.handshakes += 1
        self.changed.add(peer)

    def add(self, peer: PeerSessions) -> None:
        """A new peer (a reload added it); a public key already known is refused."""
        if peer.keys.public in self.by_public:
            raise ValueError(f"peer {peer.name}: its public key is another peer's")
        self.peers.append(peer)
        self.by_public[peer.keys.public] = peer

    def remove(self, peer: PeerSessions) -> None:
        """Forget a peer (a reload removed it or replaced its keys): every session, the
        handshake in flight; nothing of it opens or seals again."""
        for session in (peer.current, peer.previous, peer.next):
            if session is not None:
                self.by_index.pop(session.keypair.local_index, None)
        if peer.pending_index is not None:
            self.pending.pop(peer.pending_index, None)
        peer.current = peer.previous = peer.next = peer.pending = None
        peer.pending_index = None
        self.peers = [p for p in self.peers if p is not peer]
        if self.by_public.get(peer.keys.public) is peer:
            del self.by_public[peer.keys.public]
        self.changed.discard(peer)

    def _retire(self, session: Session | None) -> None:
        if session is not None:
            self.by_index.pop(session.keypair.local_index, None)
            self.changed.add(session.peer)

    def _promote(self, peer: PeerSessions, session: Session) -> None:
        """The responder's new keypair is confirmed by its first data packet."""
        if peer.next is session:
            self._retire(peer.previous)
            peer.previous = peer.current
            peer.current = session
            peer.next = None
            session.confirmed = True
            self.changed.add(peer)

    # ------------------------------------------------------------------ send

    def initiation(self, peer: PeerSessions, now: float) -> bytes:
        """A new INITIATION to ``peer`` (the caller sends it to the peer's endpoint).

        ``RuntimeError`` on a follower: only the leader handshakes.
        """
        if self.follower or self.identity is None:
            raise RuntimeError(f"initiation to {peer.name}: a follower never handshakes")
        if peer.pending_index is not None:
            self.pending.pop(peer.pending_index, None)
        index = self._new_index()
        message, state = noise.create_initiation(
            self.identity, peer.keys, index, self._timestamp(now)
        )
        peer.pending = state
        peer.pending_index = index
        if peer.pending_since is None:
            peer.pending_since = now
        peer.last_initiation = now
        self.pending[index] = peer
        return message

    def seal(self, peer: PeerSessions, plaintext: bytes, now: float) -> bytes | None:
        """A DATA datagram for ``peer`` on this worker's lane, or None when no usable session."""
        session = peer.sendable(now, self.timers)
        if session is None:
            return None
        counter = session.send_counter
        session.send_counter = counter + self.lanes
        return noise.seal(session.keypair, counter, plaintext, self.lane)

    def seal_many(self, peer: PeerSessions, plaintexts: list[bytes], now: float
                  ) -> list[bytes] | None:
        """DATA datagrams for a burst, one session lookup for all (None: no usable session).

        Counters ``c, c + lanes, ...``: all of them below the reject limit, or none is used.
        """
        session = peer.sendable(now, self.timers)
        if session is None:
            return None
        counter = session.send_counter
        stride = self.lanes
        end = counter + stride * len(plaintexts)
        if end - stride >= self.timers.reject_after_messages:
            return None
        session.send_counter = end
        return noise.seal_batch(session.keypair, counter, stride, plaintexts, self.lane)

    # --------------------------------------------------------------- receive

    def receive(
        self, data: bytes, source: object, now: float
    ) -> Received | Reply | Established | None:
        """Authenticate one datagram; None when it is dropped (counted)."""
        kind = noise.message_type(data)
        if kind == noise.MSG_DATA:
            return self._data(data, now)
        if self.follower and kind in (noise.MSG_INITIATION, noise.MSG_RESPONSE):
            self.count("not_leader")
            return None
        if kind == noise.MSG_INITIATION:
            return self._initiation(data, source, now)
        if kind == noise.MSG_RESPONSE:
            return self._response(data, now)
        self.count("bad_type")
        return None

    def _data(self, data: bytes, now: float) -> Received | None:
        opened = self.open(data, now)
        return None if opened is None else Received(*opened)

    def open(self, data: bytes, now: float) -> tuple[PeerSessions, bytes] | None:
        """Authenticate one DATA datagram: (peer, plaintext), or None (dropped, counted).

        The per-datagram path of ``receive``, callable directly when the first
        byte says DATA: header, session, age and the lane's replay check, one
        AEAD call (``noise.open_data``), then the window update; no allocation
        but the plaintext and the returned pair (and a lane's window, once,
        after its first packet authenticated: forgeries allocate nothing).
        """
        try:
            index, counter, lane = noise.parse_data_header_lane(data)
        except noise.HandshakeError:
            self.count("bad_length")
            return None
        if lane % self.lanes != self.lane:
            # The kernel steers lane L to worker L % lanes, so each lane's replay window
            # lives in one worker only; anything else is refused, never opened twice.
            self.count("wrong_lane")
            return None
        session = self.by_index.get(index)
        if session is None:
            self.count("unknown_index")
            return None
        window = session.windows.get(lane)
        if now - session.created >= self.timers.reject_after_time_s or not (
            counter < REJECT_AFTER_MESSAGES if window is None else window.check(counter)
        ):
            self.count("replay_or_expired")
            return None
        try:
            plaintext = noise.open_data(session.keypair, data)
        except noise.HandshakeError:
            self.count("bad_tag")
            return None
        if window is None:
            window = session.windows[lane] = ReplayWindow()
        if not window.update(counter):
            self.count("replay_or_expired")
            return None
        session.last_received = now
        peer = session.peer
        if session is peer.next:
            self._promote(peer, session)
        return peer, plaintext

    def _initiation(self, data: bytes, source: object, now: float) -> Reply | None:
        if len(data) != noise.INITIATION_LEN:
            self.count("bad_length")
            return None
        assert self.identity is not None  # the leader's (followers stop in receive)
        if not noise.mac1_valid(self.identity, data):
            self.count("bad_mac1")
            return None
        host = source[0] if isinstance(source, tuple) else source
        if not self.rate.allow(host, now):
            self.count("rate_limited")
            return None
        try:
            state = noise.consume_initiation(self.identity, data, self._lookup)
        except noise.HandshakeError as exc:
            self.count(f"handshake_{exc.reason}")
            return None
        peer = self.by_public[state.peer.public]
        if state.timestamp <= peer.greatest_timestamp:
            self.count("handshake_replay")
            return None
        if now - peer.last_received_initiation < MIN_INITIATION_INTERVAL_S:
            self.count("handshake_flood")
            return None
        peer.greatest_timestamp = state.timestamp
        peer.last_received_initiation = now
        response, keypair = state.create_response(self._new_index())
        self._install(peer, keypair, now, initiator=False)
        return Reply(peer, response)

    def _response(self, data: bytes, now: float) -> Established | None:
        if len(data) != noise.RESPONSE_LEN:
            self.count("bad_length")
            return None
        assert self.identity is not None  # the leader's (followers stop in receive)
        if not noise.mac1_valid(self.identity, data):
            self.count("bad_mac1")
            return None
        receiver = int.from_bytes(data[8:12], "little")
        peer = self.pending.get(receiver)
        if peer is None or peer.pending is None:
            self.count("unknown_index")
            return None
        try:
            keypair = peer.pending.consume_response(data)
        except noise.HandshakeError as exc:
            self.count(f"handshake_{exc.reason}")
            return None
        del self.pending[receiver]
        peer.pending = None
        peer.pending_index = None
        peer.pending_since = None
        if peer.current is not None:
            peer.rekeys += 1
        self._install(peer, keypair, now, initiator=True)
        return Established(peer, None)

    def _lookup(self, public: bytes) -> noise.PeerKeys | None:
        peer = self.by_public.get(public)
        return None if peer is None else peer.keys

    # ---------------------------------------------------------------- timers

    def due_initiations(self, now: float) -> list[PeerSessions]:
        """Links that need an INITIATION now (start, retry, or rekey); none on a follower."""
        if self.follower:
            return []
        timers = self.timers
        due = []
        for peer in self.peers:
            # A dial-in peer: we still rekey a keypair we initiated, never cold-start it.
            if not peer.has_endpoint and (peer.current is None or not peer.current.initiator):
                continue
            if peer.pending is not None:
                started = peer.pending_since if peer.pending_since is not None else now
                interval = timers.rekey_timeout_s
                if now - started >= timers.rekey_attempt_time_s:
                    interval = timers.retry_max_s
                jitter = self.rng.uniform(0.0, timers.retry_jitter_s)
                if now - peer.last_initiation >= interval + jitter:
                    due.append(peer)
                continue
            if self._needs_rekey(peer, now):
                due.append(peer)
        return due

    def _needs_rekey(self, peer: PeerSessions, now: float) -> bool:
        timers = self.timers
        session = peer.current
        if session is None:
            return peer.next is None or now - peer.next.created >= timers.rekey_timeout_s
        age = now - session.created
        if session.send_counter >= timers.rekey_after_messages:
            return True
        if session.initiator:  # we initiated it (a promoted one is confirmed, not ours)
            return age >= timers.rekey_after_time_s
        return age >= timers.rekey_after_time_s + timers.responder_rekey_delay_s

    def expire(self, now: float) -> list[PeerSessions]:
        """Drop dead keypairs; return peers whose key material is all gone now."""
        timers = self.timers
        cleared = []
        for peer in self.peers:
            for attr in ("previous", "next", "current"):
                session = getattr(peer, attr)
                if session is not None and now - session.created >= timers.reject_after_time_s:
                    self._retire(session)
                    setattr(peer, attr, None)
            if (
                peer.last_handshake is not None
                and now - peer.last_handshake >= timers.drop_keys_after_s
            ):
                for attr in ("previous", "next", "current"):
                    self._retire(getattr(peer, attr))
                    setattr(peer, attr, None)
                if peer.pending_index is not None:
                    self.pending.pop(peer.pending_index, None)
                peer.pending = None
                peer.pending_index = None
                peer.pending_since = None
                peer.last_handshake = None
                cleared.append(peer)
        return cleared

    # ------------------------------------------------------ leader → followers

    def snapshot(self, peer: PeerSessions, now: float) -> SessionSnapshot:
        """The peer's sessions for the followers, as a JSON-ready dict (holds keys: never log it).

        ``{"version": 1, "last_handshake_age_s": float | None, "current": S | None,
        "previous": S | None, "next": S | None}`` where each ``S`` is
        ``{"local_index", "remote_index", "send_key" (hex), "recv_key" (hex),
        "age_s", "initiator", "confirmed"}``. Counters and replay windows are
        not in it: each worker keeps its own.
        """
        snap: SessionSnapshot = {
            "version": SNAPSHOT_VERSION,
            "last_handshake_age_s": (
                None if peer.last_handshake is None else now - peer.last_handshake
            ),
        }
        for slot in _SLOTS:
            session: Session | None = getattr(peer, slot)
            if session is None:
                snap[slot] = None
                continue
            keypair = session.keypair
            snap[slot] = {
                "local_index": keypair.local_index,
                "remote_index": keypair.remote_index,
                "send_key": keypair.send_key.hex(),
                "recv_key": keypair.recv_key.hex(),
                "age_s": now - session.created,
                "initiator": session.initiator,
                "confirmed": session.confirmed,
            }
        return snap

    def apply_snapshot(self, peer: PeerSessions, snap: SessionSnapshot, now: float) -> None:
        """Follower: make ``peer``'s sessions the leader's ones described by ``snap``.

        A session this worker already holds (same local index and keys) is kept
        as it is, send counter and lane windows included, so applying a
        snapshot never reuses a nonce nor reopens a replay; a new one starts
        sealing at this worker's lane. Sessions absent from the snapshot leave
        ``self.by_index``. Does not mark ``changed`` (snapshots flow one way).
        The snapshot is authoritative: a ``next`` the follower promoted on its
        own (a DATA packet opened with it first here) goes back to where the
        leader has it, until the leader's promotion arrives in its turn.
        ``ValueError`` (one line, naming the peer) on a malformed snapshot,
        which then changes nothing.
        """
        if not self.follower:
            raise RuntimeError(f"snapshot for {peer.name}: only a follower applies snapshots")
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"snapshot for {peer.name}: version {snap.get('version')!r},"
                f" expected {SNAPSHOT_VERSION}"
            )
        parsed = {slot: _parse_session(peer, snap.get(slot)) for slot in _SLOTS}
        age = snap.get("last_handshake_age_s")
        if age is not None and not isinstance(age, int | float):
            raise ValueError(f"snapshot for {peer.name}: last_handshake_age_s is not a number")
        known = {
            session.keypair.local_index: session
            for session in (peer.current, peer.previous, peer.next)
            if session is not None
        }
        for index in known:
            self.by_index.pop(index, None)
        for slot, entry in parsed.items():
            session = None
            if entry is not None:
                keypair, age_s, initiator, confirmed = entry
                session = known.get(keypair.local_index)
                if (
                    session is None
                    or session.keypair.send_key != keypair.send_key
                    or session.keypair.recv_key != keypair.recv_key
                ):
                    session = Session(keypair=keypair, created=now - age_s, peer=peer,
                                      send_counter=self.lane, initiator=initiator)
                session.confirmed = confirmed
                self.by_index[keypair.local_index] = session
            setattr(peer, slot, session)
        peer.last_handshake = None if age is None else now - age


def _parse_session(
    peer: PeerSessions, entry: object
) -> tuple[noise.Keypair, float, bool, bool] | None:
    """One session of a snapshot: (keypair, age_s, initiator, confirmed); None for none."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ValueError(f"snapshot for {peer.name}: a session is not an object")
    try:
        keypair = noise.Keypair(
            bytes.fromhex(entry["send_key"]),
            bytes.fromhex(entry["recv_key"]),
            int(entry["local_index"]),
            int(entry["remote_index"]),
            bool(entry["initiator"]),
        )
        return keypair, float(entry["age_s"]), keypair.initiator, bool(entry["confirmed"])
    except KeyError as exc:
        raise ValueError(f"snapshot for {peer.name}: a session lacks {exc}") from None
    except (TypeError, ValueError):
        raise ValueError(
            f"snapshot for {peer.name}: a session has a malformed key, index or age"
        ) from None
