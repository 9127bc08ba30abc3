"""Secure sites over the in-memory fakes, for the dataplane tests in virtual time: keys,
configs, and a lab that starts sites on one FakeNetwork (UDP, and TCP with ``tcp=True``)."""

from __future__ import annotations

import trio
from support import site_toml

from l2bridge.core import keys, noise
from l2bridge.core.config import parse_config
from l2bridge.core.secure import Timers
from l2bridge.io.fakes import FakeLinks, FakeNetwork, FakeTap
from l2bridge.site.site import Site

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 46) -> bytes:
    return dst + src + b"\x88\xb5" + payload


def addr_of(name: str) -> tuple[str, int]:
    return (f"10.0.0.{ord(name[0])}", 55555)


class SiteKeys:
    def __init__(self, name: str) -> None:
        self.name = name
        self.private = keys.generate_private_key()
        self.public = keys.public_key(self.private)


def config_for(
    site: SiteKeys, peers: list[SiteKeys], *, dial_in: tuple[str, ...] = (),
    extra: dict | None = None,
):
    extra = extra or {}
    host, port = addr_of(site.name)
    table = {"listen": f'"{host}:{port}"', "insecure": "false", "private_key_file": '"/unused"',
             "keepalive": "1", "dead_after": "3", "control": f'"/nonexistent/{site.name}.sock"',
             **extra.get("site", {})}
    peer_tables = {}
    for peer in peers:
        keys_of = {"public_key": f'"{keys.encode_key(peer.public)}"'}
        if peer.name not in dial_in:
            h, p = addr_of(peer.name)
            keys_of["endpoint"] = f'"{h}:{p}"'
        peer_tables[peer.name] = {**keys_of, **extra.get(peer.name, {})}
    return parse_config(site_toml(site.name, table, peer_tables), f"{site.name}.toml")


class Lab:
    def __init__(self, nursery: trio.Nursery, timers: Timers | None = None) -> None:
        self.nursery = nursery
        self.net = FakeNetwork()
        self.timers = timers or Timers()
        self.bridges: dict[str, Site] = {}
        self.taps: dict[str, FakeTap] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.captured: list[tuple[bytes, tuple, tuple]] = []
        self.block = None  # a predicate (data, src, dst) -> bool: that UDP datagram is lost
        self.net.drop = self._capture

    def _capture(self, data, src, dst) -> bool:
        self.captured.append((data, src, dst))
        return self.block is not None and self.block(data, src, dst)

    async def start(self, site: SiteKeys, config, psks=None, addr=None, *,
                    tcp: bool = True) -> Site:
        """Start ``site`` at ``addr`` (default ``addr_of``), listening on TCP too with ``tcp``."""
        host, port = addr or addr_of(site.name)
        self.net.transports.pop((host, port), None)
        transport = self.net.transport(host, port)
        links = None
        if tcp:
            self.net.listeners.pop((host, port), None)
            links = FakeLinks(self.net, (host, port), idle_s=2 * config.dead_after_s)
        tap = FakeTap()
        bridge = Site(config, tap=tap, transport=transport,
                      identity=noise.Identity(site.private), psks=psks, timers=self.timers,
                      clock_unix=lambda: 1.7e9 + trio.current_time(), links=links)
        scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await bridge.run(task_status=task_status)

        await self.nursery.start(run)
        self.bridges[site.name], self.taps[site.name], self.scopes[site.name] = bridge, tap, scope
        return bridge

    def stop(self, name: str) -> None:
        self.scopes[name].cancel()
        state = self.bridges[name].state
        state.transport.close()
        if state.links is not None:
            state.links.close()


async def pair(lab: Lab, a: SiteKeys, b: SiteKeys):
    await lab.start(a, config_for(a, [b]))
    await lab.start(b, config_for(b, [a]))
    await trio.sleep(0.5)


def got(tap: FakeTap, marker: bytes) -> int:
    return sum(marker in f for f in tap.delivered)


