"""The lab CLI as a process (root): signals tear down; after SIGKILL, `clean` removes
exactly the dead lab's leftovers; `up`/`exec`/`list`/`down` work together."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from pyroute2 import netns as pr_netns
from support import REPO, two_sites
from support import lab_leftovers as leftovers

from netns.describe.scenario import load_scenario
from netns.realise.nsenter import netns_preexec, pids_in_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TWO = os.path.join(REPO, "scenarios", "two-offices.toml")
VXLAN = ["--gateway", "vxlan", "--wan-mtu", "1550"]
LONG_CHECK = two_sites(tail="""
[[check]]
kind = "ping"
from = "a.h1"
to = "b.h1"
count = 1

[[check]]
kind = "iperf3"
from = "a.h1"
to = "b.h1"
seconds = 30
timeout = 40
""")


@pytest.fixture(autouse=True)
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, veths, bridges)")


def lab_cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "netns", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(proc: subprocess.Popen[bytes], pattern: str, timeout_s: float = 20.0) -> list[str]:
    """Read stderr lines until one matches ``pattern``; return the lines read."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            lines.append(raw.decode())
            if re.search(pattern, lines[-1]):
                return lines
    proc.terminate()  # the runner tears its lab down
    proc.wait(timeout=15)
    raise AssertionError(f"no line matching {pattern!r}; got {lines}")


def prefix_of(lines: list[str]) -> str:
    for line in lines:
        m = re.match(r"lab (l2b[0-9a-f]{5}):", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no lab name in {lines}")



def wait_for_program(prefix: str, program: str, timeout_s: float = 20.0) -> None:
    """Wait (bounded) until ``program`` runs in one of the lab's namespaces."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ns in pr_netns.listnetns():
            if not ns.startswith(prefix + "-"):
                continue
            for pid in pids_in_netns(ns):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        if f.read().strip() == program:
                            return
                except OSError:
                    continue
        time.sleep(0.05)
    raise AssertionError(f"{program} never ran in lab {prefix} within {timeout_s:g} s")


@pytest.fixture
def long_scenario(tmp_path: object) -> str:
    path = os.path.join(str(tmp_path), "long.toml")
    with open(path, "w") as f:
        f.write(LONG_CHECK)
    return path


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_checks_tears_down(long_scenario: str, sig: int, status: int) -> None:
    proc = lab_cli("run", long_scenario, *VXLAN)
    try:
        lines = wait_for(proc, r"check iperf3 .* …$")
        prefix = prefix_of(lines)
        assert leftovers(prefix)
        wait_for_program(prefix, "iperf3")  # the teardown must also stop it
        proc.send_signal(sig)
        _, raw_err = proc.communicate(timeout=15)
        err = raw_err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert f"{signal.Signals(sig).name}: tearing down …" in err
    assert leftovers(prefix) == []


def test_clean_after_sigkill_removes_exactly_the_dead_lab(long_scenario: str) -> None:
    bystander = f"l2bkeep-{os.getpid()}"  # not a lab: clean must never touch it
    pr_netns.create(bystander)
    sleeper = subprocess.Popen(["sleep", "30"], preexec_fn=netns_preexec(bystander))
    up = None
    try:
        # A detached lab made by `up` must survive `clean` too.
        up = subprocess.run([sys.executable, "-m", "netns", "up", TWO, *VXLAN], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
        assert up.returncode == 0, up.stderr
        kept = up.stdout.strip()
        assert re.fullmatch(r"l2b[0-9a-f]{5}", kept)

        proc = lab_cli("run", long_scenario, *VXLAN)
        lines = wait_for(proc, r"check iperf3 .* …$")
        dead = prefix_of(lines)
        wait_for_program(dead, "iperf3")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        survivors = [pid for ns in leftovers(dead) if not ns.startswith("/")
                     for pid in pids_in_netns(ns)]
        assert leftovers(dead), "SIGKILL leaves the lab behind"

        listing = subprocess.run([sys.executable, "-m", "netns", "list"], cwd=REPO,
                                 capture_output=True, text=True, timeout=30).stdout
        assert re.search(rf"^{dead} .* pid {proc.pid} dead ", listing, re.MULTILINE), listing
        assert re.search(rf"^{kept} .* detached ", listing, re.MULTILINE), listing

        cleaned = subprocess.run([sys.executable, "-m", "netns", "clean"], cwd=REPO,
                                 capture_output=True, text=True, timeout=30)
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed {dead} " in cleaned.stdout
        assert kept not in cleaned.stdout
        assert leftovers(dead) == []
        assert all(not os.path.exists(f"/proc/{pid}/ns/net") for pid in survivors)
        assert bystander in pr_netns.listnetns()
        assert sleeper.poll() is None
        assert len(leftovers(kept)) == 10  # 9 namespaces + the state directory

        run = subprocess.run([sys.executable, "-m", "netns", "exec", kept, "london.h1", "--",
                              "ping", "-c", "1", "-W", "2", "10.77.2.10"], cwd=REPO,
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 received" in run.stdout
    finally:
        if up is not None and up.returncode == 0:
            down = subprocess.run([sys.executable, "-m", "netns", "down", up.stdout.strip()],
                                  cwd=REPO, capture_output=True, text=True, timeout=30)
            assert down.returncode == 0, down.stderr
            assert leftovers(up.stdout.strip()) == []
        sleeper.kill()
        sleeper.wait()
        pr_netns.remove(bystander)


def test_run_json_with_compare(tmp_path: object) -> None:
    done = subprocess.run([sys.executable, "-m", "netns", "run", TWO, *VXLAN, "--json",
                           "--compare", "vxlan"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and doc["gateway"] == "vxlan"
    names = [c["name"] for c in doc["checks"]]
    assert names[-1] == "iperf3 london.h1 → berlin.h1 [vxlan]"
    assert doc["checks"][-1]["numbers"]["ratio"] > 0
    assert doc["total"] == len(load_scenario(TWO).checks) + 1
    assert leftovers(doc["lab"]) == []


INNER_TESTS = f"""
import sys
import trio

async def test_holds_a_lab(lab_scenario):
    lab = await lab_scenario({TWO!r}, gateway="vxlan", wan_mtu=1550)
    print("LAB", lab.plan.prefix, file=sys.stderr, flush=True)
    await trio.sleep(60)

def test_after_it():
    print("RAN AFTER THE SIGTERM", file=sys.stderr, flush=True)
"""


def test_sigterm_to_a_test_run_tears_its_labs_down_and_ends_it(tmp_path: object) -> None:
    """The pytest plugin: SIGTERM to a test runner (a CI job cancelled) interrupts the
    trio test holding a lab as Ctrl-C does, the lab is torn down, and no test runs after."""
    path = os.path.join(str(tmp_path), "test_inner.py")
    with open(path, "w") as f:
        f.write(INNER_TESTS)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "-o", "trio_mode=true", path], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        prefix = wait_for(proc, r"^LAB l2b[0-9a-f]{5}$", timeout_s=60)[-1].split()[1]
        assert leftovers(prefix)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode() + err.decode()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text
    assert "Interrupted: SIGTERM: the test run was asked to stop" in text
    assert "RAN AFTER THE SIGTERM" not in text and "abandoned" not in text
    assert leftovers(prefix) == []
