"""The deployed coordinator: Flower's SuperLink with TLS and SuperNode authentication.

``start`` launches ``flower-superlink`` in its own process session with a persistent
state database, the gRPC Fleet API on the configured (partner-facing) address and the
Control/Runtime HTTP API on a loopback or private address, registers the sites listed
in the registry, submits the fedvault ServerApp run with ``flwr run`` and follows it
with ``flwr ls`` until it finishes. Every process started here is stopped on the way
out (normal end, error, timeout, Ctrl-C, SIGTERM) and, on Linux, dies with the
coordinator when it is killed.

One coordinator runs a run folder at a time (``coordinator.lock``); ``start`` and
``resume`` first read the folder's state (:mod:`fedvault.server.runstate`) and
refuse, with that state's one message, what does not apply to it, as well as Flower
processes an earlier coordinator left behind and Fleet or Control ports in use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.files import FolderInUseError, PidLock, private
from fedvault.common.processes import stop_folder
from fedvault.server.control import flwr_json, run_status, submit, sync_registry
from fedvault.server.deploy import CoordinatorConfig, CoordinatorLayout, run_config
from fedvault.server.registry import SiteRegistry, read_public_key
from fedvault.server.rundir import PROGRESS_FILE, SUMMARY_FILE, RunDirectory
from fedvault.server.runstate import RunFolder, RunState, inspect_run
from fedvault.server.settings import init_model_of
from fedvault.server.superlink import superlink, write_live

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
STOP_TIMEOUT = 120.0


class StopRequested(KeyboardInterrupt):
    """SIGTERM reached the coordinator (``fedvault server stop``, a service
    manager): the run is stopped, its checkpoint kept."""


def prepare_output(
    layout: CoordinatorLayout,
    *,
    restart: bool,
    rounds: int = 0,
    config: Path | None = None,
) -> RunFolder:
    """Refuse to mix two runs in one output folder, or to start beside Flower
    processes an earlier coordinator left behind; ``restart`` moves a previous run's
    output aside. Returns the folder's state as found.

    Raises:
        ConfigError: with the folder's message (:meth:`RunFolder.message`) when it
            holds a run and ``restart`` is off, a coordinator runs it, or leftovers
            run.
    """
    folder = inspect_run(layout, rounds=rounds)
    if restart:
        folder.refuse_unless(
            *(s for s in RunState if s is not RunState.RUNNING), config=config
        )
    else:
        folder.refuse_unless(RunState.NEW, config=config)
    out = layout.output
    if folder.state is not RunState.NEW and out.exists():
        aside = out.with_name(f"output-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        logger.warning("moved the previous run's output to %s", aside)
    return folder


@contextlib.contextmanager
def _claim(cfg: CoordinatorConfig, layout: CoordinatorLayout) -> Iterator[None]:
    """Hold the run folder's lock for the block.

    Raises:
        ConfigError: naming the coordinator (its pid) that runs the folder.
    """
    lock = PidLock(layout.lock, what=f"the run folder {layout.root}")
    try:
        lock.acquire()
    except FolderInUseError:
        folder = inspect_run(layout, rounds=cfg.training.rounds)
        raise ConfigError(folder.message(cfg.source)) from None
    try:
        with private(layout.root):  # 0700/0600 for all in it, Flower's files too
            yield
    finally:
        lock.release()


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
    resume_stopped: bool = False,
    on_poll: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start the coordinator and run the federation to its end; returns the summary.

    With ``resume_stopped``, a stopped run in the folder is resumed instead (one
    command for a service manager: it starts a study and, after a crash, a
    reboot or ``server stop``, continues it).

    Raises:
        ConfigError: the run folder is not new (unless ``restart``, or stopped
            with ``resume_stopped``), a coordinator runs it, processes an earlier
            one left behind still run, a port is taken, or the certificates are
            wrong.
        FederationError: the run failed or did not finish in time.
        StopRequested: SIGTERM stopped the run (its checkpoint is kept).
    """
    layout = CoordinatorLayout(cfg.run_dir)
    with _claim(cfg, layout):
        folder = inspect_run(layout, rounds=cfg.training.rounds)
        if resume_stopped and folder.state is RunState.STOPPED and not restart:
            return _resume(cfg, layout, folder, insecure=insecure, on_poll=on_poll)
        prepare_output(
            layout, restart=restart, rounds=cfg.training.rounds, config=cfg.source
        )
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
    round (same settings, same run key: sites' ledgers continue the same run).

    Raises:
        ConfigError: the folder holds no stopped run (the message says what it
            holds), or as :func:`start`.
        FederationError: as :func:`start`.
        StopRequested: as :func:`start`.
    """
    layout = CoordinatorLayout(cfg.run_dir)
    with _claim(cfg, layout):
        folder = inspect_run(layout, rounds=cfg.training.rounds)
        return _resume(cfg, layout, folder, insecure=insecure, on_poll=on_poll)


def _resume(
    cfg: CoordinatorConfig,
    layout: CoordinatorLayout,
    folder: RunFolder,
    *,
    insecure: bool,
    on_poll: Callable[[], None] | None,
) -> dict[str, Any]:
    folder.refuse_unless(RunState.STOPPED, config=cfg.source)
    previous = tomllib.loads(layout.run_config_file.read_text())
    values = run_config(
        cfg,
        layout.output.resolve(),
        run_key=str(previous["run-key"]),
        resume=True,
        # the model the run started from, were it given as --init-model
        init_model=init_model_of(previous),
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
    _admit_listed(cfg, registry)
    layout.write_app(values)
    try:
        with _sigterm_as_interrupt(), superlink(cfg, insecure=insecure):
            if not insecure:
                added = sync_registry(layout, registry)
                logger.info(
                    "registered %d site(s) with the SuperLink: %s", len(added), added
                )
            run_id = submit(layout)
            write_live(layout, {"run-id": run_id})
            logger.info("submitted run %d", run_id)
            status = follow(
                layout, run_id, timeout=cfg.options.timeout, on_poll=on_poll
            )
    except KeyboardInterrupt as exc:
        reason = (
            "stopped by SIGTERM (`fedvault server stop` or a service manager)"
            if isinstance(exc, StopRequested)
            else "interrupted (Ctrl-C)"
        )
        RunDirectory(layout.output).event("interrupted", reason=reason)
        raise
    summary_path = layout.output / SUMMARY_FILE
    if status != "finished:completed" or not summary_path.exists():
        raise FederationError(f"the run ended as {status!r}: {_last_error(layout)}")
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary


def _admit_listed(cfg: CoordinatorConfig, registry: SiteRegistry) -> None:
    """List the sites of ``[sites]`` that the registry does not know yet, except a
    key revoked with ``sites remove``: the removal wins over the file."""
    for name, key in cfg.sites.items():
        if name in registry.sites:
            continue
        revoked = registry.revoked.get(read_public_key(key)[1])
        if revoked is not None:
            logger.warning(
                "[sites] %s in %s is not admitted: %s",
                name,
                cfg.source or "the config",
                revoked.describe(),
            )
            continue
        registry.add(name, key)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, a service manager) stops the run like Ctrl-C does:
    the run is stopped and the SuperLink shut down, nothing is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise StopRequested

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


def stop(cfg: CoordinatorConfig, *, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop the coordinator running ``cfg``'s folder as Ctrl-C would (its run is
    stopped, its checkpoint kept: ``resume`` continues it), and any Flower process
    an earlier coordinator left behind. Returns what was stopped ([]: nothing ran).

    Raises:
        FederationError: a process did not stop within ``timeout`` seconds.
    """
    layout = CoordinatorLayout(cfg.run_dir)
    return stop_folder(
        layout.lock, layout.flwr_home, what="the coordinator", timeout=timeout
    )
