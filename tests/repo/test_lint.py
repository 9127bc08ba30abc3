"""The code base stays ruff- and mypy-clean (run as part of the suite, like CI)."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_ruff_is_clean():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    result = run("mypy", "l2bridge", "netns")
    assert result.returncode == 0, result.stdout + result.stderr
