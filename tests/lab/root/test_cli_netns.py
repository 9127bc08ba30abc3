"""The lab CLI without root: plan, bad input (exit 2, one line), root checks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import netns as pr_netns
from support import REPO

from netns import cli
from netns.describe.plan import LAB_RUN_DIR
from netns.realise.nsenter import netns_preexec
from netns.realise.registry import LabState, remove_namespace

TWO = os.path.join(REPO, "scenarios", "two-offices.toml")


COLLIDING = """
[[site]]
name = "zq"
[[site.host]]
name = "b-c"
[[site]]
name = "zq-b"
[[site.host]]
name = "c"
"""


def lab_names(suffix: str) -> set[str]:
    """Namespaces and lab directories on this machine whose name ends in ``suffix``."""
    found = set()
    for root in ("/run/netns", LAB_RUN_DIR):
        with contextlib.suppress(FileNotFoundError):
            found |= {n for n in os.listdir(root) if n.endswith(suffix)}
    return found


def test_unknown_lab_for_down_and_exec(capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("down/exec need root")
    assert cli.main(["down", "l2bfffff"]) == 2
    assert cli.main(["exec", "l2bfffff", "a.h1", "--", "true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["lab l2bfffff: no such lab (see `l2bridge lab list`)"] * 2


NOT_A_LAB = ("is not a lab name (expected l2b and 5 hex digits, like l2b3f9a1; "
             "see `l2bridge lab list`)")


@pytest.fixture
def bystander() -> Iterator[str]:
    """A real namespace without any lab's prefix, with a process in it; both must survive."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace")
    name = f"l2bkeep-{os.getpid()}"
    pr_netns.create(name)
    sleeper = None
    try:
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=netns_preexec(name))
        yield name
        assert sleeper.poll() is None, "the bystander's process was killed"
        assert name in pr_netns.listnetns(), "the bystander namespace was removed"
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        remove_namespace(name)  # gone already if the test failed


def crafted_state(directory: str, prefix: str, namespaces: list[str]) -> None:
    os.makedirs(directory)
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump({"prefix": prefix, "scenario": "x.toml", "gateway": "l2bridge", "pid": 0,
                   "start_time": None, "namespaces": namespaces,
                   "nodes": {"a.h1": namespaces[0]}, "created": 0.0}, f)


def test_down_never_follows_a_path_to_a_crafted_state(
        bystander: str, tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    target = os.path.join(str(tmp_path), "x")
    crafted_state(target, "x", [bystander])
    names = [target]
    if os.path.isdir(LAB_RUN_DIR):  # the same file reached from the run directory
        names.append(os.path.relpath(target, LAB_RUN_DIR))
    for name in names:
        assert cli.main(["down", name]) == 2
        assert capsys.readouterr().err == f"lab down: {name!r} {NOT_A_LAB}\n"
        assert cli.main(["exec", name, "a.h1", "--", "true"]) == 2
        assert capsys.readouterr().err == f"lab exec: {name!r} {NOT_A_LAB}\n"
    assert os.path.exists(os.path.join(target, "state.json"))


def test_exec_never_enters_a_namespace_that_is_not_the_labs(
        bystander: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = LabState(prefix="l2b0c0de", scenario="x.toml", gateway="l2bridge", pid=0,
                     start_time=None, namespaces=[bystander], nodes={"a.h1": bystander})
    monkeypatch.setattr(cli, "read_state", lambda name: state)
    assert cli.main(["exec", "l2b0c0de", "a.h1", "--", "true"]) == 1
    assert capsys.readouterr().err == (
        f'lab l2b0c0de: node "a.h1" is namespace {bystander!r}, which is not one of the '
        "lab's (l2b0c0de-…); its state file is damaged, not entering it\n")
