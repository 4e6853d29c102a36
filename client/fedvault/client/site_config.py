"""A site's deployment settings and files (parsed once, at the edge).

``site.toml``::

    [site]
    name = "hospital-a"
    coordinator = "coordinator.example.org:9092"  # the coordinator's Fleet API
    ca-certificate = "certs/ca.crt"               # the consortium CA (public)
    private-key = "keys/site.key"                 # never leaves this site
    data = "data/hospital-a.parquet"
    schema = "schema.toml"                        # optional, with data: declared
                                                  # bounds and label classes
    state-dir = "site-state"                      # ledger, logs, Flower home
    runtime-address = "127.0.0.1:9094"            # local ClientApp API (loopback)
    max-retries = 0                               # attempts per outage (0: no limit)
    max-wait-time = 3600                          # s trying per outage (0: forever)
    poll-interval = 0.25                          # s between asks for work when idle
    isolation = "fork"                            # or "subprocess" (Flower's own)

    [privacy]                                     # the site's own policy (see
    dataset-id = "icu-2024"                       # fedvault.client.policy); or
    epsilon-max = 8.0                             # policy = PATH in [site]
    delta = 1e-5

Relative paths are resolved against the folder holding the file. The site's
settings travel to Flower as a node-config TOML file in the state folder
(:func:`write_node_config`); none of it is sent to the coordinator. Starting the
SuperNode with them: :mod:`fedvault.client.supernode`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedvault.client.data.keys import load_key
from fedvault.client.data.vault_format import MANIFEST_NAME
from fedvault.client.data_site_schema import check_data_schema
from fedvault.client.policy import load_policy
from fedvault.common import settings_help
from fedvault.common.certs import cert_status, check_site_private_key
from fedvault.common.config import parse_fields, read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.net import split_address

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SiteOptions:
    """The ``[site]`` table, paths as written."""

    name: str
    coordinator: str
    vault: str = ""
    key_file: str = ""
    data: str = ""
    schema: str = ""
    ca_certificate: str = ""
    private_key: str = ""
    state_dir: str = "site-state"
    runtime_address: str = "127.0.0.1:9094"
    max_retries: int = 0
    max_wait_time: float = 3600.0
    policy: str = ""
    insecure: bool = False
    poll_interval: float = 0.25
    isolation: str = "fork"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise ConfigError(
                f"name: {self.name!r}: use letters, digits, '.', '_', '-'"
            )
        if bool(self.vault) == bool(self.data):
            raise ConfigError(
                "[site]: set exactly one of vault (with key-file) or data"
            )
        if self.vault and not self.key_file:
            raise ConfigError("key-file: required with vault")
        if self.schema and not self.data:
            raise ConfigError(
                "schema: only with data (a vault keeps the schema it was imported with)"
            )
        split_address(self.coordinator, key="coordinator")
        host, _ = split_address(self.runtime_address, key="runtime-address")
        if host != "localhost" and not _is_loopback(host):
            raise ConfigError(
                "runtime-address: the ClientApp API must stay on loopback"
            )
        if self.max_retries < 0 or self.max_wait_time < 0:
            raise ConfigError("max-retries / max-wait-time: must be >= 0")
        if not 0.01 <= self.poll_interval <= 3:
            raise ConfigError("poll-interval: seconds between 0.01 and 3")
        if self.isolation not in ("fork", "subprocess"):
            raise ConfigError(
                f'isolation: {self.isolation!r}: use "fork" (fedvault\'s '
                'pre-importing launcher) or "subprocess" (Flower\'s own)'
            )
        if self.isolation == "fork" and not hasattr(os, "fork"):
            raise ConfigError(
                'isolation: "fork" needs a POSIX system; use "subprocess"'
            )
        if not self.insecure and not (self.ca_certificate and self.private_key):
            raise ConfigError(
                "ca-certificate and private-key are required (TLS and site "
                "authentication are on unless insecure = true)"
            )


# `client start --help`: site.toml's keys
KEYS_HELP = settings_help.keys_epilog(
    SiteOptions,
    settings_help.SITE,
    "[site] in site.toml",
    "[privacy]: the site's policy, docs/privacy.md.",
)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SiteConfig:
    """A site's ``[site]`` options and where its relative paths start."""

    options: SiteOptions
    base: Path
    source: Path | None = None  # the site.toml, when it holds a [privacy] table

    def path(self, value: str) -> Path:
        return (self.base / value).resolve()

    @property
    def state_dir(self) -> Path:
        return self.path(self.options.state_dir)

    @property
    def log(self) -> Path:
        return self.state_dir / "supernode.log"

    @property
    def node_config_file(self) -> Path:
        return self.state_dir / "node-config.toml"

    @property
    def lock(self) -> Path:
        """Held by the one ``fedvault client start`` running this site; its pid."""
        return self.state_dir / "site.lock"

    @property
    def live(self) -> Path:
        """Written by a running ``client start``, removed when it stops cleanly:
        found at start, it names a previous one that was killed or crashed."""
        return self.state_dir / "site.json"

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "flwr-home"

    @property
    def policy_file(self) -> Path | None:
        """The site's privacy policy: ``policy``, else this file's [privacy] table."""
        if self.options.policy:
            return self.path(self.options.policy)
        return self.source


