"""Lab registry (no root): state files, owner liveness by pid and start time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
from support import two_sites

from netns.describe.plan import make_plan
from netns.describe.scenario import parse_scenario
from netns.realise.registry import (
    Registry,
    list_labs,
    owner_alive,
    owns_namespace,
    process_start_time,
    read_state,
)

TEXT = two_sites()


def test_process_start_time_of_self_and_of_a_dead_pid() -> None:
    assert isinstance(process_start_time(os.getpid()), int)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_start_time(child.pid) is None


def test_state_file_written_before_namespaces_and_updated(tmp_path: object) -> None:
    root = str(tmp_path)
    plan = make_plan(parse_scenario(TEXT, "x.toml"), prefix="l2b0c0de")
    reg = Registry.create(plan, detached=False, root=root)
    state = read_state("l2b0c0de", root)
    assert state is not None
    assert (state.pid, state.namespaces, state.scenario, state.gateway) == (
        os.getpid(), [], "x.toml", "l2bridge")
    assert state.nodes["a.h1"] == "l2b0c0de-a-h1" and state.nodes["wan"] == "l2b0c0de-wan"
    assert owner_alive(state)
    reg.add_namespace("l2b0c0de-wan")
    assert read_state("l2b0c0de", root).namespaces == ["l2b0c0de-wan"]
    reg.detach()
    state = read_state("l2b0c0de", root)
    assert state.detached and owner_alive(state)
    assert [s.prefix for s in list_labs(root)] == ["l2b0c0de"]
    reg.remove_dir()
    assert list_labs(root) == []


def test_owner_dead_when_pid_reused_by_another_process(tmp_path: object) -> None:
    plan = make_plan(parse_scenario(TEXT, "x.toml"), prefix="l2b0c0df")
    reg = Registry.create(plan, detached=False, root=str(tmp_path))
    reg.state.start_time = (reg.state.start_time or 0) - 1  # same pid, different process
    assert not owner_alive(reg.state)


def test_list_ignores_foreign_directories(tmp_path: object) -> None:
    os.mkdir(os.path.join(str(tmp_path), "not-a-lab"))
    os.mkdir(os.path.join(str(tmp_path), "l2b12345"))  # no state file
    assert list_labs(str(tmp_path)) == []


def test_read_state_takes_only_lab_names(tmp_path: object) -> None:
    root = str(tmp_path)
    for name in ("../x", "/tmp/x", "..", "", "l2b0000", "l2b0000g"):
        with pytest.raises(ValueError, match="not a lab name"):
            read_state(name, root)


def test_a_state_file_naming_another_lab_or_malformed_is_unreadable(tmp_path: object) -> None:
    root = str(tmp_path)
    plan = make_plan(parse_scenario(TEXT, "x.toml"), prefix="l2b0c0de")
    reg = Registry.create(plan, detached=True, root=root)
    assert read_state("l2b0c0de", root) is not None
    for damage in ({"prefix": "l2b0c0df"}, {"prefix": "../x"}, {"namespaces": "l2b0c0de-wan"},
                   {"nodes": ["l2b0c0de-wan"]}, {"namespaces": [1]}):
        with open(os.path.join(reg.dir, "state.json"), "w") as f:
            json.dump({**asdict(reg.state), **damage}, f)
        assert read_state("l2b0c0de", root) is None, damage


@pytest.mark.parametrize(("ns", "owned"), [
    ("l2b0c0de", True), ("l2b0c0de-wan", True), ("l2b0c0de-a-h1", True), ("l2b0c0de-mn", True),
    ("l2b0c0df-wan", False), ("l2b0c0dewan", False), ("wan", False), ("", False),
    ("/proc/1/ns/net", False), ("l2b0c0de-/../../proc/1/ns/net", False),
    ("l2b0c0de-..", False), ("l2b0c0de-\x00", False), ("l2b0c0de-", False),
])
def test_a_lab_owns_only_namespaces_named_after_it(ns: str, owned: bool) -> None:
    assert owns_namespace("l2b0c0de", ns) is owned
    assert not owns_namespace("../x", "../x-wan")
