"""A site's side of a deployment: Flower's SuperNode with TLS and node authentication.

``site.toml``::

    [site]
    name = "hospital-a"
    coordinator = "coordinator.example.org:9092"  # the coordinator's Fleet API
    ca-certificate = "certs/ca.crt"               # the consortium CA (public)
    private-key = "keys/site.key"                 # never leaves this site
    data = "data/hospital-a.parquet"
    state-dir = "site-state"                      # ledger, logs, Flower home
    runtime-address = "127.0.0.1:9094"            # local ClientApp API (loopback)
    max-retries = 0                               # reconnection attempts (0: forever)
    max-wait-time = 0                             # seconds trying (0: forever)
    poll-interval = 0.25                          # s between asks for work when idle
    isolation = "fork"                            # or "subprocess" (Flower's own)

    [privacy]                                     # the site's own policy (see
    dataset-id = "icu-2024"                       # fedvault.client.policy); or
    epsilon-max = 8.0                             # policy = PATH in [site]
    delta = 1e-5

The site's settings travel to Flower as a node-config TOML file in the state folder;
none of it is sent to the coordinator. Flower's SuperNode reconnects with backoff while
the coordinator is away. Every ClientApp it starts trains on CUDA when there is a GPU.
How the SuperNode and its ClientApp processes are started (``isolation``,
``poll-interval``): :mod:`fedvault.client.runtime`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tomli_w

from fedvault.client.data.keys import load_key
from fedvault.client.data.vault_format import MANIFEST_NAME
from fedvault.client.policy import load_policy
from fedvault.common.config import parse_fields, read_toml
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.net import split_address
from fedvault.common.processes import flower_bin, spawn, stop_process

RUNTIME = "fedvault.client.runtime"
# -P: the working directory (the state folder) is not put on sys.path, so nothing
# in it can shadow an import.
PYTHON_FLAGS = ("-P", "-m")

# Known SuperNode failures, by the text Flower logs, and what they mean for a site.
_REFUSALS = (
    (
        re.compile(r"code: 2004|Failed to activate SuperNode"),
        "the coordinator refused this site's key: ask the coordinator to run "
        "`fedvault server sites add NAME site.pub`",
    ),
    (
        re.compile(r"code: 2001|must be registered"),
        "the coordinator requires a registered site key; set private-key",
    ),
    (
        re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
        "the coordinator's certificate is not trusted by ca-certificate, or does not "
        "name the address in `coordinator`",
    ),
    (
        re.compile(r"Connection refused"),
        "nothing answers at `coordinator` (wrong host or port, or the coordinator "
        "is not running)",
    ),
    (
        re.compile(r"UNAVAILABLE"),
        "cannot reach the coordinator (wrong address, firewall, or TLS mismatch)",
    ),
)


@dataclass(frozen=True, kw_only=True)
class SiteOptions:
    """The ``[site]`` table, paths as written."""

    name: str
    coordinator: str
    vault: str = ""
    key_file: str = ""
    data: str = ""
    ca_certificate: str = ""
    private_key: str = ""
    state_dir: str = "site-state"
    runtime_address: str = "127.0.0.1:9094"
    max_retries: int = 0
    max_wait_time: float = 0.0
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


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SiteConfig:
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
    def policy_file(self) -> Path | None:
        """The site's privacy policy: ``policy``, else this file's [privacy] table."""
        if self.options.policy:
            return self.path(self.options.policy)
        return self.source


def load_site_config(path: Path) -> SiteConfig:
    raw = read_toml(path)
    return parse_site_config(raw, base=path.resolve().parent, source=path.resolve())


def parse_site_config(
    raw: dict[str, Any], *, base: Path, source: Path | None = None
) -> SiteConfig:
    """Parse ``[site]``; other tables (``[privacy]``: the site's policy, read by
    the ClientApp) are left to their owners."""
    table = raw.get("site")
    if not isinstance(table, dict):
        raise ConfigError("config: a [site] table is required")
    for key in ("name", "coordinator"):
        if key not in table:
            raise ConfigError(f"[site] {key}: required")
    options = parse_fields(SiteOptions, table, source="[site]")
    return SiteConfig(options, base, source if "privacy" in raw else None)


def check_files(cfg: SiteConfig) -> None:
    """Fail early, with the key, on a missing file (not after a connection attempt)."""
    opts = cfg.options
    needed = [("data", opts.data), ("key-file", opts.key_file)]
    if opts.vault and not (cfg.path(opts.vault) / MANIFEST_NAME).is_file():
        raise ConfigError(f"vault: {cfg.path(opts.vault)} is not a fedvault data vault")
    if not opts.insecure:
        needed += [
            ("ca-certificate", opts.ca_certificate),
            ("private-key", opts.private_key),
        ]
    for key, value in needed:
        if value and not cfg.path(value).is_file():
            raise ConfigError(f"{key}: {cfg.path(value)} not found")
    if cfg.policy_file is None:
        raise ConfigError(
            "no privacy policy: add a [privacy] table to the site's TOML file "
            "(dataset-id, epsilon-max, delta, ...) or set policy = PATH in [site]"
        )
    load_policy(cfg.policy_file)  # fail here, not in the first training round
    if opts.vault:  # loose permissions or a key inside the vault: refuse now
        load_key(cfg.path(opts.key_file), vault_dir=cfg.path(opts.vault))


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
    if cfg.policy_file is not None:
        node["policy"] = str(cfg.policy_file)
    cfg.node_config_file.write_text(tomli_w.dumps(node))
    return cfg.node_config_file


def supernode_command(cfg: SiteConfig) -> list[str]:
    opts = cfg.options
    host, port = split_address(opts.runtime_address, key="runtime-address")
    if opts.isolation == "fork":
        cmd = [sys.executable, *PYTHON_FLAGS, RUNTIME, "supernode"]
        cmd.append(f"{opts.poll_interval:g}")
        cmd += ["--", "--isolation", "process"]
    else:
        cmd = [flower_bin("flower-supernode")]
    cmd += [
        "--grpc-rere",
        "--superlink",
        opts.coordinator,
    ]
    if opts.insecure:
        cmd.append("--insecure")
    else:
        cmd += [
            "--root-certificates",
            str(cfg.path(opts.ca_certificate)),
            "--auth-supernode-private-key",
            str(cfg.path(opts.private_key)),
        ]
    cmd += [
        "--node-config",
        str(cfg.node_config_file),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if opts.max_retries:
        cmd += ["--max-retries", str(opts.max_retries)]
    if opts.max_wait_time:
        cmd += ["--max-wait-time", f"{opts.max_wait_time:g}"]
    return cmd


def launcher_command(cfg: SiteConfig, supernode_pid: int) -> list[str]:
    """fedvault's ClientApp launcher for ``isolation = "fork"``."""
    address = cfg.options.runtime_address
    return [
        sys.executable,
        *PYTHON_FLAGS,
        RUNTIME,
        "launcher",
        address,
        str(supernode_pid),
    ]


