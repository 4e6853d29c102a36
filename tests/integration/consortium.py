"""Helpers shared by the tests that run a real consortium in processes
(test_deployment.py, test_resume.py, test_site_lifecycle.py, ...): site files,
progress events, launching CLIs, and stopping every process they caused."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import tomli_w

# Runs MODULE:APP ARGS... (a Typer app) as its own process, as `fedvault` would.
LAUNCH = (
    "import sys; from importlib import import_module; "
    "m, n = sys.argv[1].split(':'); getattr(import_module(m), n)(sys.argv[2:])"
)


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


def write_label_schema(root: Path, target: str = "target") -> str:
    """``root/schema.toml``: the consortium's contract for the embedded data, which
    each raw-data site declares (``schema`` in ``[site]``): its label classes, so
    that a small site keeps both at a small epsilon (docs/privacy.md), and its
    features' published ranges."""
    from fedvault.server._site_schema import published_ranges

    columns: dict[str, object] = dict(published_ranges(target))
    columns[target] = {"type": "category", "role": "target", "categories": ["0", "1"]}
    doc = {"dataset": {"name": "breast-cancer"}, "columns": columns}
    (root / "schema.toml").write_text(tomli_w.dumps(doc))
    return "schema.toml"


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


def prepare_two_sites(root: Path, *, rounds: int, min_sites: int) -> None:
    """Certificates, two sites (keys, data halves, TOML) and a coordinator.toml
    listing both under [sites], all in ``root``, made with fedvault's own CLIs."""
    from typer.testing import CliRunner

    from fedvault.client.client_cli import client_app
    from fedvault.common.data import default_dataset
    from fedvault.common.processes import free_port
    from fedvault.server.certs_cli import certs_app

    runner = CliRunner()
    for args in (
        ["init", root / "certs"],
        ["server", root / "certs", "--host", "localhost"],
    ):
        assert runner.invoke(certs_app, [str(a) for a in args]).exit_code == 0
    frame = default_dataset().sample(frac=1.0, random_state=1)
    (root / "data").mkdir()
    fleet = free_port()
    for i in range(2):
        frame.iloc[i::2].to_parquet(root / "data" / f"site-{i}.parquet", index=False)
        name = f"site-{i}"
        keygen = ["keygen", str(root / "keys" / name), "--name", name]
        assert runner.invoke(client_app, keygen).exit_code == 0
        write_site(root, name, fleet, "bc", data=f"data/{name}.parquet")
    coordinator = {
        "coordinator": {
            "run-dir": "run",
            "certs": "certs",
            "expected-sites": 2,
            "fleet-address": f"127.0.0.1:{fleet}",
            "control-address": f"127.0.0.1:{free_port()}",
            "client-threads": 1,
            "timeout": 400.0,
        },
        "training": {
            "rounds": rounds,
            "batch-size": 16,
            "min-sites": min_sites,
            "round-timeout": 150.0,
            "epsilon": 3.0,
        },
        "sites": {f"site-{i}": f"keys/site-{i}/site.pub" for i in range(2)},
    }
    (root / "coordinator.toml").write_text(tomli_w.dumps(coordinator))


class Consortium:
    """The processes of a consortium in ``root``, each in its own session, its
    output in ``root/NAME.out``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, name: str, app: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.out").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, app, *args],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")

    def stop_all(self) -> list[int]:
        return stop_all(self.procs.values(), self.root)


def wait_until(what: str, check, timeout: float, proc=None) -> None:
    """Wait until ``check()``; fail when ``proc`` exits first or on timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def run_fedvault(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`fedvault ARGS` in this process, as a user runs it: its exit status and its
    stdout + stderr as one line (Rich wraps long lines)."""
    from fedvault.common.cli import main

    monkeypatch.setattr(sys, "argv", ["fedvault", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())
