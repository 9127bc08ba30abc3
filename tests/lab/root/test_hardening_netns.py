"""A running site under hostile clients, careless operators and a MAC flood (root).

1. Control-socket clients that close at once, hang up mid-answer, send half a
   request, garbage or 1 MB, or connect 1000 times in a second: the site keeps
   carrying traffic (no ping lost) and keeps answering honest clients.
2. A second ``l2bridge up`` of a running site refuses with one line and leaves
   the first one untouched.
3. 10^6 frames with random source MACs from one LAN host: existing flows keep
   >= 99 % of their pings during the flood, and afterwards a host with a MAC
   never seen before reaches the other site within 1 s (the table evicts
   instead of locking new hosts out); the daemons' memory stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import trio
from pyroute2 import IPRoute
from support import REPO, repo_env

from netns.checks import traffic
from netns.describe.scenario import parse_scenario
from netns.lab import Lab
from netns.realise.nsenter import in_netns, netns_preexec

pytestmark = pytest.mark.netns


SCENARIO = """
[lab]
keepalive = 1
dead_after = 3
[[site]]
name = "london"
[[site.host]]
name = "h1"
ipv4 = "10.77.1.10/16"
[[site.host]]
name = "flooder"
[[site.host]]
name = "newcomer"
ipv4 = "10.77.1.30/16"
[[site]]
name = "berlin"
[[site.host]]
name = "h1"
ipv4 = "10.77.2.10/16"
"""

FLOOD_FRAMES = 1_000_000
FLOOD_RATE_PER_S = 20_000  # paced below what both daemons forward on a loaded 2-core machine
FLOOD_BATCH = 500
FLOOD_LIMIT_S = 120.0  # hard bound on the whole flood
PING_INTERVAL_S = 0.01
NEW_HOST_WITHIN_S = 1.0
RSS_MAX_BYTES = 150 * 1024 * 1024


async def two_offices(lab_scenario) -> Lab:
    return await lab_scenario(parse_scenario(SCENARIO, "hardening.toml"), gateway="l2bridge")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------- control socket


def _connect(path: str, *, patience_s: float = 10.0) -> socket.socket:
    """A connected client; a full listen backlog (EAGAIN) is waited out, up to a bound."""
    deadline = time.monotonic() + patience_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def _hostile_clients(path: str) -> dict[str, int]:
    """Every kind of bad client, in order; returns how many of each connected."""
    done = {"close_at_once": 0, "hang_up_mid_answer": 0, "garbage": 0, "one_megabyte": 0,
            "half_request": 0, "burst": 0}
    for _ in range(200):
        _connect(path).close()
        done["close_at_once"] += 1
    for _ in range(50):
        with _connect(path) as s:
            s.sendall(b'{"cmd": "fdb"}\n')
            s.recv(100)
        done["hang_up_mid_answer"] += 1
    for i in range(50):
        with _connect(path) as s:
            s.sendall(os.urandom(200 + i) + b"\n")
        done["garbage"] += 1
    for _ in range(5):
        with _connect(path) as s, contextlib.suppress(OSError):
            s.sendall(b"x" * (1 << 20))  # the site stops reading at its bound, as it should
        done["one_megabyte"] += 1
    halves = [_connect(path) for _ in range(20)]
    for s in halves:
        s.sendall(b'{"cmd": "sh')  # and then silence: the site's deadline ends it
    done["half_request"] = len(halves)
    started = time.monotonic()
    while done["burst"] < 1000 and time.monotonic() - started < 1.0:
        _connect(path).close()
        done["burst"] += 1
    for s in halves:
        s.close()
    return done


async def test_hostile_control_clients_never_touch_the_site(lab_scenario):
    lab = await two_offices(lab_scenario)
    london = lab.plan.site("london")
    pid = lab.gateways["london"].process.pid  # type: ignore[attr-defined]
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    async with trio.open_nursery() as nursery:
        pinging = trio.Event()
        results = {}

        async def ping() -> None:
            pinging.set()
            results["ping"] = await traffic.ping(src.ns, dst.ip, count=300, interval_s=0.02,
                                                 deadline_s=30)

        nursery.start_soon(ping)
        await pinging.wait()
        clients = await trio.to_thread.run_sync(_hostile_clients, london.control_path)
    assert clients["burst"] >= 100, clients
    assert results["ping"].received == results["ping"].sent == 300, results["ping"].output
    assert lab.gateways["london"].process.poll() is None  # type: ignore[attr-defined]
    assert (await lab.show("london"))["peers"][0]["state"] == "up"
    with _connect(london.control_path) as s:  # honest clients still get whole answers
        s.sendall(b'{"cmd": "show"}\n')
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert json.loads(answer)["site"] == "london"
    assert os.path.exists(f"/proc/{pid}")


async def test_a_second_up_of_a_running_site_refuses_and_changes_nothing(lab_scenario):
    lab = await two_offices(lab_scenario)
    london = lab.plan.site("london")
    with IPRoute(netns=london.gw_ns) as ipr:
        before = sorted((link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MASTER"))
                        for link in ipr.get_links())
    run = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "l2bridge", "up", "-c", london.config_path],
        preexec_fn=netns_preexec(london.gw_ns), capture_output=True, text=True, timeout=60,
        env=repo_env(), cwd=REPO))
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "another l2bridge runs this site (pid" in last and "Traceback" not in run.stderr
    assert lab.gateways["london"].process.poll() is None  # type: ignore[attr-defined]
    with IPRoute(netns=london.gw_ns) as ipr:
        after = sorted((link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MASTER"))
                       for link in ipr.get_links())
    assert after == before
    result = await lab.check("ping", from_="london.h1", to="berlin.h1")
    assert result.ok, result.summary


# ---------------------------------------------------------------- MAC flood


def _flood(ns: str, count: int, rate_per_s: float) -> float:
    """``count`` frames with random unicast source MACs to an unknown unicast MAC, paced."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind(("eth0", 0))
        dst = bytes.fromhex("02ffeeddccbb")
        tail = b"\x88\xb5" + bytes(46)  # local experimental EtherType, padded to 60 bytes
        started = time.monotonic()
        sent = 0
        while sent < count and time.monotonic() - started < FLOOD_LIMIT_S:
            rnd = os.urandom(5 * FLOOD_BATCH)
            for i in range(FLOOD_BATCH):
                try:
                    sock.send(dst + b"\x02" + rnd[5 * i: 5 * i + 5] + tail)
                except BlockingIOError:
                    continue
            sent += FLOOD_BATCH
            pause = started + sent / rate_per_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return time.monotonic() - started


