"""The coordinator's SuperLink process: its command line, its ports, its health
check and what the running coordinator writes about itself (``coordinator.json``).

The SuperLink starts in its own process session and dies with the coordinator
(:func:`fedvault.common.processes.spawn`); its Fleet port is checked free before it
starts, so that it never runs beside a program that already holds it (a SuperLink
left behind by a killed coordinator, say). Its Control API opens no port at all:
it is served on a private unix socket (:mod:`fedvault.server._control_socket`),
and the start fails if the Control port answers anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fedvault.common.certs import SERVER_CERT, SERVER_KEY, check_certificates
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.files import atomic_write, lock_holder
from fedvault.common.flower_logs import explain_exit, plain
from fedvault.common.net import port_in_use, split_address
from fedvault.common.processes import flower_bin, spawn, stop_process
from fedvault.server import _control_socket
from fedvault.server.control import RogueWatch
from fedvault.server.deploy import CoordinatorConfig, CoordinatorLayout

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0
ROGUE_CHECK_S = 5.0

# SuperLink lines left out of its log: one per request that succeeded (uvicorn's
# access log, always on in Flower), and the Control API calls that fedvault's own
# polling (`flwr ls`, `server status`) makes every few seconds.
QUIET = (
    re.compile(rb'\[uvicorn\.access\] .*" [23]\d\d\s*$'),
    re.compile(rb"INFO :\s+ControlServicer\.(ListRuns|ListNodes)\s*$"),
)


def _client(cfg: CoordinatorConfig, socket: Path, *, insecure: bool) -> httpx.Client:
    verify: ssl.SSLContext | bool = (
        False if insecure else ssl.create_default_context(cafile=str(cfg.ca_cert))
    )
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket), verify=verify), timeout=2
    )


def wait_healthy(
    cfg: CoordinatorConfig,
    proc: subprocess.Popen[bytes] | None,
    *,
    socket: Path,
    insecure: bool,
    timeout: float,
) -> None:
    """Wait for ``/health`` on the Control API behind ``socket`` (HTTPS, verified
    against our CA, unless ``insecure``).

    Raises:
        FederationError: when the SuperLink exits or does not answer in time.
    """
    host, port = split_address(cfg.options.control_address, key="control-address")
    scheme = "http" if insecure else "https"
    url = f"{scheme}://{host}:{port}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            stop_process(proc)  # its last lines are in the log once this returns
            raise FederationError(
                f"the SuperLink exited during start-up: {_log_tail(cfg)}"
            )
        with (
            contextlib.suppress(httpx.HTTPError),
            _client(cfg, socket, insecure=insecure) as client,
        ):
            if client.get(url).status_code == 200:
                return
        time.sleep(0.3)
    raise FederationError(
        f"the SuperLink did not answer on {socket} within {timeout:g} s"
    )


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
    """Refuse a certificate that is expired, invalid, or expires before the run
    can end (``timeout`` from now): sites would lose the SuperLink mid-run with
    only "Connection to the SuperLink is unavailable". Warn when one expires
    within :data:`~fedvault.common.certs.WARN_DAYS`."""
    cfg.check_certs()
    end = datetime.now(UTC) + timedelta(seconds=cfg.options.timeout)
    for status in check_certificates(cfg.certs_dir):
        if status.state in ("expired", "invalid"):
            raise ConfigError(f"certs: {status.path} is {status.state} {status.detail}")
        expires = status.not_after.strftime("%Y-%m-%d %H:%M UTC")
        if status.not_after < end:
            renew = (
                f"fedvault certs server {cfg.certs_dir} --renew"
                if status.path.name == SERVER_CERT
                else "issue a new CA and give its ca.crt to every site"
            )
            raise ConfigError(
                f"certs: {status.path} expires {expires}, before this run can end "
                f"(timeout {cfg.options.timeout:g} s: by "
                f"{end.strftime('%Y-%m-%d %H:%M UTC')}); renew it ({renew}) or "
                "lower timeout"
            )
        if status.state == "expiring":
            logger.warning(
                "certificate %s expires %s (in %.0f days); renew it before then",
                status.path,
                expires,
                status.days_left,
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
    _control_socket.remove_stale()
    socket = _control_socket.private_socket()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, socket.parent, ignore_errors=True)
        # flower_env leaves out FLWR_INTERNAL_GRPC_CONTROL_API: no second Control API
        proc = spawn(
            superlink_command(cfg, insecure=insecure),
            cwd=layout.state,
            log=layout.log,
            flwr_home=layout.flwr_home,
            env=_control_socket.environment(socket),
            quiet=QUIET,
        )
        cleanup.callback(layout.live.unlink, missing_ok=True)
        cleanup.callback(stop_process, proc)
        wait_healthy(cfg, proc, socket=socket, insecure=insecure, timeout=START_TIMEOUT)
        _check_no_control_port(cfg)
        live = {
            "pid": os.getpid(),
            "superlink-pid": proc.pid,
            "insecure": insecure,
            "control-address": cfg.options.control_address,
            "control-socket": str(socket),
            "fleet-address": cfg.options.fleet_address,
        }
        atomic_write(layout.live, (json.dumps(live, indent=2) + "\n").encode())
        if not insecure:  # no site authentication, no registrations to watch
            cleanup.callback(_watch_rogues(layout))
        yield layout


def _watch_rogues(layout: CoordinatorLayout) -> Callable[[], None]:
    """Unregister rogue nodes every :data:`ROGUE_CHECK_S` in a thread
    (:class:`~fedvault.server.control.RogueWatch`); returns what stops it."""
    stop = threading.Event()
    watch = RogueWatch(layout)

    def loop() -> None:
        while not stop.wait(ROGUE_CHECK_S):
            try:
                watch.check(time.monotonic())
            except FederationError as exc:  # the next look may do better
                logger.warning("checking Flower's registrations: %s", exc)

    thread = threading.Thread(target=loop, name="fedvault-rogue-watch", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=30)

    return halt


def _check_no_control_port(cfg: CoordinatorConfig) -> None:
    """The Control API must answer only on its socket: refuse a SuperLink that
    opened the Control port after all (reachable by every account on the host)."""
    if port_in_use(cfg.options.control_address, key="control-address"):
        raise FederationError(
            f"the SuperLink opened its Control API on "
            f"{cfg.options.control_address}, reachable by every account on this "
            "host; refusing to run it (is another sitecustomize in PYTHONPATH?)"
        )


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
    a crashed coordinator left behind). Also removes the Control API socket
    folders that killed coordinators left (:func:`_control_socket.remove_stale`)."""
    _control_socket.remove_stale()
    holder = lock_holder(layout.lock)
    if not holder:
        return None
    try:
        live: dict[str, Any] = json.loads(layout.live.read_text())
    except (OSError, ValueError):
        return None
    return live if live.get("pid") == holder else None
