"""The conventions every ``fedvault`` command follows (docs/operations.md,
"Command-line conventions"), checked over the whole command tree: ``--format`` is
the one text|json choice, ``insecure`` is a settings key and a ``--insecure`` flag
on both sides, and a run that stops early exits 1 from ``simulate`` as from
``server start``."""

from __future__ import annotations

import json
import re
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


SNAKE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")


def _keys(value: Any, skip: tuple[str, ...]) -> set[str]:
    """Every key of a JSON document, but not the names keying the maps (and not
    what a stored schema says) under ``skip``."""
    if isinstance(value, list):
        return set().union(*(_keys(v, skip) for v in value))
    if not isinstance(value, dict):
        return set()
    keys = set(value)
    for key, item in value.items():
        if key not in skip:
            keys |= _keys(item, skip)
    return keys


def test_every_json_output_has_snake_case_keys(tmp_path):
    runner = CliRunner()
    app = build_app()

    def json_of(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--format", "json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def ok(*args: str) -> None:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output

    ok("certs", "init", str(tmp_path / "pki"))
    ok("certs", "server", str(tmp_path / "pki"), "--host", "h.example")
    coordinator_toml = tmp_path / "coordinator.toml"
    coordinator_toml.write_text('[coordinator]\nrun-dir = "run"\n')
    ok("client", "keygen", str(tmp_path / "keys"))
    ok(
        "server",
        "sites",
        "add",
        "site-a",
        str(tmp_path / "keys" / "site.pub"),
        "--config",
        str(coordinator_toml),
    )
    ok("data", "demo", "--out", str(tmp_path / "demo"), "--sites", "1")
    ok("data", "keygen", str(tmp_path / "vault.key"))
    raw = next((tmp_path / "demo").glob("*.csv"))
    vault, key = str(tmp_path / "vault"), str(tmp_path / "vault.key")
    site_toml = tmp_path / "site.toml"
    site_toml.write_text(
        f'[site]\nname = "site-a"\ncoordinator = "localhost:9092"\ninsecure = true\n'
        f'vault = "{vault}"\nkey-file = "{key}"\n'
    )
    documents = {
        "server status": json_of("server", "status", "--config", str(coordinator_toml)),
        "server sites list": json_of(
            "server", "sites", "list", "--config", str(coordinator_toml)
        ),
        "certs check": json_of("certs", "check", str(tmp_path / "pki")),
        "client status": json_of("client", "status", "--config", str(site_toml)),
        "data import": json_of(
            "data",
            "import",
            str(raw),
            "--schema",
            str(next((tmp_path / "demo").glob("*.toml"))),
            "--vault",
            vault,
            "--key",
            key,
            "--secret",
            key,
        ),
        "data inspect": json_of("data", "inspect", vault, "--key", key),
    }
    skip = ("schema", "generalized", "columns", "class_balance", "original_sizes")
    for command, document in documents.items():
        keys = _keys(document, skip)
        assert keys, command
        assert not [k for k in keys if not SNAKE.match(k)], command
    assert documents["server status"]["run_dir"].endswith("run")
    assert documents["server sites list"][0]["last_round"] == "-"
    assert documents["certs check"][0]["days_left"] > 300
    assert documents["data inspect"]["dataset_id"]
