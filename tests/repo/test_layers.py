"""Imports point down the layers, and the pure core stays pure.

    l2bridge.errors  <  l2bridge.core  <  l2bridge.io  <  l2bridge.site  <  l2bridge.ops
    <  netns (the lab: describe < realise < checks < lab < bench, cli, main)

A module may import its own layer and the ones below it, never one above.  The
core imports neither trio, socket nor pyroute2 (time is a parameter there).
"""

from __future__ import annotations

import ast
import os

from support import REPO

L2BRIDGE_LAYERS = {"errors": 0, "core": 1, "io": 2, "site": 3, "ops": 4}
NETNS_LAYERS = {"describe": 10, "realise": 11, "checks": 12, "lab": 13, "pytest_plugin": 14,
                "bench": 14, "artifacts": 14, "cli": 15, "rootless": 15, "main": 16, "__main__": 16}
IMPURE = ("trio", "socket", "pyroute2")


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "l2bridge":
        if parts[1:2] == ["__main__"]:
            return L2BRIDGE_LAYERS["ops"]
        return L2BRIDGE_LAYERS.get(parts[1], 0) if len(parts) > 1 else 0
    if parts[0] == "netns":
        return NETNS_LAYERS[parts[1]] if len(parts) > 1 else 10
    return None


def imports_of(path: str) -> list[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if node.module in ("l2bridge", "netns")]
    return found


def modules() -> list[tuple[str, str]]:
    out = []
    for package in ("l2bridge", "netns"):
        for directory, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out.append((dotted.removesuffix(".__init__"), path))
    return out


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, path in modules():
        mine = layer(module)
        assert mine is not None
        for imported in imports_of(path):
            theirs = layer(imported)
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_core_imports_neither_trio_socket_nor_pyroute2() -> None:
    wrong = [f"{module} imports {imported}"
             for module, path in modules() if module.startswith("l2bridge.core")
             for imported in imports_of(path) if imported.split(".")[0] in IMPURE]
    assert wrong == []
