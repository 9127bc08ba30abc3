"""The site as a service, over in-memory fakes: live reloads and the watchdog, in virtual time.

Sites a, b, c (and later d) on one FakeNetwork, each from a real config file;
a's file is edited and reloaded while frames flow.  The watchdog's pings go to
a real AF_UNIX datagram socket standing in for the service manager.
"""

from __future__ import annotations

import socket

import pytest
import trio
from support import site_toml

from l2bridge.core.config import load_config
from l2bridge.core.keys import Secrets
from l2bridge.io.fakes import FakeNetwork, FakeTap
from l2bridge.io.notify import Notifier
from l2bridge.ops.service import ReloadError, Service
from l2bridge.site.site import Site

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, marker: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + marker + bytes(max(0, 46 - len(marker)))


def addr(name: str) -> str:
    return f"10.0.0.{ord(name)}:55555"


def write_config(directory, name: str, peers: list[str], **site: str) -> str:
    keys = {"listen": f'"{addr(name)}"', "insecure": "true", "keepalive": "1",
            "dead_after": "3", "control": f'"/nonexistent/{name}.sock"', **site}
    path = directory / f"{name}.toml"
    path.write_text(site_toml(name, keys, {p: {"endpoint": f'"{addr(p)}"'} for p in peers}))
    return str(path)


class Sites:
    def __init__(self, nursery: trio.Nursery, directory) -> None:
        self.nursery = nursery
        self.dir = directory
        self.net = FakeNetwork()
        self.sites: dict[str, Site] = {}
        self.taps: dict[str, FakeTap] = {}

    async def start(self, name: str, peers: list[str], notifier: Notifier | None = None
                    ) -> Service:
        config = load_config(write_config(self.dir, name, peers))
        tap = FakeTap()
        host, port = addr(name).split(":")
        site = Site(config, tap=tap, transport=self.net.transport(host, int(port)))
        self.sites[name], self.taps[name] = site, tap
        await self.nursery.start(site.run)
        service = Service(site, Secrets(None, {}), notifier or Notifier(None))
        await self.nursery.start(service.run)
        return service

    def peers(self, name: str) -> dict[str, str]:
        return {p.name: p.state for p in self.sites[name].state.peers}

    def got(self, name: str, marker: bytes) -> int:
        return sum(1 for f in self.taps[name].delivered if marker in f)


@pytest.fixture
async def sites(nursery, tmp_path):
    yield Sites(nursery, tmp_path)
    nursery.cancel_scope.cancel()


async def test_a_reload_adds_and_removes_peers_and_keeps_the_others(sites, autojump_clock):
    a = await sites.start("a", ["b", "c"])
    await sites.start("b", ["a"])
    await sites.start("c", ["a"])
    await trio.sleep(0.5)
    assert sites.peers("a") == {"b": "up", "c": "up"}
    b_sessions = sites.sites["a"].state.peers.by_name["b"]
    sites.taps["b"].inject(frame(BCAST, mac(2), b"learn-b"))
    await trio.sleep(0.1)
    await sites.start("d", ["a"])
    write_config(sites.dir, "a", ["b", "d"])  # c goes, d comes
    answer = await a.reload()
    assert answer["changes"] == "peers added: d; peers removed: c"
    await trio.sleep(2.0)
    assert sites.peers("a") == {"b": "up", "d": "up"}
    assert sites.sites["a"].state.peers.by_name["b"] is b_sessions  # untouched
    assert sites.sites["a"].state.peers.by_name["b"].times_down == 0
    sites.taps["a"].inject(frame(mac(2), mac(1), b"to-b"))  # b's MAC is still learned
    sites.taps["a"].inject(frame(BCAST, mac(1), b"to-all"))
    await trio.sleep(0.1)
    assert (sites.got("b", b"to-b"), sites.got("b", b"to-all"), sites.got("d", b"to-all"),
            sites.got("c", b"to-all")) == (1, 1, 1, 0)
    view = sites.sites["a"].status()
    assert [p["name"] for p in view["peers"]] == ["b", "d"]
    assert a.view()["reloads_ok"] == 1 and a.view()["last_reload"]["result"] == "ok"


async def test_keys_that_cannot_change_live_refuse_the_whole_reload(sites, autojump_clock):
    a = await sites.start("a", ["b"])
    await sites.start("b", ["a"])
    await trio.sleep(0.5)
    write_config(sites.dir, "a", ["b", "c"], tap='"l2b9"', workers="3")
    with pytest.raises(ReloadError, match=r"site\.tap, site\.workers cannot change while"):
        await a.reload()
    assert sites.peers("a") == {"b": "up"}  # nothing changed: c was not added either
    assert a.view()["reloads_failed"] == 1
    (sites.dir / "a.toml").unlink()
    with pytest.raises(ReloadError, match="cannot read the config file"):
        await a.reload()
    assert sites.peers("a") == {"b": "up"}


async def test_site_wide_keys_change_live(sites, autojump_clock):
    a = await sites.start("a", ["b"])
    await sites.start("b", ["a"])
    await trio.sleep(0.5)
    write_config(sites.dir, "a", ["b"], ageing='60', keepalive='2', dead_after='9',
                 pinned_macs='["02:00:00:00:00:07"]')
    assert (await a.reload())["changes"] == "site: ageing, keepalive, dead_after, pinned_macs"
    state = sites.sites["a"].state
    assert (state.switch.ageing_s, state.peers.keepalive_s, state.peers.dead_after_s) == (
        60.0, 2.0, 9.0)
    sites.taps["b"].inject(frame(BCAST, mac(7), b"pinned"))  # b claims a's pinned MAC
    await trio.sleep(0.1)
    assert sites.got("a", b"pinned") == 0
    assert state.peers.by_name["b"].drops["pinned_mac"] == 1


async def test_a_storm_of_reload_requests_coalesces(sites, autojump_clock):
    a = await sites.start("a", ["b"])
    await sites.start("b", ["a"])
    for _ in range(100):
        a.request_reload()
    await trio.sleep(1.0)
    for _ in range(100):
        a.request_reload()
    await trio.sleep(1.0)
    assert 1 <= a.view()["reloads_ok"] <= 4 and a.view()["reloads_failed"] == 0


async def test_the_watchdog_pings_only_while_the_dataplane_is_alive(sites, tmp_path,
                                                                    autojump_clock):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)

    def pings() -> int:
        count = 0
        while True:
            try:
                count += listener.recv(4096).count(b"WATCHDOG=1")
            except BlockingIOError:
                return count

    notifier = Notifier(str(tmp_path / "notify"), watchdog_usec=2_000_000)
    await sites.start("a", ["b"], notifier)
    await sites.start("b", ["a"])
    await trio.sleep(10.0)
    assert pings() >= 8  # idle but alive: a ping every second
    # Stall the tap->peers direction: a batch whose socket never drains.
    transport = sites.sites["a"].state.transport
    stuck = trio.Event()

    async def never_writable() -> None:
        await stuck.wait()

    transport.send_batch = lambda datagrams, addr: 0  # type: ignore[method-assign]
    transport.wait_writable = never_writable  # type: ignore[method-assign]
    sites.taps["a"].inject(frame(BCAST, mac(1), b"stall"))
    await trio.sleep(10.0)
    assert pings() <= 6  # stopped once the batch was stuck for 5 s
    await trio.sleep(10.0)
    assert pings() == 0
    listener.close()
