"""Helpers shared by the tests that run a real consortium in processes
(test_deployment.py, test_resume.py): site files, progress events, and stopping
every process they caused."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import tomli_w


def flower_pids(root: Path) -> list[int]:
    """Processes whose FLWR_HOME lies under ``root``: every Flower process (and
    forked ClientApp) started for a consortium in that folder."""
    marker = f"FLWR_HOME={root}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
    return pids


def coordinator_toml(root: Path, *, rounds: int = 1) -> Path:
    """``root/coordinator.toml``: one expected site, free loopback ports."""
    from fedvault.common.processes import free_port

    doc = {
        "coordinator": {
            "run-dir": "run",
            "fleet-address": f"127.0.0.1:{free_port()}",
            "control-address": f"127.0.0.1:{free_port()}",
            "expected-sites": 1,
        },
        "training": {"rounds": rounds, "min-sites": 1, "round-timeout": 300.0},
    }
    path = root / "coordinator.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def wait_for_run(
    proc: subprocess.Popen[bytes], run_dir: Path, out: Path, timeout: float = 90
) -> None:
    """Wait until the coordinator ``proc`` has submitted its run (a run id in
    ``run_dir/coordinator.json``); fail with its output if it exits first."""
    live = run_dir / "coordinator.json"
    deadline = time.monotonic() + timeout
    while "run-id" not in (live.read_text() if live.exists() else ""):
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, "the coordinator did not start"
        time.sleep(0.5)


def events(root: Path) -> list[dict[str, object]]:
    """The coordinator's progress events so far (``run/output/progress.jsonl``)."""
    path = root / "run" / "output" / "progress.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_site(
    root: Path, name: str, fleet: int, dataset: str, **extra: object
) -> None:
    """``root/NAME.toml``: a site with TLS, its own key and its own privacy policy."""
    from fedvault.common.processes import free_port

    site = {
        "name": name,
        "coordinator": f"localhost:{fleet}",
        "ca-certificate": "certs/ca.crt",
        "private-key": f"keys/{name}/site.key",
        "state-dir": f"state/{name}",
        "runtime-address": f"127.0.0.1:{free_port()}",
        **extra,
    }
    privacy = {"dataset-id": dataset, "epsilon-max": 10.0, "delta": 1e-5}
    (root / f"{name}.toml").write_text(
        tomli_w.dumps({"site": site, "privacy": privacy})
    )


def stop_all(procs: Iterable[subprocess.Popen[bytes]], root: Path) -> list[int]:
    """TERM each process's session, KILL what lingers, then sweep Flower processes
    under ``root`` (they watch their parent's pid); returns the pids that survived
    the grace period."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while (left := flower_pids(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
