"""The suite's shared setup: where tests live, what needs root, the shared fixtures.

Layout (the folders say what is tested and whether it needs root):

  tests/repo/          the repository itself: lint, layers, this setup
  tests/daemon/unit/   the site's pure core (no root)
  tests/daemon/fakes/  the site running over in-memory fakes and loopback sockets (no root)
  tests/daemon/root/   the site on real devices in scratch namespaces (root)
  tests/lab/unit/      scenarios, plans, reports, the lab's command line (no root)
  tests/lab/root/      labs in network namespaces with real tools (root)

Every test under a ``root`` folder is marked ``netns`` and skipped, with the
reason, when the suite does not run as root.  What many tests share lives in
``support.py`` (importable: pytest puts ``tests/`` on the path) and as fixtures
here.

The hypothesis profile keeps hypothesis from judging the machine's speed: no
per-example deadline and no too_slow health check, since input generation and
examples take several times longer on a loaded 2-core CI machine than on an
idle one.  Every other health check stays on.  Per-test ``@settings(...)``
inherit from it.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import support
from hypothesis import HealthCheck, settings

settings.register_profile(
    "l2bridge", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("l2bridge")

if not any(ep.name == "l2bridge_lab" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["netns.pytest_plugin"]

NEEDS_ROOT_REASON = "needs root (network namespaces, veths, bridges, /dev/net/tun)"
_IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under a ``root`` folder: marked ``netns``, skipped with the reason without root."""
    for item in items:
        if "root" not in Path(str(item.path)).parts[-3:-1]:
            continue
        item.add_marker(pytest.mark.netns)
        if not _IS_ROOT:
            item.add_marker(pytest.mark.skip(reason=NEEDS_ROOT_REASON))


@pytest.fixture
def repo() -> str:
    """The repository's root directory."""
    return support.REPO
