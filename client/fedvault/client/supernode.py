"""A site's side of a deployment: Flower's SuperNode with TLS and node authentication.

:func:`run_site` starts the SuperNode (and, with ``isolation = "fork"``, fedvault's
ClientApp launcher) for a site's settings (:mod:`fedvault.client.site_config`), each in
its own process session, and stops them all on the way out. Flower's SuperNode
reconnects with backoff while the coordinator is away. Every ClientApp it starts trains
on CUDA when there is a GPU. How the SuperNode and its ClientApp processes are started
(``isolation``, ``poll-interval``): :mod:`fedvault.client.runtime`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from fedvault.client.flower_log import explain_failure
from fedvault.client.site_config import SiteConfig, check_files, write_node_config
from fedvault.common.errors import FederationError
from fedvault.common.net import split_address
from fedvault.common.processes import flower_bin, spawn, stop_process

RUNTIME = "fedvault.client.runtime"
# -P: the working directory (the state folder) is not put on sys.path, so nothing
# in it can shadow an import.
PYTHON_FLAGS = ("-P", "-m")


def supernode_command(cfg: SiteConfig) -> list[str]:
    """The SuperNode's command line: fedvault's runtime (``isolation = "fork"``) or
    Flower's own ``flower-supernode``, dialing ``coordinator``."""
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
