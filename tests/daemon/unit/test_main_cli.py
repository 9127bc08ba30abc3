"""The command line: bad input gives one line and the documented exit status."""

from __future__ import annotations

import pytest

from l2bridge.ops.cli import main


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_up_with_a_missing_config_exits_2(tmp_path, capsys):
    assert main(["up", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in one_line(capsys.readouterr().err)


def test_up_with_a_bad_key_exits_2_naming_the_key(tmp_path, capsys):
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "a"\nageng = 3\n')
    assert main(["up", "-c", str(cfg)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "site.toml" in line and "ageng" in line and "ageing" in line


def test_check_prints_the_site(tmp_path, capsys):
    cfg = tmp_path / "site.toml"
    cfg.write_text(
        '[site]\nname = "a"\ninsecure = true\n[[peer]]\nname = "b"\nendpoint = "192.0.2.1:55555"\n'
    )
    assert main(["check", "-c", str(cfg)]) == 0
    out = one_line(capsys.readouterr().out)
    assert "site a" in out and "b (192.0.2.1:55555)" in out


def test_show_without_a_running_site_exits_1(tmp_path, capsys):
    assert main(["show", "-s", str(tmp_path / "x.sock")]) == 1
    assert "is the site running" in one_line(capsys.readouterr().err)


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "l2bridge up -c site.toml" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["up", "--bogus"])
    assert exc.value.code == 2


def test_genkey_writes_a_0600_file_and_pubkey_derives_from_it(tmp_path, capsys, monkeypatch):
    import io
    import os
    import stat

    from l2bridge.core import keys

    path = tmp_path / "site.key"
    assert main(["genkey", str(path)]) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    private = keys.decode_key(path.read_text())
    monkeypatch.setattr("sys.stdin", io.StringIO(path.read_text()))
    assert main(["pubkey"]) == 0
    assert keys.decode_key(capsys.readouterr().out) == keys.public_key(private)
    assert main(["genkey", str(path)]) == 1
    assert "refusing to overwrite" in one_line(capsys.readouterr().err)


def test_genkey_to_a_redirected_stdout_tightens_its_mode(tmp_path, capsys):
    import os
    import stat
    import subprocess
    import sys

    from support import repo_env

    out = tmp_path / "redirected.key"
    with open(out, "w") as handle:
        os.chmod(out, 0o644)
        subprocess.run([sys.executable, "-m", "l2bridge", "genpsk"], stdout=handle, check=True,
                       env=repo_env(), timeout=30)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert len(out.read_text().strip()) == 44


def test_pubkey_rejects_garbage(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("not a key"))
    assert main(["pubkey"]) == 2
    assert "private key on stdin" in one_line(capsys.readouterr().err)
