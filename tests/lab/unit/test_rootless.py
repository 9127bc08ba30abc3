"""Rootless labs' bookkeeping outside the namespaces (``netns/rootless.py``), no root needed."""

from __future__ import annotations

import os

import pytest

from netns import rootless
from netns.rootless import RootlessError


@pytest.fixture
def runtime(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(rootless.INSIDE_ENV, raising=False)
    return tmp_path


def test_the_state_directory_is_made_private(runtime) -> None:  # type: ignore[no-untyped-def]
    assert rootless.own_state_root(create=False) is None
    path = rootless.own_state_root(create=True)
    assert path == str(runtime / "l2bridge-lab")
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert rootless.pointers() == []


def test_a_state_directory_others_may_touch_is_refused(runtime) -> None:  # type: ignore[no-untyped-def]
    os.mkdir(runtime / "l2bridge-lab", 0o700)
    os.chmod(runtime / "l2bridge-lab", 0o777)
    with pytest.raises(RootlessError) as info:
        rootless.pointers()
    assert str(info.value) == (f"{runtime}/l2bridge-lab: not a private directory of this "
                               "user (owner uid " f"{os.getuid()}, mode 777); remove it, or "
                               "set XDG_RUNTIME_DIR")
    assert info.value.exit_status == 2


def test_pointers_know_dead_holders_and_unknown_labs(runtime) -> None:  # type: ignore[no-untyped-def]
    rootless.write_pointer("l2b0a0a0", os.getpid(), "two.toml", "up")
    rootless.write_pointer("l2b0b0b0", 2 ** 22 + 1, "two.toml", "up")  # no such pid
    alive = {d["prefix"]: d["alive"] for d in rootless.pointers()}
    assert alive == {"l2b0a0a0": True, "l2b0b0b0": False}
    with pytest.raises(RootlessError, match="it has ended"):
        rootless.exec_in("l2b0b0b0", ["exec", "l2b0b0b0", "a.h1", "--", "true"])
    with pytest.raises(RootlessError, match="no such lab of this user"):
        rootless.down("l2b0c0c0")
    assert [d["prefix"] for d in rootless.clean()] == ["l2b0b0b0"]
    assert [d["prefix"] for d in rootless.pointers()] == ["l2b0a0a0"]