async def test_a_mac_flood_never_locks_out_a_new_host(lab_scenario):
    lab = await two_offices(lab_scenario)
    pids = {site: lab.gateways[site].process.pid for site in ("london", "berlin")}  # type: ignore[attr-defined]
    rss_before = {site: rss_bytes(pid) for site, pid in pids.items()}
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    warm = await traffic.ping(src.ns, dst.ip, count=2, interval_s=0.1)
    assert warm.ok, warm.output
    duration_s = FLOOD_FRAMES / FLOOD_RATE_PER_S
    results: dict = {}
    async with trio.open_nursery() as nursery:

        async def ping() -> None:
            results["ping"] = await traffic.ping(
                src.ns, dst.ip, count=int(duration_s / PING_INTERVAL_S),
                interval_s=PING_INTERVAL_S, deadline_s=duration_s + 10)

        nursery.start_soon(ping)
        results["flood_s"] = await trio.to_thread.run_sync(
            _flood, lab.ns("london.flooder"), FLOOD_FRAMES, FLOOD_RATE_PER_S)
    during = results["ping"]
    assert during.sent > 0 and during.received >= 0.99 * during.sent, during.output
    london = await lab.show("london")
    berlin = await lab.show("berlin")
    assert london["fdb"]["evicted"] > 0.9 * FLOOD_FRAMES - london["fdb"]["entries"]
    # A host whose MAC no site has seen: give the newcomer a fresh one, then ping.
    newcomer = lab.node("london.newcomer")
    with IPRoute(netns=newcomer.ns) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=index, address="02:00:5e:ab:cd:ef")
    started = trio.current_time()
    first = await traffic.ping(newcomer.ns, dst.ip, count=1, deadline_s=NEW_HOST_WITHIN_S)
    assert first.ok, (f"new host not across within {NEW_HOST_WITHIN_S} s "
                      f"({trio.current_time() - started:.2f} s): {first.output}")
    rss_after = {site: rss_bytes(pid) for site, pid in pids.items()}
    assert all(rss <= RSS_MAX_BYTES for rss in rss_after.values()), rss_after
    print(f"\nflood: {FLOOD_FRAMES} frames in {results['flood_s']:.1f} s; pings during it "
          f"{during.received}/{during.sent}; new host across in "
          f"{first.rtt_avg_ms} ms (ping RTT); evicted london {london['fdb']['evicted']}, "
          f"berlin {berlin['fdb']['evicted']}; RSS london {rss_before['london'] >> 20} -> "
          f"{rss_after['london'] >> 20} MiB, berlin {rss_before['berlin'] >> 20} -> "
          f"{rss_after['berlin'] >> 20} MiB")
