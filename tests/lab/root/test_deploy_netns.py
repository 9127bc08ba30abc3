"""docs/deploy.md, walked in network namespaces (root).

The lab provides three offices (gateway namespaces with a LAN NIC ``eth1`` and
a WAN address) and is told to start no daemon of its own; then the guide's
commands run as an admin would run them on each gateway: keys (genkey,
pubkey, genpsk), configs as in step 3, ``check``, ``up`` (what the unit's
ExecStart runs), ``show`` and ``fdb``, a ping between the offices, adding Paris
with ``reload`` on London and Berlin (what ExecReload runs) without losing a
ping between them, and the metrics of step 8.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support import repo_env, site_toml, two_sites

from netns.checks import traffic
from netns.describe.scenario import parse_scenario
from netns.realise.nsenter import in_netns, netns_preexec

SCENARIO = two_sites("london", "berlin") + """
[[site]]
name = "paris"
[[site.host]]
name = "h1"
"""
BOUND_S = 30.0
PORT = 55555


class Office:
    """One gateway as its admin sees it: /etc/l2bridge is a directory of the test."""

    def __init__(self, lab, name: str, etc: Path) -> None:
        self.name = name
        self.plan = lab.plan.site(name)
        self.etc = etc / name
        self.etc.mkdir(mode=0o700)
        self.proc: subprocess.Popen | None = None

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "l2bridge", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, env=repo_env(),
                              preexec_fn=netns_preexec(self.plan.gw_ns))

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"l2bridge {' '.join(args)}: {done.stderr}"
        return done.stdout

    @property
    def config(self) -> str:
        return str(self.etc / f"{self.name}.toml")

    def write_config(self, peers: dict[str, dict[str, str]]) -> None:
        site = {"listen": f'"0.0.0.0:{PORT}"', "bridge": '"br0"', "tap": '"l2b0"',
                "interfaces": '["eth1"]', "private_key_file": f'"{self.etc}/{self.name}.key"',
                "control": f'"{self.etc}/{self.name}.sock"', "metrics": '"127.0.0.1:9587"',
                "workers": "1", "keepalive": "1", "dead_after": "3"}
        Path(self.config).write_text(site_toml(self.name, site, peers))

    def up(self) -> None:
        log = open(self.etc / "log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "l2bridge", "up", "-c", self.config], stdout=log,
            stderr=log, stdin=subprocess.DEVNULL, env=repo_env(),
            preexec_fn=netns_preexec(self.plan.gw_ns))
        log.close()

    def show(self) -> dict:
        return json.loads(self.ok("show", "-c", self.config, "--json"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=BOUND_S) == 0


async def until(predicate, what: str) -> None:
    with trio.fail_after(BOUND_S):
        while not predicate():
            await trio.sleep(0.1)


@pytest.mark.slow
async def test_the_deployment_guide(lab_scenario, tmp_path):
    lab = await lab_scenario(parse_scenario(SCENARIO, "deploy.toml"), gateway="l2bridge")
    for site in ("london", "berlin", "paris"):
        await lab.stop_site(site)  # the offices are the admin's from here on
    offices = {name: Office(lab, name, tmp_path) for name in ("london", "berlin", "paris")}
    try:
        public = await trio.to_thread.run_sync(walk, offices)
        london, paris = offices["london"], offices["paris"]
        await until(lambda: all(p["state"] == "up" for p in london.show()["peers"]), "up")
        h1, b1, p1 = lab.node("london.h1"), lab.node("berlin.h1"), lab.node("paris.h1")
        assert (await traffic.ping(h1.ns, b1.ip, count=3, interval_s=0.1)).ok
        fdb = json.loads(london.ok("fdb", "-c", london.config, "--json"))
        assert {e["peer"] for e in fdb} >= {"local", "berlin"}
        # Step 7: Paris joins; London and Berlin reload and keep pinging each other.
        results = {}
        async with trio.open_nursery() as nursery:

            async def ping() -> None:
                results["ping"] = await traffic.ping(h1.ns, b1.ip, count=200, interval_s=0.01,
                                                     deadline_s=BOUND_S)

            nursery.start_soon(ping)
            await trio.to_thread.run_sync(add_paris, offices, public)
        assert results["ping"].received == results["ping"].sent == 200
        await until(lambda: all(p["state"] == "up" for p in paris.show()["peers"]), "paris")
        assert (await traffic.ping(h1.ns, p1.ip, count=3, interval_s=0.1)).ok
        # Step 8: the metrics the scrape config collects.
        with in_netns(london.plan.gw_ns), urllib.request.urlopen(
                "http://127.0.0.1:9587/metrics", timeout=10) as reply:
            families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
        up = {s.labels["peer"]: s.value for s in families["l2bridge_peer_up"].samples}
        assert up == {"berlin": 1.0, "paris": 1.0}
        assert "l2bridge_drops" in families and "l2bridge_peer_handshakes" in families
        textfile = london.ok("show", "-c", london.config, "--prometheus")
        assert "l2bridge_peer_up" in textfile
    finally:
        for office in offices.values():
            office.stop()


def walk(offices: dict[str, Office]) -> dict[str, str]:
    """Steps 2, 3, 5 (ExecStartPre, ExecStart) for London and Berlin; the public keys."""
    public = {}
    for office in offices.values():  # step 2: keys
        office.ok("genkey", str(office.etc / f"{office.name}.key"))
        public[office.name] = office.ok(
            "pubkey", stdin=(office.etc / f"{office.name}.key").read_text()).strip()
    london, berlin = offices["london"], offices["berlin"]
    london.ok("genpsk", str(london.etc / "london-berlin.psk"))
    psk = (london.etc / "london-berlin.psk").read_bytes()  # copied over a secure channel
    (berlin.etc / "london-berlin.psk").write_bytes(psk)
    (berlin.etc / "london-berlin.psk").chmod(0o600)
    for office, other in ((london, berlin), (berlin, london)):  # step 3: configs
        office.write_config({other.name: {
            "endpoint": f'"{other.plan.underlay}:{PORT}"',
            "public_key": f'"{public[other.name]}"',
            "preshared_key_file": f'"{office.etc}/london-berlin.psk"'}})
        assert "ok" in office.ok("check", "-c", office.config)
        office.up()
    paris = offices["paris"]
    paris.write_config({name: {"endpoint": f'"{offices[name].plan.underlay}:{PORT}"',
                               "public_key": f'"{public[name]}"'}
                        for name in ("london", "berlin")})
    return public


def add_paris(offices: dict[str, Office], public: dict[str, str]) -> None:
    """Step 7: Paris starts; London and Berlin add it to their configs and reload."""
    paris = offices["paris"]
    assert "ok" in paris.ok("check", "-c", paris.config)
    paris.up()
    for name in ("london", "berlin"):
        office = offices[name]
        text = Path(office.config).read_text()
        text += (f'\n[[peer]]\nname = "paris"\nendpoint = "{paris.plan.underlay}:{PORT}"\n'
                 f'public_key = "{public["paris"]}"\n')
        Path(office.config).write_text(text)
        assert "reloaded: peers added: paris" in office.ok("reload", "-c", office.config)
