"""Lab registry (no root): state files, owner liveness by pid and start time."""

from __future__ import annotations

import os
import subprocess

import pytest
from pyroute2 import netns as pr_netns
from support import two_sites

from netns.describe.plan import new_prefix
from netns.realise.nsenter import netns_preexec
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
