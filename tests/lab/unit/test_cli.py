"""The lab CLI without root: plan, bad input (exit 2, one line), root checks."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys

import pytest
from support import REPO

from netns import cli
from netns.describe.plan import LAB_RUN_DIR

TWO = os.path.join(REPO, "scenarios", "two-offices.toml")


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


FORBIDDEN = ("this kernel forbids unprivileged user namespaces (/proc/sys/kernel/"
             "unprivileged_userns_clone is 0); enable them as root (...) or run the lab as root")


@pytest.mark.parametrize("argv", [["run", TWO], ["up", TWO], ["bench", "--quick"],
                                  ["timing", "--sites", "2"]])
def test_without_root_or_user_namespaces_one_line_says_why(
        argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from netns import rootless

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(rootless, "inside", lambda: False)
    monkeypatch.setattr(rootless, "userns_problem", lambda: FORBIDDEN)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == FORBIDDEN + "\n"


@pytest.mark.parametrize(("argv", "needs"), [
    (["timing", "--mininet"], "timing --mininet needs root"),
    (["run", "scenarios/vlan-trunk.toml"], "VLAN hosts ("),
])
def test_what_cannot_run_rootless_is_refused_in_one_line(
        argv: list[str], needs: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from netns import rootless

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(rootless, "inside", lambda: False)
    monkeypatch.chdir(REPO)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(needs) and err.count("\n") == 1, err


def test_python_dash_m_netns_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "netns", "plan", TWO], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "gateway london:" in done.stdout


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
