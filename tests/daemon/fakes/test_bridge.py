"""Sites over in-memory fakes: flooding, learning, split horizon, hub relay,
liveness, fragmentation and bad input, all in virtual time."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from support import site_toml

from l2bridge.core import wire
from l2bridge.core.config import parse_config
from l2bridge.io.fakes import FakeNetwork, FakeTap
from l2bridge.site.site import Site

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 46, ethertype: int = 0x88B5) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def site_config(name: str, peers: dict[str, str | None], *, hub: bool = False, **site) -> object:
    keys = {"listen": f'"10.0.0.{ord(name[0])}:55555"', "hub": "true" if hub else "false",
            "insecure": "true", "keepalive": "1", "dead_after": "3",
            "control": f'"/nonexistent/{name}.sock"', **site}
    table = {p: {} if e is None else {"endpoint": f'"{e}"'} for p, e in peers.items()}
    return parse_config(site_toml(name, keys, table), f"{name}.toml")


def addr_of(name: str) -> str:
    return f"10.0.0.{ord(name[0])}:55555"


class Lab:
    """A few Bridges on one FakeNetwork, each in its own cancel scope."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.net = FakeNetwork()
        self.sites: dict[str, Site] = {}
        self.taps: dict[str, FakeTap] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, config) -> Site:
        tap = FakeTap()
        host, port = str(config.listen).rsplit(":", 1)
        self.net.transports.pop((host, int(port)), None)  # a restart rebinds the address
        transport = self.net.transport(host, int(port))
        bridge = Site(config, tap=tap, transport=transport)
        scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await bridge.run(task_status=task_status)

        await self.nursery.start(run)
        self.sites[config.name] = bridge
        self.taps[config.name] = tap
        self.scopes[config.name] = scope
        return bridge

    def stop(self, name: str) -> None:
        self.scopes[name].cancel()
        self.sites[name].state.transport.close()

    async def settle(self, seconds: float = 0.5) -> None:
        await trio.sleep(seconds)


def mesh(names: list[str], **site) -> list:
    return [
        site_config(n, {p: addr_of(p) for p in names if p != n}, **site) for n in names
    ]


@pytest.fixture
async def lab(nursery):
    lab = Lab(nursery)
    yield lab
    nursery.cancel_scope.cancel()


def data_frames(tap: FakeTap, marker: bytes) -> list[bytes]:
    return [f for f in tap.delivered if marker in f]


async def test_peers_come_up_within_one_round_trip(lab, autojump_clock):
    a, b = mesh(["a", "b"])
    await lab.start(a)
    await lab.start(b)
    await lab.settle(0.1)
    for site in lab.sites.values():
        assert [p.state for p in site.state.peers] == ["up"]


async def test_broadcast_floods_then_unicast_is_learned(lab, autojump_clock):
    for cfg in mesh(["a", "b"]):
        await lab.start(cfg)
    await lab.settle()
    hello = frame(BCAST, mac(1), b"who-has" + b"\0" * 40)
    lab.taps["a"].inject(hello)
    await lab.settle(0.01)
    assert lab.taps["b"].delivered == [hello]
    reply = frame(mac(1), mac(2), b"is-at" + b"\0" * 41)
    lab.taps["b"].inject(reply)
    await lab.settle(0.01)
    assert lab.taps["a"].delivered == [reply]
    b_to_a = lab.sites["b"].state.peers.by_name["a"]
    assert (b_to_a.unicast_out, b_to_a.flooded_out) == (1, 0)
    a_to_b = lab.sites["a"].state.peers.by_name["b"]
    assert (a_to_b.unicast_out, a_to_b.flooded_out) == (0, 1)
    assert [(e["mac"], e["peer"]) for e in lab.sites["b"].fdb()] == [
        ("02:00:00:00:00:01", "a"),
        ("02:00:00:00:00:02", "local"),
    ]


async def test_mesh_broadcast_reaches_each_site_once_and_never_returns(lab, autojump_clock):
    for cfg in mesh(["a", "b", "c"]):
        await lab.start(cfg)
    await lab.settle()
    for i in range(10):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"bcast%02d" % i + b"\0" * 39))
    await lab.settle(0.05)
    assert len(data_frames(lab.taps["b"], b"bcast")) == 10
    assert len(data_frames(lab.taps["c"], b"bcast")) == 10
    assert data_frames(lab.taps["a"], b"bcast") == []
    # Split horizon: b and c never sent a frame to anyone.
    for name in ("b", "c"):
        assert all(p.frames_out == 0 for p in lab.sites[name].state.peers)


async def test_unicast_after_learning_is_not_seen_at_third_site(lab, autojump_clock):
    for cfg in mesh(["a", "b", "c"]):
        await lab.start(cfg)
    await lab.settle()
    lab.taps["b"].inject(frame(BCAST, mac(2), b"announce" + b"\0" * 38))
    await lab.settle(0.01)
    c_before = lab.sites["c"].state.peers.by_name["a"].frames_in
    for i in range(20):
        lab.taps["a"].inject(frame(mac(2), mac(1), b"uni%03d" % i + b"\0" * 40))
    await lab.settle(0.05)
    assert len(data_frames(lab.taps["b"], b"uni")) == 20
    assert data_frames(lab.taps["c"], b"uni") == []
    assert lab.sites["c"].state.peers.by_name["a"].frames_in == c_before


