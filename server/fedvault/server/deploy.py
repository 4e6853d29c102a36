"""A deployed coordinator's settings and files (parsed once, at the edge).

``coordinator.toml``::

    [coordinator]
    run-dir = "consortium-run"          # state, logs and results of this coordinator
    fleet-address = "0.0.0.0:9092"      # Flower's gRPC Fleet API: the ONLY partner port
    control-address = "127.0.0.1:9093"  # Control API: loopback or a private address
    certs = "certs"                     # ca.crt, server.crt, server.key
    expected-sites = 3                  # wait for this many sites before round 1
    target = "target"
    test-data = ""                      # held-out table, or image folder/manifest
    timeout = 86400                     # whole-run limit, seconds
    client-threads = 0                  # torch threads per site ClientApp (0: all)
    health-address = ""                 # e.g. "127.0.0.1:9096": GET /health (JSON)
    init-model = ""                     # optional model file round 1 starts from
    insecure = false                    # true: no TLS, no site keys (tests only)

    [training]                          # TrainingConfig keys (rounds, min-sites, ...)
    rounds = 10

    [sites]                             # optional: registered at start
    hospital-a = "keys/hospital-a.pub"

Relative paths are resolved against the folder holding the file. Flower's Control API
has no user authentication in open-source Flower (whoever reaches it can run code on
every site), so its address must be loopback or private; only the Fleet port is meant
to be opened to partners.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvault.common import settings_help
from fedvault.common.certs import CA_CERT, SERVER_CERT, SERVER_KEY
from fedvault.common.config import TrainingConfig, parse_fields, read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.net import loopback_address, split_address
from fedvault.server import _flower
from fedvault.server.settings import RunConfig, ServerSettings

CONNECTION = "fedvault-coordinator"


@dataclass(frozen=True, kw_only=True)
class CoordinatorOptions:
    """The ``[coordinator]`` table."""

    run_dir: str = "fedvault-coordinator"
    fleet_address: str = "0.0.0.0:9092"
    control_address: str = "127.0.0.1:9093"
    certs: str = "certs"
    expected_sites: int = 0
    target: str = "target"
    test_data: str = ""
    timeout: float = 86400.0
    client_threads: int = 0
    health_address: str = ""
    init_model: str = ""
    insecure: bool = False

    def __post_init__(self) -> None:
        split_address(self.fleet_address, key="fleet-address")
        if self.health_address:
            check_loopback(self.health_address)
        host, _ = split_address(self.control_address, key="control-address")
        check_private_host(host)
        if self.expected_sites < 0:
            raise ConfigError(
                f"expected-sites: must be >= 0, got {self.expected_sites}"
            )
        if not self.timeout > 0:
            raise ConfigError(f"timeout: must be > 0, got {self.timeout}")
        if not self.target:
            raise ConfigError("target: must not be empty")


# `server start --help` and `resume --help`: coordinator.toml's keys
KEYS_HELP = settings_help.keys_epilog(
    CoordinatorOptions,
    settings_help.COORDINATOR,
    "[coordinator] in coordinator.toml",
    "[training] takes the settings `fedvault simulate --help` lists, under the "
    "same names; [sites] lines are NAME = path of the site's key.",
)


def check_loopback(address: str) -> None:
    """Refuse a health address other than loopback.

    Raises:
        ConfigError: naming ``health-address``.
    """
    loopback_address(address, key="health-address", what="the endpoint")


def check_private_host(host: str) -> None:
    """Refuse a Control API address that partners (or the internet) could reach."""
    if host == "localhost":
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"control-address: {host!r} must be an IP address (loopback or private), "
            "not a host name"
        ) from None
    if ip.is_unspecified or not (ip.is_loopback or ip.is_private):
        raise ConfigError(
            f"control-address: {host} is not loopback or private; Flower's Control "
            "API has no authentication, so it must never face partners"
        )


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything ``fedvault server`` needs, with absolute paths."""

    options: CoordinatorOptions
    training: TrainingConfig
    sites: dict[str, Path]
    base: Path
    source: Path | None = None  # the file, as the user named it (for messages)

    @property
    def run_dir(self) -> Path:
        return self.base / self.options.run_dir

    @property
    def certs_dir(self) -> Path:
        return self.base / self.options.certs

    @property
    def ca_cert(self) -> Path:
        return self.certs_dir / CA_CERT

    @property
    def expected_sites(self) -> int:
        return self.options.expected_sites or self.training.min_sites

    def check_certs(self) -> None:
        for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
            if not (self.certs_dir / name).is_file():
                raise ConfigError(
                    f"certs: {self.certs_dir / name} missing; create it with "
                    "`fedvault certs init` and `fedvault certs server`"
                )


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    raw = read_toml(path)
    cfg = parse_coordinator_config(raw, base=path.resolve().parent)
    return dataclasses.replace(cfg, source=path)


