"""The coordinator's SuperLink process: its command line, its ports, its health
check and what the running coordinator writes about itself (``coordinator.json``).

The SuperLink starts in its own process session and dies with the coordinator
(:func:`fedvault.common.processes.spawn`); its Fleet and Control ports are checked
free before it starts, so that it never runs beside a program that already holds
them (a SuperLink left behind by a killed coordinator, say).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from fedvault.common.certs import SERVER_CERT, SERVER_KEY, check_certificates
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.files import atomic_write, lock_holder
from fedvault.common.flower_logs import explain_exit, plain
from fedvault.common.net import port_in_use, split_address
from fedvault.common.processes import flower_bin, spawn, stop_process
from fedvault.server.deploy import CoordinatorConfig, CoordinatorLayout

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0

# SuperLink lines left out of its log: one per request that succeeded (uvicorn's
# access log, always on in Flower), and the Control API calls that fedvault's own
# polling (`flwr ls`, `server status`) makes every few seconds.
QUIET = (
    re.compile(rb'\[uvicorn\.access\] .*" [23]\d\d\s*$'),
    re.compile(rb"INFO :\s+ControlServicer\.(ListRuns|ListNodes)\s*$"),
)


def _ssl_context(cfg: CoordinatorConfig, insecure: bool) -> ssl.SSLContext | None:
    return None if insecure else ssl.create_default_context(cafile=str(cfg.ca_cert))


def wait_healthy(
    cfg: CoordinatorConfig,
    proc: subprocess.Popen[bytes] | None,
    *,
    insecure: bool,
    timeout: float,
) -> None:
    """Wait for ``/health`` on the Control API (HTTPS, verified against our CA)."""
    host, port = split_address(cfg.options.control_address, key="control-address")
    scheme = "http" if insecure else "https"
    url = f"{scheme}://{host}:{port}/health"
    context = _ssl_context(cfg, insecure)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            stop_process(proc)  # its last lines are in the log once this returns
            raise FederationError(
                f"the SuperLink exited during start-up: {_log_tail(cfg)}"
            )
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=2, context=context) as resp,  # noqa: S310
        ):
            if resp.status == 200:
                return
        time.sleep(0.3)
    raise FederationError(f"the SuperLink did not answer on {url} within {timeout:g} s")


def _log_tail(cfg: CoordinatorConfig) -> str:
    """What the SuperLink's log says went wrong, in words, naming the log."""
    log = CoordinatorLayout(cfg.run_dir).log
    text = plain(log.read_text(errors="replace")) if log.exists() else ""
    explained = explain_exit(text)
    if explained is not None:
        return f"{explained} (see {log})"
    lines = text.splitlines()
    wanted = [ln for ln in lines if "ERROR" in ln or "rror" in ln] or lines
    return (wanted or ["no log"])[-1].strip()[:300] + f" (see {log})"


def superlink_command(cfg: CoordinatorConfig, *, insecure: bool) -> list[str]:
    layout = CoordinatorLayout(cfg.run_dir)
    host, port = split_address(cfg.options.control_address, key="control-address")
    cmd = [flower_bin("flower-superlink")]
    if insecure:
        cmd.append("--insecure")
    else:
        certs = cfg.certs_dir
        cmd += [
            "--ssl-ca-certfile",
            str(cfg.ca_cert),
            "--ssl-certfile",
            str(certs / SERVER_CERT),
            "--ssl-keyfile",
            str(certs / SERVER_KEY),
            "--enable-supernode-auth",
        ]
    return [
        *cmd,
        "--database",
        str(layout.database),
        "--fleet-api-type",
        "grpc-rere",
        "--fleet-api-address",
        cfg.options.fleet_address,
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def _check_certificates(cfg: CoordinatorConfig) -> None:
    cfg.check_certs()
    for status in check_certificates(cfg.certs_dir):
        if status.state in ("expired", "invalid"):
            raise ConfigError(f"certs: {status.path} is {status.state} {status.detail}")
        if status.state == "expiring":
            logger.warning(
                "certificate %s expires in %.0f days", status.path, status.days_left
            )


@contextlib.contextmanager
def superlink(cfg: CoordinatorConfig, *, insecure: bool) -> Iterator[CoordinatorLayout]:
    """The coordinator's SuperLink for the duration of the block."""
    layout = CoordinatorLayout(cfg.run_dir)
    if insecure:
        logger.warning(
            "INSECURE: no TLS and no site authentication; never use this "
            "outside a test on one machine"
        )
    else:
        _check_certificates(cfg)
    layout.state.mkdir(parents=True, exist_ok=True)
    _check_ports(cfg)
    layout.write_connection(cfg, insecure=insecure)
    # flower_env leaves out FLWR_INTERNAL_GRPC_CONTROL_API: never a second Control API
    proc = spawn(
        superlink_command(cfg, insecure=insecure),
        cwd=layout.state,
        log=layout.log,
        flwr_home=layout.flwr_home,
        quiet=QUIET,
    )
    try:
        wait_healthy(cfg, proc, insecure=insecure, timeout=START_TIMEOUT)
        live = {
            "pid": os.getpid(),
            "superlink-pid": proc.pid,
            "insecure": insecure,
            "control-address": cfg.options.control_address,
            "fleet-address": cfg.options.fleet_address,
        }
        atomic_write(layout.live, (json.dumps(live, indent=2) + "\n").encode())
        yield layout
    finally:
        stop_process(proc)
        layout.live.unlink(missing_ok=True)


def write_live(layout: CoordinatorLayout, values: dict[str, Any]) -> None:
    """Add ``values`` to what the running coordinator says about itself."""
    current = json.loads(layout.live.read_text())
    data = json.dumps(current | values, indent=2) + "\n"
    atomic_write(layout.live, data.encode())


def _check_ports(cfg: CoordinatorConfig) -> None:
    """Refuse before starting Flower when its Fleet or Control port is taken:
    otherwise the SuperLink dies on it while its health check may reach whatever
    holds the port."""
    for key, address in (
        ("fleet-address", cfg.options.fleet_address),
        ("control-address", cfg.options.control_address),
    ):
        if port_in_use(address, key=key):
            raise ConfigError(
                f"{key}: {address} is already in use by another program; stop it "
                "or choose another port"
            )


def read_live(layout: CoordinatorLayout) -> dict[str, Any] | None:
    """What the running coordinator wrote about itself, or None when none runs
    (a ``coordinator.json`` whose writer does not hold the folder's lock is what
    a crashed coordinator left behind)."""
    holder = lock_holder(layout.lock)
    if not holder:
        return None
    try:
        live: dict[str, Any] = json.loads(layout.live.read_text())
    except (OSError, ValueError):
        return None
    return live if live.get("pid") == holder else None