async def test_hub_relays_between_spokes(lab, autojump_clock):
    hub = site_config("h", {"s": addr_of("s"), "t": addr_of("t"), "u": addr_of("u")}, hub=True)
    spokes = [site_config(n, {"h": addr_of("h")}) for n in "stu"]
    await lab.start(hub)
    for cfg in spokes:
        await lab.start(cfg)
    await lab.settle()
    lab.taps["s"].inject(frame(BCAST, mac(1), b"bcast" + b"\0" * 41))
    await lab.settle(0.05)
    for name in "htu":
        assert len(data_frames(lab.taps[name], b"bcast")) == 1, name
    assert data_frames(lab.taps["s"], b"bcast") == []
    # t answers s: unicast relayed by the hub to s only.
    lab.taps["t"].inject(frame(mac(1), mac(2), b"reply" + b"\0" * 41))
    await lab.settle(0.05)
    assert len(data_frames(lab.taps["s"], b"reply")) == 1
    assert data_frames(lab.taps["u"], b"reply") == []
    assert data_frames(lab.taps["h"], b"reply") == []
    hub_s = lab.sites["h"].state.peers.by_name["s"]
    assert hub_s.unicast_out == 1


async def test_silent_peer_goes_down_is_flushed_and_comes_back(lab, autojump_clock):
    a_cfg, b_cfg = mesh(["a", "b"])
    a = await lab.start(a_cfg)
    await lab.start(b_cfg)
    await lab.settle()
    lab.taps["b"].inject(frame(BCAST, mac(2)))
    await lab.settle(0.01)
    assert a.state.switch.lookup(0, mac(2), trio.current_time()) == 1
    lab.stop("b")
    await trio.sleep(a_cfg.dead_after_s + a_cfg.keepalive_s + 0.1)
    peer = a.state.peers.by_name["b"]
    assert peer.state == "down" and peer.times_down == 1
    assert a.state.switch.lookup(0, mac(2), trio.current_time()) is None
    # No flooding to a dead peer.
    sent = lab.net.sent
    lab.taps["a"].inject(frame(BCAST, mac(1)))
    await lab.settle(0.01)
    assert peer.flooded_out == 0
    assert lab.net.sent - sent <= 2  # only HELLO retries, no frames
    # b restarts: back in service within a second.
    start = trio.current_time()
    await lab.start(b_cfg)
    while peer.state != "up":
        await trio.sleep(0.01)
    assert trio.current_time() - start < 1.5
    lab.taps["a"].inject(frame(BCAST, mac(1), b"again" + b"\0" * 41))
    await lab.settle(0.01)
    assert len(data_frames(lab.taps["b"], b"again")) == 1


async def test_frames_fragment_to_fit_a_small_wan_mtu(lab, autojump_clock):
    for cfg in mesh(["a", "b"], wan_mtu=600):
        await lab.start(cfg)
    await lab.settle()
    big = frame(BCAST, mac(1), bytes(range(256)) * 5 + b"tail")
    assert len(big) == 1298
    lab.taps["a"].inject(big)
    await lab.settle(0.01)
    assert lab.taps["b"].delivered == [big]
    a_to_b = lab.sites["a"].state.peers.by_name["b"]
    assert a_to_b.datagrams_out == 3  # 1298 bytes over 600-byte datagrams
    assert lab.sites["b"].state.peers.by_name["a"].reassembler.counters["reassembled"] == 1


async def test_lost_fragment_times_out_and_is_counted(lab, autojump_clock):
    for cfg in mesh(["a", "b"], wan_mtu=600):
        await lab.start(cfg)
    await lab.settle()
    lab.net.drop = lambda data, src, dst: data[0] == wire.TYPE_FRAGMENT and data[1] >> 4 == 1
    lab.taps["a"].inject(frame(BCAST, mac(1), b"z" * 1200))
    await lab.settle(3)
    assert lab.taps["b"].delivered == []
    status = lab.sites["b"].status()
    assert status["peers"][0]["drops"]["reassembly_timeouts"] == 1


