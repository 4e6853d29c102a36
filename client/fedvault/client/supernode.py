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
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from fedvault.client.flower_log import KEY_REFUSED, explain_failure
from fedvault.client.site_config import SiteConfig, check_files, write_node_config
from fedvault.client.site_echo import SiteEcho
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.files import FolderInUseError, PidLock, private
from fedvault.common.net import port_in_use, split_address
from fedvault.common.processes import (
    describe,
    flower_bin,
    leftovers,
    spawn,
    stop_folder,
    stop_process,
)

RUNTIME = "fedvault.client.runtime"
# -P: the working directory (the state folder) is not put on sys.path, so nothing
# in it can shadow an import.
PYTHON_FLAGS = ("-P", "-m")
# Flower counts a SuperNode online until two heartbeats (30 s apart) are missed;
# after a crash its key is refused until then.
REJOIN_WINDOW = 75.0
ACCEPTED = re.compile(r"SuperNode ID: \d+")  # logged once the coordinator accepts
REJOIN_PAUSE = 5.0
# A SuperNode never ends on its own but when the coordinator ends its session (its
# key was removed with `fedvault server sites remove`, or Flower stopped it).
ENDED = "the SuperNode ended on its own (exit status 0)"


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

    One ``client start`` per state folder. After a connection that ended without
    a goodbye (this site killed or crashed, or the coordinator gone), the
    coordinator may still count the site as connected for up to a minute and
    refuse its key meanwhile: a site it accepted before (or whose last ``client
    start`` crashed) starts its SuperNode again for up to :data:`REJOIN_WINDOW` s.

    Raises:
        ConfigError: another ``client start`` runs this site, processes a killed
            one left behind still run, the runtime address is taken, or a file
            or setting is wrong.
        FederationError: with the reason, when a process fails.
    """
    check_files(cfg)
    name = cfg.options.name
    lock = PidLock(cfg.lock, what=f"site {name}'s state folder {cfg.state_dir}")
    try:
        lock.acquire()
    except FolderInUseError as exc:
        raise ConfigError(
            f"site {name} already runs from {cfg.state_dir} (pid {exc.pid or '?'}); "
            "`fedvault client stop` stops it"
        ) from None
    try:
        with private(cfg.state_dir):  # 0700/0600 for all: ledger, logs, Flower's
            return _run_locked(cfg, echo)
    finally:
        lock.release()


def _run_locked(cfg: SiteConfig, echo: IO[str] | None) -> int:
    _refuse_leftovers(cfg)
    crashed = _previous_crash(cfg)
    write_node_config(cfg)
    cfg.live.write_text(json.dumps({"pid": os.getpid()}) + "\n")
    try:
        if crashed is not None and echo is not None:
            echo.write(
                f"site {cfg.options.name}: the previous `fedvault client start` "
                f"(pid {crashed}) did not stop cleanly (killed or crashed)\n"
            )
        rejoin = crashed is not None or _accepted_before(cfg)
        return _supervise(cfg, echo, rejoin=rejoin)
    finally:  # any way out but a kill or a crash is a clean stop
        cfg.live.unlink(missing_ok=True)


def stop_site(cfg: SiteConfig) -> list[str]:
    """Stop the ``client start`` running this site (as SIGTERM or Ctrl-C would)
    and any Flower process a killed one left behind; returns what was stopped.

    Raises:
        FederationError: a process did not stop in time.
    """
    return stop_folder(
        cfg.lock, cfg.flwr_home, what="`fedvault client start`", timeout=60.0
    )


def _refuse_leftovers(cfg: SiteConfig) -> None:
    left = leftovers(cfg.flwr_home)
    if left:
        pids = " ".join(str(p.pid) for p in left)
        raise ConfigError(
            f"site {cfg.options.name}: {describe(left)}, left running by a "
            "`fedvault client start` that was killed, still serve this site; "
            f"`fedvault client stop` (or `kill {pids}`) stops them"
        )
    address = cfg.options.runtime_address
    if port_in_use(address, key="runtime-address"):
        raise ConfigError(
            f"runtime-address: {address} is already in use by another program "
            "(each site on a host needs its own)"
        )


def _previous_crash(cfg: SiteConfig) -> int | None:
    """The pid of a ``client start`` that did not stop cleanly, if one left its
    ``site.json`` behind."""
    try:
        return int(json.loads(cfg.live.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _accepted_before(cfg: SiteConfig) -> bool:
    """Whether the coordinator ever accepted this site's key (its log says so)."""
    try:
        return ACCEPTED.search(cfg.log.read_text(errors="replace")) is not None
    except OSError:
        return False


