"""The deployed coordinator: Flower's SuperLink with TLS and SuperNode authentication.

``start`` launches ``flower-superlink`` in its own process session with a persistent
state database, the gRPC Fleet API on the configured (partner-facing) address and the
Control/Runtime HTTP API on a loopback or private address, registers the sites listed
in the registry, submits the fedvault ServerApp run with ``flwr run`` and follows it
with ``flwr ls`` until it finishes. Every process started here is stopped on the way
out (normal end, error, timeout, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fedvault.common.certs import SERVER_CERT, SERVER_KEY, check_certificates
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.files import atomic_write
from fedvault.common.net import split_address
from fedvault.common.processes import flower_bin, spawn, stop_process
from fedvault.server.checkpoint import CHECKPOINT_FILE
from fedvault.server.control import flwr_json, run_status, submit, sync_registry
from fedvault.server.deploy import CoordinatorConfig, CoordinatorLayout, run_config
from fedvault.server.registry import SiteRegistry
from fedvault.server.rundir import PROGRESS_FILE, SUMMARY_FILE

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0
POLL_SECONDS = 2.0


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
    log = CoordinatorLayout(cfg.run_dir).log
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
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
    layout.write_connection(cfg, insecure=insecure)
    # flower_env leaves out FLWR_INTERNAL_GRPC_CONTROL_API: never a second Control API
    with layout.log.open("ab") as log:
        proc = spawn(
            superlink_command(cfg, insecure=insecure),
            cwd=layout.state,
            log=log,
            flwr_home=layout.flwr_home,
        )
    try:
        wait_healthy(cfg, proc, insecure=insecure, timeout=START_TIMEOUT)
        _write_live(
            layout,
            {
                "pid": proc.pid,
                "insecure": insecure,
                "control-address": cfg.options.control_address,
                "fleet-address": cfg.options.fleet_address,
            },
        )
        yield layout
    finally:
        stop_process(proc)
        layout.live.unlink(missing_ok=True)


def _write_live(layout: CoordinatorLayout, values: dict[str, Any]) -> None:
    current = read_live(layout) or {}
    data = json.dumps(current | values, indent=2) + "\n"
    atomic_write(layout.live, data.encode())


def read_live(layout: CoordinatorLayout) -> dict[str, Any] | None:
    """What the running coordinator wrote about itself, or None when none runs."""
    try:
        live: dict[str, Any] = json.loads(layout.live.read_text())
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError, TypeError):
        os.kill(int(live["pid"]), 0)
        return live
    return None


def prepare_output(layout: CoordinatorLayout, *, restart: bool) -> None:
    """Refuse to mix two runs in one output folder; ``restart`` moves the old aside."""
    out = layout.output
    if not ((out / PROGRESS_FILE).exists() or (out / SUMMARY_FILE).exists()):
        return
    finished = (out / SUMMARY_FILE).exists()
    if not restart:
        what = "a finished run" if finished else "an unfinished run"
        raise ConfigError(
            f"{out} holds {what}; pass --restart to move it aside and start over "
            "or `fedvault server resume` to continue it from its last round"
        )
    aside = out.with_name(f"output-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(aside)
    logger.warning("moved the previous run's output to %s", aside)


def follow(
    layout: CoordinatorLayout,
    run_id: int,
    *,
    timeout: float,
    on_poll: Callable[[], None] | None = None,
) -> str:
    """Poll the run until it finishes; stop it on timeout or interrupt."""
    deadline = time.monotonic() + timeout
    try:
        while not (status := run_status(layout, run_id)).startswith("finished"):
            if time.monotonic() > deadline:
                raise FederationError(f"the run did not finish within {timeout:g} s")
            if on_poll is not None:
                on_poll()
            time.sleep(POLL_SECONDS)
    except BaseException:
        with contextlib.suppress(FederationError):
            flwr_json(layout, "stop", str(run_id))
        raise
    if on_poll is not None:
        on_poll()
    return status


def start(
    cfg: CoordinatorConfig,
    *,
    insecure: bool = False,
    restart: bool = False,
    on_poll: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start the coordinator and run the federation to its end; returns the summary."""
    layout = CoordinatorLayout(cfg.run_dir)
    prepare_output(layout, restart=restart)
    layout.output.mkdir(parents=True, exist_ok=True)
    values = run_config(cfg, layout.output.resolve(), run_key=uuid.uuid4().hex)
    return _run(cfg, layout, values, insecure=insecure, on_poll=on_poll)


def resume(
    cfg: CoordinatorConfig,
    *,
    insecure: bool = False,
    on_poll: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Continue the unfinished run in the config's run folder from its last completed
    round (same settings, same run key: sites' ledgers continue the same run)."""
    layout = CoordinatorLayout(cfg.run_dir)
    out = layout.output
    if (out / SUMMARY_FILE).exists():
        raise ConfigError(f"{out} holds a finished run: nothing to resume")
    if not (out / CHECKPOINT_FILE).exists() or not layout.run_config_file.exists():
        raise ConfigError(f"{out} holds no checkpoint: nothing to resume (use start)")
    previous = tomllib.loads(layout.run_config_file.read_text())
    values = run_config(
        cfg, out.resolve(), run_key=str(previous["run-key"]), resume=True
    )
    return _run(cfg, layout, values, insecure=insecure, on_poll=on_poll)


def _run(
    cfg: CoordinatorConfig,
    layout: CoordinatorLayout,
    values: dict[str, bool | int | float | str],
    *,
    insecure: bool,
    on_poll: Callable[[], None] | None,
) -> dict[str, Any]:
    registry = SiteRegistry(layout.registry)
    for name, key in cfg.sites.items():
        if name not in registry.sites:
            registry.add(name, key)
    layout.write_app(values)
    with _sigterm_as_interrupt(), superlink(cfg, insecure=insecure):
        if not insecure:
            added = sync_registry(layout, registry)
            logger.info(
                "registered %d site(s) with the SuperLink: %s", len(added), added
            )
        run_id = submit(layout)
        _write_live(layout, {"run-id": run_id})
        logger.info("submitted run %d", run_id)
        status = follow(layout, run_id, timeout=cfg.options.timeout, on_poll=on_poll)
    summary_path = layout.output / SUMMARY_FILE
    if status != "finished:completed" or not summary_path.exists():
        raise FederationError(f"the run ended as {status!r}: {_last_error(layout)}")
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, a service manager) stops the run like Ctrl-C does:
    the run is stopped and the SuperLink shut down, nothing is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _last_error(layout: CoordinatorLayout) -> str:
    progress = layout.output / PROGRESS_FILE
    if progress.exists():
        for line in reversed(progress.read_text().splitlines()):
            event = json.loads(line)
            if event.get("event") in ("error", "stopped"):
                return str(event.get("message") or event.get("reason"))
    return f"see {layout.log}"
