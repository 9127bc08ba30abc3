"""Parallel safety (root): four labs from the pytest plugin at once under pytest-xdist.

A generated test module brings the same scenario up in four tests; ``pytest -n 4``
runs them in four worker processes at the same time.  Each lab must come up with
its own prefix, pass its pings and broadcast check, and leave nothing behind."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from support import REPO, lab_leftovers, repo_env

MODULE = '''
import os
import pytest

SCENARIO = {scenario!r}

@pytest.mark.parametrize("n", range(4))
async def test_lab(lab_scenario, n):
    lab = await lab_scenario(SCENARIO)
    with open({seen!r}, "a") as f:  # xdist workers' stdout is not ours to read
        f.write(f"LAB {{lab.prefix}} pid {{os.getpid()}}\\n")
    for _ in range(5):  # stay up a while, so the four overlap
        result = await lab.check("ping", from_="a.h1", to="b.h1", count=2)
        assert result.ok, result.summary
    result = await lab.check("broadcast_once", from_="b.h1", count=3)
    assert result.ok, result.summary
'''
SCENARIO = """
[lab]
keepalive = 0.5
dead_after = 2
[[site]]
name = "a"
[[site.host]]
name = "h1"
[[site]]
name = "b"
[[site.host]]
name = "h1"
"""


@pytest.mark.slow
def test_four_labs_at_once_with_xdist(tmp_path: object) -> None:
    if importlib.util.find_spec("xdist") is None:
        pytest.skip("pytest-xdist is not installed (pip install -e '.[test]')")
    scenario = f"{tmp_path}/two.toml"
    with open(scenario, "w") as f:
        f.write(SCENARIO)
    with open(f"{tmp_path}/test_four.py", "w") as f:
        f.write(MODULE.format(scenario=scenario, seen=f"{tmp_path}/labs.txt"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "4", "-s", "-q",
         "-o", "trio_mode=true", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=str(tmp_path), env=repo_env(), capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "4 passed" in output
    with open(f"{tmp_path}/labs.txt") as f:
        labs = re.findall(r"LAB (l2b[0-9a-f]{5}) pid (\d+)", f.read())
    assert len({prefix for prefix, _ in labs}) == 4  # four labs, no shared prefix
    assert len({pid for _, pid in labs}) == 4  # in four processes at once
    for prefix, _ in labs:
        assert lab_leftovers(prefix) == []
    assert os.path.isdir(REPO)
