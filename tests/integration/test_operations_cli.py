"""What an operator reads: versions, key fingerprints as `ssh-keygen -l` shows them
on both sides, a site key others can read is refused, messages printed verbatim,
one permission rule for a state folder (no Flower needed: fast)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import tomli_w
from consortium import run_fedvault, write_site

from fedvault.common.files import private


def test_version(monkeypatch, capsys):
    import flwr

    code, out = run_fedvault(monkeypatch, capsys, "--version")
    assert code == 0
    assert out.startswith("fedvault 0.") and f"(Flower {flwr.__version__}," in out


def test_the_fingerprint_is_the_same_on_both_sides_and_for_ssh_keygen(
    monkeypatch, capsys, tmp_path
):
    code, out = run_fedvault(
        monkeypatch, capsys, "client", "keygen", str(tmp_path / "k"), "--name", "a"
    )
    assert code == 0
    site_side = out.split("fingerprint ")[1].split()[0]
    assert site_side.startswith("SHA256:") and len(site_side) == 50
    if shutil.which("ssh-keygen"):
        shown = subprocess.run(
            ["ssh-keygen", "-lf", str(tmp_path / "k" / "site.pub")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert shown.split()[1] == site_side
    (tmp_path / "coordinator.toml").write_text('[coordinator]\nrun-dir = "run"\n')
    config = ["--config", str(tmp_path / "coordinator.toml")]
    pub = str(tmp_path / "k" / "site.pub")
    code, out = run_fedvault(
        monkeypatch, capsys, "server", "sites", "add", "a", pub, *config
    )
    assert code == 0 and f"site a added ({site_side})" in out
    code, out = run_fedvault(monkeypatch, capsys, "server", "sites", "list", *config)
    assert site_side in out


def _site(tmp_path, **extra) -> str:
    """``tmp_path/a.toml``: site ``a`` with TLS and its own key (``keys/a``)."""
    (tmp_path / "data.csv").write_text("x,target\n1,0\n")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("not read before the key is checked\n")
    write_site(tmp_path, "a", 9092, "d", data="data.csv", **extra)
    return str(tmp_path / "a.toml")


def test_a_site_key_others_can_read_is_refused(monkeypatch, capsys, tmp_path):
    run_fedvault(monkeypatch, capsys, "client", "keygen", str(tmp_path / "keys/a"))
    key = tmp_path / "keys" / "a" / "site.key"
    key.chmod(0o644)
    code, err = run_fedvault(
        monkeypatch, capsys, "client", "start", "--config", _site(tmp_path)
    )
    assert code == 2
    assert f"private-key: {key}: permissions 0644 let other users read" in err
    assert f"chmod 600 {key}" in err
    assert not (tmp_path / "state").exists()


def test_messages_keep_their_square_brackets(monkeypatch, capsys, tmp_path):
    doc = tomli_w.dumps({"site": {"name": "a", "coordinator": "h:1", "bogus": 1}})
    (tmp_path / "bad.toml").write_text(doc)
    code, err = run_fedvault(
        monkeypatch, capsys, "client", "start", "--config", str(tmp_path / "bad.toml")
    )
    assert code == 2 and "error: [site]: unknown key 'bogus'" in err
    config = _site(tmp_path, insecure=True, **{"ca-certificate": "", "private-key": ""})
    text = (tmp_path / "a.toml").read_text()
    (tmp_path / "a.toml").write_text(text.split("[privacy]")[0])
    code, err = run_fedvault(monkeypatch, capsys, "client", "start", "--config", config)
    assert code == 2 and "add a [privacy] table" in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_a_state_folder_is_private_whoever_writes_in_it(tmp_path):
    folder = tmp_path / "state"
    (folder / "old").mkdir(parents=True)
    (folder / "old" / "ledger.jsonl").write_text("{}\n")
    (folder / "old" / "ledger.jsonl").chmod(0o644)
    with private(folder):
        (folder / "new.log").write_text("x")  # as Flower's files are made
        subprocess.run(["mkdir", str(folder / "made-by-a-child")], check=True)
    modes = {
        p.name: oct(p.stat().st_mode & 0o777) for p in (folder, *folder.rglob("*"))
    }
    assert modes == {
        "state": "0o700",
        "old": "0o700",
        "ledger.jsonl": "0o600",
        "new.log": "0o600",
        "made-by-a-child": "0o700",
    }
    assert os.umask(0o022) == 0o022  # restored after the block
