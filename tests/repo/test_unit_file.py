"""The shipped systemd unit: verified by systemd itself, and it says what the service needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support import REPO

UNIT = os.path.join(REPO, "contrib", "systemd", "l2bridge@.service")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that the commands exist: point them at this checkout's l2bridge
    program = os.path.join(os.path.dirname(sys.executable), "l2bridge")
    assert os.access(program, os.X_OK), program
    with open(UNIT) as f:
        text = f.read().replace("/usr/local/bin/l2bridge", program)
    for name in ("l2bridge@.service", "l2bridge@london.service"):
        (tmp_path / name).write_text(text)
        run = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def test_the_unit_is_a_notify_service_with_a_watchdog_and_a_small_sandbox() -> None:
    with open(UNIT) as f:
        lines = {line.split("=", 1)[0]: line.split("=", 1)[1].strip()
                 for line in f.read().splitlines() if "=" in line and not line.startswith("#")}
    assert lines["Type"] == "notify"
    assert lines["ExecStart"] == "/usr/local/bin/l2bridge up -c /etc/l2bridge/%i.toml"
    assert lines["ExecReload"] == "/usr/local/bin/l2bridge reload -c /etc/l2bridge/%i.toml"
    assert lines["Restart"] == "on-failure" and "WatchdogSec" in lines
    assert lines["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert (lines["ProtectSystem"], lines["ProtectHome"], lines["NoNewPrivileges"]) == (
        "strict", "yes", "yes")
    assert lines["RuntimeDirectory"] == "l2bridge"
