"""Running Flower's own processes for a local simulation (Flower-facing, private).

Shape (checked against flwr 1.39): a private work folder holds ``FLWR_HOME`` (a
``config.toml`` naming one SuperLink connection), an app folder
whose ``pyproject.toml`` points Flower at ``fedvault.server.app:app`` and
``fedvault.client.app:app`` and declares every run-config key, and the run-config TOML.
We start ``flower-superlink --simulation`` in its own process session, submit with
``flwr run --stream``, read the final status with ``flwr ls`` (``flwr run`` exits 0
even when the run failed), and always stop and reap every process we started.
Like the coordinator's, this SuperLink serves its Control API (no account
authentication in open-source Flower) on a private unix socket, never on the
loopback port its connection names (:mod:`fedvault.server._control_socket`).
:func:`write_app` and :func:`write_connection` also write a deployed coordinator's
app folder and ``FLWR_HOME`` (:mod:`fedvault.server.deploy`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import tomli_w

from fedvault.common.errors import FederationError
from fedvault.common.net import port_in_use
from fedvault.common.processes import (
    flower_bin,
    flower_env,
    kill_processes_in,
    spawn,
    stop_process,
)
from fedvault.server import _control_socket

logger = logging.getLogger(__name__)

SERVER_COMPONENT = "fedvault.server.app:app"
CLIENT_COMPONENT = "fedvault.client.app:app"
CONNECTION = "fedvault-sim"

RunConfig = Mapping[str, bool | int | float | str]


def write_app(
    app_dir: Path, run_config_file: Path, run_config: RunConfig, *, name: str
) -> None:
    """Flower's app folder for project ``name`` (a ``pyproject.toml`` naming fedvault's
    ServerApp and ClientApp components and declaring every run-config key, with its
    value as the default) and the run-config TOML that ``flwr run`` submits."""
    app_dir.mkdir(parents=True, exist_ok=True)
    project = {
        "project": {"name": name, "version": "1.0.0"},
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedvault",
                    "components": {
                        "serverapp": SERVER_COMPONENT,
                        "clientapp": CLIENT_COMPONENT,
                    },
                    "config": dict(run_config),
                }
            }
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project))
    run_config_file.write_text(tomli_w.dumps(dict(run_config)))


def write_connection(flwr_home: Path, name: str, connection: dict[str, Any]) -> None:
    """``$FLWR_HOME/config.toml`` naming one SuperLink connection, the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    doc = {"superlink": {"default": name, name: connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(doc))


@dataclass(frozen=True)
class SimulationLayout:
    """Files of one simulation's private work folder."""

    work: Path

    @property
    def flwr_home(self) -> Path:
        return self.work / "flwr-home"

    @property
    def app_dir(self) -> Path:
        return self.work / "app"

    @property
    def run_config_file(self) -> Path:
        return self.work / "run-config.toml"

    @property
    def ray_tmp(self) -> Path:
        return self.work / "ray"

    @property
    def socket_file(self) -> Path:
        """Names the running SuperLink's Control API socket (:func:`superlink`)."""
        return self.work / "control-socket"

    def env(self) -> dict[str, str]:
        """What a Flower process of this simulation adds to its environment: Ray's
        temporary files in the work folder, and the Control API socket while the
        SuperLink runs."""
        env = {"RAY_TMPDIR": str(self.ray_tmp)}
        if self.socket_file.exists():
            socket = Path(self.socket_file.read_text())
            env |= _control_socket.environment(socket)
        return env

    def write(self, run_config: RunConfig, port: int) -> None:
        """FLWR_HOME naming the SuperLink on 127.0.0.1:``port``, the app folder and
        the run config."""
        connection = {"address": f"127.0.0.1:{port}", "insecure": True}
        write_connection(self.flwr_home, CONNECTION, connection)
        write_app(
            self.app_dir, self.run_config_file, run_config, name="fedvault-simulation"
        )

    def start(self, cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start a Flower command in the work folder with this FLWR_HOME and
        :meth:`env`."""
        return spawn(
            cmd, cwd=self.work, log=log, flwr_home=self.flwr_home, env=self.env()
        )


def _wait_healthy(
    port: int, socket: Path, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError("the Flower SuperLink exited during start-up")
        if socket.exists():  # a failed connect to no socket leaks one in httpcore
            transport = httpx.HTTPTransport(uds=str(socket))
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.Client(transport=transport) as client,
            ):
                if client.get(url, timeout=1).status_code == 200:
                    return
        time.sleep(0.3)
    raise FederationError(f"the Flower SuperLink did not start within {timeout:g} s")


@contextlib.contextmanager
def superlink(layout: SimulationLayout, port: int, log: IO[bytes]) -> Iterator[None]:
    """A simulation SuperLink for the duration of the block, its Control API on a
    private unix socket (``port`` only names it in URLs: it is never opened).

    Raises:
        FederationError: when it does not start, or opens ``port`` after all.
    """
    layout.ray_tmp.mkdir(exist_ok=True)
    _control_socket.remove_stale()
    socket = _control_socket.private_socket()
    layout.socket_file.write_text(str(socket))
    cmd = [
        flower_bin("flower-superlink"),
        "--insecure",
        "--simulation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    try:
        proc = layout.start(cmd, log)
        try:
            _wait_healthy(port, socket, proc, timeout=60)
            if port_in_use(f"127.0.0.1:{port}", key="control-address"):
                raise FederationError(
                    f"the simulation's SuperLink opened its Control API on port "
                    f"{port}, reachable by every account on this host; stopped it"
                )
            yield
        finally:
            stop_process(proc)
            # Ray's agents (cwd: this work folder) can outlive every signal above
            kill_processes_in(layout.work)
    finally:
        layout.socket_file.unlink(missing_ok=True)
        shutil.rmtree(socket.parent, ignore_errors=True)


def submit_and_wait(
    layout: SimulationLayout,
    *,
    num_sites: int,
    log: IO[bytes],
    timeout: float,
    on_poll: Callable[[], None] | None = None,
    gpu_fraction: float = 0.0,
) -> str:
    """Submit the app, stream until it ends, and return the run's final status.
    ``gpu_fraction``: the share of a GPU each simulated site is given (Flower's
    backend resources ``client-resources-num-gpus``; 0: none)."""
    federation = f"num-supernodes={num_sites} client-resources-num-cpus=1"
    if gpu_fraction > 0:
        federation += f" client-resources-num-gpus={gpu_fraction:g}"
    cmd = [
        flower_bin("flwr"),
        "run",
        str(layout.app_dir),
        CONNECTION,
        "--stream",
        "--federation-config",
        federation,
        "--run-config",
        str(layout.run_config_file),
    ]
    proc = layout.start(cmd, log)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"the simulation did not finish within {timeout:g} s"
                )
            if on_poll is not None:
                on_poll()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
    except BaseException:
        stop_process(proc)
        raise
    if on_poll is not None:
        on_poll()
    return _last_run_status(layout)


def _last_run_status(layout: SimulationLayout) -> str:
    env = flower_env(layout.flwr_home, layout.env())
    out = subprocess.run(  # noqa: S603
        [flower_bin("flwr"), "ls", CONNECTION, "--format", "json"],
        cwd=layout.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        raise FederationError(
            f"cannot read the run status: {out.stdout[-300:]}"
        ) from None
    if not runs:
        raise FederationError("the SuperLink reports no run")
    return str(runs[-1].get("status", "unknown"))
