"""Lab registry (root): destroy touches only a lab's own namespaces; a killed test's
scratch namespaces are listed and cleaned like a dead runner's lab."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pyroute2 import netns as pr_netns
from support import REPO, two_sites

from netns.describe.plan import LAB_RUN_DIR, new_prefix
from netns.realise.nsenter import netns_preexec, pids_in_netns
from netns.realise.registry import (
    LabState,
    destroy,
    remove_namespace,
)

TEXT = two_sites()


def test_destroy_touches_only_the_labs_own_namespaces(tmp_path: object) -> None:
    """Whatever state.json lists: a namespace without the lab's prefix, and the process in
    it, survive; removing the lab reports it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace")
    bystander = f"l2bkeep-{os.getpid()}"
    pr_netns.create(bystander)
    sleeper = None
    try:
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=netns_preexec(bystander))
        prefix = new_prefix()
        state = LabState(prefix=prefix, scenario="x.toml", gateway="l2bridge", pid=0,
                         start_time=None, namespaces=[f"{prefix}-wan", bystander])
        problems = destroy(state, str(tmp_path))
        assert problems == [f"namespace {bystander!r}: not one of the lab's ({prefix}-…); "
                            "left alone"]
        assert bystander in pr_netns.listnetns()
        assert sleeper.poll() is None
        bad = LabState(prefix="../x", scenario="x.toml", gateway="l2bridge", pid=0,
                       start_time=None, namespaces=[bystander])
        assert destroy(bad, str(tmp_path)) == ["'../x' is not a lab name; nothing removed"]
        assert bystander in pr_netns.listnetns() and sleeper.poll() is None
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        remove_namespace(bystander)  # gone already if the test failed


KILLED_OWNER = """
import subprocess, sys, time
from netns.realise.nsenter import netns_preexec
from netns.realise.registry import scratch_namespaces
with scratch_namespaces("a killed test's topology", ["s", "h"]) as names:
    subprocess.Popen(["sleep", "30"], preexec_fn=netns_preexec(names[1]))
    print(" ".join(names), flush=True)
    time.sleep(30)
"""


def test_scratch_namespaces_of_a_killed_owner_are_listed_and_cleaned() -> None:
    """A test's own namespaces (no lab's) outlive a SIGKILLed runner only until ``lab clean``:
    recorded before they exist, listed with their purpose, removed with what runs inside."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces")
    owner = subprocess.Popen([sys.executable, "-c", KILLED_OWNER], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        names = owner.stdout.readline().split()
        assert len(names) == 2, "the owner did not make its namespaces"
        prefix = names[0].rsplit("-", 1)[0]
        assert names == [f"{prefix}-s", f"{prefix}-h"]
        sleepers = pids_in_netns(names[1])
        assert sleepers
        owner.kill()
        owner.wait()
        assert all(ns in pr_netns.listnetns() for ns in names), "SIGKILL leaves them behind"

        listing = lab_cli("list").stdout
        assert re.search(rf"^{prefix}  a killed test's topology  scratch  pid {owner.pid} dead"
                         r"  2 ", listing, re.MULTILINE), listing
        cleaned = lab_cli("clean").stdout
        assert (f"removed {prefix} (a killed test's topology, owner pid {owner.pid} dead, "
                "2 namespaces)") in cleaned
        assert not any(ns in pr_netns.listnetns() for ns in names)
        assert not os.path.exists(os.path.join(LAB_RUN_DIR, prefix))
        assert all(not os.path.exists(f"/proc/{pid}/ns/net") for pid in sleepers)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        lab_cli("clean")


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "netns", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done