def explain_failure(log_text: str) -> str:
    """One line for the operator: what a SuperNode's log says went wrong."""
    for pattern, meaning in _REFUSALS:
        if pattern.search(log_text):
            return meaning
    lines = [
        ln for ln in log_text.splitlines() if "ERROR" in ln
    ] or log_text.splitlines()
    return (lines or ["no output"])[-1].strip()[:300]


def run_site(cfg: SiteConfig, *, echo: IO[str] | None = None) -> int:
    """Run the SuperNode (and, with ``isolation = "fork"``, fedvault's ClientApp
    launcher) until it exits or SIGTERM/Ctrl-C; returns 0 on a clean stop.

    Raises :class:`FederationError` with the reason when either process fails.
    """
    check_files(cfg)
    write_node_config(cfg)
    home = cfg.state_dir / "flwr-home"
    procs: list[subprocess.Popen[bytes]] = []
    with cfg.log.open("ab") as log:
        start = log.tell()
        node = spawn(supernode_command(cfg), cwd=cfg.state_dir, log=log, flwr_home=home)
        procs.append(node)
        if cfg.options.isolation == "fork":
            launcher = launcher_command(cfg, node.pid)
            procs.append(spawn(launcher, cwd=cfg.state_dir, log=log, flwr_home=home))
    if echo is not None:
        echo.write(
            f"site {cfg.options.name}: SuperNode pid {node.pid} dialing "
            f"{cfg.options.coordinator}; log {cfg.log}\n"
        )
    main = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGTERM, signal.SIGHUP)
    previous = [signal.signal(sig, _raise_interrupt) for sig in stops] if main else []
    try:
        failed = _wait_first(procs)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_all(procs)
        for sig, handler in zip(stops, previous, strict=False):
            signal.signal(sig, handler)
    if failed is None:
        return 0
    with cfg.log.open("rb") as written:
        written.seek(start)
        text = written.read().decode(errors="replace")
    what = "" if failed is node else "ClientApp launcher: "
    raise FederationError(f"site {cfg.options.name}: {what}{explain_failure(text)}")


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every process and its session's group (the launcher's forked
    ClientApps live in it), even if a second Ctrl-C arrives meanwhile."""
    for proc in reversed(procs):
        while True:
            try:
                stop_process(proc)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group
                break
            except KeyboardInterrupt:
                continue


def _wait_first(
    procs: list[subprocess.Popen[bytes]],
) -> subprocess.Popen[bytes] | None:
    """Wait until one process exits: None if the SuperNode (the first) exited
    cleanly, else the process that stopped (the launcher never stops on its own)."""
    while True:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                return None if code == 0 and proc is procs[0] else proc
        time.sleep(0.2)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
