"""One definition per setting: the dataclass that parses it gives its key and
default, :mod:`fedvault.common.settings_help` its meaning. docs/operations.md's
"Every setting" tables are written from both (``scripts/gen-settings-doc``) and
``fedvault simulate --help`` shows the same meaning and default for every setting,
each an option of the same name."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fedvault.client.site_config import SiteOptions
from fedvault.common import settings_help as sh
from fedvault.common.cli import build_app
from fedvault.common.config import TrainingConfig, key_of
from fedvault.server.deploy import CoordinatorOptions
from fedvault.server.simulate import SimulationOptions
from fedvault.server.simulate_cli import setting_help, shown_default
from fedvault.server.simulate_data import CNN_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
TABLES = [
    (CoordinatorOptions, sh.COORDINATOR),
    (TrainingConfig, sh.TRAINING),
    (SiteOptions, sh.SITE),
]


def _tables() -> list[list[tuple[str, str, str]]]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Every setting") :]
    tables = re.split(r"\n\*\*", section)[1:]
    row = r"^\| `([a-z-]+)` \| (.*?) \| (.*) \|$"
    return [re.findall(row, t, flags=re.M) for t in tables]


def _keys(cls: type) -> list[str]:
    return [key_of(f.name) for f in dataclasses.fields(cls)]


def test_the_docs_tables_are_written_from_the_code():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-settings-doc"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("index", "table"), list(enumerate(TABLES)))
def test_every_key_once_with_its_default_and_meaning(index, table):
    cls, meanings = table
    rows = _tables()[index]
    assert [key for key, _, _ in rows] == _keys(cls)
    # a meaning for each key, in the dataclass's order (a new key: add its
    # meaning to fedvault/common/settings_help.py, run scripts/gen-settings-doc)
    assert list(meanings) == _keys(cls)
    for field, (key, default, meaning) in zip(
        dataclasses.fields(cls), rows, strict=True
    ):
        assert default.startswith(sh.default_text(field)), key
        default_value = sh.default_of(field)
        if default_value is not dataclasses.MISSING and (
            sh.value_text(default_value) != "empty"
        ):
            written = re.match(r"`([^`]*)`", default)
            assert written is not None, key
            # the value as a settings file would say it
            value = (
                written[1]
                if isinstance(default_value, str)
                else tomllib.loads(f"v = {written[1]}")["v"]
            )
            if isinstance(default_value, tuple):
                value = tuple(value)
            assert value == default_value, key
            assert type(value) is type(default_value), key
        assert meaning == meanings[key].text


def _simulate_options() -> dict[str, click.Parameter]:
    group = typer.main.get_command(build_app())
    assert isinstance(group, click.Group)
    return {p.opts[0]: p for p in group.commands["simulate"].params}


def test_every_simulate_setting_is_an_option_with_the_shared_help():
    options = _simulate_options()
    flags = {"dp": "--no-dp", "secagg": "--secagg"}
    for key in [*_keys(TrainingConfig), *_keys(SimulationOptions)]:
        flag = flags.get(key, f"--{key}")
        assert flag in options, f"{key}: add {flag} to simulate (simulate_cli.py)"
        option = options.pop(flag)
        assert isinstance(option, click.Option)
        assert option.help == setting_help(key)
        assert (
            shown_default(key) in option.help
            or "(0: " in option.help
            or ("(empty: " in option.help)
        )
    assert sorted(options) == ["--config", "--format"]  # the two that are no setting


def test_a_shown_default_is_the_dataclass_default():
    cnn_rounds = CNN_DEFAULTS["rounds"]
    shown = f"{TrainingConfig.rounds}; {cnn_rounds} with --model cnn"
    assert shown_default("rounds") == shown
    assert shown_default("client-delta") == "1e-5"
    assert shown_default("round-timeout") == str(TrainingConfig.round_timeout)
    assert shown_default("sites") == str(SimulationOptions.sites)


@pytest.mark.parametrize(
    ("command", "cls", "table"),
    [
        (["server", "start"], CoordinatorOptions, "[coordinator]"),
        (["server", "resume"], CoordinatorOptions, "[coordinator]"),
        (["client", "start"], SiteOptions, "[site]"),
    ],
)
def test_a_start_command_lists_its_files_keys_in_its_help(command, cls, table):
    shown = CliRunner().invoke(
        build_app(), [*command, "--help"], env={"COLUMNS": "200"}
    )
    assert shown.exit_code == 0
    assert f"Keys of {table} in" in shown.output  # the brackets are not eaten
    for field in dataclasses.fields(cls):
        key = key_of(field.name)
        assert f" {key} = {sh.plain(sh.default_text(field))}" in shown.output, key
