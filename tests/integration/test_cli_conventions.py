"""The conventions every ``fedvault`` command follows (docs/operations.md,
"Command-line conventions"), checked over the whole command tree: ``--format`` is
the one text|json choice, ``insecure`` is a settings key and a ``--insecure`` flag
on both sides, and a run that stops early exits 1 from ``simulate`` as from
``server start``."""

from __future__ import annotations

from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from fedvault.client.site_config import SiteOptions, load_site_config
from fedvault.common.cli import EXIT_RUN_FAILED, OutputFormat, build_app
from fedvault.server import coordinator, simulate
from fedvault.server.deploy import CoordinatorOptions, load_coordinator_config

# `model export --format` names the file format it writes, not how it prints
FILE_FORMATS = {"model export": ["onnx", "torchscript"]}


def _commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = command

    walk(typer.main.get_command(build_app()), "")
    return found


def _option(command: click.Command, flag: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and flag in param.opts:
            return param
    return None


def test_every_format_option_is_the_one_text_or_json_choice():
    formats = {}
    for path, command in _commands().items():
        option = _option(command, "--format")
        if option is not None:
            assert isinstance(option.type, click.Choice), path
            formats[path] = list(option.type.choices)
    assert len(formats) > 20  # the walk saw the command tree
    for path, choices in formats.items():
        assert choices == FILE_FORMATS.get(path, [f.value for f in OutputFormat]), path


def test_insecure_is_a_key_and_a_flag_on_both_sides(tmp_path):
    commands = _commands()
    for path in ("server start", "server resume", "client start"):
        option = _option(commands[path], "--insecure")
        assert option is not None and option.is_flag, path
    assert CoordinatorOptions().insecure is False
    assert "insecure" in {f for f in SiteOptions.__dataclass_fields__}
    coordinator_toml = tmp_path / "coordinator.toml"
    coordinator_toml.write_text("[coordinator]\ninsecure = true\n")
    assert load_coordinator_config(coordinator_toml).options.insecure
    site_toml = tmp_path / "site.toml"  # no certificate, no key: only insecure
    site_toml.write_text('[site]\nname = "a"\ncoordinator = "x:1"\ndata = "d.csv"\n')
    with pytest.raises(ValueError, match="ca-certificate and private-key"):
        load_site_config(site_toml)
    assert load_site_config(site_toml, insecure=True).options.insecure


def _stopped(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {
        "status": "stopped",
        "stop_reason": "round 2: only 1 site(s) trained; min-sites is 2",
        "rounds_completed": 1,
        "history": [{"round": 1}],
        "sites": {},
    }


def test_a_run_that_stops_early_exits_the_same_from_simulate_and_server_start(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(simulate, "run", _stopped)
    monkeypatch.setattr(coordinator, "start", _stopped)
    app = build_app()
    runner = CliRunner()
    sim = runner.invoke(
        app, ["simulate", "--out", str(tmp_path / "sim"), "--format", "json"]
    )
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[coordinator]\nrun-dir = "{tmp_path / "run"}"\n')
    server = runner.invoke(
        app, ["server", "start", "--config", str(config), "--format", "json"]
    )
    assert sim.exit_code == server.exit_code == EXIT_RUN_FAILED, (
        sim.output + server.output
    )
    assert "stopped early" in sim.output and "stopped early" in server.output