def load_site_config(path: Path, *, insecure: bool = False) -> SiteConfig:
    """Read and parse a site's TOML file (see :func:`parse_site_config`);
    ``insecure`` (``client start --insecure``) sets ``insecure = true``.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is wrong.
    """
    raw = read_toml(path)
    if insecure and isinstance(raw.get("site"), dict):
        raw["site"]["insecure"] = True
    return parse_site_config(raw, base=path.resolve().parent, source=path.resolve())


def parse_site_config(
    raw: dict[str, Any], *, base: Path, source: Path | None = None
) -> SiteConfig:
    """Parse ``[site]``; other tables (``[privacy]``: the site's policy, read by
    the ClientApp) are left to their owners.

    Raises:
        ConfigError: naming the key, when ``[site]`` is missing or a key is wrong.
    """
    table = raw.get("site")
    if not isinstance(table, dict):
        raise ConfigError("config: a [site] table is required")
    for key in ("name", "coordinator"):
        if key not in table:
            raise ConfigError(f"[site] {key}: required")
    options = parse_fields(SiteOptions, table, source="[site]")
    return SiteConfig(options, base, source if "privacy" in raw else None)


def check_files(cfg: SiteConfig) -> None:
    """Fail early, with the key, on a missing file (not after a connection attempt).

    Raises:
        ConfigError: naming the key, when a file is missing, the vault is not one,
            there is no privacy policy or it is invalid, or a key file (the
            vault's or the site's private key) is readable by other users.
    """
    opts = cfg.options
    needed = [
        ("data", opts.data),
        ("schema", opts.schema),
        ("key-file", opts.key_file),
    ]
    if opts.vault and not (cfg.path(opts.vault) / MANIFEST_NAME).is_file():
        raise ConfigError(f"vault: {cfg.path(opts.vault)} is not a fedvault data vault")
    if not opts.insecure:
        needed += [
            ("ca-certificate", opts.ca_certificate),
            ("private-key", opts.private_key),
        ]
    for key, value in needed:
        if value and cfg.path(value).is_dir():
            raise ConfigError(f"{key}: {cfg.path(value)} is a folder, not a file")
        if value and not cfg.path(value).is_file():
            raise ConfigError(f"{key}: {cfg.path(value)} not found")
    if cfg.policy_file is None:
        raise ConfigError(
            "no privacy policy: add a [privacy] table to the site's TOML file "
            "(dataset-id, epsilon-max, delta, ...) or set policy = PATH in [site]"
        )
    load_policy(cfg.policy_file, warn=True)  # fail here, not in the first round
    if opts.schema:  # and a schema that does not fit the data here too
        check_data_schema(cfg.path(opts.data), cfg.path(opts.schema))
    if opts.vault:  # loose permissions or a key inside the vault: refuse now
        load_key(cfg.path(opts.key_file), vault_dir=cfg.path(opts.vault))
    if not opts.insecure:  # readable by others: refused, as a data key is
        check_site_private_key(cfg.path(opts.private_key))
        check_ca_certificate(cfg.path(opts.ca_certificate))


def check_ca_certificate(path: Path) -> None:
    """Refuse a CA certificate that is expired (or not yet valid) or unreadable:
    every connection to the coordinator would fail with only "Connection to the
    SuperLink is unavailable". Warn, with the date and the days left, when it
    expires within :data:`~fedvault.common.certs.WARN_DAYS`.

    Raises:
        ConfigError: naming the file, when it is expired or not a certificate.
    """
    status = cert_status(path)
    expires = status.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if status.state == "invalid":
        raise ConfigError(
            f"ca-certificate: {path} is not a certificate {status.detail}"
        )
    if status.state == "expired":
        raise ConfigError(
            f"ca-certificate: {path} is expired or not yet valid (valid until "
            f"{expires}); ask the coordinator for the consortium's current ca.crt"
        )
    if status.state == "expiring":
        logger.warning(
            "ca-certificate: %s expires %s (in %.0f days); ask the coordinator for "
            "a renewed ca.crt before then",
            path,
            expires,
            status.days_left,
        )


def write_node_config(cfg: SiteConfig) -> Path:
    """The site's node config for Flower, as a TOML file (any path quotes safely)."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    opts = cfg.options
    node = {"site-name": opts.name, "state": str(cfg.state_dir)}
    if opts.vault:
        node |= {
            "vault": str(cfg.path(opts.vault)),
            "key-file": str(cfg.path(opts.key_file)),
        }
    else:
        node["data"] = str(cfg.path(opts.data))
        if opts.schema:
            node["schema"] = str(cfg.path(opts.schema))
    if cfg.policy_file is not None:
        node["policy"] = str(cfg.policy_file)
    cfg.node_config_file.write_text(tomli_w.dumps(node))
    return cfg.node_config_file
