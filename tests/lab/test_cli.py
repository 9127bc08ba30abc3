"""The lab CLI without root: plan, bad input (exit 2, one line), root checks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pyroute2 import netns as pr_netns

from netns import cli
from netns.nsenter import netns_preexec
from netns.plan import LAB_RUN_DIR
from netns.registry import LabState, remove_namespace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWO = os.path.join(ROOT, "scenarios", "two-offices.toml")


def test_plan_prints_names_and_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", TWO]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lab l2b") and "2 sites, 4 hosts, gateway l2bridge" in out[0]
    assert any(line.endswith("-wan") and line.startswith("netns add") for line in out)
    assert any("l2bridge up -c /run/l2bridge/lab/" in line for line in out)


def test_bad_scenario_exits_2_with_one_line(tmp_path: object,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(str(tmp_path), "bad.toml")
    with open(path, "w") as f:
        f.write("[wan]\nmtuu = 1500\n")
    assert cli.main(["run", path]) == 2
    assert cli.main(["plan", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f'{path}: wan.mtuu: unknown key "mtuu" (did you mean "mtu"?)'


@pytest.mark.parametrize("nesting", [
    "a = " + "[" * 5000 + "]" * 5000,
    "a = " + "{ b = " * 5000 + "1" + " }" * 5000,
    "[[site]]\nname = 'x'\nl2bridge." + ".".join(["a"] * 3000) + " = 1\n"
    "[[site.host]]\nname = 'h1'\n[[site]]\nname = 'y'\n[[site.host]]\nname = 'h1'",
], ids=["arrays", "inline tables", "dotted keys in l2bridge"])
def test_deeply_nested_scenario_is_one_line_not_a_traceback(
        nesting: str, tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(str(tmp_path), "deep.toml")
    with open(path, "w") as f:
        f.write(nesting + "\n")
    assert cli.main(["plan", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{path}: "), err[:300]


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


@pytest.mark.parametrize("command", ["plan", "up", "run"])
def test_colliding_node_names_refused_before_anything_exists(
        command: str, tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(str(tmp_path), "clash.toml")
    with open(path, "w") as f:
        f.write(COLLIDING)
    before = lab_names("-zq-b-c") | lab_names("-zq-gw")
    assert cli.main([command, path]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf'{re.escape(path)}: site\[1\]\.host\[0\]\.name: site\[0\]\.host\[0\] "b-c" and '
        r'site\[1\]\.host\[0\] "c" would both be namespace "l2b[0-9a-f]{5}-zq-b-c"; '
        r"rename one\n", err), err
    assert lab_names("-zq-b-c") | lab_names("-zq-gw") == before


def test_vxlan_on_small_wan_mtu_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", TWO, "--gateway", "vxlan"]) == 2
    assert "wan.mtu: vxlan gateways need wan.mtu >= 1550" in capsys.readouterr().err
    assert cli.main(["plan", TWO, "--gateway", "vxlan", "--wan-mtu", "1550"]) == 0
    assert cli.main(["plan", TWO, "--wan-mtu", "20"]) == 2


@pytest.mark.parametrize("argv", [["run", TWO], ["up", TWO], ["down", "l2b00000"], ["clean"],
                                  ["exec", "l2b00000", "a.h1", "--", "true"]])
def test_commands_needing_root_say_so(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "this command needs root (network namespaces); run it with sudo\n")


def test_python_dash_m_netns_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "netns", "plan", TWO], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "gateway london:" in done.stdout


def test_unknown_lab_for_down_and_exec(capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("down/exec need root")
    assert cli.main(["down", "l2bfffff"]) == 2
    assert cli.main(["exec", "l2bfffff", "a.h1", "--", "true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["lab l2bfffff: no such lab (see `l2bridge lab list`)"] * 2


NOT_A_LAB = ("is not a lab name (expected l2b and 5 hex digits, like l2b3f9a1; "
             "see `l2bridge lab list`)")


@pytest.mark.parametrize("argv", [
    ["down", "../../x"], ["down", "/tmp/x"], ["down", "l2b0000"], ["down", "l2b0000g"],
    ["exec", "..", "a.h1", "--", "true"], ["exec", "L2B00000", "a.h1", "--", "true"],
])
def test_lab_names_are_checked_before_anything_is_read(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"lab {argv[0]}: {argv[1]!r} {NOT_A_LAB}\n"


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
