"""``l2bridge check`` refuses exactly what ``up`` would refuse before touching the system.

Each case: a configuration whose key files, pre-shared keys, peers or control
path ``up`` refuses must make ``check`` exit 2 with one line naming the file and
the fix; a FIFO never makes either wait for a writer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import repo_env, site_toml

from l2bridge.core import keys
from l2bridge.ops.cli import main


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def write_key(path: Path, raw: bytes, mode: int = 0o600) -> Path:
    path.write_text(keys.encode_key(raw) + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def site(tmp_path: Path):
    """A valid secure site config; ``make(**overrides)`` writes it and returns its path."""
    private = keys.generate_private_key()
    peer_key = keys.public_key(keys.generate_private_key())
    key_file = write_key(tmp_path / "a.key", private)
    psk_file = write_key(tmp_path / "ab.psk", keys.generate_psk())

    def make(*, key: Path | str = key_file, psk: Path | str | None = psk_file,
             peer_public: bytes = peer_key, control: str | None = None) -> str:
        peer = {"endpoint": '"192.0.2.1:55555"',
                "public_key": f'"{keys.encode_key(peer_public)}"'}
        if psk is not None:
            peer["preshared_key_file"] = f'"{psk}"'
        path = tmp_path / "a.toml"
        path.write_text(site_toml("a", {
            "private_key_file": f'"{key}"',
            "control": f'"{control or tmp_path / "run" / "a.sock"}"'}, {"b": peer}))
        return str(path)

    make.private = private  # type: ignore[attr-defined]
    make.dir = tmp_path  # type: ignore[attr-defined]
    return make


def test_a_valid_site_passes_check(site, capsys):
    assert main(["check", "-c", site()]) == 0
    assert "ok" in one_line(capsys.readouterr().out)


def _refused(config: str, capsys, *needles: str) -> str:
    assert main(["check", "-c", config]) == 2
    line = one_line(capsys.readouterr().err)
    for needle in needles:
        assert needle in line, line
    return line


def test_missing_key_file(site, capsys):
    _refused(site(key=site.dir / "nope.key"), capsys, "nope.key", "No such file")


def test_world_readable_key_file(site, capsys):
    loose = write_key(site.dir / "loose.key", site.private, 0o644)
    _refused(site(key=loose), capsys, "loose.key", "chmod 600")


def test_directory_as_key_file(site, capsys):
    folder = site.dir / "keys"
    folder.mkdir(mode=0o700)
    _refused(site(key=folder), capsys, "a directory, not a regular file")


def test_malformed_key_file(site, capsys):
    bad = site.dir / "bad.key"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o600)
    _refused(site(key=bad), capsys, "bad.key", "base64")


def test_missing_and_open_psk_files(site, capsys):
    _refused(site(psk=site.dir / "nope.psk"), capsys, "nope.psk", "pre-shared key")
    loose = write_key(site.dir / "loose.psk", keys.generate_psk(), 0o640)
    _refused(site(psk=loose), capsys, "loose.psk", "chmod 600")


def test_own_key_as_a_peer(site, capsys):
    _refused(site(peer_public=keys.public_key(site.private)), capsys, "this site's own key")


def test_control_path_that_is_a_regular_file(site, capsys):
    victim = site.dir / "precious.conf"
    victim.write_text("keep me\n")
    _refused(site(control=str(victim)), capsys, "precious.conf", "regular file",
             "never deletes")
    assert victim.read_text() == "keep me\n"


def test_control_directory_writable_by_others(site, capsys):
    shared = site.dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    _refused(site(control=str(shared / "a.sock")), capsys, "writable by group or others")


@pytest.mark.parametrize("which", ["key", "psk"])
def test_a_fifo_never_blocks_check_or_up(site, which):
    fifo = site.dir / f"fifo.{which}"
    os.mkfifo(fifo, 0o600)
    config = site(key=fifo) if which == "key" else site(psk=fifo)
    for command in ("check", "up"):
        run = subprocess.run([sys.executable, "-m", "l2bridge", command, "-c", config],
                             capture_output=True, text=True, timeout=60,
                             env=repo_env(), stdin=subprocess.DEVNULL)
        assert run.returncode == 2, run.stderr
        assert "a FIFO, not a regular file" in one_line(run.stderr)
