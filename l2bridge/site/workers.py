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

Leader → follower messages (JSON): ``{"op": "peer", name, addr, up, offload}`` when
a peer's endpoint, liveness or offload changes; ``{"op": "keys", "peer", "snapshot"}``
when its sessions change.  Follower → leader: ``{"op": "kick", "peer"}`` (data is
waiting for keys), ``{"op": "status", ...}`` every STATUS_EVERY_S.

Lifetime: the leader waits for every follower's "ready" before it reports the
site up; a follower that exits stops the whole site (its flows would be lost);
a follower exits when its channel to the leader closes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from typing import Any

import trio

from l2bridge.site.site import Bridge

log = logging.getLogger("l2bridge")

SYNC_EVERY_S = 0.02  # how often the leader compares peer state and keys with what it sent
STATUS_EVERY_S = 1.0
READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 3.0
MAX_MESSAGE_BYTES = 1 << 20


class WorkerError(Exception):
    """A worker could not start or stopped; the message names it and the cause."""


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict:
    return json.loads(data)


def peer_message(peer: Any) -> dict:
    return {"op": "peer", "name": peer.name, "addr": peer.addr, "up": peer.up,
            "offload": peer.offload}


class Leader:
    """Worker 0's side of the followers: start them, keep them in sync, watch them."""

    def __init__(self, bridge: Bridge, config_path: str, lanes: int) -> None:
        self.bridge = bridge
        self.config_path = config_path
        self.lanes = lanes
        self.channels: dict[int, trio.socket.SocketType] = {}
        self.processes: dict[int, trio.Process] = {}
        self.statuses: dict[int, dict] = {}
        self._sent: dict[str, tuple] = {}

    async def run(self, tap_fds: list[int], socks: list[socket.socket],
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start followers 1..N-1 (queue fd and socket k each), then serve them until cancelled."""
        async with trio.open_nursery() as nursery:
            for lane in range(1, self.lanes):
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    process = await self._spawn(lane, tap_fds[lane], socks[lane], theirs)
                finally:
                    theirs.close()
                self.processes[lane] = process
                self.channels[lane] = trio.socket.from_stdlib_socket(mine)
                nursery.start_soon(self._watch, lane, process)
            with trio.move_on_after(READY_TIMEOUT_S) as waiting:
                for lane, channel in self.channels.items():
                    data = await channel.recv(MAX_MESSAGE_BYTES)
                    if not data:  # it is exiting: its watcher names it and the status
                        await trio.sleep_forever()
                    if decode(data).get("op") != "ready":
                        raise WorkerError(f"worker {lane} (pid {self.processes[lane].pid}) "
                                          f"said {data[:80]!r} instead of ready")
            if waiting.cancelled_caught:
                raise WorkerError(f"workers did not report ready within {READY_TIMEOUT_S:g} s")
            await self._send_all(self._full_state())
            for lane, channel in self.channels.items():
                nursery.start_soon(self._listen, lane, channel)
            nursery.start_soon(self._sync)
            task_status.started()

    async def _spawn(self, lane: int, tap_fd: int, sock: socket.socket,
                     channel: socket.socket) -> trio.Process:
        argv = [sys.executable, "-m", "l2bridge.site.worker", "--config", self.config_path,
                "--lane", str(lane), "--lanes", str(self.lanes), "--tap-fd", str(tap_fd),
                "--sock-fd", str(sock.fileno()), "--channel-fd", str(channel.fileno())]
        return await trio.lowlevel.open_process(
            argv, pass_fds=(tap_fd, sock.fileno(), channel.fileno()), start_new_session=True
        )

    async def _watch(self, lane: int, process: trio.Process) -> None:
        try:
            status = await process.wait()
        finally:
            if process.returncode is None:  # we are stopping: give it a moment, then kill
                with trio.move_on_after(STOP_GRACE_S) as scope:
                    scope.shield = True
                    self._close(lane)
                    await process.wait()
                if process.returncode is None:
                    process.kill()
        raise WorkerError(f"worker {lane} (pid {process.pid}) exited with status {status}; "
                          "the site stops (see its log lines above)")

    def _close(self, lane: int) -> None:
        channel = self.channels.pop(lane, None)
        if channel is not None:
            channel.close()

    async def _listen(self, lane: int, channel: trio.socket.SocketType) -> None:
        bridge = self.bridge
        while True:
            data = await channel.recv(MAX_MESSAGE_BYTES)
            if not data:
                return
            message = decode(data)
            op = message.get("op")
            if op == "status":
                self.statuses[lane] = message
            elif op == "kick":
                peer = bridge.peers.by_name.get(message.get("peer", ""))
                if peer is not None:
                    bridge.now = trio.current_time()
                    bridge._kick(peer)

    def _full_state(self) -> list[dict]:
        bridge = self.bridge
        messages = []
        for peer in bridge.peers:
            self._sent[peer.name] = (peer.addr, peer.up, peer.offload)
            messages.append(peer_message(peer))
        if bridge.secure is not None:
            now = trio.current_time()
            bridge.secure.changed.clear()
            for peer in bridge.peers:
                messages.append({"op": "keys", "peer": peer.name,
                                 "snapshot": bridge.secure.snapshot(peer.link, now)})
        return messages

    async def _sync(self) -> None:
        """Push what changed: peer state, then keys (a peer coming up finds its keys)."""
        bridge = self.bridge
        secure = bridge.secure
        while True:
            messages = []
            for peer in bridge.peers:
                view = (peer.addr, peer.up, peer.offload)
                if self._sent.get(peer.name) != view:
                    self._sent[peer.name] = view
                    messages.append(peer_message(peer))
            if secure is not None and secure.changed:
                now = trio.current_time()
                for link in list(secure.changed):
                    messages.append({"op": "keys", "peer": link.name,
                                     "snapshot": secure.snapshot(link, now)})
                secure.changed.clear()
            if messages:
                await self._send_all(messages)
            await trio.sleep(SYNC_EVERY_S)

    async def _send_all(self, messages: list[dict]) -> None:
        for channel in list(self.channels.values()):
            for message in messages:
                await channel.send(encode(message))

    def status(self) -> list[dict]:
        """What each follower last reported (for ``l2bridge show``)."""
        return [self.statuses.get(lane, {"lane": lane, "state": "starting"})
                for lane in range(1, self.lanes)]


class Follower:
    """A follower's side of its channel: apply the leader's messages, report back."""

    def __init__(self, bridge: Bridge, channel: trio.socket.SocketType, lane: int) -> None:
        self.bridge = bridge
        self.channel = channel
        self.lane = lane

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
        bridge = self.bridge
        peer = bridge.peers.by_name.get(message.get("peer") or message.get("name") or "")
        if peer is None:
            return
        now = trio.current_time()
        if message["op"] == "peer":
            addr = message["addr"]
            if addr is not None and tuple(addr) != peer.addr:
                bridge.peers.bind(peer, tuple(addr))
            peer.offload = message["offload"]
            if message["up"] and not peer.up:
                bridge.peers.seen(peer, now)
            elif not message["up"] and peer.up:
                bridge.peers.mark_down(peer)
                bridge.switch.flush_port(peer.port)
        elif message["op"] == "keys" and bridge.secure is not None:
            bridge.secure.apply_snapshot(peer.link, message["snapshot"], now)

    async def _kicks(self) -> None:
        bridge = self.bridge
        while True:
            await trio.sleep(SYNC_EVERY_S)
            for name in sorted(bridge.kicks):
                await self.channel.send(encode({"op": "kick", "peer": name}))
            bridge.kicks.clear()

    async def _report(self) -> None:
        bridge = self.bridge
        while True:
            status = bridge.status()
            summary = {
                "op": "status", "lane": self.lane, "pid": os.getpid(),
                "local": status["local"],
                "peers": {p["name"]: {k: p[k] for k in (
                    "frames_in", "bytes_in", "frames_out", "bytes_out", "datagrams_in",
                    "datagrams_out", "bursts_in", "bursts_out", "drops")}
                    for p in status["peers"]},
            }
            await self.channel.send(encode(summary))
            await trio.sleep(STATUS_EVERY_S)


def channel_from_fd(fd: int) -> trio.socket.SocketType:
    return trio.socket.from_stdlib_socket(
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=fd)
    )


__all__ = ["Follower", "Leader", "WorkerError", "channel_from_fd"]
