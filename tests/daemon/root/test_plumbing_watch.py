"""A running site watches its plumbing (root, real devices in a scratch namespace).

What an admin or another program can do to the devices beside a running site,
and what the site does about it (rules in ``l2bridge/plumbing.py``): its own
bridge deleted -> rebuilt; the tap detached or set down -> restored; a LAN NIC
unplugged -> said, re-attached when it returns; the admin's bridge or the tap
deleted -> one line and exit status 1.  Also: SIGHUP is not fatal, a site
killed with SIGKILL is recognised by its bridge's marker when it starts again,
and a control path naming someone else's file is refused without touching it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from support import repo_env, site_toml

from l2bridge.ops.control import ControlError, query
from netns.realise.nsenter import netns_preexec

WAIT_S = 15.0  # a bound for the watcher to notice and act (it checks on every link event)


class Site:
    """One ``l2bridge up`` process in ``ns``, its log in a file."""

    def __init__(self, ns: str, tmp: Path, *, bridge: str = "br0", name: str = "a") -> None:
        self.ns = ns
        self.sock = str(tmp / f"{name}.sock")
        self.log_path = tmp / f"{name}.log"
        self.config = tmp / f"{name}.toml"
        self.config.write_text(site_toml(name, {
            "insecure": "true", "listen": '"127.0.0.1:55555"', "bridge": f'"{bridge}"',
            "interfaces": '["eth1"]', "workers": "1", "control": f'"{self.sock}"'}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Site:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "l2bridge", "up", "-c", str(self.config)],
                preexec_fn=netns_preexec(self.ns), stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=repo_env(),
            )
        wait_until(lambda: self.answers(), f"{self.sock} to answer", self)
        return self

    def answers(self) -> bool:
        try:
            self.show()
        except ControlError:
            return False
        return True

    def show(self) -> dict:
        reply = query(str(self.sock), "show", timeout_s=5)
        assert isinstance(reply, dict)
        return reply

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=WAIT_S)


def wait_until(ready: Callable[[], bool], what: str, site: Site | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if site is not None and site.proc is not None and site.proc.poll() is not None:
            pytest.fail(f"l2bridge exited ({site.proc.returncode}) waiting for {what}:\n{site.log}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT_S} s" + (f":\n{site.log}" if site else ""))
        time.sleep(0.05)


def links(ns: str) -> dict[str, dict]:
    with IPRoute(netns=ns) as ipr:
        return {
            link.get_attr("IFLA_IFNAME"): {
                "index": link["index"],
                "master": link.get_attr("IFLA_MASTER"),
                "up": bool(link["flags"] & 1),
                "alias": link.get_attr("IFLA_IFALIAS"),
            }
            for link in ipr.get_links()
        }


def ip(ns: str, *args: str, **kwargs) -> None:
    with IPRoute(netns=ns) as ipr:
        getattr(ipr, args[0])(*args[1:], **kwargs)


def add_nic(ns: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="eth1", kind="veth", peer={"ifname": "eth1p"})


def delete(ns: str, name: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def attached(ns: str, port: str, bridge: str = "br0") -> bool:
    now = links(ns)
    return bridge in now and port in now and now[port]["master"] == now[bridge]["index"]


@pytest.fixture
def site(scratch_ns: str, tmp_path: Path) -> Iterator[Site]:
    add_nic(scratch_ns)
    running = Site(scratch_ns, tmp_path).start()
    try:
        yield running
    finally:
        if running.running():
            running.stop()


def test_its_own_bridge_deleted_is_rebuilt_with_every_port(site: Site) -> None:
    ns = site.ns
    assert links(ns)["br0"]["alias"] == "l2bridge site a"  # the marker of a bridge it created
    delete(ns, "br0")
    said = 'bridge "br0" was deleted; l2bridge created it, so it is created again'
    wait_until(lambda: attached(ns, "l2b0") and attached(ns, "eth1") and said in site.log,
               "bridge rebuilt", site)
    assert links(ns)["br0"]["up"] and links(ns)["br0"]["alias"] == "l2bridge site a"
    plumbing = site.show()["plumbing"]
    assert plumbing["bridge"]["present"] and plumbing["tap"]["attached"]
    assert plumbing["interfaces"] == [{"name": "eth1", "present": True, "attached": True,
                                       "up": True}]
    assert site.stop() == 0
    assert "br0" not in links(ns) and links(ns)["eth1"]["master"] is None


def test_the_tap_detached_or_set_down_is_restored(site: Site) -> None:
    ns = site.ns
    tap = links(ns)["l2b0"]["index"]
    ip(ns, "link", "set", index=tap, master=0)
    said = 'tap "l2b0" left bridge "br0"; attached it again'
    wait_until(lambda: attached(ns, "l2b0") and said in site.log, "tap attached again", site)
    ip(ns, "link", "set", index=tap, state="down")
    said = 'tap "l2b0" was set down; brought it up again'
    wait_until(lambda: links(ns)["l2b0"]["up"] and said in site.log, "tap up again", site)


def test_a_nic_unplugged_is_said_and_attached_again_when_it_returns(site: Site) -> None:
    ns = site.ns
    delete(ns, "eth1")
    wait_until(lambda: not site.show()["plumbing"]["interfaces"][0]["present"]
               and 'interface "eth1" disappeared' in site.log, "NIC gone", site)
    assert site.running()
    add_nic(ns)
    said = 'interface "eth1" is back; attached it to bridge "br0" again'
    wait_until(lambda: attached(ns, "eth1") and said in site.log, "NIC attached again", site)
    assert site.show()["plumbing"]["interfaces"][0]["attached"]


def test_sighup_is_logged_and_the_site_keeps_running(site: Site) -> None:
    for count in (1, 2, 3):
        site.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda n=count: site.log.count("SIGHUP:") == n, f"SIGHUP line {count}", site)
    assert site.running() and site.answers()
    assert site.stop() == 0
    assert "br0" not in links(site.ns) and not os.path.exists(site.sock)


def test_the_tap_deleted_stops_the_site_with_one_line(site: Site) -> None:
    delete(site.ns, "l2b0")
    assert site.stop(signal.SIGCONT) == 1  # SIGCONT: harmless; the site exits by itself
    last = site.log.strip().splitlines()[-1]
    # Whoever notices first says it: the watcher, or the dataplane's next read.
    assert 'tap "l2b0"' in last and "deleted" in last and "Traceback" not in site.log
    assert "br0" not in links(site.ns) and not os.path.exists(site.sock)


def test_the_admins_bridge_deleted_stops_the_site(scratch_ns: str, tmp_path: Path) -> None:
    add_nic(scratch_ns)
    with IPRoute(netns=scratch_ns) as ipr:
        ipr.link("add", ifname="br9", kind="bridge")
    site = Site(scratch_ns, tmp_path, bridge="br9").start()
    try:
        delete(scratch_ns, "br9")
        assert site.stop(signal.SIGCONT) == 1
    finally:
        if site.running():
            site.stop()
    last = site.log.strip().splitlines()[-1]
    assert 'bridge "br9" was deleted; l2bridge did not create it' in last
    assert "Traceback" not in site.log and not os.path.exists(site.sock)


def test_a_killed_site_is_recognised_by_its_marker(scratch_ns: str, tmp_path: Path) -> None:
    add_nic(scratch_ns)
    first = Site(scratch_ns, tmp_path).start()
    first.stop(signal.SIGKILL)
    left = links(scratch_ns)
    assert left["br0"]["alias"] == "l2bridge site a" and attached(scratch_ns, "eth1")
    assert os.path.exists(first.sock)  # stale: nobody listens
    again = Site(scratch_ns, tmp_path).start()
    assert "left by an earlier run of this site" in again.log
    assert again.stop() == 0
    after = links(scratch_ns)
    assert "br0" not in after and after["eth1"]["master"] is None  # removed as its own


def test_a_control_path_on_someone_elses_file_is_refused_untouched(scratch_ns: str,
                                                                  tmp_path: Path) -> None:
    victim = tmp_path / "hosts"
    victim.write_text("127.0.0.1 localhost\n")
    config = tmp_path / "a.toml"
    config.write_text(site_toml("a", {"insecure": "true", "listen": '"127.0.0.1:55555"',
                                      "control": f'"{victim}"'}))
    run = subprocess.run([sys.executable, "-m", "l2bridge", "up", "-c", str(config)],
                         preexec_fn=netns_preexec(scratch_ns), capture_output=True, text=True,
                         timeout=60, env=repo_env())
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert str(victim) in line and "never deletes" in line
    assert victim.read_text() == "127.0.0.1 localhost\n"
    assert "br0" not in links(scratch_ns) and "l2b0" not in links(scratch_ns)
