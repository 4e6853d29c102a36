"""Removing a site is durable: it wins over coordinator.toml's [sites], a restarted
or resumed coordinator neither re-admits the key nor fails on it."""

from __future__ import annotations

import sys

import pytest
import tomli_w
from consortium import (
    Consortium,
    prepare_two_sites,
    run_fedvault,
    wait_for_run,
    wait_until,
)
from typer.testing import CliRunner

from fedvault.client.client_cli import client_app
from fedvault.common.config import read_toml
from fedvault.common.errors import ConfigError
from fedvault.server.registry import SiteRegistry

SERVER = "fedvault.server.server_cli:server_app"


def test_a_removed_key_is_never_admitted_again(tmp_path):
    CliRunner().invoke(client_app, ["keygen", str(tmp_path / "k")])
    registry = SiteRegistry(tmp_path / "sites.json")
    registry.add("site-a", tmp_path / "k" / "site.pub")
    registry.remove("site-a")
    registry.save()
    again = SiteRegistry(tmp_path / "sites.json")
    assert again.sites == {} and len(again.revoked) == 1
    with pytest.raises(ConfigError, match="revoked when site 'site-a' was removed"):
        again.add("site-b", tmp_path / "k" / "site.pub")


def test_removal_is_refused_while_the_config_lists_the_site(
    monkeypatch, capsys, tmp_path
):
    prepare_two_sites(tmp_path, rounds=1, min_sites=1)
    config = str(tmp_path / "coordinator.toml")
    code, err = run_fedvault(
        monkeypatch, capsys, "server", "sites", "remove", "site-1", "--config", config
    )
    assert code == 2
    assert "'site-1' is listed under [sites]" in err and "delete that line" in err


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_restart_after_removal_neither_fails_nor_readmits(
    monkeypatch, capsys, tmp_path
):
    prepare_two_sites(tmp_path, rounds=1, min_sites=2)
    path = tmp_path / "coordinator.toml"
    config = ["--config", str(path)]
    listed = read_toml(path)
    unlisted = {**listed, "sites": {"site-0": listed["sites"]["site-0"]}}
    procs = Consortium(tmp_path)
    try:
        first = procs.launch("first", SERVER, "start", *config)
        wait_for_run(first, tmp_path / "run", tmp_path / "first.out")
        path.write_text(tomli_w.dumps(unlisted))
        code, out = run_fedvault(
            monkeypatch, capsys, "server", "sites", "remove", "site-1", *config
        )
        assert code == 0 and "its key is revoked now" in out
        path.write_text(tomli_w.dumps(listed))  # the line comes back
        code, out = run_fedvault(monkeypatch, capsys, "server", "stop", *config)
        assert code == 0 and f"stopped the coordinator (pid {first.pid})" in out
        assert first.wait(timeout=30) == 0

        second = procs.launch("second", SERVER, "start", "--restart", *config)
        wait_for_run(second, tmp_path / "run", tmp_path / "second.out")
        wait_until(
            "the warning",
            lambda: "is not admitted" in procs.output("second"),
            30,
            second,
        )
    finally:
        survivors = procs.stop_all()
    assert not survivors
    text = " ".join(procs.output("second").split())
    assert "[sites] site-1 in" in text and "was revoked" in text
    assert "already in use" not in text
    registry = SiteRegistry(tmp_path / "run" / "sites.json")
    assert list(registry.sites) == ["site-0"]
