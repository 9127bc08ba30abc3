"""A real ``l2bridge up`` as systemd would run it (root, scratch namespace).

The service manager is played by an AF_UNIX datagram socket ($NOTIFY_SOCKET, a
path or an abstract name: abstract names live in the network namespace, so the
listener is made inside it).  The site runs two workers; one is frozen with
SIGSTOP to show that the watchdog stops pinging while the dataplane is stalled.
Also: reloads by SIGHUP and by `l2bridge reload`, and /metrics scraped with a
real HTTP client and parsed with Prometheus' own parser.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import repo_env, site_toml

from l2bridge.io.notify import socket_address
from l2bridge.ops.control import query
from netns.realise.nsenter import in_netns, netns_preexec

BOUND_S = 30.0  # a wait longer than this is a failure


class Manager:
    """The service manager's end of $NOTIFY_SOCKET: every message the site sent, in order."""

    def __init__(self, ns: str, name: str) -> None:
        self.name = name
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(name))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.split("\n")))

    def wait_for(self, key: str, value: str = "1", after: int = 0) -> int:
        """The index of the first message from ``after`` on with ``key=value``."""
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            for index, message in enumerate(self.drain()[after:], after):
                if message.get(key) == value:
                    return index
            time.sleep(0.05)
        pytest.fail(f"no {key}={value} within {BOUND_S} s: {self.messages[after:]}")

    def pings_during(self, seconds: float) -> int:
        start = len(self.drain())
        time.sleep(seconds)
        return sum(1 for m in self.drain()[start:] if m.get("WATCHDOG") == "1")


class Daemon:
    def __init__(self, ns: str, tmp: Path, notify: str | None, **site: str) -> None:
        self.ns = ns
        self.sock = str(tmp / "a.sock")
        self.log = tmp / "a.log"
        self.config = tmp / "a.toml"
        self.config.write_text(site_toml("a", {
            "insecure": "true", "listen": '"127.0.0.1:55555"', "workers": "2",
            "control": f'"{self.sock}"', **site}))
        env = repo_env()
        if notify:
            env.update(NOTIFY_SOCKET=notify, WATCHDOG_USEC="1000000")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "l2bridge", "up", "-c", str(self.config)],
                preexec_fn=netns_preexec(ns), stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=env)

    def show(self) -> dict:
        reply = query(str(self.sock), "show", timeout_s=10)
        assert isinstance(reply, dict)
        return reply

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "l2bridge", *args], capture_output=True,
                              text=True, timeout=60, env=repo_env(),
                              preexec_fn=netns_preexec(self.ns))

    def wait_log(self, text: str) -> None:
        deadline = time.monotonic() + BOUND_S
        while text not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=BOUND_S)


@pytest.fixture(params=["path", "abstract"])
def manager(request, scratch_ns: str, tmp_path: Path) -> Iterator[Manager]:
    name = (str(tmp_path / "notify") if request.param == "path"
            else f"@l2bridge-notify-{secrets.token_hex(6)}")
    manager = Manager(scratch_ns, name)
    with contextlib.closing(manager.sock):
        yield manager


def test_notify_watchdog_reload_and_stop_as_systemd_sees_them(scratch_ns, tmp_path, manager):
    site = Daemon(scratch_ns, tmp_path, manager.name)
    try:
        ready = manager.wait_for("READY")
        assert manager.messages[ready]["STATUS"].startswith("0/0 peers up")
        assert site.show()["workers"]["count"] == 2  # up and answering when READY came
        assert manager.pings_during(2.0) >= 2  # idle, healthy: pings every 0.5 s
        follower = site.show()["workers"]["followers"][0]["pid"]
        os.kill(follower, signal.SIGSTOP)  # a worker stops making progress
        try:
            site.wait_log("watchdog: not pinging the service manager: worker 1")
            assert manager.pings_during(2.0) == 0
        finally:
            os.kill(follower, signal.SIGCONT)
        deadline = time.monotonic() + BOUND_S
        while manager.pings_during(1.0) == 0:
            assert time.monotonic() < deadline, "the watchdog never came back"
        mark = len(manager.drain())
        site.proc.send_signal(signal.SIGHUP)
        reloading = manager.wait_for("RELOADING", after=mark)
        assert int(manager.messages[reloading]["MONOTONIC_USEC"]) > 0
        manager.wait_for("READY", after=reloading)
        refused = site.cli("reload", "-c", str(site.config).replace("a.toml", "b.toml"))
        assert refused.returncode != 0  # no such site config: one line
        site.config.write_text(site.config.read_text().replace("55555", "4000"))
        refused = site.cli("reload", "-c", str(site.config))
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert "site.listen cannot change while the site runs" in line
        assert site.show()["config"]["last_reload"]["result"] == "failed"
        mark = len(manager.drain())
        assert site.stop() == 0
        manager.wait_for("STOPPING", after=mark)
    finally:
        site.stop()


def test_metrics_are_served_and_a_taken_port_is_one_line(scratch_ns, tmp_path):
    site = Daemon(scratch_ns, tmp_path, None, metrics='"127.0.0.1:9587"')
    try:
        site.wait_log("metrics: http://127.0.0.1:9587/metrics")

        def scrape() -> str:
            url = "http://127.0.0.1:9587/metrics"
            with in_netns(scratch_ns), urllib.request.urlopen(url, timeout=10) as reply:
                assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                return reply.read().decode()

        names = {f.name for f in text_string_to_metric_families(scrape())}
        assert {"l2bridge_build_info", "l2bridge_workers", "l2bridge_fdb_entries",
                "l2bridge_drops"} <= names
        assert site.show()["site"] == "a"
        shown = site.cli("show", "-s", site.sock, "--prometheus")
        assert shown.returncode == 0
        assert {f.name for f in text_string_to_metric_families(shown.stdout)} == names
    finally:
        assert site.stop() == 0
    taken = tmp_path / "taken"
    taken.mkdir()
    with in_netns(scratch_ns):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 9599))
    holder.listen()
    second = Daemon(scratch_ns, taken, None, metrics='"127.0.0.1:9599"')
    try:
        second.wait_log("metrics: cannot listen on 127.0.0.1:9599: Address already in use")
        assert second.show()["site"] == "a"  # the site runs without metrics
    finally:
        assert second.stop() == 0
        holder.close()