def _supervise(cfg: SiteConfig, echo: IO[str] | None, *, rejoin: bool) -> int:
    """Run the site until it stops; a key refusal is retried for
    :data:`REJOIN_WINDOW` s: a coordinator still counts a lost connection of a site
    it knew (``rejoin``) as online, and registers its sites' keys only just after
    its Fleet API opens (a site started with it is refused for a moment)."""
    main = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGTERM, signal.SIGHUP)
    previous = [signal.signal(sig, _raise_interrupt) for sig in stops] if main else []
    refused_since: float | None = None
    try:
        while True:
            failure = _run_once(cfg, echo)
            if failure is None:
                return 0
            if ACCEPTED.search(failure):  # this time it was in: a new streak
                rejoin, refused_since = True, None
            if not KEY_REFUSED.search(failure):
                break
            refused_since = refused_since or time.monotonic()
            if time.monotonic() - refused_since > REJOIN_WINDOW:
                break
            why = (
                "it counts a lost connection as online for up to a minute"
                if rejoin
                else "a coordinator registers its sites' keys just after it starts"
            )
            if echo is not None:
                echo.write(
                    f"site {cfg.options.name}: the coordinator refused the key "
                    f"({why}): trying again in {REJOIN_PAUSE:g} s for up to "
                    f"{REJOIN_WINDOW:g} s\n"
                )
            time.sleep(REJOIN_PAUSE)
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in zip(stops, previous, strict=False):
            signal.signal(sig, handler)
    raise FederationError(f"site {cfg.options.name}: {explain_failure(failure)}")


def _run_once(cfg: SiteConfig, echo: IO[str] | None) -> str | None:
    """Start the site's processes and wait until one ends: what the log says
    (prefixed for the launcher; after :data:`ENDED` when the SuperNode ended on its
    own, which it does only when the coordinator ends its session).

    Raises:
        KeyboardInterrupt: on Ctrl-C or SIGTERM, once every process is stopped.
    """
    procs: list[subprocess.Popen[bytes]] = []
    home, log = cfg.flwr_home, cfg.log
    start = log.stat().st_size if log.exists() else 0
    node = spawn(supernode_command(cfg), cwd=cfg.state_dir, log=log, flwr_home=home)
    procs.append(node)
    if cfg.options.isolation == "fork":
        launcher = launcher_command(cfg, node.pid)
        procs.append(spawn(launcher, cwd=cfg.state_dir, log=log, flwr_home=home))
    tail = None if echo is None else SiteEcho(cfg, echo)
    if echo is not None and tail is not None:
        echo.write(
            f"site {cfg.options.name}: SuperNode pid {node.pid} dialing "
            f"{cfg.options.coordinator} ({tail.limit()}); log {cfg.log}\n"
        )
    try:
        failed = _wait_first(procs, None if tail is None else tail.poll)
    finally:
        _stop_all(procs)
        if tail is not None:
            tail.poll()
    with cfg.log.open("rb") as written:
        size = written.seek(0, os.SEEK_END)
        written.seek(start if start <= size else 0)  # (rotated meanwhile)
        text = written.read().decode(errors="replace")
    if failed is None:
        return f"{ENDED}\n{text}"
    return text if failed is node else f"ClientApp launcher: {text}"


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
    procs: list[subprocess.Popen[bytes]], tick: Callable[[], None] | None = None
) -> subprocess.Popen[bytes] | None:
    """Wait until one process exits: None if the SuperNode (the first) exited
    cleanly, else the process that stopped (the launcher never stops on its own);
    ``tick`` runs about once a second meanwhile."""
    beats = 0
    while True:
        for proc in procs:
            code = proc.poll()
            if code is not None:
                return None if code == 0 and proc is procs[0] else proc
        beats += 1
        if tick is not None and beats % 5 == 0:
            tick()
        time.sleep(0.2)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
