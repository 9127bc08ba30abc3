"""One site on N cores: worker processes sharing a multi-queue tap and one UDP port.

Layout (``workers = N`` > 1):
  - worker 0, the *leader*, is the process ``l2bridge up`` started: it owns the
    plumbing, the control socket, every handshake, the peers' liveness and
    keepalives, and it forwards frames like any worker;
  - workers 1..N-1, the *followers*, are child processes (``python -m
    l2bridge.site.worker``), each given one tap queue fd, one socket of the
    SO_REUSEPORT group and one end of a SOCK_SEQPACKET socketpair to the leader.
  - The kernel keeps each flow on one tap queue (its flow hash), and steers each
    inbound DATA datagram to the worker of its *lane* (the sending worker's
    index, in the DATA header): a flow stays on one worker at both ends, so TCP
    sees no reordering.  Handshakes and cleartext messages go to worker 0.
  - Every worker seals with the same keypair; nonces never collide because
    worker k's counters are k, k+N, k+2N, ... (``SecureLinks(lane=k, lanes=N)``).
  - TCP links and relays are worker 0's (``l2bridge.site.reach``): a follower
    hands a peer on such a path its frames' datagrams, unsealed, through a
    second socketpair (the *pipe*), and worker 0 seals and sends them.

Leader → follower messages (JSON): first ``{"op": "setup", path, document,
secrets, caps, lanes}`` - the leader's parsed config, keys and capabilities, so a
follower never reads a file of its own and runs exactly the leader's site; then
``{"op": "peer", name, addr, path, up, offload, blocked, blocks_us}`` when a
peer's endpoint, path, liveness, offload or loop block changes (``addr`` only for
the UDP path), and ``{"op": "keys", "peer", "snapshot"}`` when its sessions
change.  Follower → leader: ``{"op": "ready"}`` once its site runs, ``{"op":
"kick", "peer"}`` (data is waiting for keys), ``{"op": "probe", "frame",
"peer"}`` (a loop probe it met: the leader holds the keys and the rule),
``{"op": "flap"}`` (a MAC moved between the tap and a peer), ``{"op":
"status", ...}`` every STATUS_EVERY_S.  Storm limits are split between the
workers (each gets 1/N of every rate and burst).  A follower changes peer state
only through the site's event hooks (``events.peer_up``, ``events.peer_down``,
``guard.set_blocks``), as the leader does.

Reload: the leader applies the plan to its own site, then sends ``{"op":
"reload", path, document, secrets}``; each follower computes the same plan
against its own copy of the config and applies it (``l2bridge.site.reload``).

Lifetime: the leader waits for every follower's "ready" before it reports the
site up; a follower that exits stops the whole site (its flows would be lost);
a follower exits when its channel to the leader closes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from typing import Any

import trio

from l2bridge.core import paths
from l2bridge.core import reload as planning
from l2bridge.core.caps import Capabilities
from l2bridge.core.config import SiteConfig, config_from_dict
from l2bridge.core.keys import Secrets
from l2bridge.errors import L2bridgeError
from l2bridge.io import proc
from l2bridge.site import events, guard, reach
from l2bridge.site import reload as applying
from l2bridge.site.site import Site
from l2bridge.site.status import STALL_S

log = logging.getLogger("l2bridge")

SYNC_EVERY_S = 0.02  # how often the leader compares peer state and keys with what it sent
STATUS_EVERY_S = 1.0
READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 3.0
MAX_MESSAGE_BYTES = 1 << 20


class WorkerError(L2bridgeError):
    """A worker could not start or stopped; the message names it and the cause."""


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict:
    return json.loads(data)


def peer_message(peer: Any) -> dict:
    """A peer's state for the followers; a path other than UDP is worker 0's to carry."""
    udp = peer.path == paths.UDP and type(peer.addr) is tuple
    return {"op": "peer", "name": peer.name, "addr": peer.addr if udp else None,
            "path": peer.path, "up": peer.up, "offload": peer.offload,
            "blocked": peer.blocked, "blocks_us": peer.blocks_us}


def peer_view(peer: Any) -> tuple:
    """What the followers know of a peer: when it changes, they are told."""
    return (peer.addr if type(peer.addr) is tuple else id(peer.addr), peer.path, peer.up,
            peer.offload, peer.blocked, peer.blocks_us)


class Leader:
    """Worker 0's side of the followers: start them, keep them in sync, watch them."""

    def __init__(self, site: Site, secrets: Secrets) -> None:
        self.site = site
        self.secrets = secrets
        self.lanes = site.state.caps.lanes
        self.channels: dict[int, trio.socket.SocketType] = {}
        self.pipes: dict[int, socket.socket] = {}  # data: what followers hand to worker 0
        self.processes: dict[int, proc.Child] = {}
        self.statuses: dict[int, dict] = {}
        self.reported: dict[int, float] = {}  # lane -> when it last reported (its sign of life)
        self._sent: dict[str, tuple] = {}

    async def run(self, tap_fds: list[int], socks: list[socket.socket],
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start followers 1..N-1 (queue fd and socket k each), then serve them until cancelled."""
        async with trio.open_nursery() as nursery:
            for lane in range(1, self.lanes):
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                pipe, their_pipe = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    child = await self._spawn(lane, tap_fds[lane], socks[lane], theirs,
                                              their_pipe)
                except BaseException:
                    pipe.close()
                    raise
                finally:
                    theirs.close()
                    their_pipe.close()
                self.processes[lane] = child
                self.channels[lane] = channel = trio.socket.from_stdlib_socket(mine)
                self.pipes[lane] = pipe
                nursery.start_soon(self._watch, lane, child)
                nursery.start_soon(reach.drain_pipe, self.site.state, pipe)
                with contextlib.suppress(OSError):  # it is exiting: its watcher names it
                    await channel.send(encode(self._setup()))
            with trio.move_on_after(READY_TIMEOUT_S) as waiting:
                for lane, channel in self.channels.items():
                    data = await _recv(channel)
                    if not data:  # it is exiting: its watcher names it and the status
                        await trio.sleep_forever()
                    if decode(data).get("op") != "ready":
                        raise WorkerError(f"worker {lane} (pid {self.processes[lane].pid}) "
                                          f"said {data[:80]!r} instead of ready")
                    self.reported[lane] = trio.current_time()
            if waiting.cancelled_caught:
                raise WorkerError(f"workers did not report ready within {READY_TIMEOUT_S:g} s")
            await self._send_all(self._full_state())
            for lane, channel in self.channels.items():
                nursery.start_soon(self._listen, lane, channel)
            nursery.start_soon(self._sync)
            task_status.started()

    def _setup(self) -> dict:
        state = self.site.state
        return {"op": "setup", "path": state.config.path, "document": state.config.document,
                "secrets": self.secrets.to_json(), "caps": state.caps.to_json()}

    async def _spawn(self, lane: int, tap_fd: int, sock: socket.socket,
                     channel: socket.socket, pipe: socket.socket) -> proc.Child:
        argv = [sys.executable, "-m", "l2bridge.site.worker", "--lane", str(lane),
                "--tap-fd", str(tap_fd), "--sock-fd", str(sock.fileno()),
                "--channel-fd", str(channel.fileno()), "--pipe-fd", str(pipe.fileno())]
        return await proc.start(argv, name=f"worker {lane}",
                                pass_fds=(tap_fd, sock.fileno(), channel.fileno(),
                                          pipe.fileno()))

    async def _watch(self, lane: int, child: proc.Child) -> None:
        try:
            status = await child.wait()
        finally:
            if child.running:  # we are stopping: a follower exits when its channel closes
                self._close(lane)
            await child.stop(None, grace_s=STOP_GRACE_S)  # then SIGKILL, after the grace
        raise WorkerError(f"worker {lane} (pid {child.pid}) exited with status {status}; "
                          "the site stops (see its log lines above)")

    def _close(self, lane: int) -> None:
        channel = self.channels.pop(lane, None)
        if channel is not None:
            channel.close()
        pipe = self.pipes.pop(lane, None)
        if pipe is not None:
            trio.lowlevel.notify_closing(pipe)
            pipe.close()

    async def _listen(self, lane: int, channel: trio.socket.SocketType) -> None:
        state = self.site.state
        while True:
            data = await _recv(channel)
            if not data:
                return
            message = decode(data)
            op = message.get("op")
            if op == "status":
                self.statuses[lane] = message
                self.reported[lane] = trio.current_time()
            elif op == "kick":
                peer = state.peers.by_name.get(message.get("peer", ""))
                if peer is not None:
                    events.kick(state, peer, trio.current_time())
            elif op == "probe":
                via = state.peers.by_name.get(message.get("peer") or "")
                if message.get("peer") is None or via is not None:
                    guard.on_probe(state, bytes.fromhex(message.get("frame", "")), via,
                                  trio.current_time())
            elif op == "flap":
                now = trio.current_time()
                if state.l2.loop.flap_probe_due(now):
                    guard.send_probes(state, now)

    def _full_state(self) -> list[dict]:
        state = self.site.state
        messages = []
        for peer in state.peers:
            self._sent[peer.name] = peer_view(peer)
            messages.append(peer_message(peer))
        if state.sessions is not None:
            now = trio.current_time()
            state.sessions.changed.clear()
            for peer in state.peers:
                messages.append({"op": "keys", "peer": peer.name,
                                 "snapshot": state.sessions.snapshot(peer.sessions, now)})
        return messages

    async def _sync(self) -> None:
        """Push what changed: peer state, then keys (a peer coming up finds its keys)."""
        state = self.site.state
        table = state.sessions
        while True:
            messages = []
            for peer in state.peers:
                view = peer_view(peer)
                if self._sent.get(peer.name) != view:
                    self._sent[peer.name] = view
                    messages.append(peer_message(peer))
            if table is not None and table.changed:
                now = trio.current_time()
                for sessions in list(table.changed):
                    messages.append({"op": "keys", "peer": sessions.name,
                                     "snapshot": table.snapshot(sessions, now)})
                table.changed.clear()
            if messages:
                await self._send_all(messages)
            await trio.sleep(SYNC_EVERY_S)

    async def _send_all(self, messages: list[dict]) -> None:
        for channel in list(self.channels.values()):
            for message in messages:
                await channel.send(encode(message))

    async def reload(self, config: SiteConfig, secrets: Secrets) -> None:
        """Hand every follower the reloaded config; each applies the leader's plan."""
        self.secrets = secrets
        await self._send_all([{"op": "reload", "path": config.path, "document": config.document,
                               "secrets": secrets.to_json()}])
        self._sent.clear()  # every peer's state and keys again, after the reload message
        table = self.site.state.sessions
        if table is not None:
            table.changed.update(table.peers)

    def health(self, now: float) -> str | None:
        """Why the workers are unwell (one stopped reporting), or None (``status.health``)."""
        for lane, when in sorted(self.reported.items()):
            if now - when > STALL_S:
                child = self.processes.get(lane)
                pid = child.pid if child is not None else "?"
                return f"worker {lane} (pid {pid}) has not reported for {now - when:.0f} s"
        return None

    def status(self) -> dict:
        """The ``workers`` section of ``l2bridge show``: what each follower last reported."""
        return {"count": self.lanes,
                "followers": [self.statuses.get(lane, {"lane": lane, "state": "starting"})
                              for lane in range(1, self.lanes)]}


class Follower:
    """A follower's side of its channel: apply the leader's messages, report back."""

    def __init__(self, site: Site, channel: trio.socket.SocketType, lane: int,
                 secrets: Secrets) -> None:
        self.site = site
        self.channel = channel
        self.lane = lane
        self.secrets = secrets

    async def run(self) -> None:
        """Until the leader goes away: apply messages, forward kicks, report status."""
        await self.channel.send(encode({"op": "ready", "lane": self.lane, "pid": os.getpid()}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report)
            nursery.start_soon(self._kicks)
            while True:
                data = await self.channel.recv(MAX_MESSAGE_BYTES)
                if not data:
                    log.info("worker %d: the leader is gone; stopping", self.lane)
                    nursery.cancel_scope.cancel()
                    return
                self.apply(decode(data))

    def apply(self, message: dict) -> None:
        state = self.site.state
        if message["op"] == "reload":
            self.reload(message)
            return
        peer = state.peers.by_name.get(message.get("peer") or message.get("name") or "")
        if peer is None:
            return
        now = trio.current_time()
        if message["op"] == "peer":
            addr = message["addr"]
            path = message.get("path", paths.UDP)
            if path != paths.UDP:  # worker 0 carries it: hand it the datagrams
                if peer.addr is not peer.to_leader:
                    state.peers.bind(peer, peer.to_leader)
            elif addr is not None and tuple(addr) != peer.addr:
                state.peers.bind(peer, tuple(addr))
            peer.path = path
            peer.room = reach.room_for(state, path)
            if message["up"] and not peer.up:
                events.peer_up(state, peer, now)
            elif not message["up"] and peer.up:
                events.peer_down(state, peer)
            peer.offload = message["offload"]
            guard.set_blocks(state, peer, message.get("blocked"), bool(message.get("blocks_us")),
                            now)
        elif message["op"] == "keys" and state.sessions is not None:
            state.sessions.apply_snapshot(peer.sessions, message["snapshot"], now)

    def reload(self, message: dict) -> None:
        """The leader reloaded: apply the same plan to this worker's site."""
        state = self.site.state
        config = config_from_dict(message["document"], message["path"])
        secrets = Secrets.from_json(message["secrets"])
        plan = planning.plan(state.config, config, self.secrets, secrets)
        if plan.refused:  # the leader refuses these before it sends: never here
            log.error("worker %d: reload refused: %s", self.lane, plan.refusal(config.path))
            return
        applying.apply(state, plan, config, secrets)
        self.secrets = secrets
        logging.getLogger("l2bridge").setLevel(config.log_level.upper())

    async def _kicks(self) -> None:
        """What the leader must do for this worker: handshakes, loop probes, flaps."""
        state = self.site.state
        while True:
            await trio.sleep(SYNC_EVERY_S)
            for name in sorted(state.kicks):
                await self.channel.send(encode({"op": "kick", "peer": name}))
            state.kicks.clear()
            reports, state.l2.probe_reports = state.l2.probe_reports, []
            for frame, peer in reports:
                await self.channel.send(encode({"op": "probe", "frame": frame.hex(),
                                                "peer": peer}))
            if state.l2.flap_reports:
                state.l2.flap_reports = 0
                await self.channel.send(encode({"op": "flap"}))

    async def _report(self) -> None:
        site = self.site
        while True:
            status = site.status()
            summary = {
                "op": "status", "lane": self.lane, "pid": os.getpid(),
                "local": status["local"],
                "peers": {p["name"]: {k: p[k] for k in (
                    "frames_in", "bytes_in", "frames_out", "bytes_out", "datagrams_in",
                    "datagrams_out", "bursts_in", "bursts_out", "drops", "flooded_by_class")}
                    for p in status["peers"]},
            }
            await self.channel.send(encode(summary))
            await trio.sleep(STATUS_EVERY_S)


async def _recv(channel: trio.socket.SocketType) -> bytes:
    """One message from a worker; b"" when it is gone (closed, or reset while exiting)."""
    try:
        return await channel.recv(MAX_MESSAGE_BYTES)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def channel_from_fd(fd: int) -> trio.socket.SocketType:
    return trio.socket.from_stdlib_socket(
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd)
    )


def setup_of(message: dict) -> tuple[SiteConfig, Secrets, Capabilities]:
    """The follower's view of the leader's ``setup`` message."""
    if message.get("op") != "setup":
        raise WorkerError(f"expected the leader's setup, found {str(message)[:80]!r}")
    config = config_from_dict(message["document"], message["path"])
    return config, Secrets.from_json(message["secrets"]), Capabilities.from_json(message["caps"])


__all__ = ["Follower", "Leader", "WorkerError", "channel_from_fd", "setup_of"]
