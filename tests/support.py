"""What many tests share: the repository's paths and the smallest configurations.

Importable from any test (pytest puts ``tests/`` on the path): ``from support
import REPO, site_toml, two_sites``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(REPO, "scenarios")


def scenario_path(name: str) -> str:
    """A shipped scenario by name (``"two-offices"``)."""
    return os.path.join(SCENARIOS, f"{name}.toml")


def repo_env() -> dict[str, str]:
    """The environment for a subprocess that runs this checkout's code (``python -m ...``)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}


def site_toml(name: str, site: Mapping[str, str] | None = None,
              peers: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """A site configuration: ``[site]`` with ``name`` and ``site``'s keys, one ``[[peer]]``
    per entry of ``peers`` (its name and keys).  Values are TOML as written:
    ``site_toml("a", {"insecure": "true"}, {"b": {"endpoint": '"192.0.2.1:55555"'}})``.
    """
    lines = ["[site]", f'name = "{name}"']
    lines += [f"{key} = {value}" for key, value in (site or {}).items()]
    for peer, keys in (peers or {}).items():
        lines += ["[[peer]]", f'name = "{peer}"']
        lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def two_sites(a: str = "a", b: str = "b", *, hosts: tuple[str, ...] = ("h1",),
              site: str = "", lab: str = "", tail: str = "") -> str:
    """The smallest lab scenario: sites ``a`` and ``b`` with ``hosts`` each.

    ``site`` is added to each ``[[site]]`` table (e.g. ``l2bridge = { workers = 2 }``),
    ``lab`` is a ``[lab]`` body, ``tail`` goes last (checks).
    """
    parts = [f"[lab]\n{lab}\n"] if lab else []
    for name in (a, b):
        text = f'[[site]]\nname = "{name}"\n{site}\n' if site else f'[[site]]\nname = "{name}"\n'
        text += "".join(f'[[site.host]]\nname = "{host}"\n' for host in hosts)
        parts.append(text)
    return "\n".join(parts) + tail


def have_ipv6_loopback() -> bool:
    """True when ::1 can be bound (IPv6 may be off in a container)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def lab_leftovers(prefix: str) -> list[str]:
    """The namespaces and run directory a lab with ``prefix`` left on this machine."""
    from pyroute2 import netns as pr_netns

    from netns.describe.plan import LAB_RUN_DIR

    found = [ns for ns in pr_netns.listnetns() if ns.startswith(prefix + "-")]
    if os.path.exists(os.path.join(LAB_RUN_DIR, prefix)):
        found.append(os.path.join(LAB_RUN_DIR, prefix))
    return found
