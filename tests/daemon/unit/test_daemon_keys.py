"""Start-up refuses unusable keys with one clear line (no root: only files are read)."""

from __future__ import annotations

import os

import pytest
from support import site_toml

from l2bridge.core import keys
from l2bridge.core.config import load_secrets, parse_config
from l2bridge.core.keys import KeyFormatError
from l2bridge.ops.cli import main


def write_key(path, raw: bytes, mode: int = 0o600) -> str:
    path.write_text(keys.encode_key(raw) + "\n")
    os.chmod(path, mode)
    return str(path)


def config_text(key_file: str, peer_public: bytes, psk_file: str | None = None) -> str:
    peer = {"public_key": f'"{keys.encode_key(peer_public)}"'}
    if psk_file:
        peer["preshared_key_file"] = f'"{psk_file}"'
    return site_toml("a", {"private_key_file": f'"{key_file}"'}, {"b": peer})


def test_good_keys_give_an_identity_and_psks(tmp_path):
    private = keys.generate_private_key()
    peer = keys.public_key(keys.generate_private_key())
    psk = keys.generate_psk()
    cfg = parse_config(config_text(write_key(tmp_path / "a.key", private), peer,
                                   write_key(tmp_path / "b.psk", psk)), "a.toml")
    secrets = load_secrets(cfg)
    assert secrets.private == private
    assert secrets.psks == {"b": psk}


def test_group_readable_private_key_is_refused(tmp_path):
    key_file = write_key(tmp_path / "a.key", keys.generate_private_key(), 0o640)
    cfg = parse_config(config_text(key_file, keys.public_key(keys.generate_private_key())))
    with pytest.raises(KeyFormatError) as info:
        load_secrets(cfg)
    message = str(info.value)
    assert key_file in message and "chmod 600" in message and "\n" not in message


def test_malformed_private_key_is_refused(tmp_path):
    path = tmp_path / "a.key"
    path.write_text("this is not a key\n")
    os.chmod(path, 0o600)
    cfg = parse_config(config_text(str(path), keys.public_key(keys.generate_private_key())))
    with pytest.raises(KeyFormatError, match="a.key"):
        load_secrets(cfg)


def test_own_public_key_as_a_peer_is_refused(tmp_path):
    private = keys.generate_private_key()
    cfg = parse_config(config_text(write_key(tmp_path / "a.key", private),
                                   keys.public_key(private)), "a.toml")
    with pytest.raises(KeyFormatError, match="this site's own key"):
        load_secrets(cfg)


def test_up_with_an_open_key_file_exits_2_with_one_line(tmp_path, capsys):
    key_file = write_key(tmp_path / "a.key", keys.generate_private_key(), 0o644)
    cfg = tmp_path / "a.toml"
    cfg.write_text(config_text(key_file, keys.public_key(keys.generate_private_key())))
    assert main(["up", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chmod 600" in err[0], err