def parse_coordinator_config(raw: dict[str, Any], *, base: Path) -> CoordinatorConfig:
    unknown = sorted(set(raw) - {"coordinator", "training", "sites"})
    if unknown:
        raise ConfigError(f"config: unknown table {unknown[0]!r}")
    tables = {}
    for name in ("coordinator", "training", "sites"):
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config: [{name}] must be a table")
        tables[name] = table
    options = parse_fields(
        CoordinatorOptions, tables["coordinator"], source="[coordinator]"
    )
    training = parse_fields(TrainingConfig, tables["training"], source="[training]")
    if options.expected_sites and training.min_sites > options.expected_sites:
        raise ConfigError(
            f"[training] min-sites: {training.min_sites} is more than the "
            f"{options.expected_sites} sites [coordinator] expected-sites waits for; "
            "no round could ever run"
        )
    sites = {}
    for name, key_path in tables["sites"].items():
        if not isinstance(key_path, str):
            raise ConfigError(f"[sites] {name}: expected a public key path")
        sites[str(name)] = base / key_path
    return CoordinatorConfig(options, training, sites, base)


@dataclass(frozen=True)
class CoordinatorLayout:
    """Files of a coordinator under its run folder."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "superlink"

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr-home"

    @property
    def app_dir(self) -> Path:
        return self.state / "app"

    @property
    def run_config_file(self) -> Path:
        return self.state / "run-config.toml"

    @property
    def database(self) -> Path:
        return self.state / "state.db"

    @property
    def log(self) -> Path:
        return self.state / "superlink.log"

    @property
    def output(self) -> Path:
        """The ServerApp's ``out-dir``: progress, checkpoints, summary."""
        return self.root / "output"

    @property
    def registry(self) -> Path:
        return self.root / "sites.json"

    @property
    def live(self) -> Path:
        """What the running coordinator says about itself (pids, addresses, run
        id); left behind only when it did not stop cleanly."""
        return self.root / "coordinator.json"

    @property
    def lock(self) -> Path:
        """Held by the one coordinator running this folder; holds its pid."""
        return self.root / "coordinator.lock"

    def write_connection(self, cfg: CoordinatorConfig, *, insecure: bool) -> None:
        """``$FLWR_HOME/config.toml``: one connection to our own Control API."""
        conn: dict[str, Any] = {"address": cfg.options.control_address}
        if insecure:
            conn["insecure"] = True
        else:
            conn["root-certificates"] = str(cfg.ca_cert)
        _flower.write_connection(self.flwr_home, CONNECTION, conn)

    def write_app(self, run_config: _flower.RunConfig) -> None:
        """The app folder (components only, every key declared) and the run config."""
        _flower.write_app(
            self.app_dir, self.run_config_file, run_config, name="fedvault-deployment"
        )


def run_config(
    cfg: CoordinatorConfig,
    output: Path,
    *,
    run_key: str,
    resume: bool = False,
    init_model: Path | None = None,
) -> RunConfig:
    """The ServerApp's run config: training keys plus the coordinator's own;
    ``init_model`` (a resumed run's parent) wins over the config's key."""
    test, init = cfg.options.test_data, cfg.options.init_model
    return ServerSettings(
        training=cfg.training,
        target=cfg.options.target,
        out_dir=output,
        test_data=cfg.base / test if test else None,
        expected_sites=cfg.expected_sites,
        client_threads=cfg.options.client_threads,
        run_key=run_key,
        resume=resume,
        registry=CoordinatorLayout(cfg.run_dir).registry.resolve(),
        init_model=init_model or (cfg.base / init if init else None),
    ).to_run_config()