async def test_strangers_and_garbage_are_counted_never_fatal(lab, autojump_clock):
    a_cfg, b_cfg = mesh(["a", "b"])
    a = await lab.start(a_cfg)
    await lab.start(b_cfg)
    await lab.settle()
    ta = lab.net.transports[("10.0.0.97", 55555)]
    b_addr = ("10.0.0.98", 55555)
    garbage = [b"", b"\x11", b"\x12\x00", b"\x13\x01", b"\x99" * 30, b"\x12\x10\x00\x01abc",
               b"\x13\x10\x00\x00b", wire.encode_hello("mallory", False)]
    for g in garbage:
        ta.inject(g, b_addr)
    for g in garbage:
        ta.inject(g, ("192.0.2.66", 4444))
    ta.inject(wire.encode_frame(frame(BCAST, mac(9))), ("192.0.2.66", 4444))
    await lab.settle(0.01)
    assert a.state.counters.unknown_source == len(garbage) + 1
    drops = a.state.peers.by_name["b"].drops
    assert sum(drops.values()) == len(garbage), drops
    assert drops["wrong_name"] == 1
    assert lab.taps["a"].delivered == []
    # Runts and bad sources from a known peer: counted by switch reason.
    ta.inject(wire.encode_frame(b"\x01" * 10), b_addr)
    ta.inject(wire.encode_frame(frame(BCAST, BCAST)), b_addr)
    ta.inject(wire.encode_frame(frame(bytes.fromhex("0180c2000001"), mac(2))), b_addr)
    await lab.settle(0.01)
    assert (drops["runt"], drops["bad_source"], drops["pause"]) == (1, 1, 1)
    # Still forwarding.
    lab.taps["b"].inject(frame(BCAST, mac(2), b"alive" + b"\0" * 41))
    await lab.settle(0.01)
    assert len(data_frames(lab.taps["a"], b"alive")) == 1


async def test_dial_in_peer_is_bound_by_its_hello(lab, autojump_clock):
    server = site_config("a", {"b": None})
    client = site_config("b", {"a": addr_of("a")})
    a = await lab.start(server)
    await lab.start(client)
    await lab.settle()
    peer = a.state.peers.by_name["b"]
    assert peer.state == "up" and peer.addr == ("10.0.0.98", 55555)
    lab.taps["a"].inject(frame(BCAST, mac(1), b"down" + b"\0" * 42))
    await lab.settle(0.01)
    assert len(data_frames(lab.taps["b"], b"down")) == 1


async def test_table_cap_evicts_instead_of_dropping_new_sources(lab, autojump_clock):
    for cfg in mesh(["a", "b"], max_entries_per_peer=4):
        await lab.start(cfg)
    await lab.settle()
    for i in range(10):
        lab.taps["b"].inject(frame(BCAST, mac(10 + i)))
    await lab.settle(0.01)
    a = lab.sites["a"]
    assert len(data_frames(lab.taps["a"], b"x" * 46)) == 10  # every new host gets through
    assert "peer_full" not in a.state.peers.by_name["b"].drops
    status = a.status()
    assert status["peers"][0]["mac_entries"] == 4
    assert status["fdb"]["evicted"] == 6


async def test_entries_age_out(lab, autojump_clock):
    for cfg in mesh(["a", "b"], ageing=10):
        await lab.start(cfg)
    await lab.settle()
    lab.taps["b"].inject(frame(BCAST, mac(2)))
    await lab.settle(0.01)
    a = lab.sites["a"]
    assert len(a.fdb()) == 1
    await trio.sleep(10.5)
    assert a.fdb() == [] and a.state.switch.counters["expired"] == 1
    assert not math.isnan(a.status()["uptime_s"])


async def test_transient_send_errors_are_counted_and_survived(lab, autojump_clock):
    import errno

    for cfg in mesh(["a", "b"]):
        await lab.start(cfg)
    await lab.settle()
    transport = lab.sites["a"].state.transport
    real_send = transport.send
    failures = iter([OSError(errno.ENETUNREACH, "unreachable")] * 2)

    def flaky_send(data, addr):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return real_send(data, addr)

    transport.send = flaky_send
    for i in range(5):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"flaky%d" % i + b"\0" * 40))
    await lab.settle(0.01)
    # The five frames leave in one batch: each error is counted, then the batch is
    # tried again; the third try goes through.
    assert len(data_frames(lab.taps["b"], b"flaky")) == 5
    assert lab.sites["a"].state.peers.by_name["b"].drops == {"send_enetunreach": 2}


async def test_persistent_send_errors_give_the_batch_up(lab, autojump_clock):
    import errno

    for cfg in mesh(["a", "b"]):
        await lab.start(cfg)
    await lab.settle()
    transport = lab.sites["a"].state.transport

    def failing_send(data, addr):
        raise OSError(errno.ENETUNREACH, "unreachable")

    transport.send = failing_send
    for i in range(5):
        lab.taps["a"].inject(frame(BCAST, mac(1), b"lost%d" % i + b"\0" * 40))
    await lab.settle(0.01)
    assert data_frames(lab.taps["b"], b"lost") == []
    assert lab.sites["a"].state.peers.by_name["b"].drops == {"send_enetunreach": 3}


async def test_full_socket_buffer_waits_instead_of_dropping(lab, autojump_clock):
    for cfg in mesh(["a", "b"]):
        await lab.start(cfg)
    await lab.settle()
    transport = lab.sites["a"].state.transport
    real_send = transport.send
    blocked = iter([False] * 5)

    def full_send(data, addr):
        return next(blocked, None) is None and real_send(data, addr)

    transport.send = full_send
    lab.taps["a"].inject(frame(BCAST, mac(1), b"waited" + b"\0" * 40))
    await lab.settle(0.01)
    assert len(data_frames(lab.taps["b"], b"waited")) == 1
    assert lab.sites["a"].state.peers.by_name["b"].drops == {}
