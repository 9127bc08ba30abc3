"""The real ``l2bridge up`` process in lab namespaces: what only a real site can show.

Checks of the scenarios themselves (ping, iperf3, DHCP, broadcast once, MTU,
restart) run in tests/lab; here: strangers' garbage on the real socket, unicast
isolation seen from the third gateway's WAN link, and a site that leaves the
host exactly as it found it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import trio
from pyroute2 import IPRoute
from support import REPO, repo_env, site_toml

from l2bridge.core.caps import default_workers
from l2bridge.io import pmqos
from netns.checks import traffic
from netns.checks.frames import ETHERTYPE_EXPERIMENTAL, make_frame, marker_payload
from netns.realise.nsenter import in_netns, netns_preexec

MESH = os.path.join(REPO, "scenarios", "three-site-mesh.toml")
OFFICES = os.path.join(REPO, "scenarios", "two-offices.toml")
BOUND_S = 30.0  # a wait for something that must happen: clearly broken past this


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


async def test_garbage_from_strangers_is_counted_and_harmless(lab_scenario):
    lab = await lab_scenario(OFFICES)
    london = lab.plan.site("london")
    rng = random.Random(7)
    sizes = [0, 1, 3, 4, 5, 60, 1472, 9000, 65507] + [rng.randrange(0, 2000) for _ in range(91)]

    def blast() -> None:
        with in_netns(lab.ns("wan")):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            for size in sizes:
                sock.sendto(rng.randbytes(size), (london.underlay, 55555))

    def dropped_since(status: dict) -> int:
        return sum(status["auth_drops"].values()) - sum(before["auth_drops"].values())

    before = after = await lab.show("london")
    await trio.to_thread.run_sync(blast)
    with trio.move_on_after(BOUND_S):  # until London has judged every datagram
        while dropped_since(after) < len(sizes):
            await trio.sleep(0.05)
            after = await lab.show("london")
    # Sealed links: every datagram is judged by SecureLinks before anything else.
    dropped = dropped_since(after)
    assert dropped == len(sizes), after["auth_drops"]
    assert after["peers"][0]["drops"] == before["peers"][0]["drops"]
    result = await lab.check("ping", from_="london.h1", to="berlin.h1")
    assert result.ok, result.summary


async def test_learned_unicast_never_reaches_the_third_gateway(lab_scenario):
    lab = await lab_scenario(MESH)
    src, dst = lab.node("london.h1"), lab.node("berlin.h1")
    learn = await traffic.ping(src.ns, dst.ip, count=2, interval_s=0.1)
    assert learn.ok, learn.output
    marker = f"L2B-third-{lab.prefix}".encode()
    burst = [
        make_frame(_mac(dst.mac), _mac(src.mac), ETHERTYPE_EXPERIMENTAL, marker_payload(marker, i))
        for i in range(20)
    ]
    london_before = {p["name"]: p for p in (await lab.show("london"))["peers"]}

    async def send() -> None:
        async with traffic.FrameCounter(dst.ns, "eth0", marker) as at_dst:
            await traffic.send_frames(src.ns, "eth0", burst, interval_s=0.002)
        assert at_dst.incoming == 20

    captured = await traffic.tcpdump_count(
        lab.ns("paris.gw"), "wan0", "udp port 55555", duration_s=0.5, action=send
    )
    assert [f for f in captured if marker in f] == []
    london_after = {p["name"]: p for p in (await lab.show("london"))["peers"]}
    unicast = london_after["berlin"]["unicast_out"] - london_before["berlin"]["unicast_out"]
    flooded = london_after["paris"]["flooded_out"] - london_before["paris"]["flooded_out"]
    assert unicast >= 20
    assert flooded < 20  # background multicast (IPv6 ND) only, never the burst


def _links(ns: str) -> dict[str, dict]:
    with IPRoute(netns=ns) as ipr:
        out = {}
        for link in ipr.get_links():
            out[link.get_attr("IFLA_IFNAME")] = {
                "master": link.get_attr("IFLA_MASTER"),
                "up": bool(link["flags"] & 1),
                "mtu": link.get_attr("IFLA_MTU"),
            }
        return out


def _start_site(ns: str, config: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "l2bridge", "up", "-c", config],
        preexec_fn=netns_preexec(ns),
        stderr=subprocess.PIPE,
        text=True,
        env=repo_env(),
    )


def _wait_for(path: str, proc: subprocess.Popen[str], timeout_s: float = BOUND_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_site_leaves_an_existing_bridge_and_nics_as_found(scratch_ns, tmp_path):
    with IPRoute(netns=scratch_ns) as ipr:
        ipr.link("add", ifname="br9", kind="bridge")
        ipr.link("add", ifname="eth1", kind="veth", peer={"ifname": "eth1p"})
        ipr.link("set", index=ipr.link_lookup(ifname="br9")[0], state="up")
    before = _links(scratch_ns)
    sock = str(tmp_path / "a.sock")
    config = tmp_path / "a.toml"
    config.write_text(site_toml("a", {"insecure": "true", "listen": '"127.0.0.1:55555"',
                                      "bridge": '"br9"', "interfaces": '["eth1"]',
                                      "control": f'"{sock}"'}))
    proc = _start_site(scratch_ns, str(config))
    try:
        _wait_for(sock, proc)
        during = _links(scratch_ns)
        br9 = with_index(scratch_ns, "br9")
        assert during["eth1"]["master"] == br9 and during["l2b0"]["master"] == br9
        assert during["eth1"]["up"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "CLEARTEXT" in err and "Traceback" not in err
    assert _links(scratch_ns) == before  # bridge kept, NIC released and down again, tap gone
    assert not os.path.exists(sock)


def with_index(ns: str, name: str) -> int:
    with IPRoute(netns=ns) as ipr:
        return ipr.link_lookup(ifname=name)[0]


def test_site_attaches_to_a_persistent_tap_and_removes_what_it_created(scratch_ns, tmp_path):
    made = subprocess.run(
        [sys.executable, "-m", "l2bridge", "tap", "add", "l2b7"],
        preexec_fn=netns_preexec(scratch_ns), capture_output=True, text=True, timeout=30,
        env=repo_env(),
    )
    assert made.returncode == 0, made.stderr
    sock = str(tmp_path / "b.sock")
    config = tmp_path / "b.toml"
    config.write_text(site_toml("b", {"insecure": "true", "listen": '"127.0.0.1:55556"',
                                      "tap": '"l2b7"', "control": f'"{sock}"'}))
    proc = _start_site(scratch_ns, str(config))
    try:
        _wait_for(sock, proc)
        assert _links(scratch_ns)["l2b7"]["master"] == with_index(scratch_ns, "br0")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    after = _links(scratch_ns)
    assert "br0" not in after  # created by the site, so removed by it
    assert after["l2b7"]["master"] is None  # the persistent tap stays, released
    if default_workers() > 1:  # a single-queue tap: one worker, said once
        assert "exists as a single-queue device: running 1 worker" in err


def test_bad_config_and_busy_port_are_one_line_errors(scratch_ns, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\nname = "a"\nlisten = "0.0.0.0:99999"\n')
    proc = _start_site(scratch_ns, str(bad))
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        line for line in err.strip().splitlines() if "site.listen" in line
    ] and len(err.strip().splitlines()) == 1
    with in_netns(scratch_ns):
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind(("127.0.0.1", 55557))
    try:
        busy = tmp_path / "busy.toml"
        busy.write_text(site_toml("a", {"insecure": "true", "listen": '"127.0.0.1:55557"',
                                        "control": f'"{tmp_path}/c.sock"'}))
        proc = _start_site(scratch_ns, str(busy))
        _, err = proc.communicate(timeout=10)
    finally:
        holder.close()
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert "EADDRINUSE" in last and "127.0.0.1:55557" in last and "Traceback" not in err
    assert "br0" not in _links(scratch_ns)  # the half-built site was undone


def test_low_latency_holds_the_cpu_latency_request_while_the_site_runs(scratch_ns, tmp_path):
    before = pmqos.current_limit_us()
    sock = str(tmp_path / "c.sock")
    config = tmp_path / "c.toml"
    config.write_text(site_toml("c", {"insecure": "true", "listen": '"127.0.0.1:55557"',
                                      "low_latency": "true", "workers": "1",
                                      "control": f'"{sock}"'}))
    proc = _start_site(scratch_ns, str(config))
    try:
        _wait_for(sock, proc)
        assert pmqos.current_limit_us() == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "low_latency: CPU wake-up latency held at 0" in err
    assert pmqos.current_limit_us() == before  # released with the site
